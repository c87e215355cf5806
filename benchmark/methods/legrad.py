"""LeGrad (Bousselham et al. 2024, arXiv 2404.03214): layer-wise attention-gradient maps for Vision Transformers.

For every selected transformer block ``l`` a layer score ``s^l = head(LN(mean_tokens z^l))[c]`` is read from
the block output ``z^l`` (torchcam's projection for torchvision ViTs: the final encoder LayerNorm and the
classification head applied to the token mean), and LeGrad differentiates it with respect to the block's
post-softmax attention probabilities ``P^l [B,heads,N,N]``:
``E^l = mean_{heads, queries} ReLU(ds^l / dP^l)`` (paper eq. 4-5), keys without the class token, reshaped to
the patch grid; the map is the mean of ``E^l`` over the blocks (eq. 6). Attention values are not multiplied
in (as in the paper and torchcam ``LeGrad``).

One forward and **one** backward for all blocks: each block's input is detached (so ``s^l`` reaches only
block ``l``'s attention) and the attention probabilities are leaves, so the gradient of ``sum_l s^l`` w.r.t.
``P^l`` is exactly ``ds^l/dP^l``. Supports torchvision ``VisionTransformer`` (blocks whose
``self_attention`` is a batch-first ``nn.MultiheadAttention``) and ViTs that list their attention-probability
modules (``attention_probs_modules()`` with ``blocks``, ``norm`` and ``head``: ``shapes_vit``,
docs/transformers.md); other models raise a clear error.
"""

from __future__ import annotations

from math import isqrt
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LayerError
from .base import ExplainContext, register_method


def exposed_vit(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], nn.Module, nn.Module] | None:
    """``(blocks, probs_modules, final_norm, head)`` of a ViT that lists its attention-probability modules
    (``model.attention_probs_modules()``, one per block of ``model.blocks``, e.g. ``shapes_vit``), else None."""
    listed = getattr(model, "attention_probs_modules", None)
    blocks, norm, head = getattr(model, "blocks", None), getattr(model, "norm", None), getattr(model, "head", None)
    if not callable(listed) or not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        return None
    probs = list(listed())
    if len(probs) != len(blocks) or not isinstance(norm, nn.Module) or not isinstance(head, nn.Module):
        return None
    return list(blocks), probs, norm, head


def vit_blocks(model: nn.Module) -> tuple[list[nn.Module], nn.Module, nn.Module]:
    """``(blocks, final_norm, head)`` of a torchvision VisionTransformer, or :class:`LayerError`."""
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    norm, head = getattr(encoder, "ln", None), getattr(model, "heads", None)
    blocks = list(layers) if isinstance(layers, (nn.Sequential, nn.ModuleList)) else []
    ok = (
        bool(blocks)
        and isinstance(norm, nn.Module)
        and isinstance(head, nn.Module)
        and all(isinstance(getattr(b, "self_attention", None), nn.MultiheadAttention) for b in blocks)
    )
    if not ok:
        raise LayerError(
            f"legrad needs a torchvision VisionTransformer (encoder.layers of blocks with a "
            f"self_attention nn.MultiheadAttention, encoder.ln and heads); {type(model).__name__} is not one. "
            "Use a gradient CAM with reshape=vit_reshape for other transformers."
        )
    for b in blocks:
        mha = cast(nn.MultiheadAttention, b.self_attention)  # checked by `ok` above
        if not mha.batch_first or mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise LayerError("legrad needs batch-first self-attention with a packed in_proj and no added tokens.")
    assert isinstance(norm, nn.Module) and isinstance(head, nn.Module)
    return blocks, norm, head


def _select(blocks: list[nn.Module], layer: nn.Module, n_blocks: int | None) -> list[int]:
    """Indices of the blocks used: those up to the one holding ``layer`` (all if none holds it), last ``n``."""
    last = len(blocks) - 1
    for i, b in enumerate(blocks):
        if any(m is layer for m in b.modules()):
            last = i
            break
    first = 0 if n_blocks is None else max(0, last + 1 - int(n_blocks))
    return list(range(first, last + 1))


def ask_head_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook (``with_kwargs=True``) making an ``nn.MultiheadAttention`` return its per-head
    attention weights (``need_weights=True``, ``average_attn_weights=False``), positional or keyword."""
    # positions of nn.MultiheadAttention.forward(query, key, value, key_padding_mask, need_weights,
    # attn_mask, average_attn_weights, is_causal)
    args_l, kwargs = list(args), dict(kwargs)
    for pos, key, val in ((4, "need_weights", True), (6, "average_attn_weights", False)):
        if len(args_l) > pos:
            args_l[pos] = val
        else:
            kwargs[key] = val
    return tuple(args_l), kwargs


def _attention_output(mha: nn.MultiheadAttention, probs: Tensor, value: Tensor) -> Tensor:
    """``out_proj(P V)`` for per-head probabilities ``[B,heads,N,N]`` (nn.MultiheadAttention's math, eval)."""
    e, h = mha.embed_dim, mha.num_heads
    bias = None if mha.in_proj_bias is None else mha.in_proj_bias[2 * e :]
    v = F.linear(value, mha.in_proj_weight[2 * e :], bias)
    b, n, _ = v.shape
    v = v.view(b, n, h, e // h).transpose(1, 2)  # [B,heads,N,d]
    out = (probs @ v).transpose(1, 2).reshape(b, probs.shape[-2], e)
    return mha.out_proj(out)


@register_method(
    "legrad",
    family="gradient",
    architectures=("vit",),
    paper="Bousselham et al. 2024 (LeGrad), eq. 4-6",
)
def legrad(ctx: ExplainContext, n_blocks: int | None = None, prefix_tokens: int = 1) -> Tensor:
    """LeGrad over the blocks up to the target layer's block (the last ``n_blocks`` of them; None = all).

    Returns ``[B, h, w]`` on the patch grid (square). ``prefix_tokens`` leading keys (the class token)
    are dropped.
    """
    exposed = exposed_vit(ctx.model)
    if exposed is not None:
        blocks, probs_modules, norm, head = exposed
    else:
        blocks, norm, head = vit_blocks(ctx.model)
    chosen = _select(blocks, ctx.layer, n_blocks)
    leaves: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}
    handles: list[Any] = []

    def cut(i: int):
        def pre(module: nn.Module, args: tuple) -> tuple:
            return (args[0].detach().requires_grad_(True), *args[1:])

        return pre

    def grab_attention(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
            probs = output[1]
            if probs is None or probs.ndim != 4:
                raise LayerError("legrad could not read per-head attention probabilities from the block.")
            leaf = probs.detach().requires_grad_(True)
            leaves[i] = leaf
            value = args[2] if len(args) > 2 else kwargs["value"]
            return _attention_output(cast(nn.MultiheadAttention, module), leaf, value), None

        return hook

    def leaf_probs(i: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            leaf = output.detach().requires_grad_(True)
            leaves[i] = leaf
            return leaf

        return hook

    def keep_output(i: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            outputs[i] = output

        return hook

    try:
        for i in chosen:
            blk = blocks[i]
            handles.append(blk.register_forward_pre_hook(cut(i)))
            handles.append(blk.register_forward_hook(keep_output(i)))
            if exposed is not None:  # the model's own probability modules: replace P by a leaf
                handles.append(probs_modules[i].register_forward_hook(leaf_probs(i)))
                continue
            mha = cast(nn.MultiheadAttention, blk.self_attention)
            handles.append(mha.register_forward_pre_hook(ask_head_weights, with_kwargs=True))
            handles.append(mha.register_forward_hook(grab_attention(i), with_kwargs=True))
        with torch.enable_grad():
            ctx.model(ctx.images)
            t = ctx.targets.view(-1, 1)
            score = sum(head(norm(outputs[i].mean(dim=1))).gather(1, t).sum() for i in chosen)
            grads = torch.autograd.grad(score, [leaves[i] for i in chosen], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    maps = []
    for i, g in zip(chosen, grads, strict=True):
        g = torch.zeros_like(leaves[i]) if g is None else g
        maps.append(g.clamp_min(0).mean(dim=(1, 2))[:, prefix_tokens:])
    rel = torch.stack(maps).mean(dim=0)  # [B, N - prefix]
    side = isqrt(rel.shape[1])
    if side * side != rel.shape[1]:
        raise LayerError(f"legrad: {rel.shape[1]} patch tokens do not form a square grid.")
    return rel.reshape(rel.shape[0], side, side).detach()
