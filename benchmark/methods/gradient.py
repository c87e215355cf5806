"""Gradient CAM methods: pure functions of the shared capture (A, dy^c/dA) — docs/methods.md#cam to #layercam.

Each returns the raw ``[B,h,w]`` map; the common pipeline (ReLU, min-max, upsampling) runs afterwards.
On volumes and clips the activations are ``[B,C,t,h,w]``: every channel weight (a mean or sum "over the
spatial positions" in the papers) runs over all the non-channel axes (:func:`spatial`), maps are ``[B,t,h,w]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import MethodUndefinedError
from ..types import Capture
from .base import ExplainContext, register_method
from .capture import capture as _capture

SPATIAL = (-2, -1)
SPATIAL_3D = (-3, -2, -1)


def spatial(x: Tensor) -> tuple[int, ...]:
    """The axes a channel weight reduces over: ``(-2, -1)`` of ``[B,C,h,w]``, ``(-3, -2, -1)`` of ``[B,C,t,h,w]``."""
    return SPATIAL_3D if x.ndim == 5 else SPATIAL


def weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """``sum_k w_k A_k``: ``[B,C]`` x ``[B,C,h,w]`` -> ``[B,h,w]`` (``[B,C,t,h,w]`` -> ``[B,t,h,w]``)."""
    if acts.ndim == 5:
        return torch.einsum("bc,bcthw->bthw", weights.to(acts.dtype), acts)
    return torch.einsum("bc,bchw->bhw", weights.to(acts.dtype), acts)


def _grads(cap: Capture) -> Tensor:
    assert cap.gradients is not None, "this capture has no gradients"
    return cap.gradients


# -- CAM ------------------------------------------------------------------------------------------
def classifier_weights(model: nn.Module, activations: Tensor, logits: Tensor) -> Tensor:
    """The FC weight matrix ``[K, C]`` of the head CAM needs: the ``nn.Linear`` ``(W, b)`` of ``model`` with
    ``logits = W GAP(A) + b`` on every image of the batch (Zhou et al. 2016, eq. 2: the layer reaches the
    logits through global average pooling and that linear layer only).

    Checked on the captured batch, never by channel count alone: the spatial mean of the layer's activations
    ``A`` ``[B,C,...]`` is pushed through each ``nn.Linear`` with ``C`` inputs and must give the captured
    logits to float tolerance. Anything between the layer and the pooling (another conv block, a non-linear
    head, token pooling) breaks the identity and makes CAM undefined:
    :class:`~benchmark.errors.MethodUndefinedError`, recorded as ``undefined`` rows.
    """
    channels = activations.shape[1]
    if activations.ndim < 3 or logits is None or logits.ndim != 2:
        raise MethodUndefinedError(
            "CAM is undefined here: it needs a feature map [B,C,...] and class logits [B,K]; got activations "
            f"{tuple(activations.shape)}. Use Grad-CAM."
        )
    pooled = activations.detach().double().mean(dim=tuple(range(2, activations.ndim)))  # [B, C]
    ref = logits.detach().double()
    tol = 1e-4 * (1.0 + float(ref.abs().max()))
    for m in reversed([m for m in model.modules() if isinstance(m, nn.Linear)]):
        if m.in_features != channels or m.out_features != ref.shape[1]:
            continue
        w = m.weight.detach().double().to(pooled.device)
        b = m.bias.detach().double().to(pooled.device) if m.bias is not None else 0.0
        if bool(((pooled @ w.T + b) - ref.to(pooled.device)).abs().max() <= tol):
            return m.weight
    raise MethodUndefinedError(
        f"CAM is undefined for this layer: {type(model).__name__} does not feed it to the classifier through "
        f"global average pooling only (no nn.Linear maps the {channels}-channel layer's spatial mean to the "
        "logits). CAM (Zhou et al. 2016, eq. 2) needs layer -> GAP -> Linear: explain the last feature map "
        "before the pooling, or use Grad-CAM."
    )


@register_method("cam", family="gradient", relu=False, needs_gradients=False, paper="Zhou et al. 2016, eq. 2")
def cam(ctx: ExplainContext) -> Tensor:
    """CAM: ``M^c = sum_k W_fc[c,k] A_k`` (Zhou et al. CVPR 2016, eq. 2); bias ignored, no ReLU. Defined only
    where the explained layer reaches the logits through GAP -> Linear (:func:`classifier_weights`)."""
    cap = ctx.capture
    a = cap.activations
    w = classifier_weights(ctx.model, a, cap.logits).detach().to(a.dtype)
    return weighted_sum(w[ctx.targets], a)


# -- Grad-CAM family ------------------------------------------------------------------------------
@register_method("gradcam", family="gradient", paper="Selvaraju et al. 2017, eq. 1-2")
def gradcam(ctx: ExplainContext) -> Tensor:
    """Grad-CAM: ``alpha_k = mean_ij g_k``; ``M = sum_k alpha_k A_k`` (Selvaraju et al. ICCV 2017)."""
    cap = ctx.capture
    return weighted_sum(_grads(cap).mean(dim=spatial(cap.activations)), cap.activations)


def gradcampp_weights(acts: Tensor, d1: Tensor, d2: Tensor, d3: Tensor, alpha_norm: bool = False) -> Tensor:
    """Grad-CAM++ channel weights from gradient powers (Chattopadhyay et al. WACV 2018, eq. 19).

    ``alpha = D2 / (2 D2 + sum_ab A_ab * D3 + 1e-6)`` (0 where the gradient is 0, as pytorch-grad-cam),
    ``w_k = sum_ij alpha_ij ReLU(D1_ij)``. With ``alpha_norm`` the authors' code also divides alpha by its
    sum over positive-gradient positions (docs/methods.md#gradcampp).
    """
    axes = spatial(acts)
    sum_a = acts.sum(dim=axes, keepdim=True)
    alpha = d2 / (2 * d2 + sum_a * d3 + 1e-6)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    if alpha_norm:
        norm = torch.where(d1 > 0, alpha, torch.zeros_like(alpha)).sum(dim=axes, keepdim=True)
        alpha = alpha / torch.where(norm != 0, norm, torch.ones_like(norm))
    return (alpha * d1.clamp_min(0)).sum(dim=axes)


@register_method("gradcampp", family="gradient", paper="Chattopadhyay et al. 2018, eq. 19")
def gradcampp(ctx: ExplainContext, alpha_norm: bool = False) -> Tensor:
    """Grad-CAM++ (paper = pytorch-grad-cam; ``alpha_norm=True`` = the authors' TF code)."""
    cap = ctx.capture
    g = _grads(cap)
    w = gradcampp_weights(cap.activations, g, g**2, g**3, alpha_norm=alpha_norm)
    return weighted_sum(w, cap.activations)


@register_method(
    "smoothgradcampp",
    family="gradient",
    paper="Omeiza et al. 2019, eq. 6-8",
    batch_consistent=False,  # noise drawn per batch
)
def smoothgradcampp(ctx: ExplainContext, n_samples: int = 4, std: float = 0.3, alpha_norm: bool = False) -> Tensor:
    """Smooth Grad-CAM++: Grad-CAM++ with gradient powers averaged over ``n_samples`` noisy inputs.

    ``x_t = x + N(0, std^2)`` in the model's input space (torchcam defaults n=4, std=0.3), seeded.
    ``D_p = mean_t g_t^p``; A is the clean activation (Omeiza et al. 2019). All noisy copies of the batch
    go through one batched forward+backward. ``std=0`` gives exactly Grad-CAM++.
    """
    cap = ctx.capture
    if std == 0 or n_samples <= 0:
        g = _grads(cap)
        return weighted_sum(gradcampp_weights(cap.activations, g, g**2, g**3, alpha_norm), cap.activations)
    b = ctx.images.shape[0]
    noise = ctx.randn((n_samples, *ctx.images.shape), salt=17).to(ctx.images.dtype)
    noisy = (ctx.images[None] + std * noise).flatten(0, 1)
    tgt = ctx.targets.repeat(n_samples)
    shape = (b, *ctx.capture.activations.shape[1:])
    d1, d2, d3 = (ctx.images.new_zeros(shape, dtype=ctx.capture.activations.dtype) for _ in range(3))
    chunk = max(1, ctx.forward_batch_size // b) * b
    for i in range(0, noisy.shape[0], chunk):
        c = _capture(ctx.model, ctx.layer, noisy[i : i + chunk], tgt[i : i + chunk], ctx.reshape)
        g = _grads(c)
        if ctx.gradient_noise is not None:
            g = ctx.gradient_noise(g)
        g = g.view(-1, b, *g.shape[1:])
        s1, s2, s3 = g.sum(0), (g**2).sum(0), (g**3).sum(0)
        d1, d2, d3 = d1 + s1, d2 + s2, d3 + s3
    d1, d2, d3 = d1 / n_samples, d2 / n_samples, d3 / n_samples
    return weighted_sum(gradcampp_weights(cap.activations, d1, d2, d3, alpha_norm), cap.activations)


@register_method("xgradcam", family="gradient", paper="Fu et al. 2020, eq. 12")
def xgradcam(ctx: ExplainContext) -> Tensor:
    """XGrad-CAM: ``w_k = sum_ij A_k(i,j) / (sum_ab A_k(a,b) + 1e-7) * g_k(i,j)`` (Fu et al. BMVC 2020)."""
    cap = ctx.capture
    a, g = cap.activations, _grads(cap)
    axes = spatial(a)
    w = (a / (a.sum(dim=axes, keepdim=True) + 1e-7) * g).sum(dim=axes)
    return weighted_sum(w, a)


@register_method("hirescam", family="gradient", paper="Draelos & Carin 2020, eq. 4")
def hirescam(ctx: ExplainContext) -> Tensor:
    """HiResCAM: ``M = sum_k g_k * A_k`` element-wise (Draelos & Carin 2020); ReLU by default as pgc."""
    cap = ctx.capture
    return (_grads(cap) * cap.activations).sum(dim=1)


@register_method("layercam", family="gradient", paper="Jiang et al. 2021, eq. 5-6")
def layercam(ctx: ExplainContext) -> Tensor:
    """Layer-CAM: ``M = sum_k ReLU(g_k) * A_k`` (Jiang et al. TIP 2021), single layer."""
    cap = ctx.capture
    return (_grads(cap).clamp_min(0) * cap.activations).sum(dim=1)
