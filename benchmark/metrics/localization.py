"""Registry entries of the localization metrics (functional forms in ``functional/localization.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..errors import InputError
from .base import MetricContext, register_metric
from .functional import localization as F


def _masks(ctx: MetricContext) -> Tensor:
    """The batch's ground-truth masks (metrics that need them run only when the dataset has them)."""
    if ctx.batch.masks is None:
        raise InputError("This metric needs ground-truth masks; the batch has none (see metrics.missing_needs).")
    return ctx.batch.masks


def _boxes(ctx: MetricContext) -> list[Tensor]:
    """The batch's ground-truth boxes (metrics that need them run only when the dataset has them)."""
    if ctx.batch.boxes is None:
        raise InputError("This metric needs ground-truth boxes; the batch has none (see metrics.missing_needs).")
    return ctx.batch.boxes


def _per_method(ctx: MetricContext, fn) -> dict[str, Tensor]:
    return {m: fn(s).float().cpu() for m, s in ctx.saliency.items()}


@register_metric(
    "pointing_game",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks"),
    paper="Zhang et al. 2016 (TorchRay protocol)",
)
def pointing_game(ctx: MetricContext, tolerance: float = 15) -> dict[str, Tensor]:
    """1/0 per image (NaN: empty mask). TorchRay reports the mean over classes: see
    ``functional.localization.pointing_game_class_mean``."""
    masks = _masks(ctx)
    return _per_method(ctx, lambda s: F.pointing_game(s, masks.to(s.device), tolerance))


@register_metric(
    "energy_pointing_game",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "boxes"),
    paper="Wang et al. 2020 (Score-CAM), energy inside the boxes",
)
def energy_pointing_game(ctx: MetricContext) -> dict[str, Tensor]:
    """Share of the map's energy inside the union of the GT boxes (NaN: all-zero map or no box)."""
    size = tuple(ctx.batch.images.shape[2:])  # (H, W), or (T, H, W) for volumes and clips
    boxes = F.edge_boxes_to_inclusive(_boxes(ctx))  # the datasets' pixel edges -> inclusive pixels
    region = F.boxes_to_mask(boxes, size, device=ctx.batch.images.device)
    return _per_method(ctx, lambda s: F.energy_pointing_game(s, region.to(s.device)))


@register_metric(
    "energy_pointing_game_mask",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks"),
    paper="Wang et al. 2020 (Score-CAM), with masks",
)
def energy_pointing_game_mask(ctx: MetricContext) -> dict[str, Tensor]:
    """Share of the map's energy inside the GT mask (NaN: all-zero map or empty mask)."""
    masks = _masks(ctx)
    return _per_method(ctx, lambda s: F.energy_pointing_game(s, masks.to(s.device)))


@register_metric(
    "box_iou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "boxes"),
    paper="Selvaraju et al. 2017 (Grad-CAM localisation)",
)
def box_iou(ctx: MetricContext, threshold: float = 0.15) -> dict[str, Tensor]:
    """IoU of the largest component's box (map >= threshold * max) with the best GT box (the datasets'
    pixel-edge boxes read as inclusive pixel boxes, ``functional.localization.edge_boxes_to_inclusive``)."""
    boxes = F.edge_boxes_to_inclusive(_boxes(ctx))
    return _per_method(ctx, lambda s: F.box_iou(s, boxes, threshold))


def _max_box_acc_compute(
    stats, ids, cam_curve_interval: float = 0.01, iou_thresholds=(30, 50, 70), multi_contour: bool = True
) -> float:
    return F.max_box_acc_from_rows(stats, tuple(iou_thresholds))


def _max_box_acc_weighted(
    stats, weights, cam_curve_interval: float = 0.01, iou_thresholds=(30, 50, 70), multi_contour: bool = True
):
    return F.max_box_acc_weighted(stats, weights, tuple(iou_thresholds))


@register_metric(
    "max_box_acc",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "boxes"),
    paper="Choe et al. CVPR 2020 (MaxBoxAccV2)",
    level="dataset",
    compute=_max_box_acc_compute,
    compute_weighted=_max_box_acc_weighted,
)
def max_box_acc(
    ctx: MetricContext,
    cam_curve_interval: float = 0.01,
    iou_thresholds: Sequence[float] = (30, 50, 70),
    multi_contour: bool = True,
) -> dict[str, Tensor]:
    """MaxBoxAccV2 over the dataset (Choe et al. CVPR 2020; wsolevaluation ``BoxEvaluator``).

    Per image the statistics are the best IoU of any predicted box (every contour, ``multi_contour``)
    with any ground-truth box at every CAM threshold, ``[B, T]``; the dataset value picks, per IoU
    threshold delta, the one CAM threshold that localises most images
    (``functional.localization.max_box_acc_from_rows``). The datasets' pixel-edge boxes are read as the
    reference's inclusive pixel boxes (``edge_boxes_to_inclusive``). NaN rows: images without a box."""
    boxes = F.edge_boxes_to_inclusive(_boxes(ctx))
    return {m: F.box_best_ious(s, boxes, cam_curve_interval, multi_contour) for m, s in ctx.saliency.items()}


@register_metric(
    "mask_iou",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks"),
    paper="IoU of the thresholded map with the GT mask",
)
def mask_iou(ctx: MetricContext, threshold: float = 0.5) -> dict[str, Tensor]:
    masks = _masks(ctx)
    return _per_method(ctx, lambda s: F.mask_iou(s, masks.to(s.device), threshold))


def _pxap_compute(stats, ids, cam_curve_interval: float = 0.01) -> float:
    return F.pxap_from_rows(stats)


def _pxap_weighted(stats, weights, cam_curve_interval: float = 0.01):
    return F.pxap_weighted(stats, weights)


@register_metric(
    "pxap",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks"),
    paper="Choe et al. CVPR 2020 (PxAP)",
    level="dataset",
    compute=_pxap_compute,
    compute_weighted=_pxap_weighted,
)
def pxap(ctx: MetricContext, cam_curve_interval: float = 0.01) -> dict[str, Tensor]:
    """PxAP over the dataset (Choe et al. CVPR 2020; wsolevaluation ``MaskEvaluator``): the area under
    the precision-recall curve of all pixels of all images. Per image the statistics are the
    foreground/background score histograms flattened, ``[B, 2*(T+2)]``; the dataset value sums them
    (``functional.localization.pxap_from_rows``). Images without foreground pixels still add their
    background pixels (as in the reference)."""
    masks = _masks(ctx)
    return {m: F.pxap_histograms(s, masks.to(s.device), cam_curve_interval).flatten(1) for m, s in ctx.saliency.items()}


@register_metric(
    "temporal_energy",
    family="localization",
    higher_is_better=True,
    needs=("saliency", "masks", "frames"),
    paper="cambench: the energy pointing game (Wang et al. 2020) along the time axis",
)
def temporal_energy(ctx: MetricContext) -> dict[str, Tensor]:
    """Volumes and clips only: share of the map's energy in the frames (slices) that hold the object
    (NaN: all-zero map or no object in any frame). See ``functional.localization.temporal_energy``."""
    masks = _masks(ctx)
    return _per_method(ctx, lambda s: F.temporal_energy(s, masks.to(s.device)))
