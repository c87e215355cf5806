"""Test-only metrics with known meta-evaluation answers (tests/test_meta_evaluation.py).

- ``fake_pixel_mean``: the mean pixel of the image; it reads neither the model nor the maps, so every
  perturbation leaves it unchanged: IAC_NR = IEC_NR = 1 (NR = 1), IAC_AR = IEC_AR = 0 (AR = 0).
- ``fake_logit``: the model's logit of the target class (the same for every method): it moves with the model.
"""

from __future__ import annotations

from torch import Tensor

from benchmark.metrics import MetricContext, register_metric


@register_metric("fake_pixel_mean", family="faithfulness", higher_is_better=True, needs=("saliency",), override=True)
def fake_pixel_mean(ctx: MetricContext) -> dict[str, Tensor]:
    v = ctx.batch.images.float().mean((1, 2, 3))
    return {n: v.clone() for n in ctx.saliency}


@register_metric("fake_logit", family="faithfulness", higher_is_better=True, needs=("saliency", "model"), override=True)
def fake_logit(ctx: MetricContext) -> dict[str, Tensor]:
    v = ctx.model(ctx.batch.images).gather(1, ctx.batch.targets[:, None]).squeeze(1).detach()
    return {n: v.clone() for n in ctx.saliency}
