"""End-to-end runs of tiny fake suites: rows, skips, targets, explain_fn, curves, gallery, failures,
determinism and in-process resume."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.errors import CambenchError
from benchmark.report.build import write_report
from benchmark.runner import load_suite, plan_run, run_suite, run_unit
from benchmark.runner.execute import batch_seed, clear_caches
from benchmark.store import Store

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return runner_fakes.run_cached(tmp_path_factory.mktemp("runs"))


def test_every_method_metric_image_has_one_ok_row(tiny):
    s = tiny.report.scores
    assert list(s.columns) == [
        "model",
        "dataset",
        "method",
        "metric",
        "image_id",
        "value",
        "status",
        "message",
        "degenerate",
    ]
    e0 = s[s["dataset"] == "fake_shapes"]
    plan = tiny.plan.experiments[0]
    assert len(e0) == len(plan.methods) * 3 * 6
    assert not e0.duplicated(["method", "metric", "image_id"]).any()
    assert (e0["status"] == "ok").all() and np.isfinite(e0["value"]).all()
    # oracle = the mask itself: all of its saliency is inside the mask
    inside = e0[e0["metric"] == "fake_inside"].groupby("method")["value"].mean()
    assert inside["oracle"] == pytest.approx(1.0) and inside.drop("oracle").max() < 1.0


def test_metrics_whose_needs_are_unmet_produce_no_rows_and_are_recorded(tiny):
    s = tiny.report.scores
    plain = s[s["dataset"] == "fake_plain"]
    assert set(plain["metric"]) == {"fake_drop", "fake_noise"}
    assert set(plain["method"]) == {"gradcam", "random"}
    run = json.loads((tiny.out / "run.json").read_text())
    assert "masks" in run["experiments"][1]["skipped"]["fake_inside"]
    assert run["directions"] == {"fake_inside": True, "fake_drop": False, "fake_noise": False}


def test_explain_fn_passes_gradient_noise_to_methods(tiny):
    s = tiny.report.scores
    noise = s[(s["metric"] == "fake_noise") & (s["dataset"] == "fake_shapes")].groupby("method")["value"].max()
    # baselines and gradient-free methods ignore gradient noise; gradient methods change
    for m in ("random", "center", "oracle", "eigencam", "scorecam", "cam"):
        assert noise[m] == 0.0, m
    for m in ("gradcam", "gradcampp", "layercam"):
        assert noise[m] > 0.0, m


def test_predicted_targets_are_the_models_top1(tiny):
    # fake_drop's curve starts on the unmodified image: with target="predicted" its first point is the
    # mean top-1 probability over the images; with target="label" the mean label probability.
    suite = tiny.plan.suite
    handle = runner_fakes.fake_cnn()
    ds = runner_fakes.FakeShapes(n=6, seed=suite.seed)
    imgs = handle.normalize(torch.stack([ds[i].image for i in range(6)]))
    with torch.inference_mode():
        p = handle.model(imgs).softmax(1)
    labels = torch.tensor([ds[i].target for i in range(6)])
    c = tiny.report.curves
    start = c[(c["step"] == 0) & (c["method"] == "gradcam")].set_index("dataset")["value"]
    assert start["fake_plain"] == pytest.approx(p[:4].max(1).values.mean().item(), rel=1e-5)
    assert start["fake_shapes"] == pytest.approx(p.gather(1, labels[:, None]).mean().item(), rel=1e-5)


def test_curves_and_gallery_are_stored(tiny):
    c = tiny.report.curves
    g = c[(c["dataset"] == "fake_shapes") & (c["metric"] == "fake_drop")]
    assert set(g["method"]) == set(tiny.plan.experiments[0].methods)
    assert sorted(g["step"].unique()) == [0, 1, 2, 3, 4] and (g["n"] == 6).all()
    assert g["x"].min() == 0.0 and g["x"].max() == 1.0
    samples = Store(tiny.out, tiny.plan.hash).load_gallery()
    shapes = [s for s in samples if s["experiment"][1] == "fake_shapes"]
    ids = np.concatenate([s["ids"] for s in shapes])
    assert ids.tolist() == ["fake000", "fake001", "fake002"]  # gallery = 3 in the suite
    s0 = shapes[0]
    assert s0["images"].dtype == np.uint8 and s0["images"].shape == (2, 32, 32, 3)
    assert s0["maps"].shape == (2, len(s0["methods"]), 32, 32) and s0["masks"].shape == (2, 32, 32)
    assert np.isfinite(s0["boxes"][:, 0]).all()


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    res = runner_fakes.run_cached(tmp_path, "failures")
    s = res.report.scores
    broken = s[s["method"] == "fake_broken"]
    assert len(broken) == 2 * 5 and (broken["status"] == "error").all()  # 2 metrics x 5 readable images
    assert broken["message"].str.contains("fake_broken always fails").all()
    fail = s[(s["metric"] == "fake_fail") & (s["method"] != "fake_broken")]
    assert (fail["status"] == "error").all() and fail["message"].str.contains("fake_fail always fails").all()
    ok = s[(s["metric"] == "fake_inside") & (s["method"] == "gradcam")]
    assert (ok["status"] == "ok").all() and len(ok) == 5
    const = s[(s["method"] == "fake_constant") & (s["metric"] == "fake_inside")]
    assert const["degenerate"].all() and not s[s["method"] == "gradcam"]["degenerate"].any()
    assert (const["value"] == 0).all()  # degenerate maps are zeros, not NaN
    from benchmark.report.tables import degenerate_counts

    d = degenerate_counts(s)
    assert d[["method", "degenerate_images", "images"]].values.tolist() == [["fake_constant", 5, 5]]
    data = s[s["method"] == "(data)"]
    assert len(data) == 1 and "img_004.png is truncated" in data["message"].iloc[0]
    f = pd.read_csv(res.out / "failures.csv")
    assert {"fake_broken", "(data)"} <= set(f["method"]) and "fake_fail" in set(f["metric"])
    assert "fake_fail" not in set(res.report.leaderboard["metric"])


def test_two_runs_give_identical_score_files(tiny, tmp_path):
    clear_caches()
    again = run_suite(
        load_suite(runner_fakes.SUITES / "tiny.toml"),
        tmp_path / "again",
        quiet=True,
        report=partial(write_report, plots=False),
    )
    assert (tiny.out / "scores.parquet").read_bytes() == (again.out / "scores.parquet").read_bytes()
    assert (tiny.out / "leaderboard.csv").read_text() == (again.out / "leaderboard.csv").read_text()
    assert (tiny.out / "significance.csv").read_text() == (again.out / "significance.csv").read_text()


def test_rerun_resumes_and_other_settings_invalidate_parts(tiny, tmp_path):
    suite = load_suite(runner_fakes.SUITES / "tiny.toml")
    out = tmp_path / "r"
    first = run_suite(suite, out, quiet=True, report=False, limit=2)
    assert len(first.ran) == 2 and first.reused == []  # 1 unit of 2 images per experiment
    second = run_suite(suite, out, quiet=True, report=partial(write_report, plots=False))
    assert sorted(second.reused) == sorted(first.ran) and len(second.ran) == len(second.plan.units) - 2
    pd.testing.assert_frame_equal(second.report.scores, tiny.report.scores)
    msgs = []
    from dataclasses import replace

    third = run_suite(
        replace(suite, seed=4), out, quiet=True, log=msgs.append, limit=2, report=partial(write_report, plots=False)
    )
    assert third.reused == [] and any("kept, not reported" in m for m in msgs)
    n_parts = len(second.plan.units) + len(third.plan.units)
    assert len(list((out / "parts").glob("*.parquet"))) == n_parts and len(third.plan.units) == 2
    assert len(third.unreported) == len(second.plan.units)  # other settings' parts: on disk, not in the tables
    assert set(third.report.scores["image_id"]) == {"fake000", "fake001"}
    fresh = run_suite(replace(suite, seed=4), out, quiet=True, report=False, fresh=True, limit=2)
    assert fresh.reused == []


def test_run_suite_leaves_the_report_to_the_caller(tmp_path):
    """The runner imports no report code: no ``report`` callable, no report files; ``report=True`` (the old
    flag) is refused before any work, saying what to pass instead."""
    suite = load_suite(runner_fakes.SUITES / "tiny.toml")
    res = run_suite(suite, tmp_path / "plain", quiet=True, limit=2)
    assert res.report is None and (tmp_path / "plain" / "run.json").is_file()
    assert not (tmp_path / "plain" / "leaderboard.csv").exists()
    seen = []
    later = run_suite(suite, tmp_path / "plain", quiet=True, limit=2, report=lambda out: seen.append(out) or 7)
    assert seen == [tmp_path / "plain"] and later.report == 7 and later.ran == []
    with pytest.raises(CambenchError, match="takes a callable"):
        run_suite(suite, tmp_path / "flag", quiet=True, report=True)
    assert not (tmp_path / "flag").exists()


def test_run_unit_is_pure_and_seeded_by_unit():
    suite = load_suite(runner_fakes.SUITES / "tiny.toml")
    plan = plan_run(suite)
    unit = plan.units[1]
    a, b = run_unit(suite, unit), run_unit(suite, unit)
    pd.testing.assert_frame_equal(a.scores, b.scores)
    assert set(a.scores["image_id"]) == {"fake002", "fake003"}
    assert batch_seed(3, unit.key, 0) == batch_seed(3, unit.key, 0) != batch_seed(3, plan.units[0].key, 0)
    import pickle

    assert pickle.loads(pickle.dumps(a)).scores.equals(a.scores)  # a worker can send it back


@pytest.mark.parametrize("precision,allowed", [("fp32", False), ("bf16", False), ("tf32", True)])
def test_units_run_with_tf32_only_when_asked(precision, allowed) -> None:
    """``--precision fp32`` is IEEE fp32 on CUDA too (PyTorch's default lets cuDNN use TF32); the flags are
    restored after the unit."""
    import torch

    from benchmark.forward import PRECISIONS
    from benchmark.runner import execute

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    seen = runner_fakes.state_seen_by_a_unit(execute.ExecOptions(precision=precision))  # the public run_unit
    assert seen["tf32"] == (allowed, allowed) and seen["precision"] == PRECISIONS[precision]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_unit_environment_sets_and_restores_the_process_state() -> None:
    import warnings

    import torch

    from benchmark.forward import forward_autocast
    from benchmark.runner.unit import ExecOptions, unit_environment

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    with unit_environment(ExecOptions(precision="bf16", compile=True)) as caught:
        assert isinstance(forward_autocast("cpu"), torch.autocast)
        assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.allow_tf32 is False
        warnings.warn("first", RuntimeWarning, stacklevel=1)
        warnings.warn("first", RuntimeWarning, stacklevel=1)  # "always": both kept, the runner deduplicates
    assert [str(w.message) for w in caught] == ["first", "first"]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) == before
    assert not isinstance(forward_autocast("cpu"), torch.autocast)


def test_warnings_of_methods_are_collected_and_logged_once(tmp_path, recwarn):
    """A method's warning travels with the unit's result (part metadata) and is logged once per run by the
    parent, through ``log`` (silent under --quiet), instead of being printed by Python in every process."""
    from benchmark.runner import parse_suite

    suite = parse_suite(
        f"""
name = "warns"
seed = 0
device = "cpu"
batch_size = 2
shard_size = 2
gallery = 0
bootstrap = 10
plugins = ["{Path(runner_fakes.__file__).resolve()}"]
methods = ["fake_warns", "gradcam"]
metrics = ["fake_inside"]

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 4 }}
""",
        default_name="warns",
    )
    logged: list[str] = []
    res = run_suite(suite, tmp_path, quiet=True, report=False, log=logged.append)
    assert len(res.ran) == 2  # two units, each warns
    mine = [m for m in logged if "fake_warns has something to say" in m]
    assert len(mine) == 1 and mine[0].startswith("cambench: ") and "RuntimeWarning" in mine[0]
    assert not [w for w in recwarn if "fake_warns" in str(w.message)]  # nothing escaped to Python
    from benchmark.store import read_meta

    for part in sorted((tmp_path / "parts").glob("*.parquet")):
        assert any("fake_warns has something to say" in w for w in read_meta(part)["info"]["warnings"])


def test_leaderboard_family_column_is_read_from_run_json(tiny, tmp_path):
    """leaderboard.csv says each metric's family as run.json recorded it, and the report reads the cost
    metrics (out of mean_rank) from there too, not from the live registry."""
    import shutil

    lb = pd.read_csv(tiny.out / "leaderboard.csv", keep_default_na=False)
    run = json.loads((tiny.out / "run.json").read_text())
    assert run["families"] == {"fake_inside": "localization", "fake_drop": "faithfulness", "fake_noise": "robustness"}
    fam = lb.groupby("metric")["family"].agg(set).to_dict()
    assert fam == {**{m: {f} for m, f in run["families"].items()}, "mean_rank": {""}}

    copy = tmp_path / "copy"
    shutil.copytree(tiny.out, copy)
    run["families"]["fake_drop"] = "cost"  # as if the run had recorded fake_drop as a cost metric
    (copy / "run.json").write_text(json.dumps(run))
    rep = write_report(copy, plots=False, html=False)
    board = pd.read_csv(copy / "leaderboard.csv", keep_default_na=False)
    assert set(board.loc[board["metric"] == "fake_drop", "family"]) == {"cost"}

    def mean_rank_n(board):
        return set(board[(board["metric"] == "mean_rank") & (board["dataset"] == "fake_shapes")]["n"])

    assert mean_rank_n(tiny.report.leaderboard) == {3} and mean_rank_n(rep.leaderboard) == {2}  # fake_drop left out
