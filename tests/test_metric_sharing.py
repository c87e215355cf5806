"""Metrics that need the same re-explanations compute them once per batch (MetricContext.cache)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark import methods
from benchmark.metrics import MetricContext, compute_metrics
from benchmark.types import Batch


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    batch = Batch(images=x, targets=torch.tensor([0, 1]), ids=["a", "b"])
    names = ["gradcam", "layercam"]
    calls: list[tuple] = []

    def explain(m, images, targets, ns, *, gradient_noise=None):
        calls.append((id(m), images.shape[0], gradient_noise is not None))
        return methods.explain(m, "2", images, targets, ns, gradient_noise=gradient_noise)

    sal = methods.explain(model, "2", x, batch.targets, names)
    return MetricContext(model=model, batch=batch, saliency=sal, explain=explain), calls


def test_paired_metrics_share_their_explanations() -> None:
    pairs = [
        ("max_sensitivity", "avg_sensitivity"),
        ("gradient_noise_stability", "gradient_noise_mse"),
        ("model_randomization", "model_randomization_ssim"),
    ]
    params = {
        "max_sensitivity": {"n_samples": 3},
        "avg_sensitivity": {"n_samples": 3},
        "model_randomization": {"max_layers": 2},
        "model_randomization_ssim": {"max_layers": 2},
    }
    for first, second in pairs:
        ctx, calls = _setup()
        one = compute_metrics(ctx, [first], params)
        n_one = len(calls)
        both = compute_metrics(ctx, [second], params)
        assert n_one > 0 and len(calls) == n_one, (first, second, calls)
        # ...and the shared results equal a fresh computation.
        fresh_ctx, _ = _setup()
        fresh = compute_metrics(fresh_ctx, [second], params)
        for m in ctx.saliency:
            torch.testing.assert_close(both[second][m], fresh[second][m], equal_nan=True)
        assert set(one[first]) == set(ctx.saliency)


def test_road_combined_reuses_morf_and_lerf(monkeypatch) -> None:
    from benchmark.metrics import faithfulness

    ctx, _ = _setup()
    calls = []
    real = faithfulness._road_uncached
    monkeypatch.setattr(faithfulness, "_road_uncached", lambda c, o, **p: calls.append(o) or real(c, o, **p))
    params = {k: {"percentages": [0.2, 0.6]} for k in ("road_morf", "road_lerf", "road_combined")}
    res = compute_metrics(ctx, ["road_morf", "road_lerf", "road_combined"], params)
    assert sorted(calls) == ["lerf", "morf"]
    for m in ctx.saliency:
        torch.testing.assert_close(res["road_combined"][m], (res["road_lerf"][m] - res["road_morf"][m]) / 2)
