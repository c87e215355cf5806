"""Reference maps every real method should beat: random, center bias and (with ground truth) oracle."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .base import ExplainContext, register_method


@register_method("random", family="baseline", needs_gradients=False, batch_consistent=False)
def random(ctx: ExplainContext, resolution: int = 7) -> Tensor:
    """Uniform noise on a ``resolution x resolution`` grid (upsampled like a CAM), seeded per batch.

    Each image's map depends only on the seed and its position in the batch stream; use ``seed`` to vary.
    """
    b = ctx.images.shape[0]
    return ctx.rand((b, *([resolution] * len(ctx.input_size))), salt=101)  # [B,r,r] (or [B,r,r,r] in 3-D)


@register_method("center", family="baseline", needs_gradients=False)
def center(ctx: ExplainContext, sigma: float = 0.25) -> Tensor:
    """Isotropic Gaussian centred on the image, ``sigma`` as a fraction of the image side (centre bias);
    on volumes and clips centred in all three axes."""
    b = ctx.images.shape[0]
    if len(ctx.input_size) == 3:
        dev = ctx.images.device
        axes = [(torch.arange(n, device=dev, dtype=torch.float32) + 0.5) / n - 0.5 for n in ctx.input_size]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        return torch.exp(-d2 / (2 * sigma**2)).expand(b, *ctx.input_size).clone()
    h, w = ctx.input_size
    ys = (torch.arange(h, device=ctx.images.device, dtype=torch.float32) + 0.5) / h - 0.5
    xs = (torch.arange(w, device=ctx.images.device, dtype=torch.float32) + 0.5) / w - 0.5
    g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    return g.expand(b, h, w).clone()


#: Rim value of the dilated oracle: far below the mask's 1.0, so thresholded and energy-based localization
#: metrics see (almost) only the mask, while ranking-based faithfulness metrics (deletion, insertion) remove
#: or reveal the mask first and then the rim nearest-first. See docs/scenes-and-truth.md, "the silhouette artefact".
ORACLE_RIM = 0.01


@register_method(
    "oracle",
    family="baseline",
    needs_gradients=False,
    needs_ground_truth=True,
    note="the silhouette artefact: deletion/insertion remove exactly the mask first, and the object's outline "
    "(the pixels just outside the mask keep their contrast against the fill) still shows its shape, so the "
    "bare mask (mask_dilation=0) ranks low on deletion/insertion although it is the ground truth; "
    "mask_dilation=N adds a rim of N pixels with values <= 0.01 so that the object's surroundings are removed "
    "next (default 8 px, chosen by measurement: docs/scenes-and-truth.md). Localization metrics see the mask.",
)
def oracle(ctx: ExplainContext, mask_dilation: int = 8) -> Tensor:
    """The ground-truth mask of the target object (an upper bound for localization metrics).

    ``mask_dilation`` (pixels, or voxels for volumes and clips; Chebyshev distance): a rim of that width
    around the mask gets small values decreasing outwards (at most :data:`ORACLE_RIM`). Deleting exactly the
    mask leaves the object's silhouette (its outline in the fill colour still shows the shape), so a rim
    ranks the pixels around the object right after it; the mask itself keeps the top value (localization is unchanged).
    Default 8 px: measured on shapes_cnn (32 test images) it lowers deletion AUC from 0.232 to 0.181
    (simple scenes) and 0.191 to 0.164 (clutter), raises insertion AUC from 0.761 to 0.846 and 0.699 to
    0.767, and keeps the energy pointing game >= 0.99 (docs/scenes-and-truth.md). 0: the bare mask.
    """
    if ctx.masks is None:
        raise InputError("The 'oracle' baseline needs ground-truth masks; this dataset has none.")
    d = int(mask_dilation)
    if d < 0:
        raise InputError(f"mask_dilation must be >= 0 pixels, got {mask_dilation}.")
    m = ctx.masks.float()
    if d == 0:
        return m
    out, cur = m.clone(), m[:, None]
    pool = torch.nn.functional.max_pool3d if m.ndim == 4 else torch.nn.functional.max_pool2d  # volumes: 3x3x3
    for i in range(1, d + 1):  # one 3x3 dilation per pixel of rim width (d steps, not a pixel loop)
        nxt = pool(cur, 3, stride=1, padding=1)
        out = out + (nxt - cur)[:, 0] * (ORACLE_RIM * (d + 1 - i) / d)
        cur = nxt
    return out
