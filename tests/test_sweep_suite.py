"""suites/sweep-gpu.toml (ImageNet) and its synthetic stand-in load and plan (no run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.errors import SuiteError
from benchmark.runner.execute import plan_run
from benchmark.runner.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_stand_in_plans_every_method_and_metric_at_the_defaults():
    from benchmark.methods import METHODS
    from benchmark.metrics import METRICS

    suite = load_suite(ROOT / "suites" / "sweep-gpu-synthetic.toml")
    plan = plan_run(suite)
    assert len(plan.units) == 1000 // suite.shard_size == 20
    assert sum(u.stop - u.start for u in plan.units) == 1000
    (exp,) = plan.experiments
    assert (exp.model, exp.dataset, exp.n_images) == ("resnet50", "shapes", 1000)
    assert set(exp.metrics) | set(exp.skipped) == set(METRICS.list())  # every metric ...
    only = {n for n in METHODS.list() if METHODS.entry(n).meta.get("architectures")}  # LeGrad, TAM, ...
    assert "legrad" in only and set(exp.methods) == set(METHODS.list()) - only  # ... every method that applies to a CNN
    ex = suite.experiments[0]
    assert ex.metric_params == {} and ex.method_params == {}  # the papers' settings: the registry defaults
    assert exp.metric_params["road_morf"]["percentages"] == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert exp.metric_params["road_morf"]["imputer"] == "cg"
    assert suite.experiments[0].data == {"n": 1000, "split": "test", "image_size": 224}


def test_sweep_imagenet_suite_matches_the_stand_in_and_asks_for_imagenet(monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    real = load_suite(ROOT / "suites" / "sweep-gpu.toml")
    stand_in = load_suite(ROOT / "suites" / "sweep-gpu-synthetic.toml")
    for key in ("batch_size", "shard_size", "forward_batch_size"):
        assert getattr(real, key) == getattr(stand_in, key), key
    for key in ("methods", "metrics", "reexplain_methods", "method_params", "metric_params"):
        assert getattr(real.experiments[0], key) == getattr(stand_in.experiments[0], key), key
    (exp,) = real.experiments
    assert (exp.model, exp.dataset, exp.data["n"]) == ("resnet50", "imagenet", 1000)
    with pytest.raises(SuiteError, match="IMAGENET_ROOT"):
        plan_run(real)
