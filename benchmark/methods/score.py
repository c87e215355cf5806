"""Perturbation CAMs that run extra batched forwards: Score-CAM and Ablation-CAM (specs.md §1.8-1.9)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ExplainContext, register_method
from .capture import hooked
from .gradient import weighted_sum


def channel_masks(acts: Tensor, size: tuple[int, int], align_corners: bool = True, eps: float = 1e-8) -> Tensor:
    """Upsample each channel ``[C,h,w] -> [C,H,W]`` and min-max it to [0,1] (Score-CAM step 1-2)."""
    up = F.interpolate(acts[None], size=size, mode="bilinear", align_corners=align_corners)[0]
    flat = up.flatten(1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    return (up - lo) / (hi - lo + eps)


@register_method(
    "scorecam",
    family="perturbation",
    needs_gradients=False,
    defaults={"variant": "pgc"},
    paper="Wang et al. 2020, eq. 3-5",
)
def scorecam(ctx: ExplainContext, variant: str = "pgc") -> Tensor:
    """Score-CAM (Wang et al. CVPRW 2020).

    ``variant="pgc"`` (default, pytorch-grad-cam): masks from align_corners=True upsampling + min-max,
    score = target logit of ``x * M_k``, weights = softmax over channels, map = ``sum_k w_k A_k`` at low
    resolution. ``variant="official"`` (haofanwang/Score-CAM): score = softmax probability, no channel
    softmax, constant channels skipped, map = ``sum_k w_k U_k`` over the *upsampled* activations.
    Masked images are built per image and scored in chunks of ``ctx.batch_size`` (never all B*C at once).
    """
    if variant not in ("pgc", "official"):
        raise ValueError(f"scorecam variant must be 'pgc' or 'official', got {variant!r}.")
    a = ctx.capture.activations
    size = ctx.input_size
    out = []
    for b in range(a.shape[0]):
        official = variant == "official"
        m = channel_masks(a[b], size, align_corners=not official)  # [C,H,W]
        c = m.shape[0]
        idx = ctx.targets[b].expand(c)
        scores = torch.empty(c, device=a.device)
        for i in range(0, c, ctx.batch_size):
            x = ctx.images[b][None] * m[i : i + ctx.batch_size, None].to(ctx.images.dtype)
            scores[i : i + x.shape[0]] = ctx.forward_scores(x, idx[i : i + x.shape[0]], softmax=official)
        if official:
            up = F.interpolate(a[b][None], size=size, mode="bilinear", align_corners=False)[0]
            flat = up.flatten(1)
            const = flat.max(1).values == flat.min(1).values
            w = torch.where(const, torch.zeros_like(scores), scores)
            cam = torch.einsum("c,chw->hw", w.to(up.dtype), up)
        else:
            w = scores.softmax(dim=0)
            cam = torch.einsum("c,chw->hw", w.to(a.dtype), a[b])
        out.append(cam)
    return torch.stack(out)  # official: [B,H,W] already at input size; pgc: [B,h,w]


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
    defaults={"ablation_value": None},
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
            for j in range(0, c, ctx.batch_size):
                ch = torch.arange(j, min(c, j + ctx.batch_size), device=a.device)
                state["acts"] = a[i][None].expand(len(ch), -1, -1, -1)
                state["channels"] = ch
                x = ctx.images[i][None].expand(len(ch), -1, -1, -1)
                weights[i, ch] = ctx.forward_scores(x, ctx.targets[i].expand(len(ch)))
    denom = torch.where(y.abs() < 1e-7, torch.full_like(y, 1e-7), y)
    w = (y[:, None] - weights) / denom[:, None]
    return weighted_sum(w, a)

