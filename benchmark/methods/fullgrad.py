"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): input-gradient and bias-gradient saliency of the whole network.

Not a single-layer method: the target layer is ignored. It makes **its own** forward and backward pass over
the whole model (it cannot reuse the shared capture), collecting the gradient of the target logit with
respect to the input and to the output of every layer that adds a per-channel bias.

``S = psi(|x * df/dx|) + sum_l sum_c psi(|b_c^l * df/dz_c^l|)`` (paper eq. 7), where ``psi`` min-max
normalises each (image, channel) map and upsamples it bilinearly to the input size. As pytorch-grad-cam
``FullGrad``: bias layers are modules whose type is exactly ``nn.Conv2d`` or ``nn.BatchNorm2d`` with a bias;
a BatchNorm's bias is its eval-mode effective bias ``beta - mu gamma / sqrt(var + eps)``; the input term is
normalised per RGB channel. Departure: pgc divides by ``max - min + 1e-7``; we divide by the range itself
(scale-free, as :func:`benchmark.methods.postprocess.minmax`), so maps of tiny magnitude are not squashed.
Upsampling is linear, so each layer's channel sum is taken at its own resolution and upsampled once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ExplainContext, register_method
from .postprocess import upsample

BIAS_TYPES = (nn.Conv2d, nn.BatchNorm2d)


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """Modules of exact type Conv2d / BatchNorm2d that have a bias (pgc's selection rule)."""
    return [m for m in model.modules() if type(m) in BIAS_TYPES and getattr(m, "bias", None) is not None]


def effective_bias(layer: nn.Module) -> Tensor:
    """The per-channel bias the layer adds in eval mode (BatchNorm folded: ``beta - mu gamma / sigma``)."""
    if isinstance(layer, nn.BatchNorm2d) and layer.running_mean is not None and layer.running_var is not None:
        gamma = layer.weight if layer.weight is not None else torch.ones_like(layer.running_mean)
        return (layer.bias - layer.running_mean * gamma / torch.sqrt(layer.running_var + layer.eps)).detach()
    return layer.bias.detach()


def channel_minmax(x: Tensor) -> Tensor:
    """Min-max each ``[h,w]`` map of ``[B,C,h,w]`` to [0,1]; constant maps become 0 (scale-free)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


@register_method(
    "fullgrad",
    family="gradient",
    layer_free=True,
    paper="Srinivas & Fleuret 2019 (FullGrad), eq. 7",
)
def fullgrad(ctx: ExplainContext) -> Tensor:
    """FullGrad saliency at input resolution ``[B,H,W]`` (see the module docstring); ignores ``ctx.layer``."""
    layers = bias_layers(ctx.model)
    outputs: list[tuple[nn.Module, Tensor]] = []

    def keep(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        outputs.append((module, out))
        return out.clone()  # in-place ops downstream (ReLU(inplace=True)) must not alter ``out``

    x = ctx.images.detach().clone().requires_grad_(True)
    handles = [m.register_forward_hook(keep) for m in layers]
    try:
        with torch.enable_grad():
            logits = ctx.model(x)
            score = logits.gather(1, ctx.targets.view(-1, 1)).sum()
            grads = torch.autograd.grad(score, [x, *(o for _, o in outputs)], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    size = ctx.input_size
    gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
    total = channel_minmax((x.detach() * gx).abs()).sum(dim=1)
    for (module, _), g in zip(outputs, grads[1:]):
        if g is None or g.ndim != 4:
            continue
        bias = effective_bias(module).to(g.dtype).view(1, -1, 1, 1)
        total = total + upsample(channel_minmax((bias * g).abs()).sum(dim=1), size)
    return total
