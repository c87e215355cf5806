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

from ..perturbation import snap, snap_threshold
from .localization import mask_iou


def object_word_iou(saliency: Tensor, gt_mask: Tensor, object_word: Tensor, threshold: float = 0.5) -> Tensor:
    """Obj-IoU ``[B]``: :func:`mask_iou` on object-word rows (``object_word`` ``[B]`` bool), NaN elsewhere."""
    iou = mask_iou(saliency, gt_mask, threshold)
    return torch.where(object_word.to(iou.device), iou, torch.full_like(iou, float("nan")))


def function_word_iou(saliency: Tensor, function_word: Tensor, threshold: float = 0.5) -> Tensor:
    """Func-IoU ``[B]``: IoU of the predicted background ``s < threshold`` with the whole image on
    function-word rows, NaN elsewhere. The map is compared at the rank resolution (as :func:`mask_iou`)."""
    background = (snap(saliency) < snap_threshold(threshold)).to(saliency.dtype)
    whole = torch.ones_like(saliency, dtype=torch.bool)
    iou = mask_iou(background, whole, 0.5)
    return torch.where(function_word.to(iou.device), iou, torch.full_like(iou, float("nan")))


def f1_rows(obj_iou: Tensor, func_iou: Tensor) -> Tensor:
    """Finite per-token statistics ``[B, 4]`` = ``[Obj-IoU, is object word, Func-IoU, is function word]``
    (0 where a kind does not apply) from the NaN-marked :func:`object_word_iou` / :func:`function_word_iou`."""
    o_ok, f_ok = ~torch.isnan(obj_iou), ~torch.isnan(func_iou)
    zero = torch.zeros_like(obj_iou)
    return torch.stack(
        [
            torch.where(o_ok, obj_iou, zero),
            o_ok.to(obj_iou.dtype),
            torch.where(f_ok, func_iou, zero),
            f_ok.to(obj_iou.dtype),
        ],
        dim=1,
    )


def f1_iou_from_rows(rows: np.ndarray) -> float:
    """F1-IoU of :func:`f1_rows` statistics ``[N, 4]``: the harmonic mean of the mean Obj-IoU over object words
    and the mean Func-IoU over function words (NaN when either kind has no row; 0 when both means are 0)."""
    return float(f1_iou_weighted(rows, np.ones((1, np.asarray(rows).reshape(-1, 4).shape[0])))[0])


def f1_iou_weighted(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`f1_iou_from_rows` of R weighted copies of the rows (``weights [R, N]``, resampling counts), ``[R]``."""
    r = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    sums = np.asarray(weights, dtype=np.float64).reshape(-1, r.shape[0]) @ r  # [R, 4]
    with np.errstate(invalid="ignore", divide="ignore"):
        o = np.where(sums[:, 1] > 0, sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], 1.0), np.nan)
        f = np.where(sums[:, 3] > 0, sums[:, 2] / np.where(sums[:, 3] > 0, sums[:, 3], 1.0), np.nan)
        s = o + f
        return np.where(s > 0, 2 * o * f / np.where(s > 0, s, 1.0), np.where(np.isnan(s), np.nan, 0.0))


__all__ = ["f1_iou_from_rows", "f1_rows", "f1_iou_weighted", "function_word_iou", "object_word_iou"]
