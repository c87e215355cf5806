"""Perturbation CAMs that run extra batched forwards: Score-CAM and Ablation-CAM.

Specification: docs/methods.md#scorecam and docs/methods.md#ablationcam.
"""

from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .base import ExplainContext, forward_autocast, register_method
from .capture import hooked
from .gradient import weighted_sum


def interp_mode(size: tuple[int, ...]) -> str:
    """``"bilinear"`` for an ``(H, W)`` size, ``"trilinear"`` for a ``(T, H, W)`` one."""
    return "trilinear" if len(size) == 3 else "bilinear"


def channel_masks(acts: Tensor, size: tuple[int, ...], align_corners: bool = True, eps: float = 1e-8) -> Tensor:
    """Upsample each channel ``[C,h,w] -> [C,H,W]`` and min-max it to [0,1] (Score-CAM step 1-2).

    Volumes and clips: ``[C,t,h,w] -> [C,T,H,W]`` (trilinear).
    """
    up = F.interpolate(acts[None], size=size, mode=interp_mode(size), align_corners=align_corners)[0]
    flat = up.flatten(1)
    shape = (-1,) + (1,) * (up.ndim - 1)
    lo = flat.min(1).values.view(shape)
    hi = flat.max(1).values.view(shape)
    return (up - lo) / (hi - lo + eps)


@register_method(
    "scorecam",
    family="perturbation",
    needs_gradients=False,
    cost="expensive",  # one forward per live channel of the target layer
    paper="Wang et al. 2020, eq. 3-5",
)
def scorecam(ctx: ExplainContext, variant: str = "pgc") -> Tensor:
    """Score-CAM (Wang et al. CVPRW 2020).

    ``variant="pgc"`` (default, pytorch-grad-cam): masks from align_corners=True upsampling + min-max,
    score = target logit of ``x * M_k``, weights = softmax over channels, map = ``sum_k w_k A_k`` at low
    resolution. ``variant="official"`` (haofanwang/Score-CAM): score = softmax probability, no channel
    softmax, constant channels skipped, map = ``sum_k w_k U_k`` over the *upsampled* activations.
    Masked images are built per image and scored in chunks of ``ctx.forward_batch_size`` (never all B*C at once).
    A channel that is constant over the image (common: 30-60 % of efficientnet_lite0's 1,280 head channels
    on real photos are all zero after the activation) has an all-zero mask, so its masked input is ``x*0``
    for every such channel: "pgc" scores that input once and shares it, "official" skips those channels
    (their weight is 0 by definition). The maps are unchanged; the forwards drop by that share.
    """
    if variant not in ("pgc", "official"):
        raise InputError(f"scorecam variant must be 'pgc' or 'official', got {variant!r}.")
    a = ctx.capture.activations
    size = ctx.input_size
    out = []
    for b in range(a.shape[0]):
        official = variant == "official"
        m = channel_masks(a[b], size, align_corners=not official)  # [C,H,W]
        c = m.shape[0]
        xb, t = ctx.images[b][None], ctx.targets[b]
        zero = m.flatten(1).amax(dim=1) == 0  # constant channel -> all-zero mask -> input x*0
        live = (~zero).nonzero().flatten()
        scores = torch.zeros(c, device=a.device)
        for i in range(0, live.shape[0], ctx.forward_batch_size):
            ch = live[i : i + ctx.forward_batch_size]
            x = xb * m[ch, None].to(ctx.images.dtype)
            scores[ch] = ctx.forward_scores(x, t.expand(ch.shape[0]), softmax=official)
        if not official and bool(zero.any()):
            scores[zero] = ctx.forward_scores(xb * 0, t[None])  # one forward shared by every all-zero mask
        if official:
            up = F.interpolate(a[b][None], size=size, mode=interp_mode(size), align_corners=False)[0]
            flat = up.flatten(1)
            const = flat.max(1).values == flat.min(1).values
            w = torch.where(const, torch.zeros_like(scores), scores)
            cam = _channel_sum(w.to(up.dtype), up)
        else:
            w = scores.softmax(dim=0)
            cam = _channel_sum(w.to(a.dtype), a[b])
        out.append(cam)
    return torch.stack(out)  # official: [B,H,W] already at input size; pgc: [B,h,w]


def _channel_sum(w: Tensor, a: Tensor) -> Tensor:
    """``sum_k w_k A_k`` of one image: ``[C]`` x ``[C,h,w]`` (or ``[C,t,h,w]``)."""
    if a.ndim == 4:
        return torch.einsum("c,cthw->thw", w, a)
    return torch.einsum("c,chw->hw", w, a)


_WARNED: list[bool] = []


def default_ablation_value(acts: Tensor) -> float:
    """pytorch-grad-cam's stated rule, per image: 0 if the activations are non-negative, else ``min(A) - 1e7``.

    (pgc itself recomputes the minimum after each in-place ablation, so with negative activations its
    k-th ablated row gets ``min(A) - k*1e7``; that drift is a bug we do not reproduce.)
    """
    lo = float(acts.min())
    return 0.0 if lo >= 0 else lo - 1e7


@register_method(
    "ablationcam",
    family="perturbation",
    needs_gradients=False,
    cost="expensive",  # one forward per channel of the target layer
    paper="Desai & Ramaswamy 2020, eq. 2-3",
)
def ablationcam(ctx: ExplainContext, ablation_value: float | None = None) -> Tensor:
    """Ablation-CAM: ``w_k = (y^c - y^c_{-k}) / y^c``; ``M = sum_k w_k A_k`` (Desai & Ramaswamy WACV 2020).

    ``y^c_{-k}`` is the target logit with channel k of the target layer's output overwritten by
    ``ablation_value`` (None = pgc's rule, see :func:`default_ablation_value`; 0.0 = the paper's zeroing), done by
    a forward hook on the target module, batched over channels. The hook is removed even on error and
    the model is never modified. A zero logit is guarded with 1e-7; a negative one flips every weight's
    sign (paper-faithful) and warns.
    """
    cap = ctx.capture
    a = cap.activations
    if ctx.reshape is not None:
        raise NotImplementedError(
            "ablationcam on reshaped (transformer token) layers is not supported yet; use a CNN layer."
        )
    y = cap.logits.gather(1, ctx.targets[:, None]).squeeze(1).float()
    if (y < 0).any() and not _WARNED:
        _WARNED.append(True)  # once per process: the runner records the sign in the tables anyway
        warnings.warn(
            "Ablation-CAM: a target logit is negative, so every channel weight changes sign "
            "(paper-faithful behaviour).",
            RuntimeWarning,
            stacklevel=2,
        )
    b, c = a.shape[:2]
    weights = torch.empty(b, c, device=a.device)
    state: dict = {}

    def ablate(out: Tensor) -> Tensor:
        rows = state["acts"].to(out.dtype).clone()
        value = state["value"]
        if isinstance(value, Tensor):
            value = value.to(rows.dtype)
        rows[torch.arange(rows.shape[0], device=rows.device), state["channels"]] = value
        return rows

    if ablation_value is None:  # pgc's rule per image, as a tensor: no host-device sync per image
        lo = a.flatten(1).min(dim=1).values
        values = torch.where(lo >= 0, torch.zeros_like(lo), lo - 1e7)
    with hooked(ctx.layer, ablate, model=ctx.model):
        for i in range(b):
            state["value"] = ablation_value if ablation_value is not None else values[i]
            for j in range(0, c, ctx.forward_batch_size):
                ch = torch.arange(j, min(c, j + ctx.forward_batch_size), device=a.device)
                state["acts"] = a[i][None].expand(len(ch), *a.shape[1:])
                state["channels"] = ch
                weights[i, ch] = _ablated_scores(ctx, i, state)
    denom = torch.where(y.abs() < 1e-7, torch.full_like(y, 1e-7), y)
    w = (y[:, None] - weights) / denom[:, None]
    return weighted_sum(w, a)


#: Target layers whose downstream computation was checked to broadcast a batch of ablated activations
#: against the rest of a one-image forward (True) or found not to (False).
_TAIL_OK: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def _target_logits(ctx: ExplainContext, x: Tensor, i: int, n: int) -> Tensor:
    with torch.inference_mode(), forward_autocast(x.device):
        logits = ctx.model(x).float()
    if logits.ndim != 2 or logits.shape[0] != n:
        raise RuntimeError(f"expected {n} rows of logits, got shape {tuple(logits.shape)}")
    return logits[:, ctx.targets[i]]


def _ablated_scores(ctx: ExplainContext, i: int, state: dict) -> Tensor:
    """Target logits of image ``i`` under the ablations the layer hook substitutes (``state``), ``[n]``.

    Every ablated copy shares the image, so everything upstream of the target layer is the same for all
    of them: the forward runs on the **single** image and the hook replaces the layer's one-row output by
    the ``n`` ablated rows, which the rest of the network carries as a batch (a tensor from upstream, e.g.
    a skip connection, broadcasts and equals what ``n`` identical rows would give). The definition is
    unchanged -- ``y^c_{-k}`` is the same logit -- at the cost of one upstream pass per chunk instead of
    ``n`` (pytorch-grad-cam forwards ``n`` full copies). The first use of a target layer checks this
    against the ``n``-copy forward on two ablations; a network whose downstream code cannot carry the
    batch (a concatenation with an upstream tensor, a reshape to the input's batch size) or disagrees
    falls back to full copies for good.
    """
    img = ctx.images[i][None]
    n = int(state["channels"].shape[0])
    ok = _TAIL_OK.get(ctx.layer)
    if ok is None:
        try:
            tail = _target_logits(ctx, img, i, n)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError:  # the downstream code cannot carry a batch the input does not have
            ok = False
        else:
            k = min(2, n)
            saved = state["acts"], state["channels"]
            state["acts"], state["channels"] = saved[0][:k], saved[1][:k]
            try:
                full = _target_logits(ctx, img.expand(k, *img.shape[1:]), i, k)
            finally:
                state["acts"], state["channels"] = saved
            scale = 1.0 + float(full.abs().max())
            ok = bool(torch.allclose(tail[:k], full, rtol=1e-3, atol=1e-4 * scale))
        _TAIL_OK[ctx.layer] = ok
        if ok:
            return tail
    if ok:
        return _target_logits(ctx, img, i, n)
    return _target_logits(ctx, img.expand(n, *img.shape[1:]), i, n)
