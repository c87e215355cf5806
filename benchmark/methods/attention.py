"""Attention-based explanations of Vision Transformers (docs/transformers.md, docs/methods.md#raw_attention).

- ``raw_attention``: the last block's attention of the class token to the patch tokens, heads averaged
  (the baseline of Abnar & Zuidema 2020 and Chefer et al. 2021).
- ``rollout``: attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers",
  section 3): per block ``A_hat = norm_rows(E_h[A] + I)`` (the identity for the residual connection, rows
  renormalised to sum 1), ``R = A_hat_L ... A_hat_1``; the map is ``R[cls, patches]``.
- ``gradient_rollout``: Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", self-attention rules eq. 5-6:
  ``A_bar = E_h[(grad_A (.) A)^+]`` with ``grad_A = dy_c / dA`` (the target logit), ``R <- R + A_bar R``
  from ``R = I`` (eq. 1), first block first; the map is ``R[cls, patches]``.

The attention probabilities ``P [B, heads, N, N]`` of every block (and, for ``gradient_rollout``, ``dy_c/dP``)
come from **one** forward (+ backward) per batch shared by the three methods (``ExplainContext.cache``).
When that pass runs before the context's shared capture is made, it also records the target layer's
activations and gradients there, so Grad-CAM and the other capture methods of the batch reuse the same
forward and backward (the gradient at the target layer is the same one the capture computes: the graph
downstream of it is the same).

Where the probabilities come from (:func:`attention_sites`): a model that lists them, as
``shapes_vit`` does (``model.attention_probs_modules()``: modules whose outputs are the post-softmax
``P``, read by forward hooks; ``model.num_prefix_tokens`` leading tokens, the class token first), or a
torchvision ``VisionTransformer`` (its ``nn.MultiheadAttention`` blocks are asked for per-head weights and
their output recomputed as ``out_proj(P V)`` from them, so ``P`` is on the gradient path). Any other model
is refused with a :class:`~benchmark.errors.LayerError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import isqrt
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..errors import LayerError
from ..types import Capture
from .base import ExplainContext, register_method
from .capture import check_activations
from .legrad import _attention_output, ask_head_weights, vit_blocks

_CACHE_KEY = "attention_capture"
_HEAD_FUSIONS = ("mean", "max", "min")


@dataclass
class AttentionCapture:
    """The attention of one batch: ``probs[l]`` ``[B, heads, N, N]`` of block ``l`` (first block first),
    ``grads[l] = dy_c / dP_l`` (None for a forward-only pass), ``prefix`` leading non-patch tokens and the
    patch ``grid`` ``(h, w)`` (``h * w = N - prefix``)."""

    probs: list[Tensor]
    grads: list[Tensor] | None
    prefix: int
    grid: tuple[int, int]


def attention_sites(model: nn.Module) -> tuple[str, list[nn.Module], int]:
    """``(kind, modules, prefix)``: where a model's attention probabilities are read.

    ``kind`` is ``"probs"`` (modules whose output is ``P``: ``model.attention_probs_modules()``) or
    ``"mha"`` (a torchvision VisionTransformer's ``nn.MultiheadAttention`` modules); ``prefix`` is the number
    of tokens before the patch tokens (the class token first). Raises :class:`LayerError` for any other model.
    """
    listed = getattr(model, "attention_probs_modules", None)
    if callable(listed):
        modules = list(listed())
        if modules and all(isinstance(m, nn.Module) for m in modules):
            return "probs", modules, int(getattr(model, "num_prefix_tokens", 1))
    try:
        blocks, _, _ = vit_blocks(model)
    except LayerError:
        raise LayerError(
            f"The attention methods need a Vision Transformer whose attention probabilities they can read; "
            f"{type(model).__name__} has none. Expected a model with attention_probs_modules() (modules whose "
            "outputs are the post-softmax attention [B, heads, N, N], as shapes_vit) or a torchvision "
            "VisionTransformer. Use a CAM method (gradcam, layercam, ...) on models without attention."
        ) from None
    return "mha", [cast(nn.Module, b.self_attention) for b in blocks], 1


def _grid(model: nn.Module, n_patches: int) -> tuple[int, int]:
    grid = getattr(model, "grid", None)
    if isinstance(grid, tuple) and len(grid) == 2 and int(grid[0]) * int(grid[1]) == n_patches:
        return int(grid[0]), int(grid[1])
    side = isqrt(n_patches)
    if side * side != n_patches:
        raise LayerError(
            f"{n_patches} patch tokens do not form a square grid; give the model a `grid = (h, w)` attribute."
        )
    return side, side


def _mha_hooks(mha: nn.Module, store: Callable[[Tensor], None]) -> list[Any]:
    """Hooks making a batch-first ``nn.MultiheadAttention`` return per-head weights and recompute its output
    from them (``out_proj(P V)``: the weights are then on the gradient path); ``store(P)`` gets them."""

    def grab(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
        probs = output[1]
        if probs is None or probs.ndim != 4:
            raise LayerError("Could not read per-head attention probabilities from nn.MultiheadAttention.")
        store(probs)
        value = args[2] if len(args) > 2 else kwargs["value"]
        return _attention_output(cast(nn.MultiheadAttention, module), probs, value), None

    return [
        mha.register_forward_pre_hook(ask_head_weights, with_kwargs=True),
        mha.register_forward_hook(grab, with_kwargs=True),
    ]


def attention_capture(ctx: ExplainContext, gradients: bool = True) -> AttentionCapture:
    """The batch's attention probabilities (and ``dy_c/dP`` with ``gradients``), made once per batch and
    shared by the attention methods through ``ctx.cache`` (a forward-only pass is redone with gradients
    when a later method needs them).

    The gradient pass differentiates the sum over the batch of the target logits (pre-softmax), as the
    shared capture does; ``ctx.gradient_noise`` (the gradient-noise robustness metric) is added to each
    block's ``dy_c/dP``. If the context has not made its capture yet, the target layer's activations and
    gradients are recorded in the same pass and become the context's capture.
    """
    cached = ctx.cache.get(_CACHE_KEY)
    if cached is not None and (cached.grads is not None or not gradients):
        return cast(AttentionCapture, cached)
    model = ctx.model
    kind, modules, prefix = attention_sites(model)
    probs: list[Tensor | None] = [None] * len(modules)
    target: dict[str, Tensor] = {}
    fill_capture = gradients and ctx._capture is None
    handles: list[Any] = []

    def keeper(i: int) -> Callable[[Tensor], None]:
        def store(p: Tensor) -> None:
            if probs[i] is not None:
                raise LayerError(f"Attention module {i} ran twice in one forward pass; it cannot be explained.")
            probs[i] = p

        return store

    def probs_hook(i: int) -> Callable[..., None]:
        store = keeper(i)

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            store(output)

        return hook

    def layer_hook(module: nn.Module, args: tuple, output: Any) -> None:
        out = output if isinstance(output, Tensor) else output[0]
        target["acts"] = out

    try:
        for i, m in enumerate(modules):
            if kind == "probs":
                handles.append(m.register_forward_hook(probs_hook(i)))
            else:
                handles += _mha_hooks(m, keeper(i))
        if fill_capture:
            handles.append(ctx.layer.register_forward_hook(layer_hook))
        grads: list[Tensor] | None = None
        with torch.enable_grad() if gradients else torch.inference_mode():
            x = ctx.images.detach().requires_grad_(True) if gradients else ctx.images
            logits = model(x)
            got = [p for p in probs if p is not None]
            if len(got) != len(modules):
                raise LayerError("Not every attention module ran in the forward pass; cannot explain this model.")
            if gradients:
                score = logits.gather(1, ctx.targets.view(-1, 1).to(logits.device)).sum()
                inputs = [*got, target["acts"]] if "acts" in target else got
                out = torch.autograd.grad(score, inputs, allow_unused=True)
                all_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, out, strict=True)]
                grads = all_grads[: len(got)]
                if ctx.gradient_noise is not None:
                    grads = [ctx.gradient_noise(g) for g in grads]
                if "acts" in target:
                    acts, g_t = target["acts"].detach(), all_grads[-1]
                    if ctx.reshape is not None:
                        acts, g_t = ctx.reshape(acts), ctx.reshape(g_t)
                    check_activations(acts, ctx.images)
                    if ctx.gradient_noise is not None:
                        g_t = ctx.gradient_noise(g_t)
                    # the context's shared capture, from this same forward and backward (base.ExplainContext)
                    ctx._capture = Capture(acts, g_t, logits.detach(), ctx.targets)
    finally:
        for h in handles:
            h.remove()
    n = int(got[0].shape[-1])
    result = AttentionCapture(
        probs=[p.detach() for p in got],
        grads=None if grads is None else [g.detach() for g in grads],
        prefix=prefix,
        grid=_grid(model, n - prefix),
    )
    ctx.cache[_CACHE_KEY] = result
    return result


def _fuse(probs: Tensor, head_fusion: str) -> Tensor:
    """``[B, heads, N, N]`` -> ``[B, N, N]`` by the mean (default), max or min over the heads."""
    if head_fusion == "mean":
        return probs.mean(dim=1)
    if head_fusion == "max":
        return probs.amax(dim=1)
    if head_fusion == "min":
        return probs.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {_HEAD_FUSIONS}, got {head_fusion!r}.")


def _cls_row(rel: Tensor, cap: AttentionCapture) -> Tensor:
    """Row 0 (the class token) of ``[B, N, N]``, patch columns only, on the patch grid ``[B, h, w]``."""
    row = rel[:, 0, cap.prefix :]
    return row.reshape(row.shape[0], *cap.grid)


def rollout_matrix(probs: list[Tensor], head_fusion: str = "mean") -> Tensor:
    """Abnar & Zuidema (2020) rollout ``A_hat_L ... A_hat_1`` with ``A_hat = norm_rows(fuse_h(A) + I)``."""
    a0 = _fuse(probs[0], head_fusion)
    eye = torch.eye(a0.shape[-1], dtype=a0.dtype, device=a0.device)
    rel = eye.expand_as(a0)
    for p in probs:
        a = _fuse(p, head_fusion) + eye
        rel = (a / a.sum(dim=-1, keepdim=True)) @ rel
    return rel


def gradient_rollout_matrix(probs: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Chefer et al. (ICCV 2021) eq. 5-6: ``R = I``; per block ``R <- R + E_h[(grad (.) A)^+] R``."""
    eye = torch.eye(probs[0].shape[-1], dtype=probs[0].dtype, device=probs[0].device)
    rel = eye.expand(probs[0].shape[0], -1, -1)
    for p, g in zip(probs, grads, strict=True):
        rel = rel + (g * p).clamp_min(0).mean(dim=1) @ rel
    return rel


@register_method(
    "raw_attention",
    family="gradient",
    needs_gradients=False,
    architectures=("vit",),
    paper="Abnar & Zuidema 2020 (raw attention baseline); Chefer et al. 2021",
)
def raw_attention(ctx: ExplainContext, block: int = -1, head_fusion: str = "mean") -> Tensor:
    """The class token's attention to the patch tokens in block ``block`` (default the last), heads fused."""
    cap = attention_capture(ctx, gradients=False)
    return _cls_row(_fuse(cap.probs[block], head_fusion), cap).detach()


@register_method(
    "rollout",
    family="gradient",
    needs_gradients=False,
    architectures=("vit",),
    paper="Abnar & Zuidema 2020, section 3 (attention rollout)",
)
def rollout(ctx: ExplainContext, head_fusion: str = "mean") -> Tensor:
    """Attention rollout: ``(norm_rows(E_h A_L + I) ... norm_rows(E_h A_1 + I))[cls, patches]``."""
    cap = attention_capture(ctx, gradients=False)
    return _cls_row(rollout_matrix(cap.probs, head_fusion), cap).detach()


@register_method(
    "gradient_rollout",
    family="gradient",
    architectures=("vit",),
    paper="Chefer, Gur & Wolf, ICCV 2021, eq. 5-6 (self-attention)",
)
def gradient_rollout(ctx: ExplainContext) -> Tensor:
    """Gradient-weighted rollout: ``R = I``, ``R <- R + E_h[(dy_c/dA (.) A)^+] R`` per block; ``R[cls, patches]``."""
    cap = attention_capture(ctx, gradients=True)
    assert cap.grads is not None
    return _cls_row(gradient_rollout_matrix(cap.probs, cap.grads), cap).detach()


__all__ = [
    "AttentionCapture",
    "attention_capture",
    "attention_sites",
    "gradient_rollout",
    "gradient_rollout_matrix",
    "raw_attention",
    "rollout",
    "rollout_matrix",
]
