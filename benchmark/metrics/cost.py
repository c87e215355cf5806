"""Registry entries of the cost metrics (functional forms in ``functional/cost.py``)."""

from __future__ import annotations

from torch import Tensor

from .base import MetricContext, register_metric
from .functional import cost as F


@register_metric(
    "latency_ms",
    family="cost",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="median wall-clock ms per image, method alone",
)
def latency_ms(ctx: MetricContext, warmup: int = 1, repeats: int = 3) -> dict[str, Tensor]:
    b = ctx.batch
    assert ctx.explain is not None  # needs="explainer"
    return {m: F.latency_ms(ctx.explain, ctx.model, b.images, b.targets, m, warmup, repeats) for m in ctx.saliency}


@register_metric(
    "peak_memory_mb",
    family="cost",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="peak extra CUDA memory of the batch (NaN on CPU)",
)
def peak_memory_mb(ctx: MetricContext) -> dict[str, Tensor]:
    b = ctx.batch
    assert ctx.explain is not None  # needs="explainer"
    return {m: F.peak_memory_mb(ctx.explain, ctx.model, b.images, b.targets, m) for m in ctx.saliency}
