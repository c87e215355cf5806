"""Registry entries of the localization metrics (functional forms in ``functional/localization.py``)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .base import MetricContext, register_metric
from .functional import localization as F


def _per_method(ctx: MetricContext, fn) -> dict[str, Tensor]:
    return {m: fn(s).float().cpu() for m, s in ctx.saliency.items()}


@register_metric(
    "pointing_game", family="localization", higher_is_better=True, needs=("saliency", "masks"),
    defaults={"tolerance": 15}, paper="Zhang et al. 2016 (TorchRay protocol)",
)
def pointing_game(ctx: MetricContext, tolerance: float = 15) -> dict[str, Tensor]:
    """1/0 per image (NaN: empty mask). TorchRay reports the mean over classes: see
    ``functional.localization.pointing_game_class_mean``."""
    masks = ctx.batch.masks
    return _per_method(ctx, lambda s: F.pointing_game(s, masks.to(s.device), tolerance))


@register_metric(
    "energy_pointing_game", family="localization", higher_is_better=True, needs=("saliency", "boxes"),
    defaults={}, paper="Wang et al. 2020 (Score-CAM), energy inside the boxes",
)
def energy_pointing_game(ctx: MetricContext) -> dict[str, Tensor]:
    """Share of the map's energy inside the union of the GT boxes (NaN: all-zero map or no box)."""
    size = tuple(ctx.batch.images.shape[2:])  # (H, W), or (T, H, W) for volumes and clips
    region = F.boxes_to_mask(ctx.batch.boxes, size, device=ctx.batch.images.device)
    return _per_method(ctx, lambda s: F.energy_pointing_game(s, region.to(s.device)))


@register_metric(
    "energy_pointing_game_mask", family="localization", higher_is_better=True,
    needs=("saliency", "masks"), defaults={}, paper="Wang et al. 2020 (Score-CAM), with masks",
)
def energy_pointing_game_mask(ctx: MetricContext) -> dict[str, Tensor]:
    """Share of the map's energy inside the GT mask (NaN: all-zero map or empty mask)."""
    masks = ctx.batch.masks
    return _per_method(ctx, lambda s: F.energy_pointing_game(s, masks.to(s.device)))


@register_metric(
    "box_iou", family="localization", higher_is_better=True, needs=("saliency", "boxes"),
    defaults={"threshold": 0.15}, paper="Selvaraju et al. 2017 (Grad-CAM localisation)",
)
def box_iou(ctx: MetricContext, threshold: float = 0.15) -> dict[str, Tensor]:
    """IoU of the largest component's box (map >= threshold * max) with the best GT box."""
    return _per_method(ctx, lambda s: F.box_iou(s, ctx.batch.boxes, threshold))


@register_metric(
    "max_box_acc", family="localization", higher_is_better=True, needs=("saliency", "boxes"),
    defaults={"cam_curve_interval": 0.01, "iou_thresholds": (30, 50, 70), "multi_contour": True},
    paper="Choe et al. CVPR 2020 (MaxBoxAccV2)", dataset_level=True,
)
def max_box_acc(
    ctx: MetricContext,
    cam_curve_interval: float = 0.01,
    iou_thresholds: Sequence[float] = (30, 50, 70),
    multi_contour: bool = True,
) -> dict[str, Tensor]:
    """Per image: mean over IoU thresholds of "some CAM threshold reaches it" (the per-image best
    threshold; an optimistic stand-in). The dataset statistic needs one threshold for all images: the
    per-image best-IoU rows ``[B,T]`` are stored in ``ctx.curves["max_box_acc"][method]``; concatenate them
    over the dataset and call ``functional.localization.max_box_acc_v2`` for MaxBoxAccV2."""
    curves = ctx.curves.setdefault("max_box_acc", {})
    out = {}
    for m, s in ctx.saliency.items():
        rows = F.box_best_ious(s, ctx.batch.boxes, cam_curve_interval, multi_contour)
        curves[m] = rows.float()
        out[m] = F.max_box_acc_per_image(rows, tuple(iou_thresholds))
    return out


@register_metric(
    "mask_iou", family="localization", higher_is_better=True, needs=("saliency", "masks"),
    defaults={"threshold": 0.5}, paper="IoU of the thresholded map with the GT mask",
)
def mask_iou(ctx: MetricContext, threshold: float = 0.5) -> dict[str, Tensor]:
    masks = ctx.batch.masks
    return _per_method(ctx, lambda s: F.mask_iou(s, masks.to(s.device), threshold))


@register_metric(
    "pxap", family="localization", higher_is_better=True, needs=("saliency", "masks"),
    defaults={"cam_curve_interval": 0.01}, paper="Choe et al. CVPR 2020 (PxAP)", dataset_level=True,
)
def pxap(ctx: MetricContext, cam_curve_interval: float = 0.01) -> dict[str, Tensor]:
    """Per-image PxAP in [0,1]. The dataset PxAP sums histograms over images: they are stored flattened
    as ``ctx.curves["pxap"][method]`` ``[B, 2*(T+2)]``; use
    ``functional.localization.pxap_from_histograms(rows.sum(0).view(2, -1))``."""
    curves = ctx.curves.setdefault("pxap", {})
    out = {}
    for m, s in ctx.saliency.items():
        hist = F.pxap_histograms(s, ctx.batch.masks.to(s.device), cam_curve_interval)
        curves[m] = hist.flatten(1).float()
        out[m] = F.pxap_from_histograms(hist).float()
    return out


@register_metric(
    "temporal_energy", family="localization", higher_is_better=True, needs=("saliency", "masks", "frames"),
    defaults={}, paper="cambench: the energy pointing game (Wang et al. 2020) along the time axis",
)
def temporal_energy(ctx: MetricContext) -> dict[str, Tensor]:
    """Volumes and clips only: share of the map's energy in the frames (slices) that hold the object
    (NaN: all-zero map or no object in any frame). See ``functional.localization.temporal_energy``."""
    masks = ctx.batch.masks
    return _per_method(ctx, lambda s: F.temporal_energy(s, masks.to(s.device)))
