"""Weakly-supervised semantic segmentation (WSSS) seeds from CAMs, and their mIoU.

The protocol of the WSSS literature (e.g. SEAM, CVPR 2020; IRN, CVPR 2019; ToCo, CVPR 2023): for each
image, the CAM of every class present in the image is min-max normalised on its own; a constant
background score ``threshold`` competes with them; the pseudo mask (the *seed*) is the argmax over
background and the present classes. Seeds are scored by the mean intersection-over-union of one
confusion matrix accumulated over the whole dataset (PASCAL VOC: 21 classes, void = 255 ignored).

All functions are batched tensor code (no Python loop over pixels); see ``docs/wsss.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...errors import InputError

__all__ = [
    "miou_from_confusion",
    "seed_labels",
    "seed_statistics",
    "segmentation_confusion",
    "statistics_from_confusion",
]


def _normalise_present(cams: Tensor, present: Tensor) -> Tensor:
    """Per-image, per-class min-max of ``cams`` ``[B,K,H,W]``; absent classes become ``-inf``."""
    flat = cams.float().flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    span = flat.max(dim=2).values[..., None, None] - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    norm = torch.where(span > 0, (cams.float() - lo) / safe, torch.zeros_like(cams, dtype=torch.float32))
    return torch.where(present[..., None, None], norm, torch.full_like(norm, float("-inf")))


def seed_labels(cams: Tensor, present: Tensor, threshold: float) -> Tensor:
    """Pseudo masks ``[B,H,W]`` long from class maps ``cams`` ``[B,K,H,W]`` and image labels ``present``.

    ``0`` = background, ``k + 1`` = class ``k``. Each present class's map is min-max normalised per
    image (a constant map becomes zeros); a pixel is background when the best present class scores
    strictly below ``threshold``, otherwise it takes the best present class (lowest index on ties).
    Absent classes are never predicted; an image with no present class is all background.
    """
    if cams.ndim != 4:
        raise InputError(f"cams must be [B,K,H,W]; got shape {tuple(cams.shape)}.")
    present = torch.as_tensor(present, dtype=torch.bool, device=cams.device)
    if present.shape != cams.shape[:2]:
        raise InputError(f"present must be [B,K]={tuple(cams.shape[:2])}; got shape {tuple(present.shape)}.")
    norm = _normalise_present(cams, present)
    best, arg = norm.max(dim=1)
    return torch.where(best.double() >= float(threshold), arg + 1, torch.zeros_like(arg))  # float64: exact threshold


def segmentation_confusion(pred: Tensor, gt: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Confusion matrix ``[C,C]`` (int64; rows = ground truth, columns = prediction) of label maps.

    Pixels whose ground truth is ``ignore_index`` (or outside ``0..C-1``) are left out; a prediction
    outside ``0..C-1`` raises (it would be a bug upstream, not a property of the data).
    """
    c = int(num_classes)
    pred, gt = pred.reshape(-1).long(), gt.reshape(-1).long()
    if pred.shape != gt.shape:
        raise InputError(f"pred and gt must have the same number of pixels; got {pred.numel()} and {gt.numel()}.")
    keep = (gt != int(ignore_index)) & (gt >= 0) & (gt < c)
    pred, gt = pred[keep], gt[keep]
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
        raise InputError(f"pred holds labels outside 0..{c - 1} (min {int(pred.min())}, max {int(pred.max())}).")
    return torch.bincount(gt * c + pred, minlength=c * c).reshape(c, c)


def miou_from_confusion(conf: Tensor) -> tuple[Tensor, Tensor]:
    """``(miou, iou[C])`` from a confusion matrix (rows ground truth, columns prediction).

    ``IoU_c = TP_c / (GT_c + PRED_c - TP_c)``; a class absent from both ground truth and prediction has
    ``NaN`` IoU and is left out of the mean (``miou`` is NaN when every class is absent).
    """
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(1) + conf.sum(0) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1e-300), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    miou = iou[valid].mean() if bool(valid.any()) else torch.tensor(float("nan"), dtype=torch.float64)
    return miou, iou


def statistics_from_confusion(conf: Tensor) -> Tensor:
    """``[3,C]`` float64: true positives, ground-truth and predicted pixel counts per class."""
    conf = conf.double()
    return torch.stack([conf.diagonal(), conf.sum(1), conf.sum(0)])


def seed_statistics(
    cams: Tensor,
    present: Tensor,
    gt: Tensor,
    thresholds: Sequence[float],
    num_classes: int,
    ignore_index: int = 255,
) -> Tensor:
    """Per-image sufficient statistics of seed mIoU at each background threshold: ``[B,T,3,C]`` float64.

    ``[b, t]`` holds :func:`statistics_from_confusion` of image ``b``'s seed at ``thresholds[t]`` against
    ``gt`` ``[B,H,W]`` (0 = background, k + 1 = class k, ``ignore_index`` ignored); ``C = num_classes``
    (background included). These are the diagonal, row and column sums of the confusion matrix: they add
    up over images and give IoU, precision, recall and the FP / FN ratios of every class.
    """
    b, k = int(cams.shape[0]), int(cams.shape[1])
    c = int(num_classes)
    if c < k + 1:
        raise InputError(f"num_classes={c} is too small for {k} class maps (+ background).")
    ts = torch.as_tensor(list(thresholds), dtype=torch.float64, device=cams.device)
    if ts.ndim != 1 or ts.numel() == 0 or bool((ts[1:] < ts[:-1]).any()):
        raise InputError(f"thresholds must be a non-empty ascending sequence, got {list(thresholds)}.")
    t = ts.numel()
    present = torch.as_tensor(present, dtype=torch.bool, device=cams.device)
    best, arg = _normalise_present(cams, present).max(dim=1)  # [B,H,W]
    # level = how many thresholds are <= best: the pixel is class arg+1 at threshold t iff t < level, and
    # background otherwise. One histogram over (image, level, gt, arg) then gives every threshold at once.
    level = torch.searchsorted(ts, best.double().contiguous(), right=True)  # [B,H,W] in 0..T
    gt = gt.to(cams.device).long()
    keep = (gt != int(ignore_index)) & (gt >= 0) & (gt < c)
    cell = ((torch.arange(b, device=cams.device).view(b, 1, 1) * (t + 1) + level) * c + gt.clamp(0, c - 1)) * k + arg
    hist = torch.bincount(cell[keep], minlength=b * (t + 1) * c * k).view(b, t + 1, c, k).double()
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # [B,T,C,K]: pixels with level > t (class arg+1)
    below = hist.cumsum(1)[:, :t].sum(3)  # [B,T,C]: pixels with level <= t (background)
    tp = torch.zeros(b, t, c, dtype=torch.float64, device=cams.device)
    tp[..., 0] = below[..., 0]
    tp[..., 1 : k + 1] = above[:, :, 1 : k + 1].diagonal(dim1=2, dim2=3)  # gt = arg + 1
    gt_count = below + above.sum(3)
    pred = torch.zeros_like(tp)
    pred[..., 0] = below.sum(2)
    pred[..., 1 : k + 1] = above.sum(2)
    return torch.stack([tp, gt_count, pred], dim=2)
