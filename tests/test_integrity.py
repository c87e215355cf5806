"""Fault injection on results folders (issue #24): a results folder is data, every stored number is verified,
every fault ends in one line and loses nothing. Fast: one tiny run (2 units of 2 fake images), copied per test.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import CambenchError
from benchmark.outdir import LOCK_NAME, OutputDirError, RunLock, safe_name
from benchmark.report.build import IncompleteRunError, write_report
from benchmark.runner import parse_suite, run_suite
from benchmark.store import TABLES, Store, StoreError

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

FAKES = Path(runner_fakes.__file__).resolve()
SUITE = runner_fakes.fake_suite_toml("integrity")


def _suite():
    return parse_suite(SUITE, default_name="integrity")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    res = run_suite(_suite(), out, quiet=True, report=partial(write_report, plots=False, html=False))
    return out, res


@pytest.fixture
def run_dir(clean_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean_run[0], out, symlinks=True)
    return out


def _store(out: Path, log=None) -> Store:
    run = json.loads((out / "run.json").read_text())
    return Store(out, run["suite_hash"], log=log, units=run["units"])


# -- results are data ------------------------------------------------------------------------------


def test_a_symlink_at_the_lock_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(OutputDirError, match="symbolic link.*never follows"):
        RunLock(out).acquire()
    assert victim.read_text() == "precious"


def test_a_directory_at_the_lock_is_one_line(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(OutputDirError, match=r"is a directory; remove it \(rmdir"):
        RunLock(tmp_path).acquire()


def test_the_lock_is_removed_after_success_kept_after_an_error_and_still_excludes(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(OutputDirError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError), RunLock(tmp_path):
        raise RuntimeError("boom")
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released, pid cleared
    with RunLock(tmp_path):  # and taken again
        pass


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../x", "x"), ("/etc/passwd", "etc_passwd"), ("..", "suite"), ("a b/c", "a_b_c"), ("x" * 300, "x" * 100)],
)
def test_suite_names_become_one_harmless_path_component(name, expected):
    assert safe_name(name) == expected
    assert (Path("results") / safe_name(name)).resolve().parent == Path("results").resolve()


def test_fresh_deletes_only_what_cambench_wrote_and_refuses_a_linked_folder(run_dir, tmp_path):
    mine = run_dir / "parts" / "notes.txt"
    mine.write_text("user's file")
    store = _store(run_dir)
    store.prepare(fresh=True)
    assert mine.read_text() == "user's file" and not list((run_dir / "parts").glob("*.parquet"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep__x.parquet").write_text("not cambench's")
    shutil.rmtree(run_dir / "stats", ignore_errors=True)
    (run_dir / "stats").symlink_to(elsewhere)
    with pytest.raises(StoreError, match="symbolic link.*never follows links"):
        store.prepare(fresh=True)
    assert (elsewhere / "keep__x.parquet").read_text() == "not cambench's"


def test_report_imports_no_plugin_named_by_the_folder(run_dir, tmp_path):
    sentinel = tmp_path / "ran.txt"
    evil = tmp_path / "evil_plugin.py"
    evil.write_text(f"open({str(sentinel)!r}, 'w').write('pwned')\n")
    run = json.loads((run_dir / "run.json").read_text())
    run["plugins"] = [str(evil)]
    (run_dir / "run.json").write_text(json.dumps(run))
    rep = write_report(run_dir, plots=False, html=False)
    assert not sentinel.exists() and len(rep.leaderboard)
    assert set(rep.leaderboard.loc[rep.leaderboard["baseline"], "method"]) == set(run["baselines"]) == {"random"}


def test_a_dataset_level_reducer_comes_from_the_user_never_the_folder(run_dir):
    from benchmark.report.build import check_reducers

    run = {"suite": "s", "reducers": {"plugin_metric": "someones.plugin:compute"}}
    with pytest.raises(CambenchError, match="never imports code named by a results folder.*--plugin FILE"):
        check_reducers(["plugin_metric"], run)
    with pytest.raises(CambenchError, match="reduced its statistics with x:y"):
        check_reducers(["pxap"], {"reducers": {"pxap": "x:y"}})


def test_run_bench_py_is_guarded_for_spawned_workers():
    root = Path(__file__).resolve().parents[1]
    code = "import runpy; runpy.run_path('run_bench.py', run_name='__mp_main__'); print('imported')"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr


# -- every number verified -------------------------------------------------------------------------


def test_every_table_of_a_unit_records_its_checksum_unit_hash_and_version(run_dir):
    from benchmark import __version__
    from benchmark.store import read_meta

    store = _store(run_dir)
    key = sorted(store.verify())[0]
    meta = read_meta(store.part_path(key))
    assert meta["unit"] == key and meta["suite_hash"] == store.hash and meta["cambench"] == __version__
    assert set(meta["tables"]) >= {"timings", "curves", "gallery"} and len(meta["sha256"]) == 64
    for t in TABLES:
        if t.fmt == "parquet" and store.path(t, key).is_file():
            assert read_meta(store.path(t, key))["sha256"] == (meta["tables"].get(t.name) or meta["sha256"])
    assert len(store.load_timings()) and "seconds" in store.load_timings()


def test_bit_flips_in_a_part_never_change_a_reported_score(run_dir):
    store = _store(run_dir)
    key = sorted(store.verify())[0]
    part = store.part_path(key)
    good = part.read_bytes()
    truth = store.load_scores()
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(good), size=60, replace=False):
        bad = bytearray(good)
        bad[int(pos)] ^= 1 << int(rng.integers(8))
        part.write_bytes(bytes(bad))
        s = _store(run_dir, log=lambda m: None)
        got = s.load_scores()
        if key in s.quarantined:
            assert (run_dir / "quarantine" / part.name).is_file() and key not in set(s.verify())
            os.replace(run_dir / "quarantine" / part.name, part)  # the companions come back for the next flip
            for t in TABLES:
                q = run_dir / "quarantine" / store.path(t, key).name
                if q.exists():
                    os.replace(q, store.path(t, key))
        else:  # a flip the reader cannot see (e.g. in footer statistics) must change nothing
            pd.testing.assert_frame_equal(got, truth)
        part.write_bytes(good)


def test_truncated_and_foreign_parts_are_named_quarantined_and_recomputed(run_dir):
    store = _store(run_dir)
    keys = sorted(store.verify())
    first, second = (store.part_path(k) for k in keys)
    second.write_bytes(first.read_bytes())  # a foreign part: another unit's under this name
    first.write_bytes(first.read_bytes()[:100])  # truncated
    lines: list[str] = []
    assert _store(run_dir, log=lines.append).missing() == keys and len(lines) == 2
    assert "cannot be read" in lines[0] and keys[0] in lines[0] and "quarantine" in lines[0]
    assert "foreign" in lines[1] and keys[1] in lines[1]
    assert (run_dir / "quarantine" / first.name).is_file() and not first.exists()
    with pytest.raises(IncompleteRunError, match="0 of the 2 units.*rerun.*--partial"):
        write_report(run_dir, plots=False, html=False)
    assert main(["--cpu-kernels", "native", "report", str(run_dir), "--no-plots"]) == 2
    again = run_suite(_suite(), run_dir, quiet=True, report=partial(write_report, plots=False, html=False))
    assert sorted(again.ran) == keys and not again.reused


def test_report_of_an_interrupted_run_refuses_or_marks_it_incomplete(run_dir, clean_run):
    store = _store(run_dir)
    key = sorted(store.verify())[1]
    for t in TABLES:
        store.path(t, key).unlink(missing_ok=True)
    with pytest.raises(IncompleteRunError):
        write_report(run_dir, plots=False, html=False)
    rep = write_report(run_dir, plots=False, html=False, partial=True)
    assert rep.incomplete == "incomplete: 1 of 2 units" and (run_dir / "incomplete.txt").is_file()
    assert set(rep.scores["image_id"]) < set(clean_run[1].report.scores["image_id"])


# -- faults end in one line, nothing lost ----------------------------------------------------------


def test_disk_full_while_writing_a_unit_is_one_line_and_the_rerun_finishes(tmp_path, monkeypatch):
    import benchmark.store as S

    out = tmp_path / "out"
    real = S.atomic_write_bytes

    def full(path, data):
        if "000002-000004" in Path(path).name:  # the first unit's files fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(S, "atomic_write_bytes", full)
    with pytest.raises(StoreError, match="no space left on device; the units finished before are kept"):
        run_suite(_suite(), out, quiet=True, report=False)
    monkeypatch.setattr(S, "atomic_write_bytes", real)
    again = run_suite(_suite(), out, quiet=True, report=False)
    assert len(again.reused) == 1 and len(again.ran) == 1


def test_a_read_only_parts_folder_is_refused_before_any_unit(run_dir, monkeypatch):
    import benchmark.store as S

    def read_only(*a, dir=None, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(S.tempfile, "mkstemp", read_only)  # as an immutable or read-only parts/ answers
    with pytest.raises(StoreError, match=r"cannot write into .*out/gallery: read-only filesystem; make it writable"):
        _store(run_dir).prepare()


# -- a resume never mixes settings -----------------------------------------------------------------

PLUGIN = """
from benchmark.methods import register_method
from benchmark.methods.gradient import gradcam


@register_method("integrity_tmp_cam", family="gradient", paper="tests")
def integrity_tmp_cam(ctx):
    return gradcam(ctx){tail}
"""


def test_a_changed_plugin_source_or_cpu_kernel_mode_recomputes_and_says_why(tmp_path, monkeypatch):
    import benchmark.runner.fingerprint as F

    plugin = tmp_path / "tmp_plugin.py"
    plugin.write_text(PLUGIN.format(tail=""))
    suite = parse_suite(
        SUITE.replace(f'plugins = ["{FAKES}"]', f'plugins = ["{FAKES}", "{plugin}"]').replace(
            'methods = ["gradcam", "random"]', 'methods = ["integrity_tmp_cam", "random"]'
        ),
        default_name="integrity",
    )
    out = tmp_path / "out"
    first = run_suite(suite, out, quiet=True, report=False)
    assert len(first.ran) == 2
    same = run_suite(suite, out, quiet=True, report=False)
    assert len(same.reused) == 2 and not same.ran
    plugin.write_text(PLUGIN.format(tail=" * 1.0  # edited"))  # the source text changed
    lines: list[str] = []
    edited = run_suite(suite, out, quiet=True, report=False, log=lines.append)
    assert len(edited.ran) == 2 and set(edited.computed.values()) == {("integrity_tmp_cam",)}  # that method only
    said = f"method integrity_tmp_cam changed (plugin source {plugin}): computing it on 2 unit(s)"
    assert any(said in m for m in lines)
    monkeypatch.setattr(F, "describe", lambda: "AVX2 (native)")
    lines.clear()
    native = run_suite(suite, out, quiet=True, report=False, log=lines.append)
    assert len(native.ran) == 2 and any("cpu_kernels changed (" in m and "-> AVX2 (native))" in m for m in lines)
    record = json.loads((out / "run.json").read_text())
    assert record["fingerprints"]["fake_cnn"]["cpu_kernels"] == "AVX2 (native)"


def test_checkpoint_hashes_are_cached_by_mtime_and_size(tmp_path):
    from benchmark.runner.fingerprint import file_sha256

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"a" * 64)
    first = file_sha256(ckpt)
    assert first == __import__("hashlib").sha256(b"a" * 64).hexdigest()
    ckpt.write_bytes(b"b" * 64)  # new bytes: a new mtime, so hashed again
    os.utime(ckpt, ns=(1, 1))
    assert file_sha256(ckpt) != first
    assert file_sha256(ckpt) == __import__("hashlib").sha256(b"b" * 64).hexdigest()


# -- validation closes the gaps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[metric_params.pointing_game]\ntolerance = nan", "pointing_game.tolerance"),
        ("[metric_params.mask_iou]\nthreshold = nan", "mask_iou.threshold"),
        ("[metric_params.max_sensitivity]\nradius = inf", "max_sensitivity.radius"),
        ("[metric_params.fake_drop]\nsteps = -inf", "fake_drop.steps"),
    ],
)
def test_non_finite_numbers_are_refused_at_load(table, key):
    with pytest.raises(
        CambenchError, match=rf"`metric_params\.{key}` = -?(nan|inf): numbers in a suite must be finite"
    ):
        parse_suite(SUITE.replace("[[experiments]]", f"{table}\n\n[[experiments]]"), default_name="x")


def test_non_finite_parameters_from_python_are_refused_too():
    from benchmark.runner.validate import check_kwargs

    def blur(images, sigma: float = 1.0):
        return images

    with pytest.raises(CambenchError, match="`sigma` = nan: parameters must be finite"):
        check_kwargs(blur, {"sigma": float("nan")}, "[metric_params.blur]")


def test_bounds_on_n_names_and_suite_files_are_checked_before_planning(tmp_path):
    with pytest.raises(
        CambenchError, match=r"`data.n` must be a number of images from 1 to 1,000,000, got 1000000000.0"
    ):
        parse_suite(SUITE.replace("n = 4", "n = 1e9"), default_name="x")
    with pytest.raises(CambenchError, match="`data.n` must be a number of images"):
        parse_suite(SUITE.replace("n = 4", "n = 1_000_000_000"), default_name="x")
    with pytest.raises(CambenchError, match="`label` is 300 characters long.*at most 100"):
        parse_suite(SUITE.replace("[[experiments]]", f'[[experiments]]\nlabel = "{"l" * 300}"'), default_name="x")
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    from benchmark.runner.suite import load_suite

    with pytest.raises(CambenchError, match="not a UTF-8 text file"):
        load_suite(binary)
    assert main(["--cpu-kernels", "native", "run", str(binary), "--out", str(tmp_path / "o")]) == 2


def test_weights_train_is_accepted_by_planning_as_documented(tmp_path, monkeypatch):
    from benchmark.errors import WeightsError
    from benchmark.runner import plan_run

    monkeypatch.chdir(tmp_path)  # no file named "train" here
    suite = parse_suite(SUITE.replace("[[experiments]]", '[[experiments]]\nweights = "train"'), default_name="x")
    assert len(plan_run(suite).units) == 2
    missing = parse_suite(SUITE.replace("[[experiments]]", '[[experiments]]\nweights = "w.pt"'), default_name="x")
    with pytest.raises(WeightsError, match='"default", "random", "train" or the path'):
        plan_run(missing)


@pytest.mark.parametrize("address", ["garbage", "not an address", "/etc/passwd"])
def test_a_bad_scheduler_address_is_one_line_before_any_work(address):
    from benchmark.runner.parallel import execute_units

    units = execute_units(_suite(), [], unit_fn=None, setup_fn=None, options=None, backend="dask", scheduler=address)
    with pytest.raises(CambenchError, match="is not a dask scheduler address; pass one such as tcp://"):
        next(units)


LOKY_SCRIPT = """
import os, sys
from types import SimpleNamespace
import pandas as pd
from benchmark.errors import CambenchError
from benchmark.runner import ExecOptions, parse_suite
from benchmark.runner.parallel import execute_units
from benchmark.schema import UnitResult


def setup(plugins):
    return None


def unit_fn(suite, unit, options=None):  # the worker of unit "b" dies (once, or always)
    if unit.key == "b" and (unit.always or not os.path.exists(unit.marker)):
        open(unit.marker, "w").write("died")
        os._exit(9)  # as a killed or OOM-killed worker
    return UnitResult(unit.key, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), info={"n_images": 1})


if __name__ == "__main__":
    import benchmark.runner.parallel as P

    P.WORKER_RETRIES = 1  # fewer pools to start (each imports torch)
    suite = parse_suite(sys.argv[1], default_name="x")
    for always in (False, True):
        units = [SimpleNamespace(key=k, marker=sys.argv[2] + str(always), always=always) for k in "ab"]
        run = execute_units(suite, units, unit_fn=unit_fn, setup_fn=setup, options=ExecOptions(threads=1),
                            backend="loky", workers=2)
        try:
            print(always, sorted(r.key for r in run), flush=True)
        except CambenchError as exc:
            print(always, "error:", exc, flush=True)
"""


@pytest.mark.slow  # four loky pools, each importing torch: ~90 s on the shared 2-core machine
def test_a_dead_loky_worker_is_retried_then_the_run_stops_in_one_line(tmp_path):
    script = tmp_path / "loky_deaths.py"
    script.write_text(LOKY_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(script), SUITE, str(tmp_path / "m")], capture_output=True, text=True, timeout=240, env=env
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "False ['a', 'b']", done.stdout + done.stderr[-2000:]
    assert "resubmitting 1 unit(s) (1 of 1)" in done.stderr
    assert lines[1].startswith("True error: a worker process died 2 times") and "rerun with fewer --workers" in lines[1]


def test_sigterm_ends_a_command_like_ctrl_c_keeping_finished_units(monkeypatch, capsys):
    import signal

    import benchmark.cli as cli

    def killed(args):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a batch scheduler's stop
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "cmd_list", killed)
    assert cli.main(["--cpu-kernels", "native", "list", "methods"]) == 130
    assert "interrupted: finished units are kept" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_dask_workers_with_other_cpu_kernels_are_refused_in_one_line():
    from benchmark.cpukernels import describe
    from benchmark.runner.parallel import check_worker_kernels

    class FakeClient:
        def __init__(self, kernels):
            self.kernels = kernels

        def run(self, fn):
            assert fn() == describe()  # the probe reports this process's mode where it runs
            return self.kernels

    check_worker_kernels(FakeClient({"tcp://a:1": describe(), "tcp://b:2": describe()}))
    with pytest.raises(CambenchError, match=r"1 dask worker\(s\), e.g. tcp://b:2, compute with AVX512 \(native\)"):
        check_worker_kernels(FakeClient({"tcp://a:1": describe(), "tcp://b:2": "AVX512 (native)"}))


def test_a_wrong_shaped_map_never_aborts_the_map_comparison():
    import torch

    from benchmark.runner.unit import fold_map_diffs

    acc: dict[str, float] = {}
    ones = torch.ones(2, 8, 8)
    fold_map_diffs(acc, {"a": ones, "b": ones * 0.5, "odd": torch.ones(2, 4, 4)})
    assert acc == {"a|b": 0.5}  # the odd-shaped method is compared with none; the others still are


# -- a model whose outputs are non-finite ----------------------------------------------------------

NAN_PLUGIN = """
from runner_fakes import TinyCNN, fake_cnn
from benchmark.models import register_model


class NanCNN(TinyCNN):  # the fake CNN whose logits are all NaN (a diverged training)
    def forward(self, x):
        return super().forward(x) * float("nan")


@register_model("integrity_nan_cnn", override=True)
def integrity_nan_cnn(weights="default"):
    h = fake_cnn(weights)
    model = NanCNN()
    model.load_state_dict(h.model.state_dict())
    h.model = model.eval()
    return h
"""


def test_a_model_with_nan_outputs_is_one_warning_and_error_rows_naming_why(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES.parent))
    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    text = SUITE.replace(f'plugins = ["{FAKES}"]', f'plugins = ["{FAKES}", "{plugin}"]')
    text += '\n[[experiments]]\nmodel = "integrity_nan_cnn"\ndataset = "fake_shapes"\ndata = { n = 4 }\n'
    lines: list[str] = []
    suite = parse_suite(text, default_name="integrity")
    res = run_suite(suite, tmp_path / "out", quiet=True, report=False, log=lines.append)
    assert len(res.ran) == 4  # 2 units per experiment, every unit finished: the run went on
    scores = _store(tmp_path / "out").load_scores()
    nan_rows = scores[scores["model"] == "integrity_nan_cnn"]
    ok_rows = scores[scores["model"] == "fake_cnn"]
    # 4 images x 2 methods x 2 metrics, every one an error naming the cause; never "ok" nor "undefined"
    assert len(nan_rows) == 16 and set(nan_rows["status"]) == {"error"}
    assert nan_rows["message"].str.contains(r"non-finite logits \(NaN or inf\) for 2 of 2 images").all()
    assert set(ok_rows["status"]) == {"ok"} and len(ok_rows) == 16  # the finite model is untouched
    warned = [m for m in lines if "non-finite logits" in m]
    assert len(warned) == 1 and "integrity_nan_cnn/fake_shapes" in warned[0]  # once for the experiment


def test_non_finite_logits_are_counted_per_image_from_the_capture_or_one_forward():
    import torch
    from torch import nn

    from benchmark.evaluate import nonfinite_outputs
    from benchmark.methods import ExplainContext

    class Half(nn.Module):  # NaN for the second image only
        def forward(self, x):
            out = x.flatten(1)[:, :3].clone()
            out[1, 0] = float("inf")
            return out

    model = Half()
    ectx = ExplainContext(model=model, layer=model, images=torch.ones(3, 3, 4, 4), targets=torch.zeros(3).long())
    assert nonfinite_outputs(model, ectx) == 1  # no capture made: one forward
    finite = ExplainContext(model=model, layer=model, images=torch.ones(2, 3), targets=torch.zeros(2).long())
    assert nonfinite_outputs(nn.Identity(), finite) == 0


# -- a unit that hangs -----------------------------------------------------------------------------

TIMEOUT_SCRIPT = """
import logging, os, sys, time
from types import SimpleNamespace
import pandas as pd
from benchmark.runner import ExecOptions, parse_suite
from benchmark.runner.parallel import execute_units
from benchmark.schema import UnitResult


def setup(plugins):
    return None


def unit_fn(suite, unit, options=None):  # unit "a" hangs (as a method stuck in a kernel or a deadlock)
    if unit.key == "a":
        open(unit.pidfile, "w").write(str(os.getpid()))
        time.sleep(600)
    return UnitResult(unit.key, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), info={"n_images": 1})


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    suite = parse_suite(sys.argv[1], default_name="x")
    units = [SimpleNamespace(key=k, pidfile=sys.argv[2]) for k in "abc"]
    t = time.time()
    run = execute_units(suite, units, unit_fn=unit_fn, setup_fn=setup, backend="loky", workers=2,
                        options=ExecOptions(threads=1, unit_timeout_s=float(sys.argv[3])))
    print(sorted(r.key for r in run), round(time.time() - t), flush=True)
"""


@pytest.mark.slow  # one loky pool importing torch, then the 20 s timeout: ~30 s on the shared 2-core machine
def test_a_hanging_unit_is_stopped_by_the_loky_timeout_named_and_the_run_goes_on(tmp_path):
    script, pidfile = tmp_path / "loky_hang.py", tmp_path / "pid"
    script.write_text(TIMEOUT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, str(script), SUITE, str(pidfile), "20"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    keys, seconds = done.stdout.split("]")
    assert keys == "['b', 'c'" and int(seconds) < 200  # "b", "c" finished; "a" was stopped, not waited for (600 s)
    lines = [m for m in done.stderr.splitlines() if "--unit-timeout" in m]
    assert len(lines) == 1 and "within --unit-timeout 20 s: stopped a (worker killed" in lines[0]
    with pytest.raises(ProcessLookupError):  # the hanging worker is gone, not left running
        os.kill(int(pidfile.read_text()), 0)


def test_the_unit_timeout_is_refused_where_it_cannot_stop_a_unit():
    from benchmark.runner import ExecOptions
    from benchmark.runner.parallel import execute_units

    with pytest.raises(CambenchError, match=r"--unit-timeout stops a unit by killing its worker process, which needs"):
        next(execute_units(_suite(), ["u"], unit_fn=print, setup_fn=print, options=ExecOptions(unit_timeout_s=5)))
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CambenchError, match="--unit-timeout must be a positive number of seconds"):
            ExecOptions(unit_timeout_s=bad)


def test_a_long_unit_gets_a_line_every_heartbeat_and_a_stall_one_warning_naming_it():
    from benchmark.runner.progress import Progress

    lines: list[str] = []
    with Progress(log=lines.append, heartbeat_s=60, stall_s=600) as p:
        p.start(2, 8, ["exp0:0-4", "exp0:4-8"], in_flight=1)
        p._stop_watch.set()  # drive check() by hand with a fake clock
        t0 = p.t0
        p.check(t0 + 30)
        assert lines == []  # nothing to say yet
        p.images(2)  # a batch of the first unit finished
        p.check(p._last_event + 61)
        assert len(lines) == 1 and lines[0].startswith("cambench: running exp0:0-4: 2/8 images, 0/2 units")
        for dt in (601, 700, 900):  # one warning a stall, however often the watchdog looks
            p.check(p._last_event + dt)
        stalls = [m for m in lines if "warning: nothing finished for" in m]
        assert len(stalls) == 1 and "(unit(s) in flight: exp0:0-4)" in stalls[0] and "10:01" in stalls[0]
        p.unit_done("exp0:0-4", 4)  # progress ends the stall; a new one is reported for the next unit
        p.check(p._last_event + 601)
        assert "warning: nothing finished" in lines[-1] and "(unit(s) in flight: exp0:4-8)" in lines[-1]
        p.check(p._last_event + 662)  # the heartbeat goes on through a stall
        assert lines[-1].startswith("cambench: running exp0:4-8: 4/8 images, 1/2 units")


def test_the_watchdog_thread_reports_while_a_unit_runs_and_stops_with_the_run():
    import time

    from benchmark.runner.progress import Progress

    lines: list[str] = []
    with Progress(log=lines.append, heartbeat_s=0.05, stall_s=0.1) as p:
        p.start(1, 4, ["u"])
        time.sleep(0.5)  # a unit computing, no batch finished
    n = len(lines)
    time.sleep(0.2)
    assert len(lines) == n and p._watch is None  # the thread ended with the run
    assert sum("warning: nothing finished" in m and "(unit(s) in flight: u)" in m for m in lines) == 1
    assert any(m.startswith("cambench: running u: 0/4 images") for m in lines)


# -- dead dask workers -----------------------------------------------------------------------------


def _dask_unit(suite, unit, options=None):  # the workers running unit "b" die (dask gives up: KilledWorker)
    from distributed import KilledWorker

    from benchmark.schema import UnitResult

    if unit.key == "b" and (unit.always or not os.path.exists(unit.marker)):
        open(unit.marker, "w").write("died")
        from types import SimpleNamespace  # what result() raises after dask's own allowed-failures

        raise KilledWorker("b", SimpleNamespace(address="tcp://dead:1"), 3)
    return UnitResult(unit.key, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), info={"n_images": 1})


@pytest.fixture(scope="module")
def threaded_dask():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c:
        with distributed.Client(c) as client:
            yield client


def test_dead_dask_workers_are_retried_then_the_run_stops_in_one_line(threaded_dask, tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    import benchmark.runner.parallel as P
    from benchmark.runner import ExecOptions

    monkeypatch.setattr(P, "WORKER_RETRIES", 1)
    for always in (False, True):
        units = [SimpleNamespace(key=k, marker=str(tmp_path / f"m{always}"), always=always) for k in "ab"]
        run = P.execute_units(
            _suite(), units, unit_fn=_dask_unit, setup_fn=lambda p: None, options=ExecOptions(threads=1),
            backend="dask", client=threaded_dask,
        )  # fmt: skip
        if not always:
            assert sorted(r.key for r in run) == ["a", "b"]  # "b" resubmitted once, then finished
            assert "running b; resubmitting it (1 of 1)" in caplog.text
        else:
            with pytest.raises(CambenchError, match=r"a worker process died 2 times .* e\.g\. b; finished units are"):
                list(run)


def test_a_dask_cluster_with_no_worker_left_stops_in_one_line_instead_of_hanging(monkeypatch):
    from types import SimpleNamespace

    distributed = pytest.importorskip("distributed")
    import benchmark.runner.parallel as P
    from benchmark.runner import ExecOptions

    monkeypatch.setattr(P, "NO_WORKER_S", 0.5)
    units = [SimpleNamespace(key=k) for k in "ab"]
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as c:  # all workers gone
        with distributed.Client(c) as client:
            run = P.execute_units(
                _suite(), units, unit_fn=_dask_unit, setup_fn=lambda p: None, options=ExecOptions(threads=1),
                backend="dask", client=client,
            )  # fmt: skip
            with pytest.raises(CambenchError, match=r"no worker for 0\.5 s \(all killed or stopped\) with 2 unit"):
                list(run)


def test_the_cli_refuses_a_unit_timeout_without_loky_before_any_work(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--unit-timeout", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --backend loky (got --backend sequential)" in err[0]
    assert not (tmp_path / "o" / "run.json").exists()
