"""Rank-based metrics rank a map quantised to a stated resolution (``RANK_RESOLUTION`` of its range) with an
index tie order (issue #24 item 6): float noise far below the resolution cannot reorder pixels, so maps equal
by construction give identical scores on every CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.metrics.functional import deletion_auc, pointing_game
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
