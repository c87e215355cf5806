"""Dataset-level WSSS seed metrics: ``seed_miou`` (threshold chosen on held-out images) and
``seed_miou_oracle_threshold`` (threshold chosen on the evaluated images: optimistic).

Protocol (functional forms in ``functional/seeds.py``; docs/wsss.md): in a multi-label experiment
(``target = "labels"``) each batch holds, for every image, one row per class present (ids
``"<image>#<class>"``), whose map is that class's CAM and whose mask is that class's pixels. The metric
groups the rows of each image, builds the image's seed at every background threshold of a grid
(``n_thresholds`` values from 0 to 1) and stores, as the image's sufficient statistics, the true-positive,
ground-truth and predicted pixel counts of every class (background included) at every threshold: the
diagonal, row sums and column sums of the image's confusion matrix. They add up over images, so the
dataset's confusion-derived numbers (mIoU, per-class IoU, precision, recall) are exact. An image's
statistics sit in its **first** row; its other rows hold zeros (the sums are unchanged).

* ``seed_miou``: images are split deterministically by a hash of the image id: a share
  ``threshold_split`` of them chooses the threshold (best mIoU), the others are scored at it (the
  wsolevaluation lesson: never choose an operating point on the images you report).
* ``seed_miou_oracle_threshold``: the best mIoU over the grid on all images, as most WSSS papers
  report it (an optimistic upper bound: the threshold is tuned on the test images).

Batches without multi-label ids (``target = "label"`` experiments) yield no statistics (no rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.transforms import CLASS_SEP, image_key
from ..errors import DataError, InputError
from ..registry import signature_defaults
from .base import MetricContext, register_metric
from .functional.seeds import seed_statistics

PAPER = "WSSS seed mIoU (e.g. SEAM CVPR 2020, IRN CVPR 2019, ToCo CVPR 2023): CAM seeds on PASCAL VOC train"


def thresholds(n_thresholds: int) -> np.ndarray:
    """The background-threshold grid: ``n_thresholds`` evenly spaced values in [0, 1]."""
    n = int(n_thresholds)
    if n < 1:
        raise InputError(f"n_thresholds must be >= 1, got {n_thresholds}.")
    return np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])


def held_out(ids: Sequence[str], share: float) -> np.ndarray:
    """``[N]`` bool: rows whose image (:func:`image_key`) falls in the threshold-selection split.

    Deterministic: image ``k`` is held out when the first 8 bytes of ``sha256(k)`` / 2**64 < ``share``,
    so every row of an image lands on the same side, whatever the order or subset of rows.
    """
    if not 0.0 < float(share) < 1.0:
        raise InputError(
            f"threshold_split must be in (0, 1) (the share of images that choose the threshold), got {share}."
        )
    u = [int.from_bytes(hashlib.sha256(image_key(i).encode()).digest()[:8], "big") / 2.0**64 for i in ids]
    return np.asarray(u) < float(share)


def reshape_stats(stats: Any, n_thresholds: int) -> np.ndarray:
    """``[N, S]`` rows -> ``[N, T, 3, C]`` (true positives, ground truth, predicted; per class)."""
    arr = np.asarray(stats, dtype=np.float64)
    t = int(n_thresholds)
    if arr.ndim != 2 or arr.shape[1] % (3 * t):
        raise InputError(f"seed statistics must be [N, 3*C*{t}]; got shape {arr.shape}.")
    return arr.reshape(arr.shape[0], t, 3, arr.shape[1] // (3 * t))


def miou_curve(stats: Any, n_thresholds: int) -> np.ndarray:
    """``[T]`` mIoU at each threshold of the grid from the summed statistics (NaN where undefined).

    Classes absent from both ground truth and prediction are left out of the mean (as
    :func:`~benchmark.metrics.functional.seeds.miou_from_confusion`).
    """
    s = reshape_stats(stats, n_thresholds).sum(0)  # [T,3,C]
    tp, gt, pred = s[:, 0], s[:, 1], s[:, 2]
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
    valid = np.isfinite(iou)
    out = np.full(iou.shape[0], np.nan)
    has = valid.any(1)
    out[has] = np.nansum(np.where(valid, iou, 0.0), 1)[has] / valid.sum(1)[has]
    return out


def _best(curve: np.ndarray) -> int:
    return int(np.nanargmax(curve)) if np.isfinite(curve).any() else -1


def compute_seed_miou(
    stats: Any, ids: Sequence[str], n_thresholds: int = 21, threshold_split: float = 0.5, **_: Any
) -> float:
    """mIoU of the images outside the held-out split, at the threshold best on the held-out split."""
    arr = np.asarray(stats, dtype=np.float64)
    held = held_out(ids, threshold_split)
    if not held.any() or held.all():
        return float("nan")
    t = _best(miou_curve(arr[held], n_thresholds))
    return float("nan") if t < 0 else float(miou_curve(arr[~held], n_thresholds)[t])


def compute_seed_miou_oracle(stats: Any, ids: Sequence[str], n_thresholds: int = 21, **_: Any) -> float:
    """The best mIoU over the threshold grid on the evaluated images themselves (optimistic)."""
    curve = miou_curve(stats, n_thresholds)
    return float(np.nanmax(curve)) if np.isfinite(curve).any() else float("nan")


def chosen_threshold(
    stats: Any, ids: Sequence[str], n_thresholds: int = 21, threshold_split: float = 0.5, oracle: bool = False
) -> float:
    """The background threshold each variant uses (NaN if it cannot be chosen)."""
    arr = np.asarray(stats, dtype=np.float64)
    if not oracle:
        held = held_out(ids, threshold_split)
        if not held.any() or held.all():
            return float("nan")
        arr = arr[held]
    t = _best(miou_curve(arr, n_thresholds))
    return float("nan") if t < 0 else float(thresholds(n_thresholds)[t])


def _num_classes(ctx: MetricContext, num_classes: int) -> int:
    if int(num_classes) > 0:
        k = int(num_classes)
    else:
        key = ("seed_num_classes",)
        if key not in ctx.cache:
            with torch.inference_mode():
                ctx.cache[key] = int(ctx.model(ctx.batch.images[:1]).shape[1])
        k = ctx.cache[key]
    top = int(ctx.batch.targets.max()) if len(ctx.batch.targets) else -1
    if top >= k:
        raise DataError(
            f"Class-count mismatch between model and data: the data labels class {top}, but the model has "
            f"{k} outputs. Use a model trained on this dataset's classes (or set num_classes)."
        )
    return k


def image_statistics(
    ctx: MetricContext, n_thresholds: int = 21, num_classes: int = 0, ignore_index: int = 255
) -> dict[str, Tensor]:
    """``{method: [B, S]}`` per-row seed statistics (``S = n_thresholds * 3 * (K + 1)``), shared by both
    seed metrics of a batch; ``{}`` for a batch without multi-label ids."""
    batch = ctx.batch
    if not any(CLASS_SEP in str(i) for i in batch.ids) or batch.masks is None:
        return {}
    key = (
        "seed_stats",
        int(n_thresholds),
        int(num_classes),
        int(ignore_index),
        tuple((m, id(s)) for m, s in ctx.saliency.items()),
    )
    if key in ctx.cache:
        return ctx.cache[key]
    k = _num_classes(ctx, num_classes)
    dev = batch.masks.device
    keys = [image_key(i) for i in batch.ids]
    order = list(dict.fromkeys(keys))
    g = torch.tensor([order.index(x) for x in keys], device=dev)
    first = torch.tensor([keys.index(x) for x in order], device=dev)
    n_img, (h, w) = len(order), batch.masks.shape[-2:]
    tg = batch.targets.to(dev).long()
    # ground truth: k+1 on class k's pixels, 0 elsewhere, ignore_index on void
    vals = (tg.view(-1, 1, 1) + 1) * batch.masks.long()
    gidx = g.view(-1, 1, 1).expand_as(vals)
    gt = torch.zeros(n_img, h, w, dtype=torch.long, device=dev).scatter_reduce_(0, gidx, vals, "amax")
    if batch.ignore is not None:
        void = torch.zeros(n_img, h, w, dtype=torch.long, device=dev).scatter_reduce_(
            0, gidx, batch.ignore.to(dev).long(), "amax"
        )
        gt = torch.where(void.bool(), torch.full_like(gt, int(ignore_index)), gt)
    present = torch.zeros(n_img, k, dtype=torch.bool, device=dev)
    present[g, tg] = True
    grid = thresholds(n_thresholds).tolist()
    out: dict[str, Tensor] = {}
    for m, sal in ctx.saliency.items():
        cams = torch.zeros(n_img, k, h, w, dtype=torch.float32, device=dev)
        cams[g, tg] = sal.to(dev).float()
        st = seed_statistics(cams, present, gt, grid, k + 1, ignore_index).flatten(1)  # [n_img, S]
        rows = torch.zeros(len(keys), st.shape[1], dtype=torch.float64, device=dev)
        rows[first] = st
        out[m] = rows.cpu()
    ctx.cache[key] = out
    return out


@register_metric(
    "seed_miou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks"),
    paper=PAPER,
    level="dataset",
    compute=compute_seed_miou,
    optimistic=False,
    threshold="chosen on the held-out split (threshold_split of the images, by hash of image id); "
    "scored on the other images",
)
def seed_miou(
    ctx: MetricContext,
    n_thresholds: int = 21,
    threshold_split: float = 0.5,
    num_classes: int = 0,
    ignore_index: int = 255,
) -> dict[str, Tensor]:
    """Seed mIoU (background + classes) at a background threshold chosen on held-out images."""
    if not 0.0 < float(threshold_split) < 1.0:
        raise InputError(
            f"threshold_split must be in (0, 1) (the share of images that choose the threshold), got {threshold_split}."
        )
    return image_statistics(ctx, n_thresholds, num_classes, ignore_index)


@register_metric(
    "seed_miou_oracle_threshold",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks"),
    paper=PAPER + " (threshold swept on the test images)",
    level="dataset",
    compute=compute_seed_miou_oracle,
    optimistic=True,
    threshold="best on the evaluated images themselves: OPTIMISTIC (an upper bound, as most papers report it)",
)
def seed_miou_oracle_threshold(
    ctx: MetricContext,
    n_thresholds: int = 21,
    threshold_split: float = 0.5,
    num_classes: int = 0,
    ignore_index: int = 255,
) -> dict[str, Tensor]:
    """Seed mIoU at the best threshold on the evaluated images (optimistic; ``threshold_split`` unused)."""
    return image_statistics(ctx, n_thresholds, num_classes, ignore_index)


#: The seed metrics' parameters (both take the same), read from the signature (report/seeds.py uses them).
DEFAULTS = signature_defaults(seed_miou)

__all__ = [
    "chosen_threshold",
    "compute_seed_miou",
    "compute_seed_miou_oracle",
    "held_out",
    "image_statistics",
    "miou_curve",
    "reshape_stats",
    "seed_miou",
    "seed_miou_oracle_threshold",
    "thresholds",
]
