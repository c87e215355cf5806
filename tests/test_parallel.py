"""Parallel backends (sequential, joblib/loky, dask.distributed) give the same scores and resume each
other's runs; the GPU-path options (precision, channels_last, prefetch, worker devices, adaptive chunks)
behave on CPU as they must."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import cli
from benchmark.errors import CambenchError
from benchmark.forward import forward_precision
from benchmark.methods.base import ExplainContext
from benchmark.metrics.perturbation import memory_chunk, perturbation_curves, pixel_order, step_counts
from benchmark.runner import ExecOptions, load_registries, parse_suite, plan_run, run_suite, run_unit
from benchmark.runner.parallel import claim_slot, execute_units, kept_environ, prefetch, worker_device
from benchmark.store import Store

import runner_fakes

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:Ablation-CAM:RuntimeWarning")]


SUITE = """
name = "parallel"
seed = 5
device = "cpu"
batch_size = 1
shard_size = 1
gallery = 1
bootstrap = 20
plugins = ["{plugin}"]
methods = ["gradcam", "scorecam", "ablationcam", "random"]
metrics = ["fake_inside", "fake_drop", "fake_noise", "deletion_auc", "latency_ms"]

[metric_params.deletion_auc]
step = 128
[metric_params.latency_ms]
warmup = 0
repeats = 1

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 4 }}
"""


@pytest.fixture(scope="module")
def suite():
    plugin = Path(runner_fakes.__file__).resolve()
    return parse_suite(SUITE.format(plugin=plugin), default_name="parallel")


@pytest.fixture(scope="module")
def client():
    """One 2-process dask cluster for the whole module (start-up is slow on a small machine)."""
    distributed = pytest.importorskip("distributed")
    with kept_environ():  # LocalCluster leaves OMP_NUM_THREADS=1 in this process otherwise
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def reference(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    res = run_suite(suite, out, quiet=True, report=False)
    return res, _scores(out, res.plan.hash), Store(out, res.plan.hash).load_curves()


def _scores(out: Path, h: str) -> pd.DataFrame:
    """Score rows without the cost family (wall-clock timings differ from run to run)."""
    s = Store(out, h).load_scores()
    return s[s["metric"] != "latency_ms"].reset_index(drop=True)


def test_reference_run_has_real_rows(reference):
    res, scores, _ = reference
    assert len(res.ran) == 4
    assert set(scores["method"]) == {"gradcam", "scorecam", "ablationcam", "random"}
    assert set(scores["metric"]) == {"fake_inside", "fake_drop", "fake_noise", "deletion_auc"}
    assert (scores["status"] == "ok").all() and len(scores) == 4 * 4 * 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_backends_give_identical_scores(backend, suite, reference, client, tmp_path):
    res, ref_scores, ref_curves = reference
    kw = {"client": client} if backend == "dask" else {"workers": 2}
    out = run_suite(suite, tmp_path, quiet=True, report=False, backend=backend, **kw)
    assert out.plan.hash == res.plan.hash and sorted(out.ran) == sorted(res.ran)
    pd.testing.assert_frame_equal(_scores(tmp_path, out.plan.hash), ref_scores, check_exact=True)
    pd.testing.assert_frame_equal(Store(tmp_path, out.plan.hash).load_curves(), ref_curves, check_exact=True)
    cost = Store(tmp_path, out.plan.hash).load_scores().query("metric == 'latency_ms'")
    assert len(cost) == 16 and (cost["value"] > 0).all()  # the cost family ran too (its values are timings)


def test_resume_across_backends(suite, reference, client, tmp_path):
    """A sequential run with two parts lost is finished by loky; an interrupted dask run by sequential."""
    res, ref_scores, _ = reference
    store = Store(tmp_path, res.plan.hash)
    run_suite(suite, tmp_path, quiet=True, report=False)
    lost = sorted(res.ran)[1:3]
    for key in lost:
        store.part_path(key).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in store.parts.glob("*.parquet")}
    again = run_suite(suite, tmp_path, quiet=True, report=False, backend="loky", workers=2)
    assert sorted(again.ran) == lost and len(again.reused) == 2
    assert all(store.parts.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())  # untouched
    pd.testing.assert_frame_equal(_scores(tmp_path, res.plan.hash), ref_scores, check_exact=True)

    # interrupted parallel run: the parent stops after the first finished unit
    out2 = tmp_path / "interrupted"
    store2 = Store(out2, res.plan.hash)
    store2.prepare()
    units = plan_run(suite).units
    gen = execute_units(
        suite, units, unit_fn=run_unit, setup_fn=load_registries, options=ExecOptions(), backend="dask", client=client
    )
    first = next(gen)
    store2.write_unit(first)
    gen.close()  # cancels what is still queued
    assert store2.done() == {first.key}
    resumed = run_suite(suite, out2, quiet=True, report=False)
    assert resumed.reused == [first.key] and sorted(resumed.ran) == sorted(set(res.ran) - {first.key})
    pd.testing.assert_frame_equal(_scores(out2, res.plan.hash), ref_scores, check_exact=True)


def test_cpu_options_do_not_change_scores(suite, reference):
    """channels_last off (it is the default for CNNs) and the prefetch thread (automatic on CUDA) forced on
    CPU: same scores."""
    _, ref_scores, _ = reference
    plan = plan_run(suite)
    rows = [run_unit(suite, u, options=ExecOptions(channels_last=False, prefetch=True)).scores for u in plan.units]
    got = pd.concat(rows).query("metric != 'latency_ms'")
    got = got.sort_values(["model", "dataset", "method", "metric", "image_id"], kind="mergesort").reset_index(drop=True)
    assert (got["status"] == ref_scores["status"]).all()
    np.testing.assert_allclose(got["value"], ref_scores["value"], rtol=1e-4, atol=1e-5)


def test_precision_reaches_the_extra_forwards_only(suite, reference):
    """bf16 autocast changes Score-/Ablation-CAM and deletion slightly; the fp32 capture (Grad-CAM maps) not."""
    _, ref_scores, _ = reference
    plan = plan_run(suite)
    assert plan_run(suite, precision="bf16").hash != plan.hash  # bf16 parts never mix with fp32 parts
    got = pd.concat([run_unit(suite, u, options=ExecOptions(precision="bf16")).scores for u in plan.units])
    got = got.query("metric != 'latency_ms'").set_index(["method", "metric", "image_id"]).sort_index()["value"]
    ref = ref_scores.set_index(["method", "metric", "image_id"]).sort_index()["value"]
    grad = ref.index.get_level_values("method") == "gradcam"
    inside = ref.index.get_level_values("metric") == "fake_inside"
    # Grad-CAM's map comes from the fp32 capture: identical
    np.testing.assert_array_equal(got[grad & inside].to_numpy(), ref[grad & inside].to_numpy())
    # deletion runs through the engine's autocast: close but not identical
    dele = ref.index.get_level_values("metric") == "deletion_auc"
    assert not np.array_equal(got[dele].to_numpy(), ref[dele].to_numpy())
    np.testing.assert_allclose(got[dele].to_numpy(), ref[dele].to_numpy(), atol=0.03)
    score = (ref.index.get_level_values("method") == "scorecam") & inside
    np.testing.assert_allclose(got[score].to_numpy(), ref[score].to_numpy(), atol=0.05)
    with pytest.raises(CambenchError, match="precision"):
        ExecOptions(precision="fp8")


def test_forward_precision_context_is_scoped():
    torch.manual_seed(0)
    handle = runner_fakes.fake_cnn()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([0, 1, 0])
    order = pixel_order(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)))
    steps = step_counts(32 * 32, n_steps=8)
    curves = lambda: perturbation_curves(handle.model, images, order, torch.zeros(1, 3, 32, 32), steps, targets)
    fp32 = curves()
    with forward_precision("bf16"):
        bf16 = curves()
        ctx = ExplainContext(handle.model, handle.model.features, images, targets)
        fs = ctx.forward_scores(images, targets, softmax=True)
    assert bf16.dtype == fs.dtype == torch.float32
    assert not torch.equal(bf16, fp32) and torch.allclose(bf16, fp32, atol=0.03)
    assert torch.equal(curves(), fp32)  # the context does not leak
    assert torch.allclose(fs, fp32[:, 0], atol=0.03)
    with pytest.raises(ValueError, match="precision"):
        with forward_precision("half"):
            pass


def test_memory_chunk():
    assert memory_chunk(1000, 10, n=500, fraction=0.5) == 50
    assert memory_chunk(1000, 10, n=20, fraction=0.5) == 20  # never more than the items
    assert memory_chunk(10, 1000, n=20) == 1  # at least one
    assert memory_chunk(1e12, 1, n=10**6, cap=256) == 256
    assert memory_chunk(1000, 0, n=7) == 7  # unknown size: everything (the OOM halving takes over)


def test_worker_devices_and_slots(tmp_path):
    assert worker_device("cuda", 4, 5) == "cuda:1"
    assert worker_device("auto", 2, 0) == "cuda:0"
    assert worker_device("cuda:3", 4, 0) == "cuda:3"  # explicit device kept
    assert worker_device("cuda", 1, 3) == "cuda"  # one GPU: nothing to pin
    assert worker_device("cpu", 4, 1) == "cpu"
    if os.name != "posix":
        pytest.skip("slots use flock")
    a, fa = claim_slot(tmp_path)
    b, fb = claim_slot(tmp_path)
    assert (a, b) == (0, 1)
    os.close(fa)  # a dead worker's slot is free again
    c, fc = claim_slot(tmp_path)
    assert c == 0
    os.close(fb), os.close(fc)


def test_prefetch_keeps_order_raises_and_stops():
    assert list(prefetch(iter(range(20)), lambda x: x * 2, depth=3)) == [2 * i for i in range(20)]

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken()))
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    gen = prefetch(endless(), depth=2)
    assert next(gen) == 0
    gen.close()  # the producer stops instead of running forever
    n = len(produced)
    import time

    time.sleep(0.3)
    assert len(produced) == n <= 5


def test_cli_backend_options_are_checked(suite, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(SUITE.format(plugin=Path(runner_fakes.__file__).resolve()))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "--backend dask" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", str(path), "--precision", "int8"])
    with pytest.raises(SystemExit):
        cli.main(["run", str(path), "--backend", "ray"])
    args = cli._parser().parse_args(
        [
            "run",
            "x",
            "--backend",
            "dask",
            "--scheduler",
            "tcp://h:8786",
            "--workers",
            "3",
            "--precision",
            "bf16",
            "--device",
            "cuda:1",
        ]
    )
    got = (args.backend, args.scheduler, args.workers, args.precision, args.device)
    assert got == ("dask", "tcp://h:8786", 3, "bf16", "cuda:1")
    with pytest.raises(CambenchError, match="CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        from benchmark.runner import resolve_device

        resolve_device("cuda:0")


def test_kept_environ_restores_the_environment_even_on_error() -> None:
    os.environ["CAMBENCH_TEST_KEEP"] = "a"
    try:
        with pytest.raises(RuntimeError), kept_environ():
            os.environ["OMP_NUM_THREADS_CAMBENCH_TEST"] = "1"
            os.environ["CAMBENCH_TEST_KEEP"] = "b"
            raise RuntimeError("boom")
        assert "OMP_NUM_THREADS_CAMBENCH_TEST" not in os.environ and os.environ["CAMBENCH_TEST_KEEP"] == "a"
    finally:
        os.environ.pop("CAMBENCH_TEST_KEEP", None)
