"""TAM's token-level evaluation (Li et al., ICCV 2025, Sec. "Evaluation metrics"; the authors' ``eval.py``),
on published maps in [0, 1].

A caption mixes **nouns** (here the shape words), other content words (here the colour adjectives) and
**function words** (``a``, ``and``: the paper's determiners and conjunctions). TAM scores two kinds:

* **Obj-IoU**: a noun's map, quantised to 8 bits (``floor(255 s)``, as the authors' maps are ``uint8``) and
  binarised at its own **Otsu threshold** (``q > t``, Otsu 1979), against the named object's mask (IoU);
  only nouns whose object is drawn count;
* **Func-IoU**: a function word names nothing, so its ideal map is empty: the fraction of its pixels below
  ``t_fg``, the mean Otsu threshold of the same image's noun maps (every noun of the caption, also one whose
  object is not drawn); undefined for an image without a noun;
* **F1-IoU**: the harmonic mean of the mean Obj-IoU over all nouns and the mean Func-IoU over all function
  words of the dataset (pooled over images, as the authors average), so that a method cannot score by
  lighting up objects for every word, nor by lighting up nothing.

A numeric ``threshold`` instead of ``"otsu"`` binarises every map at that value (``s >= threshold`` for
Obj-IoU, ``s < threshold`` for Func-IoU). Rows of the other kind are NaN (undefined), never 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from ..perturbation import snap, snap_threshold
from .localization import mask_iou

#: Levels of the authors' 8-bit maps.
LEVELS = 256


def quantize_8bit(saliency: Tensor) -> Tensor:
    """``floor(255 s)`` of maps in [0, 1] (clamped), as float levels 0..255: the authors' ``uint8`` maps. The
    map is first snapped to the rank resolution (:func:`~benchmark.metrics.perturbation.snap`, a multiple of
    2^-16, never on a level edge ``k/255`` inside (0, 1)), so maps within float noise get the same levels."""
    return torch.floor(snap(saliency.clamp(0, 1)) * (LEVELS - 1)).float()


def otsu_threshold(levels: Tensor) -> Tensor:
    """Otsu's threshold ``[B]`` of each map of 8-bit ``levels`` ``[B, ...]`` (values 0..255; Otsu, IEEE SMC
    1979): the level ``t`` maximising the between-class variance of ``{q <= t}`` and ``{q > t}``, the first
    such level on ties, 0 for a constant map (OpenCV's ``THRESH_OTSU``)."""
    q = levels.reshape(levels.shape[0], -1).long().clamp(0, LEVELS - 1)
    hist = torch.zeros(q.shape[0], LEVELS, dtype=torch.float64, device=q.device)
    hist.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float64))
    p = hist / q.shape[1]
    k = torch.arange(LEVELS, dtype=torch.float64, device=q.device)
    w0 = p.cumsum(1)  # weight of {q <= t}
    mu = (p * k).cumsum(1)
    mu_t = mu[:, -1:]
    denom = w0 * (1 - w0)
    between = torch.where(denom > 1e-12, (mu_t * w0 - mu) ** 2 / denom.clamp_min(1e-12), torch.zeros_like(w0))
    best = between.max(dim=1, keepdim=True).values
    first = torch.where(between >= best * (1 - 1e-12), k, torch.full_like(k, float(LEVELS))).min(dim=1).values
    return torch.where(best[:, 0] > 0, first, torch.zeros_like(first))


def _threshold(threshold: float | str) -> float | str:
    """``"otsu"`` or a number in [0, 1]; anything else is an :class:`InputError` naming the choices."""
    if threshold == "otsu":
        return "otsu"
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0.0 <= float(threshold) <= 1.0:
        return float(threshold)
    raise InputError(
        f"TAM's IoU threshold must be \"otsu\" (the authors' evaluation) or a number in [0, 1]; got {threshold!r}."
    )


def object_word_iou(saliency: Tensor, gt_mask: Tensor, object_word: Tensor, threshold: float | str = "otsu") -> Tensor:
    """Obj-IoU ``[B]`` on object-word rows (``object_word`` ``[B]`` bool), NaN elsewhere: the IoU of the map
    binarised at its Otsu threshold (or at ``threshold``) with ``gt_mask``."""
    threshold = _threshold(threshold)
    if threshold == "otsu":
        q = quantize_8bit(saliency)
        pred = (q > otsu_threshold(q).view(-1, *([1] * (q.ndim - 1)))).to(saliency.dtype)
        iou = mask_iou(pred, gt_mask, 0.5)
    else:
        iou = mask_iou(saliency, gt_mask, float(threshold))
    return torch.where(object_word.to(iou.device), iou, torch.full_like(iou, float("nan")))


def noun_threshold(saliency: Tensor, noun: Tensor, image: Tensor) -> Tensor:
    """``t_fg`` ``[B]`` per row: the mean Otsu threshold of the noun rows (``noun`` ``[B]`` bool) of the row's
    image (``image`` ``[B]`` long, rows of one image share it), in 8-bit levels; NaN for an image without one."""
    t = otsu_threshold(quantize_8bit(saliency)).double()
    img = image.long().to(t.device)
    n_img = int(img.max()) + 1 if img.numel() else 0
    nn_ = noun.to(t.device).double()
    total = torch.zeros(n_img, dtype=torch.float64, device=t.device).index_add_(0, img, t * nn_)
    count = torch.zeros(n_img, dtype=torch.float64, device=t.device).index_add_(0, img, nn_)
    mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return mean[img]


def function_word_iou(
    saliency: Tensor,
    function_word: Tensor,
    threshold: float | str = "otsu",
    noun: Tensor | None = None,
    image: Tensor | None = None,
) -> Tensor:
    """Func-IoU ``[B]`` on function-word rows, NaN elsewhere: the fraction of the map's pixels below the
    threshold, the IoU of the predicted background with the whole image. With ``"otsu"`` the threshold is
    :func:`noun_threshold` of the row's image (``noun`` and ``image`` ``[B]``; NaN without a noun), else
    ``s < threshold``."""
    flat = saliency.reshape(saliency.shape[0], -1)
    threshold = _threshold(threshold)
    if threshold == "otsu":
        if noun is None or image is None:
            raise InputError(
                'Func-IoU with threshold "otsu" thresholds each image at the mean Otsu threshold of its nouns: pass '
                "noun= and image= ([B] per row), or a numeric threshold."
            )
        fg = noun_threshold(saliency, noun, image).to(flat.device)
        below = (quantize_8bit(flat).double() < fg[:, None]).double().mean(dim=1)
        iou = torch.where(torch.isnan(fg), fg, below).to(flat.dtype if flat.is_floating_point() else torch.float32)
    else:
        iou = (snap(flat) < snap_threshold(float(threshold))).to(torch.float32).mean(dim=1)
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


__all__ = [
    "f1_iou_from_rows",
    "f1_rows",
    "f1_iou_weighted",
    "function_word_iou",
    "noun_threshold",
    "object_word_iou",
    "otsu_threshold",
    "quantize_8bit",
]
