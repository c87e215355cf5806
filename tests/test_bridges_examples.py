"""The README's bridge examples run: examples/any_quantus_metric.py (numbers equal Quantus called directly) and
examples/quantus_suite.toml (a valid suite whose quantus/ and pgc/ names get leaderboard rows)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from functools import partial
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from benchmark import methods  # noqa: E402
from benchmark.data import create_dataset  # noqa: E402
from benchmark.models import create_model  # noqa: E402
from benchmark.report.build import write_report  # noqa: E402
from benchmark.runner import run_suite  # noqa: E402
from benchmark.runner.suite import load_suite  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("cb_example_quantus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_any_quantus_metric_example_equals_quantus(capsys) -> None:
    scores = _load(EXAMPLES / "any_quantus_metric.py").main(n=4)
    assert "Sparseness" in capsys.readouterr().out
    assert all(v.shape == (4,) for v in scores.values())
    handle = create_model("shapes_cnn", weights="random")
    data = [create_dataset("shapes", n=4)[i] for i in range(4)]
    x = handle.normalize(torch.stack([s.image for s in data]))
    t = torch.tensor([s.target for s in data])
    masks = torch.stack([s.mask for s in data]).numpy()[:, None].astype(np.float32)
    a = methods.get("gradcam")(handle.model, handle.target_layer, x, t).numpy()[:, None]
    kw = dict(model=handle.model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a, device="cpu")
    direct = {
        "Sparseness": quantus.Sparseness(disable_warnings=True)(**kw),
        "EffectiveComplexity": quantus.EffectiveComplexity(eps=0.1, disable_warnings=True)(**kw),
        "RelevanceRankAccuracy": quantus.RelevanceRankAccuracy(disable_warnings=True)(**kw, s_batch=masks),
    }
    for name, ref in direct.items():
        np.testing.assert_allclose(scores[name].numpy(), np.asarray(ref, dtype=np.float32), atol=1e-6)


def test_quantus_suite_example_runs(tmp_path) -> None:
    suite = load_suite(EXAMPLES / "quantus_suite.toml")
    exp = dataclasses.replace(suite.experiments[0], weights="random")  # the test does not train shapes_cnn
    suite = dataclasses.replace(suite, experiments=(exp,), device="cpu", bootstrap=20, gallery=0)
    res = run_suite(suite, tmp_path / "q", quiet=True, report=partial(write_report, plots=False), limit=2)
    lb = res.report.leaderboard
    metrics = [
        "quantus/Sparseness",
        "quantus/Complexity",
        "quantus/RelevanceRankAccuracy",
        "quantus/FaithfulnessCorrelation",
        "quantus/MaxSensitivity",
        "deletion_auc",
    ]
    for method in ("gradcam", "layercam", "pgc/GradCAMPlusPlus"):
        for metric in metrics:
            assert ((lb["method"] == method) & (lb["metric"] == metric)).sum() == 1, (method, metric)
    assert set(res.report.scores["status"]) <= {"ok", "undefined"}
