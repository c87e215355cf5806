"""Registry entries of the sanity checks (functional forms in ``functional/sanity.py``).

Lower similarity is better: a faithful map changes when the model's weights are randomised. Baseline
methods (random, center, oracle) do not read the model, so they are not re-explained: their randomised
map is their map (Spearman 1, or NaN for a constant map; SSIM 1). The Spearman similarity is
absolute (``|rho|``; ``signed = true`` for Adebayo et al.'s signed rho), and the default is the full
cascade (every layer with parameters), as Adebayo et al. report: suites should not set ``max_layers``
(the full cascade costs one explanation, the same as a partial one).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .base import MetricContext, register_metric
from .functional import sanity as F


def _count_undefined(name: str, out: dict[str, Tensor]) -> None:
    """Say how many similarities are NaN (a constant map before or after randomisation): they are
    'undefined' rows, left out of the mean, and the run's log and the part's metadata say so."""
    for m, v in out.items():
        bad = int(torch.isnan(v).sum())
        if bad:
            warnings.warn(
                f"{name}: {bad} of {v.numel()} similarities of {m!r} are undefined (NaN: the map is constant "
                "before or after randomisation); those images are left out of its mean (status 'undefined').",
                RuntimeWarning,
                stacklevel=3,
            )


def _mprt(
    ctx: MetricContext, similarity: str, layer_order: str, seed: int, max_layers: int | None, signed: bool = False
):
    base = [m for m in ctx.saliency if ctx.is_baseline(m)]
    live = [m for m in ctx.saliency if m not in base]
    out = {m: F.map_similarity(ctx.saliency[m], ctx.saliency[m], similarity, signed=signed) for m in base}
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

        out.update(
            F.model_randomization(
                ctx.model,
                explain,
                ctx.batch.images,
                ctx.batch.targets,
                live,
                layer_order=layer_order,
                seed=seed,
                similarity=similarity,
                max_layers=max_layers,
                reference={m: ctx.saliency[m] for m in live},
                signed=signed,
            )
        )
    res = {m: out[m] for m in ctx.saliency}
    _count_undefined(f"model_randomization ({similarity})", res)
    return res


@register_metric(
    "model_randomization",
    family="sanity",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="Adebayo et al. 2018 (Quantus MPRT, |Spearman| after the full cascade)",
)
def model_randomization(
    ctx: MetricContext,
    layer_order: str = "top_down",
    seed: int = 42,
    max_layers: int | None = None,
    signed: bool = False,
) -> dict[str, Tensor]:
    """``|rho|`` (Spearman) of each map with its map after randomising the whole cascade (``max_layers``:
    only the top ones); ``signed=True``: Adebayo et al.'s signed rho (the choice:
    ``functional.sanity.model_randomization``). NaN similarities are counted in a warning."""
    return _mprt(ctx, "spearman", layer_order, seed, max_layers, signed)


@register_metric(
    "model_randomization_ssim",
    family="sanity",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="Adebayo et al. 2018 (SSIM after the full cascade)",
)
def model_randomization_ssim(
    ctx: MetricContext, layer_order: str = "top_down", seed: int = 42, max_layers: int | None = None
) -> dict[str, Tensor]:
    return _mprt(ctx, "ssim", layer_order, seed, max_layers)
