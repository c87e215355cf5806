"""Rank-based metrics rank a map quantised to a stated resolution (``RANK_RESOLUTION`` of its range) with an
index tie order (issue #24 item 6): float noise far below the resolution cannot reorder pixels, so maps equal
by construction give identical scores on every CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import masks_to_boxes

from benchmark.metrics.functional import deletion_auc, pointing_game, tokens, truth
from benchmark.metrics.functional import localization as L
from benchmark.metrics.perturbation import RANK_RESOLUTION, pixel_order, rank_levels


def _grid_maps(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Upsampled 7x7 CAM-like maps snapped onto the rank grid (values at level centres, in [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 7, 7, generator=g)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return (rank_levels(maps.reshape(n, -1)) * RANK_RESOLUTION).reshape(n, size, size).float()


def _noisy(maps: torch.Tensor, scale: float = 1e-7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return maps + scale * torch.randn(maps.shape, generator=g)


def test_levels_are_exact_integers_of_the_stated_resolution():
    x = torch.tensor([[0.0, 0.5, 1.0, 0.5 + 0.4 * RANK_RESOLUTION], [2.0, 2.0, 2.0, 2.0]])
    assert rank_levels(x).tolist() == [[0.0, 32768.0, 65536.0, 32768.0], [0.0, 0.0, 0.0, 0.0]]
    assert rank_levels(x, None) is x


def test_maps_1e7_apart_rank_their_pixels_identically_while_exact_floats_do_not():
    maps = _grid_maps()
    noisy = _noisy(maps)
    assert torch.equal(pixel_order(maps), pixel_order(noisy))
    assert torch.equal(pixel_order(maps, rise_ties=True), pixel_order(noisy, rise_ties=True))
    assert torch.equal(pixel_order(maps, descending=False), pixel_order(noisy, descending=False))
    # without the resolution, the noise alone reorders the many tied pixels (the bug this prevents)
    assert not torch.equal(pixel_order(maps, resolution=None), pixel_order(noisy, resolution=None))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_deletion_of_maps_differing_by_noise_and_of_proportional_maps_is_identical():
    model = _model().eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 2])
    maps = _grid_maps()
    with torch.inference_mode():
        base = deletion_auc(model, x, t, maps, n_steps=16)
        assert torch.equal(base, deletion_auc(model, x, t, _noisy(maps), n_steps=16))
        # equal by construction up to scale and rounding (Grad-CAM vs XGrad-CAM on a GAP + linear head)
        assert torch.equal(base, deletion_auc(model, x, t, (maps * 3.7).float(), n_steps=16))


def test_pointing_game_argmax_ignores_noise_below_the_resolution():
    maps = torch.zeros(2, 16, 16)
    maps[:, 2, 3] = 1.0
    maps[:, 12, 12] = 1.0  # two maxima: the first in raster order is the point (2, 3)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, 12, 12] = True
    noisy = maps.clone()
    noisy[:, 12, 12] += 1e-7  # exact floats would move the point to (12, 12)
    assert pointing_game(maps, mask, tolerance=2).tolist() == pointing_game(noisy, mask, tolerance=2).tolist() == [0, 0]
    assert pointing_game(noisy, mask, tolerance=2, resolution=None).tolist() == [1, 1]


# -- thresholds: MaxBoxAcc, PxAP, mask IoU, box IoU, TAM's IoUs; the truth metrics' top-k and maxima ----------
def _threshold_scores(maps: torch.Tensor, masks: torch.Tensor, boxes: list[torch.Tensor], **kw) -> dict:
    """Every metric that compares a map with thresholds (or takes its top-k / maxima), on one batch."""
    k = masks.flatten(1).sum(dim=1)
    words = torch.tensor([True, False, True])
    out = {
        "mask_iou": L.mask_iou(maps, masks, **kw),
        "mask_iou_0.25": L.mask_iou(maps, masks, 0.25, **kw),
        "box_iou": L.box_iou(maps, boxes, **kw),
        "box_iou_0.5": L.box_iou(maps, boxes, 0.5, **kw),
        "max_box_acc": L.box_best_ious(maps, boxes, 0.1, **kw),
        "max_box_acc_v1": L.box_best_ious(maps, boxes, 0.1, multi_contour=False, **kw),
        "pxap": L.pxap_histograms(maps, masks, 0.01, **kw),
        "top_k": truth.top_k_mask(maps, k, **kw),
        "shortcut_pointing": truth.shortcut_pointing(maps, masks, **kw),
        "pointing_game": pointing_game(maps, masks, tolerance=3, **kw),
    }
    if not kw:  # TAM's token IoUs (no resolution argument: they always use the default)
        image = torch.zeros(3, dtype=torch.long)  # the three rows are words of one image
        out["obj_iou"] = tokens.object_word_iou(maps, masks, words)
        out["obj_iou_0.5"] = tokens.object_word_iou(maps, masks, words, 0.5)
        out["func_iou"] = tokens.function_word_iou(maps, ~words, noun=words, image=image)
        out["func_iou_0.5"] = tokens.function_word_iou(maps, ~words, 0.5)
    return out


def _masks_and_boxes(n: int = 3, size: int = 32) -> tuple[torch.Tensor, list[torch.Tensor]]:
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        masks[i, 4 + 3 * i : 20 + 2 * i, 6 + i : 24] = True
    return masks, [b[None] for b in masks_to_boxes(masks)]


#: metrics of the map's own scale (thresholds on s, not on s / max or the normalised map): not scale-invariant
ABSOLUTE = {"mask_iou", "mask_iou_0.25", "obj_iou", "obj_iou_0.5", "func_iou", "func_iou_0.5"}


@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_metrics_of_maps_1e7_apart_are_bit_identical(seed):
    maps = _grid_maps(seed=seed)
    masks, boxes = _masks_and_boxes()
    base = _threshold_scores(maps, masks, boxes)
    scaled = (maps * 3.7).float()  # equal up to scale and rounding (Grad-CAM vs XGrad-CAM)
    for noisy in (_noisy(maps, seed=seed + 1), _noisy(maps, 3e-7, seed=seed + 2), scaled):
        other = _threshold_scores(noisy, masks, boxes)
        for name, value in base.items():
            if noisy is scaled and name in ABSOLUTE:
                continue
            assert torch.equal(torch.nan_to_num(value, 7.0), torch.nan_to_num(other[name], 7.0)), name


def test_values_on_a_threshold_stay_on_its_side_while_exact_floats_flip():
    """Plateaus exactly at the thresholds (0.5, 0.15 max, a PxAP bin edge, equal maxima), and the same maps
    1e-7 lower there: at the stated resolution nothing moves; with exact floats each score changes."""
    masks, boxes = _masks_and_boxes()
    maps = torch.zeros(3, 32, 32)
    maps[:, 0, 0] = 1.0  # the maximum: min-max normalisation is the identity
    maps[:, 6:18, 8:22] = 0.5  # mask IoU's threshold, a PxAP bin edge
    maps[:, 20:30, 2:30] = 0.15  # the Grad-CAM box threshold (0.15 max)
    maps[:, 10, 12] = 1.0  # a second maximum inside the mask (pointing ties, top-k ties)
    noisy = maps.clone()
    noisy[maps == 0.5] -= 1e-7
    noisy[maps == 0.15] -= 1e-7
    noisy[:, 0, 0] += 1e-7
    a, b = _threshold_scores(maps, masks, boxes), _threshold_scores(noisy, masks, boxes)
    exact_a = _threshold_scores(maps, masks, boxes, resolution=None)
    exact_b = _threshold_scores(noisy, masks, boxes, resolution=None)
    for name in ("mask_iou", "box_iou", "pxap", "shortcut_pointing", "max_box_acc"):
        assert torch.equal(torch.nan_to_num(a[name], 7.0), torch.nan_to_num(b[name], 7.0)), name
        # at the resolution, the value on the threshold keeps the exact comparison's side
        assert torch.equal(torch.nan_to_num(a[name], 7.0), torch.nan_to_num(exact_a[name], 7.0)), name
    for name in ("mask_iou", "box_iou", "pxap", "shortcut_pointing"):
        assert not torch.equal(exact_a[name], exact_b[name]), name  # the bug the resolution prevents
