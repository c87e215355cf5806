"""A new CAM method in one file: Grad-CAM weighted by positive gradients only.

Load it with ``--plugin examples/contrib/my_method.py`` (or ``plugins = [...]`` in a suite).
"""

import torch

from benchmark.methods import ExplainContext, register_method


@register_method("posgrad_cam", family="gradient", paper="CONTRIBUTING example")  # parameters: the signature
def posgrad_cam(ctx: ExplainContext, power: float = 1.0) -> torch.Tensor:
    """``w_k = mean_ij ReLU(g_k)^power``, ``M = sum_k w_k A_k``; returns the raw ``[B,h,w]`` map."""
    cap = ctx.capture  # A, dy^c/dA and the logits: one forward+backward shared by every method
    assert cap.gradients is not None
    space = tuple(range(2, cap.activations.ndim))  # (h, w), or (t, h, w) of volumes and clips
    weights = cap.gradients.clamp_min(0).pow(power).mean(dim=space)  # [B, C]
    return torch.einsum("bc,bc...->b...", weights, cap.activations)  # ReLU, min-max, upsampling: shared
