"""Registry entries of the faithfulness metrics (deletion, insertion, Average Drop, Increase in
Confidence, ROAD).

Each entry scores **all methods of a batch in one engine call**: the M methods' maps are stacked along the
batch (``M*B`` rows) and mapped back to the ``B`` images with ``image_index`` (no image copies), so
steps, images and methods share forward passes. Defaults: docs/metrics.md (RISE for
deletion/insertion, pytorch-grad-cam's percentiles for ROAD).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .base import MetricContext, register_metric
from .functional.faithfulness import (
    ROAD_PERCENTAGES,
    Substrate,
    causal_curves,
    confidence_scores,
    drop_in_confidence,
    rise_blur,
    road_curves,
)
from .perturbation import trapezoid_auc

RISE = "Petsiuk et al., RISE, BMVC 2018"
GRADCAMPP = "Chattopadhyay et al., Grad-CAM++, WACV 2018"
ROAD = "Rong et al., A Consistent and Efficient Evaluation Strategy for Attribution Methods, ICML 2022"
NEEDS = ("saliency",)


def _stacked(ctx: MetricContext) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """Methods, their maps stacked ``[M*B,H,W]``, the image index ``[M*B]`` and targets ``[M*B]``."""
    methods = ctx.methods
    images = ctx.batch.images
    b = images.shape[0]
    if not methods:
        empty = torch.zeros(0, dtype=torch.long)
        return [], images.new_zeros((0, *images.shape[2:])), empty, empty.clone()
    for m in methods:
        if ctx.saliency[m].shape != (b, *images.shape[2:]):
            raise InputError(
                f"Saliency of method {m!r} has shape {tuple(ctx.saliency[m].shape)}; expected "
                f"[B,H,W]={(b, *images.shape[2:])} at the input resolution."
            )
    sal = torch.cat([ctx.saliency[m].to(images.device) for m in methods])
    index = torch.arange(b, device=images.device).repeat(len(methods))
    targets = ctx.batch.targets.to(images.device).long().repeat(len(methods))
    return methods, sal, index, targets


def _split(methods: list[str], values: Tensor) -> dict[str, Tensor]:
    return dict(zip(methods, values.chunk(len(methods)), strict=True)) if methods else {}


def _causal(ctx: MetricContext, name: str, mode: str, substrate: str, **params) -> dict[str, Tensor]:
    methods, sal, index, targets = _stacked(ctx)
    if not methods:
        return {}
    images = ctx.batch.images
    sub: Substrate = substrate
    if substrate == "blur":  # blur the B images once, not once per method
        sub = rise_blur(images, params["blur_klen"], params["blur_sigma"])
    curve = causal_curves(
        ctx.model,
        images,
        targets,
        sal,
        mode=mode,
        substrate=sub,
        image_index=index,
        batch_size=ctx.forward_batch_size,
        **params,
    )
    ctx.curves.setdefault(name, {}).update(_split(methods, curve))
    return _split(methods, trapezoid_auc(curve))


@register_metric("deletion_auc", family="faithfulness", higher_is_better=False, needs=NEEDS, paper=RISE)
def deletion_auc(
    ctx: MetricContext,
    *,
    substrate: str = "zeros",
    step: int | None = 224,
    n_steps: int | None = None,
    score: str = "prob",
    blur_klen: int = 11,
    blur_sigma: float = 5.0,
    rise_ties: bool = False,
) -> dict[str, Tensor]:
    """RISE deletion AUC per image (lower = the map finds what the model needs); curve in ctx.curves.

    ``n_steps`` (when set) replaces ``step``; ``blur_klen``/``blur_sigma``: the blur of ``substrate="blur"``.
    """
    step = None if n_steps is not None else step
    return _causal(
        ctx,
        "deletion_auc",
        "deletion",
        substrate,
        step=step,
        n_steps=n_steps,
        score=score,
        blur_klen=blur_klen,
        blur_sigma=blur_sigma,
        rise_ties=rise_ties,
    )


@register_metric("insertion_auc", family="faithfulness", higher_is_better=True, needs=NEEDS, paper=RISE)
def insertion_auc(
    ctx: MetricContext,
    *,
    substrate: str = "blur",
    step: int | None = 224,
    n_steps: int | None = None,
    score: str = "prob",
    blur_klen: int = 11,
    blur_sigma: float = 5.0,
    rise_ties: bool = False,
) -> dict[str, Tensor]:
    """RISE insertion AUC per image (higher is better), from the blurred image; curve in ctx.curves."""
    step = None if n_steps is not None else step
    return _causal(
        ctx,
        "insertion_auc",
        "insertion",
        substrate,
        step=step,
        n_steps=n_steps,
        score=score,
        blur_klen=blur_klen,
        blur_sigma=blur_sigma,
        rise_ties=rise_ties,
    )


def _confidence(ctx: MetricContext, **params) -> tuple[list[str], Tensor, Tensor]:
    methods, sal, index, targets = _stacked(ctx)
    if not methods:
        return [], torch.zeros(0), torch.zeros(0)
    y, o = confidence_scores(
        ctx.model, ctx.batch.images, targets, sal, image_index=index, batch_size=ctx.forward_batch_size, **params
    )
    return methods, y, o


@register_metric("average_drop", family="faithfulness", higher_is_better=False, needs=NEEDS, paper=GRADCAMPP)
def average_drop(
    ctx: MetricContext, *, score: str = "prob", variant: str = "paper", threshold: float = 0.5, relative: bool = True
) -> dict[str, Tensor]:
    """Per-image ``max(0, Y - O) / Y`` on ``E = x * L`` (mean over images x 100 = Average Drop %)."""
    methods, y, o = _confidence(ctx, score=score, variant=variant, threshold=threshold)
    return _split(methods, drop_in_confidence(y, o, relative=relative, clamp=variant != "cfcam"))


@register_metric("increase_in_confidence", family="faithfulness", higher_is_better=True, needs=NEEDS, paper=GRADCAMPP)
def increase_in_confidence(
    ctx: MetricContext, *, score: str = "prob", variant: str = "paper", threshold: float = 0.5
) -> dict[str, Tensor]:
    """Per-image ``1[Y < O]`` (mean over images x 100 = Increase in Confidence %)."""
    methods, y, o = _confidence(ctx, score=score, variant=variant, threshold=threshold)
    return _split(methods, (y < o).float())


def _road(ctx: MetricContext, name: str, order: str, **params) -> dict[str, Tensor]:
    """ROAD curves of every method, computed once per batch and parameters (road_combined reuses them)."""
    key = ("road", order, tuple(ctx.saliency), repr(sorted(params.items())))
    if key not in ctx.cache:
        ctx.cache[key] = _road_uncached(ctx, order, **params)
    curves = ctx.cache[key]
    ctx.curves.setdefault(name, {}).update(curves)
    return {m: c.mean(dim=1) for m, c in curves.items()}


def _road_uncached(ctx: MetricContext, order: str, **params) -> dict[str, Tensor]:
    methods, sal, index, targets = _stacked(ctx)
    if not methods:
        return {}
    # noise keyed by image id: the same image gets the same draws whatever the method, batch or shard
    keys = torch.tensor([zlib.crc32(str(i).encode()) for i in ctx.batch.ids], dtype=torch.long)
    curve = road_curves(
        ctx.model,
        ctx.batch.images,
        targets,
        sal,
        order=order,
        seed=ctx.seed,
        image_index=index,
        noise_keys=keys[index.cpu()],
        batch_size=ctx.forward_batch_size,
        **params,
    )
    return _split(methods, curve)


# The three ROAD entries take the same parameters: ``percentages`` (removal fractions), ``noise`` (the
# imputation's noise), ``score``, ``count_rule`` and ``imputer``: "cg" (batched conjugate gradient on the run's
# device), "exact" (scipy sparse solve per image) or "auto" (exact on CPU, where it is faster:
# benchmarks/RESULTS.md section 6; cg on accelerators).
@register_metric("road_morf", family="faithfulness", higher_is_better=False, needs=NEEDS, paper=ROAD)
def road_morf(
    ctx: MetricContext,
    *,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    score: str = "prob",
    count_rule: str = "round",
    imputer: str = "cg",
) -> dict[str, Tensor]:
    """ROAD, most relevant first: mean target probability over the removal fractions (lower is better)."""
    return _road(
        ctx,
        "road_morf",
        "morf",
        percentages=percentages,
        noise=noise,
        score=score,
        count_rule=count_rule,
        imputer=imputer,
    )


@register_metric("road_lerf", family="faithfulness", higher_is_better=True, needs=NEEDS, paper=ROAD)
def road_lerf(
    ctx: MetricContext,
    *,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    score: str = "prob",
    count_rule: str = "round",
    imputer: str = "cg",
) -> dict[str, Tensor]:
    """ROAD, least relevant first: mean target probability over the removal fractions (higher is better)."""
    return _road(
        ctx,
        "road_lerf",
        "lerf",
        percentages=percentages,
        noise=noise,
        score=score,
        count_rule=count_rule,
        imputer=imputer,
    )


@register_metric("road_combined", family="faithfulness", higher_is_better=True, needs=NEEDS, paper=ROAD)
def road_combined(
    ctx: MetricContext,
    *,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    score: str = "prob",
    count_rule: str = "round",
    imputer: str = "cg",
) -> dict[str, Tensor]:
    """``(LeRF - MoRF) / 2`` per image (pytorch-grad-cam ``ROADCombined`` on probabilities)."""
    params = dict(percentages=percentages, noise=noise, score=score, count_rule=count_rule, imputer=imputer)
    lerf = _road(ctx, "road_lerf", "lerf", **params)  # cached when road_lerf ran on this batch
    morf = _road(ctx, "road_morf", "morf", **params)
    return {m: (lerf[m] - morf[m]) / 2 for m in lerf}
