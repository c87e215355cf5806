"""Token-level metrics of TAM (Li et al., ICCV 2025): Obj-IoU, Func-IoU and their F1 combination.

They read the token view's per-row flags (``Batch.extras``, ``target = "tokens"``):
``function_word`` (the token names no object) and ``has_truth`` (the token is an object word with an
instance mask); they need ``tokens`` (a token batch) and are skipped on any other batch. The pure functions are
:mod:`benchmark.metrics.functional.tokens`; the map-level localization metrics (pointing game, energy
pointing game, mask IoU, PxAP) and deletion / insertion need nothing new: the token view makes the
token's logit an ordinary target, and :func:`benchmark.metrics.base.leave_out_without_truth` turns the
localization values of tokens without a mask into NaN (left out and counted as ``undefined``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import MetricContext, register_metric
from .functional import tokens as F


def token_flags(ctx: MetricContext) -> tuple[Tensor, Tensor]:
    """``(object_word, function_word)`` ``[B]`` bool of the batch's rows (see the module docstring)."""
    extras = ctx.batch.extras or {}
    masks = ctx.batch.masks
    has_mask = masks.flatten(1).any(dim=1) if masks is not None else torch.zeros(len(ctx.batch), dtype=torch.bool)
    if "has_truth" in extras and "function_word" in extras:
        return extras["has_truth"].bool().cpu() & has_mask.cpu(), extras["function_word"].bool().cpu()
    return has_mask.cpu(), torch.zeros(len(ctx.batch), dtype=torch.bool)


@register_metric(
    "tam_obj_iou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks", "tokens"),
    paper="Li et al., ICCV 2025 (TAM, Obj-IoU)",
)
def tam_obj_iou(ctx: MetricContext, threshold: float = 0.5) -> dict[str, Tensor]:
    """Obj-IoU of each object-word token (NaN for other tokens)."""
    obj, _ = token_flags(ctx)
    masks = ctx.batch.masks
    assert masks is not None
    return {m: F.object_word_iou(s, masks.to(s.device), obj, threshold).float().cpu() for m, s in ctx.saliency.items()}


@register_metric(
    "tam_func_iou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks", "tokens"),
    paper="Li et al., ICCV 2025 (TAM, Func-IoU)",
    scores_untruthed=True,
)
def tam_func_iou(ctx: MetricContext, threshold: float = 0.5) -> dict[str, Tensor]:
    """Func-IoU of each function-word token (NaN for other tokens)."""
    _, fn = token_flags(ctx)
    return {m: F.function_word_iou(s, fn, threshold).float().cpu() for m, s in ctx.saliency.items()}


def _f1_compute(stats: np.ndarray, ids: object, threshold: float = 0.5) -> float:
    return F.f1_iou_from_rows(stats)


def _f1_weighted(stats: np.ndarray, weights: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return F.f1_iou_weighted(stats, weights)


@register_metric(
    "tam_f1_iou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks", "tokens"),
    paper="Li et al., ICCV 2025 (TAM, F1-IoU)",
    level="dataset",
    compute=_f1_compute,
    compute_weighted=_f1_weighted,
    scores_untruthed=True,
)
def tam_f1_iou(ctx: MetricContext, threshold: float = 0.5) -> dict[str, Tensor]:
    """Per token the finite statistics ``[Obj-IoU, is object word, Func-IoU, is function word]``
    (:func:`~benchmark.metrics.functional.tokens.f1_rows`); the dataset value is the F1 (harmonic mean) of
    the mean Obj-IoU and the mean Func-IoU."""
    obj, fn = token_flags(ctx)
    masks = ctx.batch.masks
    assert masks is not None
    out = {}
    for m, s in ctx.saliency.items():
        o = F.object_word_iou(s, masks.to(s.device), obj, threshold).double().cpu()
        f = F.function_word_iou(s, fn, threshold).double().cpu()
        out[m] = F.f1_rows(o, f)
    return out


__all__ = ["tam_f1_iou", "tam_func_iou", "tam_obj_iou", "token_flags"]
