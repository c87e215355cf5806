"""Model-truth faithfulness: scores against the evidence a model provably uses (FunnyBirds-style).

Hesse et al., "FunnyBirds: A Synthetic Vision Dataset for a Part-Based Analysis of Explainable AI
Methods", ICCV 2023, score explanations on data whose generator controls what the model can use. Here the
truth is the class-coded mark of ``shapes_shortcut`` (see ``benchmark/data/synthetic.py``): a model trained
with the mark aligned to the label reads the mark, so the mark is the cause of its decision by construction
(``docs/scenes-and-truth.md``). All functions take maps ``[B,H,W]`` and the truth mask ``[B,H,W]`` bool.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..perturbation import RANK_RESOLUTION, rank_levels


def _check(saliency: Tensor, truth: Tensor) -> None:
    if saliency.ndim != 3 or truth.shape != saliency.shape:
        raise ValueError(
            f"saliency must be [B,H,W] and the truth mask the same shape; got {tuple(saliency.shape)} and "
            f"{tuple(truth.shape)}. Upsample the maps to the image size first."
        )


def _empty_to_nan(value: Tensor, truth: Tensor) -> Tensor:
    return torch.where(truth.flatten(1).any(dim=1), value, torch.full_like(value, float("nan")))


def shortcut_pointing(saliency: Tensor, truth: Tensor, resolution: float | None = RANK_RESOLUTION) -> Tensor:
    """1.0 if the map's maximum is attained on the truth region, else 0.0 (NaN: empty truth).

    The pointing game of Zhang et al. (2016) with zero tolerance against the model-truth region. Ties count
    for the map (an upsampled CAM has plateaus: a hit if the plateau of the maximum touches the region);
    a constant map has no maximum to point with and scores 0. Maxima are taken at ``resolution`` of the
    map's range (:func:`~benchmark.metrics.perturbation.rank_levels`), so float noise cannot move them.
    """
    _check(saliency, truth)
    b = saliency.shape[0]
    s = rank_levels(saliency.reshape(b, -1).float(), resolution)
    t = truth.reshape(b, -1).bool()
    top = s.max(dim=1).values
    on_truth = torch.where(t, s, torch.full_like(s, float("-inf"))).max(dim=1).values
    hit = ((on_truth >= top) & (top > s.min(dim=1).values)).float()
    return _empty_to_nan(hit, truth)


def shortcut_energy(saliency: Tensor, truth: Tensor) -> Tensor:
    """Share of the map's (positive) energy on the truth region, ``sum(S+ * T) / sum(S+)`` (the energy
    pointing game of Wang et al. 2020, eq. 9, on the model-truth region). NaN: all-zero map or empty truth."""
    _check(saliency, truth)
    s = saliency.float().clamp(min=0).flatten(1)
    total = s.sum(dim=1)
    inside = (s * truth.flatten(1).float()).sum(dim=1)
    out = torch.where(total > 0, inside / total.clamp(min=1e-30), torch.full_like(total, float("nan")))
    return _empty_to_nan(out, truth)


def top_k_mask(saliency: Tensor, k: Tensor, resolution: float | None = RANK_RESOLUTION) -> Tensor:
    """``[B,H,W]`` bool: the ``k[b]`` highest pixels of each map, ranked at ``resolution`` of its range
    (:func:`~benchmark.metrics.perturbation.rank_levels`; ties broken in raster order, stable)."""
    b, h, w = saliency.shape
    order = torch.argsort(rank_levels(saliency.reshape(b, -1).float(), resolution), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1).contiguous())
    return (rank < k.to(rank.device)[:, None]).reshape(b, h, w)


def remove_region(images: Tensor, region: Tensor) -> Tensor:
    """``images [B,C,H,W]`` with ``region [B,H,W]`` replaced by each image's per-channel mean (one removal
    operator for the map's pixels and for the mark, so the two drops are comparable)."""
    fill = images.mean(dim=(2, 3), keepdim=True)
    return torch.where(region[:, None].to(images.device), fill, images)


def intervention_ratio(p_clean: Tensor, p_map: Tensor, p_truth: Tensor, min_drop: float = 0.1) -> Tensor:
    """``clip((p - p_map) / (p - p_truth), 0, 1)``: the drop of the target probability when the map's top
    pixels are removed, relative to the drop when the truth region (as many pixels) is removed.

    1: removing what the map points at hurts the model as much as removing its real evidence; 0: not at all.
    NaN where removing the truth drops the probability by less than ``min_drop`` (the image does not depend
    on it, so the ratio would be noise).
    """
    ref = p_clean - p_truth
    ratio = ((p_clean - p_map) / ref.clamp(min=1e-12)).clamp(0.0, 1.0)
    return torch.where(ref >= min_drop, ratio, torch.full_like(ratio, float("nan")))


def map_shift(saliency: Tensor, moved: Tensor) -> Tensor:
    """Total-variation distance ``0.5 * sum |S/sum S - S'/sum S'|`` between two maps (positive parts,
    normalised to unit mass): 0 = the map did not move, 1 = disjoint supports. NaN: an all-zero map."""
    a = saliency.float().clamp(min=0).flatten(1)
    c = moved.float().clamp(min=0).flatten(1)
    sa, sc = a.sum(dim=1, keepdim=True), c.sum(dim=1, keepdim=True)
    tv = 0.5 * (a / sa.clamp(min=1e-30) - c / sc.clamp(min=1e-30)).abs().sum(dim=1)
    ok = (sa[:, 0] > 0) & (sc[:, 0] > 0) & torch.isfinite(tv)
    return torch.where(ok, tv, torch.full_like(tv, float("nan")))


def region_attribution(saliency: Tensor, region: Tensor) -> Tensor:
    """BAM's ``G_c``: the mean attribution over region ``c`` of a map scaled to [0, 1] by its maximum (positive
    part), ``sum_{i in c} S_i / (|c| max S)`` (Yang & Kim 2019, Sec. 3.2). NaN: empty region or all-zero map."""
    _check(saliency, region)
    s = saliency.float().clamp(min=0).flatten(1)
    top = s.max(dim=1).values
    r = region.flatten(1).float()
    n = r.sum(dim=1)
    g = (s * r).sum(dim=1) / (n.clamp(min=1) * top.clamp(min=1e-30))
    return torch.where((n > 0) & (top > 0), g, torch.full_like(g, float("nan")))


def model_contrast_score(s_object: Tensor, s_scene: Tensor, region: Tensor) -> Tensor:
    """BAM's model contrast score per image, ``G_c(f_obj, I) - G_c(f_scene, I)`` over the object region ``c``
    (Yang & Kim 2019, eq. 1): the object model uses the object, the scene model does not, so a faithful method
    attributes more to the object under the object model. In [-1, 1]; ground truth 1, class-blind maps 0."""
    return region_attribution(s_object, region) - region_attribution(s_scene, region)


def input_dependence(s_with: Tensor, s_without: Tensor, region: Tensor, valid: Tensor) -> Tensor:
    """BAM's input dependence per image (Yang & Kim 2019, eq. 2): 1 if the scene model's map gives the pasted
    object's region less attribution than the same region of the scene-only image, ``G_c(f_s, I_obj) <
    G_c(f_s, I_scene)`` (the object is unimportant to the scene model), else 0; NaN where ``valid`` is False
    (BAM counts only inputs the scene model classifies correctly, with and without the object). The mean over
    images is the input dependence rate (IDR)."""
    a, b = region_attribution(s_with, region), region_attribution(s_without, region)
    hit = (a < b).float()
    ok = valid.to(hit.device) & torch.isfinite(a) & torch.isfinite(b)
    return torch.where(ok, hit, torch.full_like(hit, float("nan")))


__all__ = [
    "input_dependence",
    "model_contrast_score",
    "region_attribution",
    "intervention_ratio",
    "map_shift",
    "remove_region",
    "shortcut_energy",
    "shortcut_pointing",
    "top_k_mask",
]
