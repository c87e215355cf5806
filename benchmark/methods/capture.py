"""Target-layer resolution and the one forward(+backward) capture every gradient method shares.

The capture replaces the target module's output by a leaf tensor that requires grad, so the backward
pass stops at the target layer (nothing upstream is differentiated) and ``torch.autograd.grad`` returns
``dy^c/dA`` directly, without touching any parameter's ``.grad``. Hooks are removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor, nn

from ..errors import CaptureError, LayerError
from ..types import Capture, Reshape


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    """Return the module named by ``layer`` (a dotted name such as ``"layer4.1"``) or ``layer`` itself.

    ``None`` picks :func:`default_layer`. An unknown name raises :class:`LayerError` listing close and
    valid names.
    """
    if layer is None:
        layer = default_layer(model)
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise LayerError(
                f"The target layer {type(layer).__name__} is not a submodule of {type(model).__name__}. "
                "Pass a module of this model or its dotted name (see model.named_modules())."
            )
        return layer
    if not isinstance(layer, str):
        raise LayerError(f"layer must be an nn.Module or a dotted name, got {type(layer).__name__}.")
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    import difflib

    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerError(f"{type(model).__name__} has no layer {layer!r}.{hint} Valid names: {shown}")


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of submodule ``layer`` in ``model`` (what libraries that take layer names need)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise LayerError(f"{type(layer).__name__} is not a submodule of {type(model).__name__}.")


def default_layer_name(model: nn.Module) -> str:
    """A sensible CAM target layer for common torchvision / timm families.

    ResNet-like: ``layer4`` (its last block's output); VGG/DenseNet/MobileNet/EfficientNet/ConvNeXt:
    ``features`` (last feature map); ViT: last encoder block's ``ln_1`` (tokens, reshaped by
    :func:`vit_reshape`); Swin: ``features`` (channels-last, reshaped by :func:`swin_reshape`).
    Otherwise the last module whose output is 4-D is not knowable statically, so the last ``nn.Conv2d``.
    """
    modules = dict(model.named_modules())
    cls = type(model).__name__.lower()
    if "visiontransformer" in cls:
        if "encoder.layers" in modules:  # torchvision
            last = sorted(
                (n for n in modules if n.startswith("encoder.layers.") and n.count(".") == 2),
                key=lambda n: int(n.rsplit("_", 1)[-1]) if n.rsplit("_", 1)[-1].isdigit() else 0,
            )
            if last:
                return f"{last[-1]}.ln_1"
        if "blocks" in modules:  # timm
            n = len(modules["blocks"])
            return f"blocks.{n - 1}.norm1"
    if "swin" in cls and "features" in modules:
        return "norm" if "norm" in modules else "features"
    for name in ("layer4", "features", "stages", "blocks", "conv_head"):
        if name in modules:
            return name
    convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise LayerError(
            f"Cannot pick a default target layer for {type(model).__name__}: it has no Conv2d or Conv3d. "
            "Pass layer='<dotted module name>' explicitly."
        )
    return convs[-1]


def default_layer(model: nn.Module) -> nn.Module:
    return resolve_layer(model, default_layer_name(model))


def vit_reshape(tokens: Tensor, grid: tuple[int, int] | None = None, prefix: int = 1) -> Tensor:
    """ViT tokens ``[B,N,C]`` (class token first) -> ``[B,C,h,w]``, dropping ``prefix`` tokens."""
    x = tokens[:, prefix:, :]
    n = x.shape[1]
    if grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise CaptureError(f"Cannot reshape {n} ViT patch tokens to a square grid; pass grid=(h, w).")
        grid = (side, side)
    return x.reshape(x.shape[0], grid[0], grid[1], x.shape[2]).permute(0, 3, 1, 2)


def swin_reshape(x: Tensor) -> Tensor:
    """Swin feature maps are channels-last ``[B,h,w,C]`` -> ``[B,C,h,w]``."""
    return x.permute(0, 3, 1, 2)


def _first_tensor(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise CaptureError(
        f"The target layer returned {type(output).__name__}, not a tensor: choose a layer whose output "
        "is a feature map (or pass a reshape for token outputs)."
    )


def _replace_first(output: object, new: Tensor) -> object:
    if isinstance(output, Tensor):
        return new
    return type(output)([new, *output[1:]])  # type: ignore[index, call-arg]


@contextmanager
def hooked(
    layer: nn.Module, fn: Callable[[Tensor], Tensor | None], model: nn.Module | None = None
) -> Iterator[list[int]]:
    """Forward hook calling ``fn(output)`` (which may return a replacement); counts calls; always removed.

    The call count is per forward pass of ``model`` when it is given (reset by a pre-hook on it), else
    per context.

    Raises :class:`CaptureError` if the module runs more than once in one forward pass (shared modules,
    e.g. a ReLU reused across a block, cannot be a CAM target).
    """
    calls = [0]

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        calls[0] += 1
        if calls[0] > 1:
            raise CaptureError(
                f"The target layer {type(module).__name__} ran {calls[0]} times in one forward pass "
                "(a module reused by the network). Pick a layer that runs once, e.g. the enclosing block."
            )
        new = fn(_first_tensor(output))
        return None if new is None else _replace_first(output, new)

    def reset(module: nn.Module, args: tuple) -> None:
        calls[0] = 0

    handles = [layer.register_forward_hook(hook)]
    if model is not None:
        handles.append(model.register_forward_pre_hook(reset))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _check_called(calls: list[int], layer: nn.Module) -> None:
    if calls[0] == 0:
        raise CaptureError(
            f"The target layer {type(layer).__name__} was never called during the forward pass: "
            "it is not on the path from input to output. Pick another layer."
        )


def check_activations(acts: Tensor, images: Tensor) -> None:
    """:class:`CaptureError` unless ``acts`` is ``[B,C,h,w]`` for images or ``[B,C,t,h,w]`` for volumes
    and clips ``[B,C,T,H,W]`` (channel weights then run over all the non-channel axes)."""
    want = images.ndim
    if acts.ndim == want and want in (4, 5):
        return
    if want == 5:
        raise CaptureError(
            f"The target layer's output has shape {tuple(acts.shape)}; CAMs of volumes and clips "
            "[B,C,T,H,W] need a [B,C,t,h,w] feature map (a Conv3d block's output). Pick a 3-D conv layer."
        )
    raise CaptureError(
        f"The target layer's output has shape {tuple(acts.shape)}; CAMs need [B,C,h,w]. For a "
        "transformer, pass reshape=vit_reshape (tokens) or swin_reshape (channels-last)."
    )


def capture(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    targets: Tensor,
    reshape: Reshape | None = None,
    with_gradients: bool = True,
) -> Capture:
    """One forward (and, if ``with_gradients``, one backward) pass; returns A, dy^c/dA and the logits.

    The backward differentiates the sum over the batch of the target logits (pre-softmax), as
    pytorch-grad-cam does; since samples are independent in eval mode this gives per-sample gradients.
    """
    store: dict[str, Tensor] = {}

    def grab(out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_(with_gradients)
        store["raw"] = leaf
        # A non-leaf copy, so that downstream in-place ops (ReLU(inplace=True)) neither fail on the
        # leaf nor overwrite the captured activations.
        return leaf.clone()

    ctx: AbstractContextManager = torch.enable_grad() if with_gradients else torch.inference_mode()
    with ctx, hooked(layer, grab) as calls:
        logits = model(images)
        _check_called(calls, layer)
        raw = store["raw"]
        if logits.ndim != 2:
            raise CaptureError(f"The model must return logits [B,K]; got shape {tuple(logits.shape)}.")
        grads = None
        if with_gradients:
            score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(score, raw, allow_unused=True)
            if grads is None:
                grads = torch.zeros_like(raw)
    acts = raw.detach()
    if reshape is not None:
        acts = reshape(acts)
        grads = None if grads is None else reshape(grads)
    check_activations(acts, images)
    return Capture(activations=acts, gradients=grads, logits=logits.detach(), targets=targets)
