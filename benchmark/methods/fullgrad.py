"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): input-gradient and bias-gradient saliency of the whole network.

Not a single-layer method: the target layer is ignored. It makes **its own** forward and backward pass over
the whole model (it cannot reuse the shared capture), collecting the gradient of the target logit with
respect to the input and to the output of every layer that adds a per-channel bias.

``S = psi(|x * df/dx|) + sum_l sum_c psi(|b_c^l * df/dz_c^l|)`` (paper eq. 7), where ``psi`` min-max
normalises each (image, channel) map and upsamples it bilinearly to the input size. As pytorch-grad-cam
``FullGrad``: bias layers are modules whose type is exactly ``nn.Conv2d`` or ``nn.BatchNorm2d`` with a bias;
a BatchNorm's bias is its eval-mode effective bias ``beta - mu gamma / sqrt(var + eps)``; the input term is
normalised per RGB channel; ``psi`` divides by ``max - min + eps`` with pgc's ``eps = 1e-7``. That absolute
eps is a noise floor that matters: layers whose ``|b g|`` is ~1e-8 (saturated gates) are squashed instead of
counting as much as any other channel. ``eps=0`` gives the paper's scale-free ``psi`` (a map whose range is
below 1e-6 of its magnitude then counts as constant, 0).
Upsampling is linear, so each layer's channel sum is taken at its own resolution and upsampled once.
On volumes and clips ``[B,C,T,H,W]`` the bias layers are the ``nn.Conv3d`` / ``nn.BatchNorm3d`` modules, and
``psi`` normalises each (volume, channel) map over its three axes and upsamples it trilinearly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ExplainContext, register_method
from .postprocess import REL_TOL, upsample

BIAS_TYPES = (nn.Conv2d, nn.BatchNorm2d)
BIAS_TYPES_3D = (nn.Conv3d, nn.BatchNorm3d)


def bias_layers(model: nn.Module, volumetric: bool = False) -> list[nn.Module]:
    """Modules of exact type Conv2d / BatchNorm2d that have a bias (pgc's selection rule); Conv3d /
    BatchNorm3d with ``volumetric``."""
    types = BIAS_TYPES_3D if volumetric else BIAS_TYPES
    return [m for m in model.modules() if type(m) in types and getattr(m, "bias", None) is not None]


def effective_bias(layer: nn.Module) -> Tensor:
    """The per-channel bias the layer adds in eval mode (BatchNorm folded: ``beta - mu gamma / sigma``)."""
    if (
        isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm3d))
        and layer.running_mean is not None
        and layer.running_var is not None
    ):
        gamma = layer.weight if layer.weight is not None else torch.ones_like(layer.running_mean)
        return (layer.bias - layer.running_mean * gamma / torch.sqrt(layer.running_var + layer.eps)).detach()
    bias = layer.bias
    assert isinstance(bias, Tensor), f"{type(layer).__name__} has no bias tensor"
    return bias.detach()


def channel_minmax(x: Tensor, eps: float = 1e-7, rel_tol: float = REL_TOL) -> Tensor:
    """Min-max each ``[h,w]`` map of ``[B,C,h,w]``: ``(x - min) / (max - min + eps)`` (pgc ``scale_cam_image``).

    With ``eps=0`` (scale-free) a map whose range is at most ``rel_tol`` times its largest magnitude is
    constant up to float rounding and becomes 0 rather than amplified rounding noise.
    """
    axes = (-3, -2, -1) if x.ndim == 5 else (-2, -1)
    lo = x.amin(dim=axes, keepdim=True)
    hi = x.amax(dim=axes, keepdim=True)
    span = hi - lo
    if eps > 0:
        return (x - lo) / (span + eps)
    ok = span > rel_tol * torch.maximum(hi.abs(), lo.abs())
    return torch.where(ok, (x - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(x))


@register_method(
    "fullgrad",
    family="gradient",
    layer_free=True,
    paper="Srinivas & Fleuret 2019 (FullGrad), eq. 7",
)
def fullgrad(ctx: ExplainContext, eps: float = 1e-7) -> Tensor:
    """FullGrad saliency at input resolution ``[B,H,W]`` (see the module docstring); ignores ``ctx.layer``.

    ``eps``: the per-map normalisation's noise floor (pgc 1e-7; 0 = scale-free).
    """
    volumetric = ctx.images.ndim == 5
    layers = bias_layers(ctx.model, volumetric)
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
    total = channel_minmax((x.detach() * gx).abs(), eps).sum(dim=1)
    for (module, _), g in zip(outputs, grads[1:], strict=True):
        if g is None or g.ndim != ctx.images.ndim:
            continue
        bias = effective_bias(module).to(g.dtype).view(1, -1, *([1] * (g.ndim - 2)))
        total = total + upsample(channel_minmax((bias * g).abs(), eps).sum(dim=1), size)
    return total
