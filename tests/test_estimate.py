"""Cost before running (issue 29): forwards per image, the one-image probe, the plan summary and its warning,
the defaults of a suite that sets neither ``methods`` nor ``shard_size``, and the progress inside a unit."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch

import benchmark.runner.estimate as estimate
from benchmark import cli
from benchmark.errors import CambenchError
from benchmark.methods import METHODS, register_method
from benchmark.methods.contract import _check_model
from benchmark.progress import activity_text, note_step, note_unit, worker_heartbeat
from benchmark.runner.estimate import (
    ExperimentEstimate,
    count_forwards,
    estimate_plan,
    estimate_text,
    quiet_line,
    warning_text,
)
from benchmark.runner.suite import SUITE_DEFAULTS, load_suite, parse_suite

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

EXPENSIVE = {"scorecam", "sscam", "iscam", "ablationcam"}


def test_count_forwards_known_answers():
    import benchmark.methods  # noqa: F401  (registers the built-ins)

    model, layer, _ = _check_model(False, 0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    acts = model.features(x)  # [2, 8, 16, 16]: Score-CAM masks the input once per channel with a live map
    live = int(((acts.amax(dim=(-2, -1)) - acts.amin(dim=(-2, -1))) > 0).sum()) / 2
    fw = count_forwards(model, layer, x, torch.tensor([0, 1]), ["gradcam", "scorecam", "random", "oracle"])
    assert fw["gradcam"] == 1.0  # one capture (forward + backward) per image
    assert fw["scorecam"] == 1.0 + live  # the capture, then one forward per live channel
    assert fw["random"] == 0.0  # a baseline reads no model
    assert fw["oracle"] != fw["oracle"]  # NaN: the oracle refuses an input without ground truth (InputError)
    masks = torch.zeros(2, 32, 32)
    assert count_forwards(model, layer, x, torch.tensor([0, 1]), ["oracle"], masks=masks)["oracle"] == 0.0


def test_count_forwards_names_a_method_that_breaks_instead_of_hiding_it():
    model, layer, _ = _check_model(False, 0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    @register_method("_broken_for_count", family="gradient")
    def broken(ctx):  # a bug, not a refusal: must not become a silent NaN
        raise ZeroDivisionError("oops")

    try:
        with pytest.raises(CambenchError, match=r"'_broken_for_count' failed .*ZeroDivisionError: oops"):
            count_forwards(model, layer, x, torch.tensor([0]), ["gradcam", "_broken_for_count"])
    finally:
        METHODS.remove("_broken_for_count")


def test_expensive_methods_are_registered_as_such_and_a_bad_cost_is_refused():
    import benchmark.methods  # noqa: F401

    expensive = {m for m in METHODS.list() if METHODS.entry(m).meta.get("cost") == "expensive"}
    assert expensive == EXPENSIVE
    assert METHODS.entry("gradcam").meta["cost"] == "cheap"
    with pytest.raises(CambenchError, match="expected one of"):
        register_method("_bad_cost", family="gradient", cost="pricey")(lambda ctx: ctx.images)
    assert "_bad_cost" not in METHODS


def _est(label, n, explain, metric, factor=1.0):
    return ExperimentEstimate(label, "d", n, max(1, n // 4), explain, metric, forwards=10.0, factor=factor)


def test_shares_warning_and_quiet_line():
    cheap = _est("m", 100, {"gradcam": 0.005, "random": 0.0}, {("gradcam", "deletion_auc"): 0.005})
    costly = _est(
        "m2",
        100,
        {"gradcam": 0.01, "scorecam": 5.0},
        {("gradcam", "deletion_auc"): 0.1, ("scorecam", "deletion_auc"): 0.1, ("scorecam", "avg_sensitivity"): 0.8},
    )
    assert cheap.seconds == pytest.approx(1.0)
    assert costly.by_method()["scorecam"] == pytest.approx(100 * 5.9)
    assert costly.by_metric()["deletion_auc"] == pytest.approx(100 * 0.2)
    meta = _est("m3", 10, {"gradcam": 1.0}, {}, factor=7.0)  # the meta-evaluation's 1 + 2K with K = 3
    assert meta.seconds == pytest.approx(70.0)
    text = estimate_text([cheap, costly])
    assert "m2 on d: 100 images in 25 unit(s) x 6 s/image" in text and "~ 10 min" in text
    assert (
        "most: methods scorecam 98%, gradcam 2%; metrics avg_sensitivity 13%, deletion_auc 3%" in text
        and text.splitlines()[-1].startswith("  total ~ 10 min")
    )
    warn = warning_text([cheap, costly], warn_minutes=5)
    assert warn is not None and "over --warn-minutes 5" in warn
    assert "methods scorecam (98%)" in warn and "metrics avg_sensitivity (13%)" in warn
    assert "Expensive methods in this run: scorecam" in warn and "`methods = [" in warn and "`metrics = [" in warn
    assert warning_text([cheap, costly], warn_minutes=11) is None
    assert quiet_line([cheap], 5) == "cambench: estimate ~ 1 s for 100 images in 25 unit(s)"
    assert "(over --warn-minutes 5; most: scorecam" in quiet_line([cheap, costly], 5)


def test_probe_times_every_method_and_metric_on_the_real_plan():
    from benchmark.runner import plan_run

    plan = plan_run(load_suite(runner_fakes.SUITES / "tiny.toml"))
    (small, plain) = estimate_plan(plan, "cpu", min_images=5)  # 6 and 4 images: only the first is probed
    assert small.probed and not plain.probed
    assert "not probed (small: a probe would be a visible part of them): fake_cnn on fake_plain (4)" in estimate_text(
        [small, plain]
    )
    assert estimate_text([plain]).endswith(
        f"each experiment is small (under {estimate.PROBE_MIN_IMAGES} images): no cost probe."
    )
    assert quiet_line([plain]) == "cambench: plan: 4 images in 2 unit(s); each experiment is small: no cost probe"
    ep = plan.experiments[0]
    assert set(small.explain_s) == set(ep.methods) and all(v >= 0 for v in small.explain_s.values())
    ran = {m for m, _ in small.metric_s}
    assert {k for _, k in small.metric_s} == set(ep.metrics) and "gradcam" in ran
    # forwards per image: the shared capture, Score-CAM's channels, and the metrics' perturbations
    assert small.forwards > 8 and small.seconds == pytest.approx(6 * small.seconds_per_image)
    assert activity_text() == ""  # the probe leaves no stale activity behind


def test_activity_and_the_worker_heartbeat():
    note_unit("u1", 3, 8)
    note_step("explain scorecam")
    assert re.fullmatch(r"unit u1: 3/8 images, explain scorecam for 0:0\d", activity_text())
    out = io.StringIO()
    with worker_heartbeat(0.02, out):
        import time

        time.sleep(0.15)
    note_unit("")
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and re.match(r"cambench: worker \d+: unit u1: 3/8 images, explain scorecam", lines[0])
    assert activity_text() == ""


def test_the_sequential_watchdog_names_the_method_running_inside_a_unit():
    from benchmark.runner.progress import Progress

    lines: list[str] = []
    with Progress(log=lines.append, heartbeat_s=60, stall_s=600) as p:
        p.start(2, 8, ["u0", "u1"])
        p.stop()  # no watchdog thread: drive check() by hand
        note_unit("u0", 2, 4)
        note_step("metric deletion_auc")
        p.check(p._last_line + 61)
        note_unit("")
    assert lines[-1].startswith("cambench: running unit u0: 2/4 images, metric deletion_auc for ")
    assert "; in all: 0/8 images, 0/2 units" in lines[-1]


def test_suite_defaults_shard_size_and_cheap_methods():
    assert SUITE_DEFAULTS["shard_size"] == 4 and SUITE_DEFAULTS["methods"] == "default"
    s = parse_suite('name = "x"\n[[experiments]]\nmodel = "shapes_cnn"\ndataset = "shapes"\n')
    assert s.shard_size == 4 and s.experiments[0].methods == "default"
    assert (
        parse_suite('name = "x"\nmethods = "all"\n[[experiments]]\nmodel = "m"\ndataset = "d"\n').experiments[0].methods
        == "all"
    )


CUSTOM = """
name = "custom"
seed = 1
device = "cpu"
batch_size = 2
plugins = ["{fakes}"]
metrics = ["fake_inside", "fake_drop"]

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 8 }}
"""


@pytest.fixture
def custom(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "PROBE_MIN_IMAGES", 1)  # the test's 8 images are probed
    path = tmp_path / "custom.toml"
    path.write_text(CUSTOM.format(fakes=runner_fakes.__file__))
    return path


def test_cli_custom_suite_states_its_estimate_before_the_first_unit(custom, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["run", str(custom), "--out", str(out), "--no-plots", "--warn-minutes", "0"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err.splitlines()
    plan = next(i for i, x in enumerate(err) if x.startswith("cambench: plan: 1 experiment(s), 2 unit(s), 8 image(s)"))
    first_unit = next(i for i, x in enumerate(err) if x.startswith("cambench: unit 1/2 done"))
    assert plan < first_unit
    assert re.match(r"  fake_cnn on fake_shapes: 8 images in 2 unit\(s\) x .* s/image", err[plan + 1])
    warn = next(i for i, x in enumerate(err) if x.startswith("cambench: warning: this run is estimated at"))
    assert plan < warn < first_unit and "over --warn-minutes 0" in err[warn]
    note = next(x for x in err if x.startswith("cambench: the suite names no methods"))
    assert all(m in note for m in ("scorecam", "ablationcam")) and '`methods = "all"`' in note
    run = json.loads((out / "run.json").read_text())
    assert run["shard_size"] == 4 and len(run["units"]) == 2  # the default shard size: 8 images, 2 units
    methods = set(run["experiments"][0]["methods"])
    assert "gradcam" in methods and "random" in methods and not methods & EXPENSIVE


def test_cli_quiet_keeps_one_line_and_warn_minutes_is_checked(custom, tmp_path, capsys):
    args = ["run", str(custom), "--out", str(tmp_path / "q"), "--no-plots", "--quiet", "--warn-minutes", "0"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert [x for x in err if x.startswith("cambench:")] == [next(x for x in err if "estimate ~" in x)]
    assert "(over --warn-minutes 0; most:" in err[0]
    assert cli.main(["run", str(custom), "--out", str(tmp_path / "w"), "--warn-minutes", "-1"]) == 2
    assert "--warn-minutes must be" in capsys.readouterr().err


def test_cli_estimate_prints_the_plan_cost_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    suite = str(runner_fakes.SUITES / "tiny.toml")
    assert cli.main(["run", suite, "--out", str(out), "--estimate", "--limit", "3"]) == 0
    cap = capsys.readouterr()
    text = cap.out
    assert "cambench: plan: 2 experiment(s)" in text and "fake_cnn on fake_shapes: 3 images in 2 unit(s) x" in text
    assert "total ~" in text and "not probed" not in text  # --estimate probes every experiment
    assert not (out / "parts").exists()
    # n = 3 cannot separate any pair of the suite's methods: said before any work
    assert "has n = 3 images for" in cap.err and "no pair of methods can differ significantly" in cap.err


def test_a_worker_writes_its_own_progress_line_while_its_unit_runs(capsys):
    """parallel._work (what a loky/dask worker runs) wraps the unit in worker_heartbeat(options.heartbeat_s)."""
    import time
    from types import SimpleNamespace

    from benchmark.runner.parallel import _work
    from benchmark.runner.unit import ExecOptions

    def unit_fn(suite, unit, options=None):
        note_unit(unit.key, 1, 4)
        note_step("metric deletion_auc")
        time.sleep(0.3)
        note_unit("")
        return SimpleNamespace(key=unit.key, logs=[])

    suite = SimpleNamespace(plugins=(), device="cpu")
    _work(suite, SimpleNamespace(key="u9"), ExecOptions(heartbeat_s=0.05), (), "t", unit_fn, lambda plugins: None)
    err = capsys.readouterr().err
    assert re.search(r"cambench: worker \d+: unit u9: 1/4 images, metric deletion_auc for 0:00", err)
    _work(suite, SimpleNamespace(key="u8"), ExecOptions(), (), "t", unit_fn, lambda plugins: None)
    assert "u8" not in capsys.readouterr().err  # no heartbeat_s (the sequential backend, or bars): no line


def test_the_probe_changes_no_score(tmp_path, monkeypatch):
    """The probe runs the real methods and metrics in the run's process before its units (seeding torch): every
    score of a run with it equals the run without it, bit for bit."""
    from functools import partial

    import pandas as pd

    from benchmark.report.build import write_report
    from benchmark.runner import run_suite

    monkeypatch.setattr(estimate, "PROBE_MIN_IMAGES", 1)
    suite = load_suite(runner_fakes.SUITES / "tiny.toml")
    lines: list[str] = []
    report = partial(write_report, plots=False)
    a = run_suite(suite, tmp_path / "with", report=report, log=lines.append, warn_minutes=10.0).report.scores
    b = run_suite(suite, tmp_path / "without", report=report, log=lines.append).report.scores
    assert sum(x.startswith("cambench: plan: 2 experiment(s)") for x in lines) == 1  # the first run only
    keys = ["model", "dataset", "method", "metric", "image_id"]
    a, b = (x.sort_values(keys).reset_index(drop=True) for x in (a, b))
    assert len(a) > 100 and a["value"].notna().sum() > 100
    pd.testing.assert_frame_equal(a, b)


def test_no_shipped_suite_relies_on_the_new_defaults():
    """shard_size (batch seeds follow unit keys) and methods changed defaults: every shipped suite sets both, so
    none of their numbers moves (suites/ and benchmark/suites/ are identical: tests/test_runner_suite.py)."""
    import tomllib

    from benchmark.runner.suite import packaged_suites

    for name, text in packaged_suites().items():
        raw = tomllib.loads(text)
        assert "shard_size" in raw, name
        suite = parse_suite(text, default_name=name)
        assert all(e.methods != "default" for e in suite.experiments), name
