"""Registry entries of the sanity checks (functional forms in ``functional/sanity.py``).

Lower similarity is better: a faithful map changes when the model's weights are randomised. Baseline
methods (random, center, oracle) do not read the model, so they are not re-explained: their randomised
map is their map (Spearman 1, or NaN for a constant map; SSIM 1).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..methods import METHODS
from .base import MetricContext, register_metric
from .functional import sanity as F

_DEFAULTS = {"layer_order": "top_down", "seed": 42, "max_layers": None}


def _mprt(ctx: MetricContext, similarity: str, layer_order: str, seed: int, max_layers: Optional[int]):
    base = [m for m in ctx.saliency if m in METHODS and METHODS.entry(m).meta.get("family") == "baseline"]
    live = [m for m in ctx.saliency if m not in base]
    out = {m: F.map_similarity(ctx.saliency[m], ctx.saliency[m], similarity) for m in base}
    if live:
        key = ("model_randomization", layer_order, seed, max_layers, tuple(live))
        fn = ctx.explain
        assert fn is not None  # needs="explainer"

        def explain(model, images, targets, names, **kw):
            # The full cascade is explained once; both similarities (Spearman, SSIM) reuse its maps.
            if model is ctx.model:
                return fn(model, images, targets, names, **kw)
            if key not in ctx.cache:
                ctx.cache[key] = fn(model, images, targets, names, **kw)
            return ctx.cache[key]

        out.update(F.model_randomization(
            ctx.model, explain, ctx.batch.images, ctx.batch.targets, live, layer_order=layer_order,
            seed=seed, similarity=similarity, max_layers=max_layers,
            reference={m: ctx.saliency[m] for m in live},
        ))
    return {m: out[m] for m in ctx.saliency}


@register_metric(
    "model_randomization", family="sanity", higher_is_better=False, needs=("saliency", "explainer"),
    defaults=_DEFAULTS, paper="Adebayo et al. 2018 (Quantus MPRT, Spearman after the full cascade)",
)
def model_randomization(ctx: MetricContext, layer_order: str = "top_down", seed: int = 42,
                        max_layers: Optional[int] = None) -> dict[str, Tensor]:
    return _mprt(ctx, "spearman", layer_order, seed, max_layers)


@register_metric(
    "model_randomization_ssim", family="sanity", higher_is_better=False,
    needs=("saliency", "explainer"), defaults=_DEFAULTS,
    paper="Adebayo et al. 2018 (SSIM after the full cascade)",
)
def model_randomization_ssim(ctx: MetricContext, layer_order: str = "top_down", seed: int = 42,
                             max_layers: Optional[int] = None) -> dict[str, Tensor]:
    return _mprt(ctx, "ssim", layer_order, seed, max_layers)
