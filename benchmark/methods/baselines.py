"""Reference maps every real method should beat: random, center bias and (with ground truth) oracle."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ExplainContext, register_method


@register_method(
    "random", family="baseline", needs_gradients=False, defaults={"resolution": 7}, batch_consistent=False
)
def random_map(ctx: ExplainContext, resolution: int = 7) -> Tensor:
    """Uniform noise on a ``resolution x resolution`` grid (upsampled like a CAM), seeded per batch.

    Each image's map depends only on the seed and its position in the batch stream; use ``seed`` to vary.
    """
    b = ctx.images.shape[0]
    return ctx.rand((b, *([resolution] * len(ctx.input_size))), salt=101)  # [B,r,r] (or [B,r,r,r] in 3-D)


@register_method("center", family="baseline", needs_gradients=False, defaults={"sigma": 0.25})
def center_map(ctx: ExplainContext, sigma: float = 0.25) -> Tensor:
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


@register_method("oracle", family="baseline", needs_gradients=False, needs_ground_truth=True)
def oracle_map(ctx: ExplainContext) -> Tensor:
    """The ground-truth mask of the target object (an upper bound for localization metrics)."""
    if ctx.masks is None:
        raise ValueError("The 'oracle' baseline needs ground-truth masks; this dataset has none.")
    return ctx.masks.float()
