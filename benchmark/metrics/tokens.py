"""Token-level metrics of TAM (Li et al., ICCV 2025): Obj-IoU, Func-IoU and their F1 combination, as the
authors' evaluation defines them (:mod:`benchmark.metrics.functional.tokens`; docs/tokens.md says where
cambench's setting differs).

They read the token view's per-row extras (``Batch.extras``, ``target = "tokens"``): ``token`` (the token
id: shape words are the nouns, ``a`` / ``and`` the function words; colour adjectives and ``<eos>`` are
neither, as in the authors' part-of-speech split), ``has_truth`` (the word names a drawn object, whose
instance mask is the row's mask) and ``image`` (rows of one image share the Func-IoU threshold). A token
batch without ``token`` falls back to ``has_truth`` rows as nouns and ``function_word`` rows as function
words, one image. They need ``tokens`` (a token batch) and are skipped on any other batch. The map-level
localization metrics (pointing game, energy pointing game, mask IoU, PxAP) and deletion / insertion need
nothing new: the token view makes the token's logit an ordinary target, and
:func:`benchmark.metrics.base.leave_out_without_truth` turns the localization values of tokens without a
mask into NaN (left out and counted as ``undefined``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.captions import FUNCTION_WORDS, TOKEN_ID
from ..data.synthetic import SHAPE_CLASSES
from .base import MetricContext, register_metric
from .functional import tokens as F

_NOUN_IDS = torch.tensor([TOKEN_ID[w] for w in SHAPE_CLASSES])
_FUNCTION_IDS = torch.tensor([TOKEN_ID[w] for w in FUNCTION_WORDS])


def token_roles(ctx: MetricContext) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(object_noun, noun, function_word, image)`` ``[B]`` of the batch's rows: the nouns Obj-IoU scores (a
    noun naming a drawn object, with a mask), every noun (they set the image's Func-IoU threshold), the
    function words Func-IoU scores, and each row's image index (see the module docstring)."""
    extras = ctx.batch.extras or {}
    masks = ctx.batch.masks
    n = len(ctx.batch)
    has_mask = masks.flatten(1).any(dim=1).cpu() if masks is not None else torch.zeros(n, dtype=torch.bool)
    truth = extras["has_truth"].bool().cpu() if "has_truth" in extras else has_mask
    image = extras["image"].long().cpu() if "image" in extras else torch.zeros(n, dtype=torch.long)
    if "token" in extras:
        tok = extras["token"].long().cpu()
        noun, func = torch.isin(tok, _NOUN_IDS), torch.isin(tok, _FUNCTION_IDS)
    else:
        noun = truth & has_mask
        func = extras["function_word"].bool().cpu() if "function_word" in extras else torch.zeros(n, dtype=torch.bool)
    return noun & truth & has_mask, noun, func, image


def _obj(ctx: MetricContext, s: Tensor, threshold: float | str) -> Tensor:
    obj, _, _, _ = token_roles(ctx)
    masks = ctx.batch.masks
    assert masks is not None
    return F.object_word_iou(s, masks.to(s.device), obj, threshold)


def _func(ctx: MetricContext, s: Tensor, threshold: float | str) -> Tensor:
    _, noun, fn, image = token_roles(ctx)
    return F.function_word_iou(s, fn, threshold, noun=noun, image=image)


@register_metric(
    "tam_obj_iou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks", "tokens"),
    paper="Li et al., ICCV 2025 (TAM, Obj-IoU)",
)
def tam_obj_iou(ctx: MetricContext, threshold: float | str = "otsu") -> dict[str, Tensor]:
    """Obj-IoU of each noun naming a drawn object (NaN for other tokens); ``threshold``: ``"otsu"`` (the
    paper's, per map) or a number in [0, 1]."""
    return {m: _obj(ctx, s, threshold).float().cpu() for m, s in ctx.saliency.items()}


@register_metric(
    "tam_func_iou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks", "tokens"),
    paper="Li et al., ICCV 2025 (TAM, Func-IoU)",
    scores_untruthed=True,
)
def tam_func_iou(ctx: MetricContext, threshold: float | str = "otsu") -> dict[str, Tensor]:
    """Func-IoU of each function word (NaN for other tokens); ``"otsu"``: below the mean Otsu threshold of
    the image's nouns (the paper's), or a number in [0, 1]."""
    return {m: _func(ctx, s, threshold).float().cpu() for m, s in ctx.saliency.items()}


def _f1_compute(stats: np.ndarray, ids: object, threshold: float | str = "otsu") -> float:
    return F.f1_iou_from_rows(stats)


def _f1_weighted(stats: np.ndarray, weights: np.ndarray, threshold: float | str = "otsu") -> np.ndarray:
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
def tam_f1_iou(ctx: MetricContext, threshold: float | str = "otsu") -> dict[str, Tensor]:
    """Per token the finite statistics ``[Obj-IoU, is scored noun, Func-IoU, is scored function word]``
    (:func:`~benchmark.metrics.functional.tokens.f1_rows`); the dataset value is the F1 (harmonic mean) of
    the mean Obj-IoU and the mean Func-IoU."""
    return {
        m: F.f1_rows(_obj(ctx, s, threshold).double().cpu(), _func(ctx, s, threshold).double().cpu())
        for m, s in ctx.saliency.items()
    }


__all__ = ["tam_f1_iou", "tam_func_iou", "tam_obj_iou", "token_roles"]
