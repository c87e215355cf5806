"""Top-k Grad-CAM: Grad-CAM that keeps only the k channels with the largest weights (a cambench plugin).

    python run_bench.py run quick --plugin examples/my_cam.py

Any method is ``fn(ctx, **params) -> raw Tensor[B,h,w]`` (``[B,t,h,w]`` on volumes and clips, whose activations
are ``[B,C,t,h,w]``); ReLU, min-max and upsampling are shared.
"""

import torch

from benchmark.methods import ExplainContext, register_method


@register_method("topk_gradcam", family="gradient", paper="example plugin")  # parameters: the signature
def topk_gradcam(ctx: ExplainContext, k: int = 8) -> torch.Tensor:
    """alpha_k = mean_ij dy^c/dA_k (Grad-CAM); keep the k largest alpha_k of each image, zero the rest."""
    cap = ctx.capture  # activations, gradients, logits: one forward+backward shared by all methods
    space = tuple(range(2, cap.activations.ndim))  # (h, w), or (t, h, w) of volumes and clips
    weights = cap.gradients.mean(dim=space)  # [B, C]
    top = weights.topk(min(k, weights.shape[1]), dim=1).indices
    kept = torch.zeros_like(weights).scatter(1, top, weights.gather(1, top))
    return torch.einsum("bc,bc...->b...", kept, cap.activations)  # raw map [B, h, w] ([B, t, h, w] in 3-D)
