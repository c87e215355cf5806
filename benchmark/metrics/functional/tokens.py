"""TAM's token-level evaluation (Li et al., ICCV 2025, Sec. "Evaluation metrics"), on published maps in [0, 1].

A caption mixes **object words** (a colour or a shape naming a drawn object) and **function words**
(``a``, ``and``, ``<eos>``). TAM scores both:

* **Obj-IoU**: an object word's binarised map ``s >= threshold`` against the object's mask (the mask IoU
  of :func:`benchmark.metrics.functional.localization.mask_iou`);
* **Func-IoU**: a function word names nothing, so its ideal map is empty: the IoU of its predicted
  background ``s < threshold`` with the whole image (the fraction of pixels left unactivated);
* **F1-IoU**: the harmonic mean of the mean Obj-IoU and the mean Func-IoU over the dataset, so that a
  method cannot score by lighting up objects for every word, nor by lighting up nothing.

Rows of the other kind are NaN (undefined), never 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .localization import mask_iou


def object_word_iou(saliency: Tensor, gt_mask: Tensor, object_word: Tensor, threshold: float = 0.5) -> Tensor:
    """Obj-IoU ``[B]``: :func:`mask_iou` on object-word rows (``object_word`` ``[B]`` bool), NaN elsewhere."""
    iou = mask_iou(saliency, gt_mask, threshold)
    return torch.where(object_word.to(iou.device), iou, torch.full_like(iou, float("nan")))


def function_word_iou(saliency: Tensor, function_word: Tensor, threshold: float = 0.5) -> Tensor:
    """Func-IoU ``[B]``: IoU of the predicted background ``s < threshold`` with the whole image on
    function-word rows, NaN elsewhere."""
    background = (saliency < threshold).to(saliency.dtype)
    whole = torch.ones_like(saliency, dtype=torch.bool)
    iou = mask_iou(background, whole, 0.5)
    return torch.where(function_word.to(iou.device), iou, torch.full_like(iou, float("nan")))


def f1_iou_from_rows(rows: np.ndarray) -> float:
    """F1-IoU of per-token rows ``[N, 2]`` = ``[Obj-IoU or NaN, Func-IoU or NaN]``: the harmonic mean of the
    two column means (NaN when either kind has no row; 0 when both means are 0)."""
    r = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    if r.shape[0] == 0 or np.isnan(r[:, 0]).all() or np.isnan(r[:, 1]).all():
        return float("nan")
    o, f = float(np.nanmean(r[:, 0])), float(np.nanmean(r[:, 1]))
    return 0.0 if o + f == 0 else 2 * o * f / (o + f)


def f1_iou_weighted(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`f1_iou_from_rows` of R weighted copies of the rows (``weights [R, N]``, resampling counts), ``[R]``."""
    r = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    w = np.asarray(weights, dtype=np.float64)
    out = []
    for col in range(2):
        ok = ~np.isnan(r[:, col])
        num = w[:, ok] @ r[ok, col]
        den = w[:, ok].sum(axis=1)
        out.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
    o, f = out
    s = o + f
    return np.where(s > 0, 2 * o * f / np.where(s > 0, s, 1.0), np.where(np.isnan(s), np.nan, 0.0))


__all__ = ["f1_iou_from_rows", "f1_iou_weighted", "function_word_iou", "object_word_iou"]
