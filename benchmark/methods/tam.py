"""Token-level explanations of an image-to-text model: TAM and the token's cross-attention.

**TAM** (Token Activation Map; Li, Wang, Ding, Wang & Li, ICCV 2025, "Token Activation Map to Visually
Explain Multimodal LLMs") explains generated token ``t`` (class ``c = y_t``) in three steps:

1. **Token logit on the visual tokens** (the paper's base map, Eq. 1): the LM head read on the final
   hidden state ``h_j`` of every visual token, ``A_t[j] = ReLU(w_c . h_j + b_c)``
   (:func:`token_logit_maps`).
2. **Estimated causal inference** (ECI, Eqs. 2-5): each earlier context token ``i < t`` has its own map
   ``A_i`` (its own class); the *interference* of the context is their mixture
   ``I_t = sum_i r_i A_i / sum_i r_i``, weighted by the relevance ``r_i = ReLU(w_c . h_i + b_c)`` of the
   target class on the context token's hidden state (tokens repeating the target word are left out);
   the map keeps what the context does not explain: ``ReLU(A_t - s I_t)`` with the least-squares scale
   ``s = <A_t, I_t> / <I_t, I_t>`` (:func:`estimated_causal_inference`).
3. **Rank Gaussian filter** (RGF, Eqs. 6-7): in each ``k x k`` window (reflect padding) the sorted
   values are averaged with Gaussian weights over their **rank**, centred on the median rank, with
   ``sigma`` the window's coefficient of variation (std / mean): a flat window is median-filtered, a
   varied one is smoothed over many ranks (:func:`rank_gaussian_filter`). A window with mean <= 0 gives 0;
   at ``sigma = 0`` (a constant window) the limit, the median, is used.

The authors' code min-max normalises the visual and text scores together before the filter; the filter
commutes with a positive rescaling (``sigma`` is scale-free), and the benchmark's shared post-processing
min-max normalises every map, so that step is left to it.

**Cross-attention** (``token_cross_attention``): the attention weights of the token's query on the
visual keys in the last decoder block, averaged over heads (the raw attention baseline of
Abnar & Zuidema 2020 / Chefer et al. 2021, read on the text query).

These methods need a captioner behind :class:`benchmark.models.captioner.TokenTargets` (``target =
"tokens"``); any other model is refused with a clear error. Grad-CAM, Grad-CAM++ and LayerCAM need no
code here: the view's logits are the token logits, and its target layer is the encoder output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CambenchError
from .base import ExplainContext, register_method


def token_logit_maps(hidden: Tensor, weight: Tensor, bias: Tensor | None, classes: Tensor) -> Tensor:
    """TAM step 1: ``ReLU(w_c . h_j + b_c)`` for hidden states ``[B, N, d]`` and classes ``[B]`` or
    ``[B, K]`` (returns ``[B, N]`` or ``[B, K, N]``)."""
    w = weight[classes]  # [B, d] or [B, K, d]
    b = bias[classes] if bias is not None else torch.zeros(classes.shape, dtype=hidden.dtype, device=hidden.device)
    if classes.ndim == 1:
        return (torch.einsum("bnd,bd->bn", hidden, w) + b[:, None]).clamp_min(0)
    return (torch.einsum("bnd,bkd->bkn", hidden, w) + b[..., None]).clamp_min(0)


def estimated_causal_inference(target: Tensor, context: Tensor, relevance: Tensor, valid: Tensor) -> Tensor:
    """TAM step 2: ``ReLU(A_t - s I_t)``, ``I_t = sum_i r_i A_i / sum_i r_i`` over the valid context tokens,
    ``s = argmin_s ||A_t - s I_t||^2``.

    ``target`` ``[B, N]``; ``context`` ``[B, K, N]`` (the context tokens' own maps); ``relevance`` ``[B, K]``
    (>= 0); ``valid`` ``[B, K]`` bool (earlier tokens, not repeating the target word). A map without valid
    context, or whose interference is zero, is returned unchanged.
    """
    r = relevance.clamp_min(0) * valid.to(relevance.dtype)
    w = r / (r.sum(dim=1, keepdim=True) + 1e-8)
    interference = torch.einsum("bk,bkn->bn", w, context)
    ii = (interference * interference).sum(dim=1)
    s = (target * interference).sum(dim=1) / ii.where(ii > 0, torch.ones_like(ii))
    s = torch.where(ii > 0, s, torch.zeros_like(s))
    return (target - s[:, None] * interference).clamp_min(0)


def rank_gaussian_filter(maps: Tensor, kernel_size: int = 3) -> Tensor:
    """TAM step 3 on maps ``[B, h, w]``: rank-Gaussian weighted mean of each ``k x k`` window (see the
    module docstring); ``kernel_size`` odd, 1 = identity."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise CambenchError(f"rank_gaussian_filter needs an odd kernel_size >= 1, got {kernel_size}.")
    if kernel_size == 1:
        return maps.clone()
    b, h, w = maps.shape
    p = kernel_size // 2
    padded = F.pad(maps[:, None], (p, p, p, p), mode="reflect")  # numpy's "reflect": the edge is not repeated
    windows = F.unfold(padded, kernel_size).transpose(1, 2)  # [B, h*w, k*k]
    values = windows.sort(dim=-1).values
    mean = values.mean(dim=-1, keepdim=True)
    sigma = values.std(dim=-1, unbiased=False, keepdim=True) / mean.where(mean > 0, torch.ones_like(mean))
    k2 = kernel_size * kernel_size
    ranks = torch.arange(k2, dtype=maps.dtype, device=maps.device) - k2 // 2
    flat = sigma <= 0
    logw = -(ranks**2) / (2 * sigma.where(~flat, torch.ones_like(sigma)) ** 2)
    weights = torch.softmax(logw, dim=-1)  # normalised Gaussian over the ranks
    median = torch.zeros_like(weights)
    median[..., k2 // 2] = 1.0
    weights = torch.where(flat, median, weights)
    out = (values * weights).sum(dim=-1, keepdim=True)
    out = torch.where(mean > 0, out, torch.zeros_like(out))
    return out.view(b, h, w)


def _view(ctx: ExplainContext, method: str) -> Any:
    model = ctx.model
    if not hasattr(model, "token_positions") or not hasattr(model, "captioner"):
        raise CambenchError(
            f"Method {method!r} explains a generated token of an image-to-text model: it needs the captioner's "
            f'token view (target = "tokens", model shapes_captioner), got {type(model).__name__}. Use it in a '
            'suite experiment with target = "tokens", or choose a class-logit method.'
        )
    return model


def tam_from_hidden(
    hidden_visual: Tensor,
    hidden_text: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    captions: Tensor,
    positions: Tensor,
    grid: tuple[int, int],
    eci: bool = True,
    kernel_size: int = 3,
) -> Tensor:
    """TAM of caption word ``captions[b, positions[b]]`` from the final hidden states.

    ``hidden_visual`` ``[B, N, d]``; ``hidden_text`` ``[B, T, d]`` at the teacher-forced inputs
    ``[<bos>, y_0, ..., y_{T-2}]`` (so word ``y_i`` is the input at text position ``i + 1``); ``captions``
    ``[B, T]`` the words ``y``. Context of word ``t``: the words ``y_i``, ``i < t``, other than ``y_t``.
    """
    b, t_len = captions.shape
    rows = torch.arange(b, device=captions.device)
    cls = captions[rows, positions]  # [B]
    a_t = token_logit_maps(hidden_visual, weight, bias, cls)  # [B, N]
    if eci and t_len > 1:
        ctx_maps = token_logit_maps(hidden_visual, weight, bias, captions)  # [B, T, N]: each word's own map
        # relevance of the target class on context word i's hidden state (input position i + 1)
        text_logits = torch.einsum("btd,bd->bt", hidden_text, weight[cls])
        if bias is not None:
            text_logits = text_logits + bias[cls][:, None]
        rel = torch.zeros(b, t_len, dtype=hidden_text.dtype, device=hidden_text.device)
        rel[:, : t_len - 1] = text_logits[:, 1:t_len].clamp_min(0)
        idx = torch.arange(t_len, device=captions.device)
        valid = (idx[None] < positions[:, None]) & (captions != cls[:, None])
        a_t = estimated_causal_inference(a_t, ctx_maps, rel, valid)
    maps = a_t.view(b, *grid)
    return rank_gaussian_filter(maps, kernel_size) if kernel_size > 1 else maps


def _tam(ctx: ExplainContext, name: str, eci: bool, kernel_size: int) -> Tensor:
    view = _view(ctx, name)
    c, t, _ = view.token_positions(ctx.targets)
    captions = view.captions[c]  # [B, T]
    out = view.captioner.decode(view.captioner.encoder(ctx.images), view.teacher_inputs()[c])
    n = out.n_visual
    head = view.captioner.head
    return tam_from_hidden(
        out.hidden[:, :n].detach(),
        out.hidden[:, n:].detach(),
        head.weight.detach(),
        None if head.bias is None else head.bias.detach(),
        captions,
        t,
        (view.captioner.grid, view.captioner.grid),
        eci=eci,
        kernel_size=kernel_size,
    )


@register_method(
    "tam",
    family="projection",
    needs_gradients=False,
    paper="Li et al., ICCV 2025 (Token Activation Map)",
    architectures=("captioner", "tokentargets"),
)
def tam(ctx: ExplainContext, eci: bool = True, kernel_size: int = 3) -> Tensor:
    """Token Activation Map: token logit on the visual tokens, ECI, rank Gaussian filter (module docstring).
    ``eci=False`` / ``kernel_size=1`` are the paper's ablations without ECI / without the filter."""
    with torch.no_grad():
        return _tam(ctx, "tam", bool(eci), int(kernel_size))


@register_method(
    "token_cross_attention",
    family="projection",
    needs_gradients=False,
    paper="raw attention of the token's query on the visual tokens (Abnar & Zuidema 2020)",
    architectures=("captioner", "tokentargets"),
)
def token_cross_attention(ctx: ExplainContext, block: int = -1) -> Tensor:
    """Head-averaged attention of the token's query on the visual keys in decoder block ``block``."""
    view = _view(ctx, "token_cross_attention")
    c, t, _ = view.token_positions(ctx.targets)
    cap = view.captioner
    with torch.no_grad():
        out = cap.decode(cap.encoder(ctx.images), view.teacher_inputs()[c])
        attn = cap.blocks[block].attn.last_attention  # [B, heads, N+T, N+T]
        assert attn is not None
        n = out.n_visual
        rows = torch.arange(ctx.images.shape[0], device=ctx.images.device)
        return attn[rows, :, n + t, :n].mean(dim=1).reshape(-1, cap.grid, cap.grid)


__all__ = [
    "estimated_causal_inference",
    "rank_gaussian_filter",
    "tam",
    "tam_from_hidden",
    "token_cross_attention",
    "token_logit_maps",
]
