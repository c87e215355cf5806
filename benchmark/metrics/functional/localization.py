"""Localization metrics: pure functions over saliency maps ``[B,H,W]`` and ground truth (docs/metrics.md, Localization).

Conventions shared by every function here:

* ``saliency`` is ``[B,H,W]`` at input resolution (the methods' maps, float in [0,1]); ``gt_mask`` is
  ``[B,H,W]`` bool; ``boxes`` is a list of ``[K,4]`` xyxy pixel boxes, one tensor per image.
* Boxes use the **inclusive pixel** convention (VOC, wsolevaluation, ``torchvision.ops.masks_to_boxes``):
  ``[x0, y0, x1, y1]`` covers columns ``x0..x1`` and rows ``y0..y1``, and IoU counts areas with the
  ``+1`` convention, ``(x1 - x0 + 1) * (y1 - y0 + 1)``.
* Connected components use 8-connectivity (what ``cv2.findContours`` traces).
* ``NaN`` means "undefined for this image" and each function says when.
* Volumes and clips: maps and masks are ``[B,T,H,W]`` (``T`` = depth or time), distances are in voxels
  (all axes in the same unit), 3-D boxes are ``[K,6]`` ``[x0, y0, t0, x1, y1, t1]`` with the same inclusive
  convention and volumes ``(x1 - x0 + 1) (y1 - y0 + 1) (t1 - t0 + 1)``, connected components use
  26-connectivity (the 3-D analogue of 8-connectivity).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ...errors import DimensionError, InputError
from ..perturbation import RANK_RESOLUTION, rank_levels, snap, snap_threshold

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity structure
_FOUR = ndimage.generate_binary_structure(2, 1)
_TWENTY_SIX = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity in volumes

# MaxBoxAccV2 (Choe et al. CVPR 2020): IoU thresholds in percent.
IOU_THRESHOLDS = (30, 50, 70)


def _check_maps(saliency: Tensor, other: Tensor | None = None, name: str = "gt_mask") -> None:
    if saliency.ndim not in (3, 4) or (saliency.ndim == 4 and saliency.shape[1] == 1):  # [B,1,H,W]: a channel axis
        raise InputError(
            f"saliency must be [B,H,W] (or [B,T,H,W] for volumes and clips); got shape "
            f"{tuple(saliency.shape)}. Squeeze the channel axis of [B,1,H,W] maps, or add a batch axis to a "
            "single map."
        )
    if other is not None and other.shape != saliency.shape:
        raise InputError(
            f"{name} must have the saliency's shape {tuple(saliency.shape)}; got {tuple(other.shape)}. "
            "Resize the ground truth to the map's resolution (nearest neighbour) first."
        )


def _check_boxes(saliency: Tensor, boxes: Sequence[Tensor]) -> None:
    k = 6 if saliency.ndim == 4 else 4
    if len(boxes) != saliency.shape[0]:
        raise InputError(f"boxes must hold one [K,{k}] tensor per image ({saliency.shape[0]}); got {len(boxes)}.")
    for i, b in enumerate(boxes):
        if b.ndim != 2 or b.shape[-1] != k:
            what = "xyxy" if k == 4 else "[x0,y0,t0,x1,y1,t1] (3-D boxes of [B,T,H,W] maps)"
            raise InputError(f"boxes[{i}] must be [K,{k}] {what}; got shape {tuple(b.shape)}.")


# ------------------------------------------------------------------------------------------------
# Pointing game
# ------------------------------------------------------------------------------------------------
def pointing_game(
    saliency: Tensor, gt_mask: Tensor, tolerance: float = 15, resolution: float | None = RANK_RESOLUTION
) -> Tensor:
    """Pointing game hit (1.0) or miss (0.0) per image (Zhang et al. 2016; TorchRay; docs/metrics.md#pointing_game).

    ``tolerance > 0`` (TorchRay): the point ``p`` is the **first** maximum of the map in raster order,
    and it is a hit if any ground-truth pixel ``q`` lies in the open disk ``||q - p||^2 < tolerance^2``.
    ``tolerance == 0`` (Quantus ``PointingGame``): a hit if **any** pixel attaining the maximum lies in
    the mask (so a constant map, e.g. all zeros, hits whenever the mask is non-empty).
    For ``tolerance > 0`` a constant map points at pixel ``(0, 0)``.
    Volumes and clips ``[B,T,H,W]``: the first maximum in raster order of the volume, a ball of radius
    ``tolerance`` voxels.
    Maxima are taken at ``resolution`` of the map's range (:func:`~benchmark.metrics.perturbation.rank_levels`):
    values within one level of the maximum are maxima, so float noise cannot move the point; ``None``: exact.
    Returns ``Tensor[B]`` float: 1/0, or NaN when the mask is empty (TorchRay skips such images).
    """
    _check_maps(saliency, gt_mask)
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels; got {tolerance}.")
    mask = gt_mask.bool()
    if saliency.ndim == 4 and tolerance != 0:
        return _pointing_game_3d(saliency, mask, tolerance, resolution)
    b = saliency.shape[0]
    h, w = saliency.shape[-2:]
    flat = rank_levels(saliency.reshape(b, -1), resolution)  # maxima at a stated resolution, raster ties
    if tolerance == 0:
        at_max = flat == flat.max(dim=1, keepdim=True).values
        hit = (at_max & mask.reshape(b, -1)).any(dim=1)
    else:
        idx = flat.argmax(dim=1)  # first maximum in raster order
        py, px = (idx // w).float(), (idx % w).float()
        ys = torch.arange(h, device=saliency.device, dtype=torch.float32)
        xs = torch.arange(w, device=saliency.device, dtype=torch.float32)
        d2 = (ys[None, :, None] - py[:, None, None]) ** 2 + (xs[None, None, :] - px[:, None, None]) ** 2
        hit = (mask & (d2 < float(tolerance) ** 2)).flatten(1).any(dim=1)
    out = hit.float()
    return torch.where(mask.flatten(1).any(dim=1), out, torch.full_like(out, float("nan")))


def _pointing_game_3d(
    saliency: Tensor, mask: Tensor, tolerance: float, resolution: float | None = RANK_RESOLUTION
) -> Tensor:
    """:func:`pointing_game` with ``tolerance > 0`` on ``[B,T,H,W]``: a ball of ``tolerance`` voxels."""
    b, t, h, w = saliency.shape
    idx = rank_levels(saliency.reshape(b, -1), resolution).argmax(dim=1)  # first maximum in raster order
    pt, rem = (idx // (h * w)).float(), idx % (h * w)
    py, px = (rem // w).float(), (rem % w).float()
    dev, f32 = saliency.device, torch.float32
    ts, ys, xs = (torch.arange(n, device=dev, dtype=f32) for n in (t, h, w))
    d2 = (
        (ts[None, :, None, None] - pt[:, None, None, None]) ** 2
        + (ys[None, None, :, None] - py[:, None, None, None]) ** 2
        + (xs[None, None, None, :] - px[:, None, None, None]) ** 2
    )
    hit = (mask & (d2 < float(tolerance) ** 2)).flatten(1).any(dim=1).float()
    return torch.where(mask.flatten(1).any(dim=1), hit, torch.full_like(hit, float("nan")))


def pointing_game_class_mean(hits: Tensor, classes: Tensor) -> float:
    """TorchRay's final score: mean over classes of each class's hit rate (NaN hits are skipped).

    ``hits`` and ``classes`` are ``[N]`` over the whole dataset. A class whose images were all skipped
    does not enter the mean; NaN if no image counted at all.
    """
    hits = hits.detach().float().cpu()
    classes = classes.detach().long().cpu()
    keep = ~torch.isnan(hits)
    hits, classes = hits[keep], classes[keep]
    if hits.numel() == 0:
        return float("nan")
    uniq, inv = torch.unique(classes, return_inverse=True)
    sums = torch.zeros(len(uniq)).index_add_(0, inv, hits)
    counts = torch.zeros(len(uniq)).index_add_(0, inv, torch.ones_like(hits))
    return float((sums / counts).mean())


def energy_pointing_game(saliency: Tensor, gt_mask: Tensor) -> Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM 2020; docs/metrics.md#energy_pointing_game).

    ``sum(L inside the mask) / sum(L)`` with ``L`` the non-negative map (negative values are clipped to
    0; the methods' maps are already min-max normalised, so no re-normalisation is done here). Invariant
    to positive rescaling of the map. NaN when ``sum(L) == 0`` (e.g. an all-zero map) or when the mask is
    empty. Equals Quantus ``AttributionLocalisation`` (``abs=True``) wherever both are defined.
    """
    _check_maps(saliency, gt_mask)
    L = saliency.float().clamp_min(0).flatten(1)
    m = gt_mask.bool().flatten(1)
    total = L.sum(dim=1)
    inside = (L * m).sum(dim=1)
    ok = (total > 0) & m.any(dim=1)
    return torch.where(ok, inside / total.where(ok, torch.ones_like(total)), torch.full_like(total, float("nan")))


def temporal_energy(saliency: Tensor, gt_mask: Tensor) -> Tensor:
    """Temporal score of clips and volumes ``[B,T,H,W]``: the share of the map's energy in the frames
    (slices) where the object is, ``sum_{t: M_t != 0} sum_ij L_tij / sum_tij L_tij``.

    The energy pointing game (Wang et al. 2020) with the mask replaced by whole frames: it asks *when*, not
    *where*, so a map that finds the right frames but the wrong place still scores 1. ``L`` is the map
    clipped at 0. NaN when the map sums to 0 or the object is in no frame. Invariant to positive rescaling.
    """
    _check_maps(saliency, gt_mask)
    if saliency.ndim != 4:
        raise DimensionError(
            f"temporal_energy needs [B,T,H,W] maps of volumes or clips; got shape {tuple(saliency.shape)}."
        )
    present = gt_mask.bool().flatten(2).any(dim=2)  # [B,T]: frames that hold the object
    energy = saliency.float().clamp_min(0).flatten(2).sum(dim=2)  # [B,T]
    total = energy.sum(dim=1)
    inside = (energy * present).sum(dim=1)
    ok = (total > 0) & present.any(dim=1)
    return torch.where(ok, inside / total.where(ok, torch.ones_like(total)), torch.full_like(total, float("nan")))


def boxes_to_mask(boxes: Sequence[Tensor], size: tuple[int, ...], device=None) -> Tensor:
    """Union of inclusive-pixel xyxy boxes as a ``[B,H,W]`` bool mask (boxes are rounded and clipped);
    ``[K,6]`` 3-D boxes and ``size = (T,H,W)`` give a ``[B,T,H,W]`` mask."""
    if len(size) == 3:
        return _boxes_to_mask_3d(boxes, size, device)
    h, w = size
    ys = torch.arange(h, device=device)[:, None]
    xs = torch.arange(w, device=device)[None, :]
    out = torch.zeros((len(boxes), h, w), dtype=torch.bool, device=device)
    for i, bx in enumerate(boxes):  # one vectorised op per image over its K boxes
        if bx.numel() == 0:
            continue
        r = bx.to(device).round().long()
        inside = (
            (xs[None] >= r[:, 0, None, None])
            & (xs[None] <= r[:, 2, None, None])
            & (ys[None] >= r[:, 1, None, None])
            & (ys[None] <= r[:, 3, None, None])
        )
        out[i] = inside.any(dim=0)
    return out


def _boxes_to_mask_3d(boxes: Sequence[Tensor], size: tuple[int, ...], device=None) -> Tensor:
    t, h, w = (int(v) for v in size)
    ts = torch.arange(t, device=device)[:, None, None]
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    out = torch.zeros((len(boxes), t, h, w), dtype=torch.bool, device=device)
    for i, bx in enumerate(boxes):  # one vectorised op per volume over its K boxes
        if bx.numel() == 0:
            continue
        r = bx.to(device).reshape(-1, 6).round().long()[:, :, None, None, None]
        inside = (
            (xs[None] >= r[:, 0])
            & (xs[None] <= r[:, 3])
            & (ys[None] >= r[:, 1])
            & (ys[None] <= r[:, 4])
            & (ts[None] >= r[:, 2])
            & (ts[None] <= r[:, 5])
        )
        out[i] = inside.any(dim=0)
    return out


# ------------------------------------------------------------------------------------------------
# Boxes from maps
# ------------------------------------------------------------------------------------------------
def box_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[Na,Nb]`` of inclusive-pixel xyxy boxes with the ``+1`` area convention (wsolevaluation);
    ``[N,6]`` 3-D boxes give the IoU of their volumes."""
    a = a.double()
    b = b.double()
    if a.shape[-1] == 6:
        lt = torch.maximum(a[:, None, :3], b[None, :, :3])
        rb = torch.minimum(a[:, None, 3:], b[None, :, 3:])
        inter = (rb - lt + 1).clamp_min(0).prod(dim=-1)
        vol_a = (a[:, 3:] - a[:, :3] + 1).prod(dim=-1)[:, None]
        vol_b = (b[:, 3:] - b[:, :3] + 1).prod(dim=-1)[None, :]
        return inter / (vol_a + vol_b - inter)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = ((a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1))[:, None]
    area_b = ((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1))[None, :]
    return inter / (area_a + area_b - inter)


def component_boxes(binary: np.ndarray, holes: bool = False) -> np.ndarray:
    """Inclusive xyxy boxes ``[N,4]`` of the 8-connected components of a 2-D bool array.

    Ordered by component label (raster order of each component's first pixel). ``holes=True`` also
    returns, like ``cv2.findContours(RETR_TREE)``, one box per hole (a 4-connected background region not
    touching the border): the box of the foreground ring around it, i.e. the hole's box grown by 1 px.
    """
    labels, n = ndimage.label(binary, structure=_EIGHT)
    boxes = [[s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1] for s in ndimage.find_objects(labels)]
    if holes and n:
        bg, nb = ndimage.label(~binary, structure=_FOUR)
        h, w = binary.shape
        for s in ndimage.find_objects(bg):
            if s is None or s[0].start == 0 or s[1].start == 0 or s[0].stop == h or s[1].stop == w:
                continue  # touches the border: outside, not a hole
            boxes.append([s[1].start - 1, s[0].start - 1, s[1].stop, s[0].stop])
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def largest_component_box(binary: np.ndarray) -> np.ndarray | None:
    """Inclusive xyxy box of the largest 8-connected component (ties: lowest label), or None if empty.

    A ``[T,H,W]`` array: the 26-connected component's ``[x0, y0, t0, x1, y1, t1]`` box.
    """
    labels, n = ndimage.label(binary, structure=_TWENTY_SIX if binary.ndim == 3 else _EIGHT)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    k = int(np.argmax(sizes))  # first (lowest label) among equal sizes
    s = ndimage.find_objects(labels)[k]
    if binary.ndim == 3:
        return np.array(
            [s[2].start, s[1].start, s[0].start, s[2].stop - 1, s[1].stop - 1, s[0].stop - 1], dtype=np.int64
        )
    return np.array([s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1], dtype=np.int64)


def box_iou(
    saliency: Tensor, boxes: Sequence[Tensor], threshold: float = 0.15, resolution: float | None = RANK_RESOLUTION
) -> Tensor:
    """Grad-CAM localisation protocol (Selvaraju et al. 2017; docs/metrics.md#box_iou), IoU per image.

    Keep pixels ``s >= threshold * max(s)`` with ``s > 0``, take the largest 8-connected component
    (ties: the one whose first pixel comes first in raster order), its tight box, and return the best
    IoU with any ground-truth box (``+1`` convention). An all-zero map predicts nothing and scores 0.
    NaN when the image has no ground-truth box. Invariant to positive rescaling of the map.
    The map is compared at ``resolution`` of its maximum: ``s / max(s)`` is rounded to multiples of
    ``resolution`` (:func:`~benchmark.metrics.perturbation.snap`) before the threshold, so float noise
    cannot move a pixel across it; ``None``: exact float comparison.
    """
    _check_maps(saliency)
    _check_boxes(saliency, boxes)
    s = saliency.detach().float().cpu()
    mx = s.flatten(1).max(dim=1).values.view((-1,) + (1,) * (s.ndim - 1))
    if resolution is None:
        binary = ((s >= threshold * mx) & (s > 0)).numpy()
    else:
        rel = snap(s.double() / mx.double().clamp_min(torch.finfo(torch.float64).tiny), resolution)
        binary = ((rel >= snap_threshold(threshold, resolution)) & (rel > 0) & (mx > 0)).numpy()
    out = torch.full((s.shape[0],), float("nan"), dtype=torch.float64)
    for i in range(s.shape[0]):  # connected components are inherently per image (scipy)
        gt = boxes[i].detach().cpu()
        if gt.numel() == 0:
            continue
        box = largest_component_box(binary[i])
        out[i] = 0.0 if box is None else box_iou_matrix(torch.from_numpy(box)[None], gt).max()
    return out.float()


def wsol_normalize(saliency: Tensor) -> Tensor:
    """wsolevaluation ``normalize_scoremap``: per-map min-max to [0,1]; constant or non-finite maps -> 0.

    float64 input stays float64; anything else is computed in float32 (as wsol's numpy maps).
    """
    s = (saliency if saliency.dtype == torch.float64 else saliency.float()).flatten(1)
    finite = torch.isfinite(s).all(dim=1, keepdim=True)
    s = torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    lo = s.min(dim=1, keepdim=True).values
    hi = s.max(dim=1, keepdim=True).values
    ok = finite & (hi > lo)
    out = torch.where(ok, (s - lo) / (hi - lo).where(ok, torch.ones_like(hi)), torch.zeros_like(s))
    return out.reshape(saliency.shape)


def _uint8_levels(normalised: Tensor, resolution: float | None = RANK_RESOLUTION) -> Tensor:
    """wsol's ``(s * 255).astype(uint8)`` (``floor(255 s)``, the number of edges ``j/255 <= s``) of a
    normalised map, uint8. With ``resolution`` the map and the edges are both rounded to multiples of it
    (:func:`~benchmark.metrics.perturbation.snap`) before they are compared, so float noise below the
    resolution cannot move a pixel to another level, and a value on an edge stays on it; ``None``: wsol."""
    if resolution is None:
        return (normalised * 255).to(torch.uint8)  # truncation, as astype
    edges = snap(torch.arange(1, 256, dtype=torch.float64) / 255, resolution)
    return torch.bucketize(snap(normalised, resolution), edges, right=True).to(torch.uint8)


def cam_thresholds(cam_curve_interval: float = 0.01) -> np.ndarray:
    """wsolevaluation's CAM threshold grid ``{0, d, 2d, ..., 1 - d}``."""
    return np.arange(0, 1, cam_curve_interval)


def box_best_ious(
    saliency: Tensor,
    boxes: Sequence[Tensor],
    cam_curve_interval: float = 0.01,
    multi_contour: bool = True,
    wsol_box_end: bool = True,
    resolution: float | None = RANK_RESOLUTION,
) -> Tensor:
    """Per image and CAM threshold, the best IoU of any predicted box with any GT box: ``[B,T]``.

    The accumulator of MaxBoxAcc / MaxBoxAccV2 (Choe et al. CVPR 2020, wsolevaluation ``BoxEvaluator``):
    the map is min-max normalised, quantised to uint8 (``floor(255 s)``) and thresholded at
    ``q > int(tau * max(q))`` for every ``tau`` of :func:`cam_thresholds`. Boxes: every contour's box
    (``multi_contour=True``, V2, including cv2 RETR_TREE hole contours) or the largest component's box
    (V1; wsol picks the largest *contour area*, here the largest pixel count). ``wsol_box_end``
    reproduces wsol's box end ``x1 = min(x + w, W - 1)`` (one pixel wider than the tight box); False uses
    the tight inclusive box. No foreground gives the box ``[0,0,0,0]`` (as wsol). Maps are used at their
    own resolution (wsol resizes to 224x224 first; give boxes in map pixels). NaN rows: no GT box.
    The normalised map is rounded to multiples of ``resolution`` (:func:`~benchmark.metrics.perturbation.snap`)
    before its uint8 quantisation, so float noise cannot move a pixel across a level; ``None``: wsol exactly.
    """
    _check_maps(saliency)
    if saliency.ndim == 4:
        raise DimensionError(
            "max_box_acc (MaxBoxAccV2) is not defined in 3-D yet: its multi-contour boxes follow "
            "cv2.findContours on 2-D maps. Use box_iou (3-D boxes) or pxap on volumes and clips."
        )
    _check_boxes(saliency, boxes)
    taus = cam_thresholds(cam_curve_interval)
    q = _uint8_levels(wsol_normalize(saliency.detach().cpu()), resolution).numpy()
    b, h, w = q.shape
    out = torch.full((b, len(taus)), float("nan"), dtype=torch.float64)
    for i in range(b):
        gt = boxes[i].detach().cpu()
        if gt.numel() == 0:
            continue
        thr = (taus * int(q[i].max())).astype(np.int64)  # int() truncation as wsol
        best = {}
        for t in np.unique(thr):  # at most 256 distinct integer thresholds
            binary = q[i] > t
            if multi_contour:
                pred = component_boxes(binary, holes=True)
            else:
                one = largest_component_box(binary)
                pred = np.zeros((0, 4), np.int64) if one is None else one[None]
            if len(pred) == 0:
                pred = np.zeros((1, 4), np.int64)
            elif wsol_box_end:
                pred = pred.copy()
                pred[:, 2] = np.minimum(pred[:, 2] + 1, w - 1)
                pred[:, 3] = np.minimum(pred[:, 3] + 1, h - 1)
            best[int(t)] = float(box_iou_matrix(torch.from_numpy(pred), gt).max())
        out[i] = torch.tensor([best[int(t)] for t in thr], dtype=torch.float64)
    return out


def max_box_acc_v2(
    best_ious: Tensor, iou_thresholds: Sequence[float] = IOU_THRESHOLDS
) -> tuple[float, dict[float, float]]:
    """Reduce accumulated :func:`box_best_ious` rows ``[N,T]`` (whole dataset) to MaxBoxAccV2.

    ``BoxAcc(delta) = max_tau mean_i [IoU_i(tau) >= delta/100]``; MaxBoxAccV2 = mean over ``delta``.
    Returns ``(mean, {delta: BoxAcc})`` as fractions in [0,1] (wsol prints percentages). NaN rows are
    dropped; NaN if none is left. With ``iou_thresholds=(50,)`` and ``multi_contour=False`` rows this is
    MaxBoxAcc (v1).
    """
    ious = best_ious[~torch.isnan(best_ious).any(dim=1)]
    if ious.shape[0] == 0:
        return float("nan"), {d: float("nan") for d in iou_thresholds}
    per = {d: float((ious >= d / 100).double().mean(dim=0).max()) for d in iou_thresholds}
    return float(np.mean(list(per.values()))), per


def edge_boxes_to_inclusive(boxes: Sequence[Tensor]) -> list[Tensor]:
    """The datasets' pixel-**edge** boxes as wsolevaluation's **inclusive pixel** boxes.

    cambench datasets give ``[x0, y0, x1, y1]`` pixel edges (pixel ``(r, c)`` covers ``[c, c+1)``; a
    pixel belongs to a box when its centre lies inside, ``benchmark.data._common.boxes_mask``), while
    Choe et al.'s reference code reads box corners as the first and last pixel covered and counts areas
    with ``+1``. The inclusive box covers the same pixels: columns ``ceil(x0 - 1/2) .. floor(x1 - 1/2)``
    (``x0 .. x1 - 1`` for integer edges), so its ``+1`` area equals the edge box's area.
    """
    out = []
    for b in boxes:
        b = b.detach().double()
        k = b.shape[1] // 2  # xyxy, or xyt-xyt for volumes and clips
        lo = torch.ceil(b[:, :k] - 0.5)
        hi = torch.floor(b[:, k:] - 0.5)
        out.append(torch.cat([lo, hi], dim=1))
    return out


def max_box_acc_from_rows(best_ious: np.ndarray, iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> float:
    """MaxBoxAccV2 (Choe et al. CVPR 2020, Sec. 4.1) of a dataset's :func:`box_best_ious` rows ``[N,T]``.

    ``mean_delta max_tau (1/N) sum_i [IoU_i(tau) >= delta/100]``: one CAM threshold per delta for the
    whole dataset. The ``compute`` of the dataset-level ``max_box_acc`` (rows are the per-image
    statistics); NaN for no rows.
    """
    rows = np.asarray(best_ious, dtype=np.float64)
    if rows.shape[0] == 0:
        return float("nan")
    return float(max_box_acc_weighted(rows, np.ones((1, rows.shape[0])), iou_thresholds)[0])


def max_box_acc_weighted(
    best_ious: np.ndarray, weights: np.ndarray, iou_thresholds: Sequence[float] = IOU_THRESHOLDS
) -> np.ndarray:
    """:func:`max_box_acc_from_rows` of R weighted copies of the dataset at once (``weights [R, N]``:
    how often each image is in each resample), ``[R]``: the bootstrap without materialising resamples."""
    rows = np.asarray(best_ious, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    d = np.asarray(iou_thresholds, dtype=np.float64) / 100
    hits = (rows[:, :, None] >= d[None, None, :]).reshape(rows.shape[0], -1).astype(np.float64)  # [N, T*D]
    share = (w @ hits / w.sum(axis=1, keepdims=True)).reshape(w.shape[0], rows.shape[1], len(d))
    return share.max(axis=1).mean(axis=1)


def pxap_from_rows(hist_rows: np.ndarray) -> float:
    """Dataset PxAP (Choe et al. CVPR 2020, Sec. 4.2): the per-image flattened :func:`pxap_histograms`
    rows ``[N, 2*(T+2)]`` summed over the dataset, then :func:`pxap_from_histograms`. NaN for no rows."""
    rows = np.asarray(hist_rows, dtype=np.float64)
    if rows.shape[0] == 0:
        return float("nan")
    total = torch.from_numpy(rows.sum(axis=0)).view(2, -1)
    return float(pxap_from_histograms(total))


def pxap_weighted(hist_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`pxap_from_rows` of R weighted copies of the dataset (``weights [R, N]``), ``[R]``."""
    rows = np.asarray(hist_rows, dtype=np.float64)
    total = torch.from_numpy(np.asarray(weights, dtype=np.float64) @ rows)
    return pxap_from_histograms(total.view(total.shape[0], 2, -1)).numpy()


def max_box_acc_per_image(best_ious: Tensor, iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> Tensor:
    """Per-image MaxBoxAccV2 stand-in: ``mean_delta max_tau [IoU(tau) >= delta/100]``, ``Tensor[B]``.

    The dataset statistic picks **one** threshold for all images; per image we take the best threshold
    for that image (an optimistic per-image upper bound whose mean is >= MaxBoxAccV2). Use
    :func:`max_box_acc_v2` on accumulated rows for the published number.
    """
    hits = torch.stack([(best_ious >= d / 100).any(dim=1).double() for d in iou_thresholds], dim=1)
    out = hits.mean(dim=1)
    return torch.where(torch.isnan(best_ious).any(dim=1), torch.full_like(out, float("nan")), out).float()


# ------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------
def mask_iou(
    saliency: Tensor, gt_mask: Tensor, threshold: float = 0.5, resolution: float | None = RANK_RESOLUTION
) -> Tensor:
    """IoU of the binarised map ``s >= threshold`` with the mask, ``Tensor[B]``.

    An all-zero map predicts nothing: IoU 0 against a non-empty mask. NaN only when both the prediction
    and the mask are empty (0/0). The map (in its [0, 1] scale) is rounded to multiples of ``resolution``
    (:func:`~benchmark.metrics.perturbation.snap`) before the threshold; ``None``: exact comparison.
    """
    _check_maps(saliency, gt_mask)
    pred = (snap(saliency, resolution) >= snap_threshold(threshold, resolution)).flatten(1)
    m = gt_mask.bool().flatten(1)
    inter = (pred & m).sum(dim=1).float()
    union = (pred | m).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))


def pxap_histograms(
    saliency: Tensor,
    gt_mask: Tensor,
    cam_curve_interval: float = 0.01,
    ignore: Tensor | None = None,
    resolution: float | None = RANK_RESOLUTION,
) -> Tensor:
    """PxAP accumulator (Choe et al. CVPR 2020, wsolevaluation ``MaskEvaluator``): ``[B,2,T+2]`` counts.

    Row 0 counts ground-truth foreground pixels, row 1 background pixels, per score bin
    ``[tau_0, tau_1), ..., [tau_{T-1}, 1), [1, 2), [2, 3]`` of the wsol-normalised map. Pixels where
    ``ignore`` is True (wsol's value 255) are left out. Sum the rows over the dataset and call
    :func:`pxap_from_histograms`. The normalised map is rounded to multiples of ``resolution``
    (:func:`~benchmark.metrics.perturbation.snap`) before binning; ``None``: wsol exactly.
    """
    _check_maps(saliency, gt_mask)
    edges = torch.tensor(np.append(cam_thresholds(cam_curve_interval), [1.0, 2.0, 3.0]), dtype=torch.float64)
    s = snap(wsol_normalize(saliency.detach().cpu()), resolution).double().flatten(1)
    edges = snap(edges, resolution).double()  # values and thresholds at one resolution
    nb = len(edges) - 1
    idx = torch.bucketize(s, edges, right=True) - 1  # bin i holds edges[i] <= s < edges[i+1]
    idx = torch.where(s == edges[-1], torch.full_like(idx, nb - 1), idx)  # numpy: last bin closed
    valid = (idx >= 0) & (idx < nb)
    if ignore is not None:
        valid &= ~ignore.detach().cpu().bool().flatten(1)
    fg = gt_mask.detach().cpu().bool().flatten(1)
    b = s.shape[0]
    out = torch.zeros((b, 2, nb), dtype=torch.float64)
    row = torch.arange(b)[:, None].expand_as(idx)
    flat = (row * 2 + (~fg).long()) * nb + idx.clamp(0, nb - 1)
    out.view(-1).index_add_(0, flat[valid], torch.ones(int(valid.sum()), dtype=torch.float64))
    return out


def pxap_from_histograms(histograms: Tensor) -> Tensor:
    """PxAP (area under the pixel precision-recall curve) of ``[...,2,T+2]`` histograms, in [0,1].

    ``TP``/``FP`` are reversed cumulative sums; ``AP = sum precision[1:] * diff(recall)`` over points whose
    ``TP + FP > 0`` (wsol; it reports x100). Pass one summed ``[2,T+2]`` histogram for the dataset value,
    or ``[B,2,T+2]`` for per-image values. NaN where there is no foreground pixel.
    """
    hist = histograms.double()
    tp = hist[..., 0, :].flip(-1).cumsum(-1)
    fp = hist[..., 1, :].flip(-1).cumsum(-1)
    n_pos = hist[..., 0, :].sum(-1, keepdim=True)
    denom = tp + fp
    precision = tp / denom.where(denom > 0, torch.ones_like(denom))
    recall = tp / n_pos.where(n_pos > 0, torch.ones_like(n_pos))
    terms = precision[..., 1:] * recall.diff(dim=-1)
    terms = torch.where(denom[..., 1:] > 0, terms, torch.zeros_like(terms))
    ap = terms.sum(-1)
    return torch.where(n_pos[..., 0] > 0, ap, torch.full_like(ap, float("nan")))


def pxap(
    saliency: Tensor, gt_mask: Tensor, cam_curve_interval: float = 0.01, resolution: float | None = RANK_RESOLUTION
) -> Tensor:
    """PxAP of each image on its own, ``Tensor[B]`` in [0,1] (NaN without foreground pixels).

    The published (dataset-level) PxAP sums :func:`pxap_histograms` over the dataset first.
    """
    return pxap_from_histograms(pxap_histograms(saliency, gt_mask, cam_curve_interval, None, resolution)).float()
