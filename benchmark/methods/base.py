"""The method registry, the shared explain context, and the public ``get`` / ``explain`` API.

A method is a function ``fn(ctx: ExplainContext, **params) -> Tensor[B,h,w]`` returning its *raw* map
(before ReLU/min-max/upsampling). Gradient methods read ``ctx.capture`` (one forward+backward made on first
use and shared by every method of the batch); perturbation methods call ``ctx.model`` in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ContractError, InputError
from ..forward import forward_autocast, forward_chunk, perturbation_forward
from ..registry import Registry, declared_defaults
from ..types import Capture, Reshape
from .capture import capture as _capture
from .capture import resolve_layer
from .msflip import MultiScaleFlip, run_method_ms_flip
from .postprocess import finalize

METHODS: Registry[Callable[..., Tensor]] = Registry("method")

#: Method families (docs/methods.md#families): ``gradient`` (a function of the capture, or of one extra
#: forward/backward), ``projection`` (a decomposition of the capture), ``perturbation`` (extra batched
#: forwards), ``baseline`` (no model). ``register_method`` accepts only these.
FAMILIES = ("gradient", "projection", "perturbation", "baseline")
#: Cost classes of a method (``register_method(cost=...)``): an ``expensive`` one is opt-in in a suite that
#: names no methods (``methods = "default"``).
COSTS = ("cheap", "expensive")


def register_method(
    name: str,
    *,
    family: str,
    relu: bool = True,
    needs_gradients: bool = True,
    defaults: Mapping[str, Any] | None = None,
    paper: str = "",
    **meta: Any,
) -> Callable:
    """Decorator registering a raw-map method ``fn(ctx, **params) -> Tensor[B,h,w]``.

    ``relu`` says whether the standard pipeline applies a ReLU before min-max (False only for CAM);
    The method's hyper-parameters (recorded in the result tables) are the keyword parameters of ``fn``'s
    signature with their defaults; ``defaults`` only overrides them, for a second name sharing one function or
    a function taking ``**params`` such as a library bridge (docs/interfaces.md, "Declaring parameters").
    ``family`` must be one of :data:`FAMILIES`. ``cost`` (in ``meta``): ``"cheap"`` (default) or
    ``"expensive"`` (its forwards per image grow with the target layer's channels or exceed ~16: Score-CAM and
    its variants, Ablation-CAM); a suite that names no methods leaves the expensive ones out (opt-in).
    """
    if family not in FAMILIES:
        raise InputError(
            f"Method {name!r} has unknown family {family!r}; expected one of {FAMILIES} "
            "(docs/methods.md#families). Fix the family= of its register_method call."
        )
    override = bool(meta.pop("override", False))
    if meta.setdefault("cost", "cheap") not in COSTS:
        raise InputError(
            f"Method {name!r} has cost {meta['cost']!r}; expected one of {COSTS}. Fix the cost= of its "
            'register_method call ("expensive": forwards per image grow with the channels or exceed ~16).'
        )

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METHODS.add(
            name,
            fn,
            override=override,
            family=family,
            relu=relu,
            needs_gradients=needs_gradients,
            defaults=declared_defaults(fn, defaults, f"Method {name!r}"),
            paper=paper,
            **meta,
        )
        return fn

    return deco


@dataclass
class ExplainContext:
    """Everything a method may need for one batch; the capture is computed once, lazily."""

    model: nn.Module
    layer: nn.Module
    images: Tensor
    targets: Tensor
    reshape: Reshape | None = None
    forward_batch_size: int = 64  # inputs per extra (perturbation) forward: the suite's forward_batch_size
    seed: int = 0
    masks: Tensor | None = None  # ground truth, for the ``oracle`` baseline only
    gradient_noise: Callable[[Tensor], Tensor] | None = None  # robustness: g -> g + noise
    _capture: Capture | None = field(default=None, repr=False)
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def batch_size(self) -> int:
        """The former name of :attr:`forward_batch_size` (read-only; plugins written before the rename)."""
        return self.forward_batch_size

    @property
    def capture(self) -> Capture:
        """The shared forward+backward capture (activations, gradients, logits) of this batch."""
        if self._capture is None:
            cap = _capture(self.model, self.layer, self.images, self.targets, self.reshape)
            if self.gradient_noise is not None and cap.gradients is not None:
                cap = Capture(cap.activations, self.gradient_noise(cap.gradients), cap.logits, cap.targets)
            self._capture = cap
        return self._capture

    @property
    def input_size(self) -> tuple[int, ...]:
        """``(H, W)`` of images ``[B,C,H,W]``; ``(T, H, W)`` of volumes and clips ``[B,C,T,H,W]``."""
        if self.images.ndim == 5:
            return int(self.images.shape[-3]), int(self.images.shape[-2]), int(self.images.shape[-1])
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def generator(self, salt: int = 0) -> torch.Generator:
        """A seeded CPU generator (every random draw is explicit and reproducible)."""
        return torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(salt))

    def rand(self, shape: Sequence[int], salt: int) -> Tensor:
        """``U[0,1)`` draws of ``shape`` from :meth:`generator`, made on the CPU and moved to the images'
        device: the same seed gives the same maps on every device (CUDA's generator draws other numbers)."""
        return torch.rand(tuple(shape), generator=self.generator(salt)).to(self.images.device)

    def randn(self, shape: Sequence[int], salt: int) -> Tensor:
        """``N(0,1)`` draws of ``shape``, like :meth:`rand`."""
        return torch.randn(tuple(shape), generator=self.generator(salt)).to(self.images.device)

    def forward_scores(self, inputs: Tensor, index: Tensor, softmax: bool = False) -> Tensor:
        """Target scores of ``inputs`` ``[N,...]`` for classes ``index`` ``[N]``, in chunks of forward_batch_size.

        Runs under ``torch.inference_mode`` (and :func:`forward_autocast`); returns float32 logits (or
        probabilities with ``softmax``, computed in float32). On CPU the chunks are capped by
        :func:`forward_chunk` (large batches of large images run slower there).
        """
        out = []
        step = forward_chunk(self.forward_batch_size, inputs)
        with torch.inference_mode(), forward_autocast(inputs.device):
            for i in range(0, inputs.shape[0], step):
                logits = perturbation_forward(self.model, inputs[i : i + step]).float()
                if softmax:
                    logits = logits.softmax(dim=1)
                out.append(logits.gather(1, index[i : i + step, None]).squeeze(1))
        return torch.cat(out).float()


@dataclass
class MethodOutput:
    """A method's result on a batch: final maps, raw low-resolution maps and the degenerate flags."""

    maps: Tensor  # [B,H,W] (or [B,T,H,W] for volumes and clips) float32 in [0,1]
    raw: Tensor  # [B,h,w] (or [B,t,h,w]) before post-processing
    degenerate: Tensor  # [B] bool: the raw map was constant or non-finite, so maps are zeros


def is_applicable(name: str, model: nn.Module | str | None) -> bool:
    """Whether method ``name`` can explain ``model`` (a module, or a model-registry family such as
    ``"vit"``): methods registered with ``architectures=("vit",)`` (LeGrad) need a Vision Transformer;
    every other method works on any model with a 4-D target layer."""
    archs = tuple(METHODS.entry(name).meta.get("architectures", ()))
    if not archs:
        return True
    if model is None:
        return False
    kind = model.lower() if isinstance(model, str) else type(model).__name__.lower()
    return any(a in kind or (a == "vit" and "visiontransformer" in kind) for a in archs)


def method_params(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Method ``name``'s hyper-parameters: its registered defaults updated by ``overrides`` (an unknown key is
    a ``TypeError`` naming the valid ones)."""
    return METHODS.params(name, overrides)


_params = method_params  # the name the method modules use


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def raw_map_problems(raw: Any, images: Tensor) -> list[str]:
    """How a method's raw output breaks the map contract for ``images`` ``[B,C,H,W]`` (``[B,C,T,H,W]``).

    The contract (docs/interfaces.md, "Methods"): a floating ``Tensor[B,h,w]`` (``[B,t,h,w]`` for volumes and
    clips), one map per image, each spatial size between 1 and the input's, on the images' device, finite,
    detached from the autograd graph. Returns the problems as sentences (``[]``: none).
    """
    b, size = int(images.shape[0]), tuple(int(s) for s in images.shape[2:])
    shape = "[B,h,w]" if len(size) == 2 else "[B,t,h,w]"
    if not isinstance(raw, Tensor) or raw.ndim != len(size) + 1 or raw.shape[0] != b:
        return [
            f"returned {_describe(raw)}; expected a raw map Tensor{shape} with B={b} (one map per image, "
            "channels already combined)"
        ]
    if not raw.is_floating_point():
        return [f"returned dtype {raw.dtype}; expected a floating-point map"]
    problems = []
    spatial = tuple(int(s) for s in raw.shape[1:])
    if not all(1 <= s <= full for s, full in zip(spatial, size, strict=True)):
        problems.append(
            f"returned maps of spatial size {spatial}: out of range; expected between "
            f"{(1,) * len(size)} and the input size {size}"
        )
    if raw.device != images.device:
        problems.append(f"returned a map on {raw.device}; expected the images' device {images.device}")
    nonfinite = int((~torch.isfinite(raw.detach())).flatten(1).any(dim=1).sum())
    if nonfinite:
        problems.append(f"returned NaN or inf values in {nonfinite} of {b} maps")
    if raw.requires_grad:
        problems.append("returned a tensor attached to the autograd graph; return raw.detach()")
    return problems


def final_map_problems(maps: Tensor, size: Sequence[int]) -> list[str]:
    """How post-processed maps break the contract: ``[B, *size]`` float32, finite, in [0, 1], detached."""
    problems = []
    expected = (int(maps.shape[0]), *map(int, size))
    if tuple(maps.shape) != expected or maps.dtype != torch.float32:
        problems.append(f"final maps are {_describe(maps)}; expected float32 of shape {expected}")
    elif not bool(torch.isfinite(maps).all()) or float(maps.min()) < 0 or float(maps.max()) > 1:
        lo, hi = float(maps.min()), float(maps.max())
        problems.append(f"final maps out of range [{lo:.3g}, {hi:.3g}]; expected [0, 1]")
    if maps.requires_grad:
        problems.append("final maps are attached to the autograd graph; return raw.detach()")
    return problems


def _contract_error(name: str, problems: list[str]) -> ContractError:
    source = METHODS.entry(name).meta.get("source", "cambench")
    origin = f"plugin {source!r}" if source != "cambench" else "built-in"
    return ContractError(
        f"Method {name!r} ({origin}) broke the method contract: " + "; ".join(problems) + ". A method is "
        "fn(ctx, **params) -> a finite, detached, floating raw map Tensor[B,h,w] on the images' device "
        "(docs/interfaces.md); fix the method, or run it without validate=True to let the pipeline zero "
        "non-finite maps.",
        problems=problems,
    )


def run_method(
    ctx: ExplainContext,
    name: str,
    params: Mapping[str, Any] | None = None,
    ms_flip: Any = None,
    *,
    validate: bool = False,
) -> MethodOutput:
    """Compute one method on a context (sharing its capture), with the standard post-processing.

    ``ms_flip``: a :class:`~benchmark.methods.msflip.MultiScaleFlip` (or ``True`` for its defaults) sums the
    method's maps over scales and horizontal flips, the WSSS papers' CAM protocol (``methods/msflip.py``);
    ``None`` (default) is the plain single-scale pipeline. ``validate=True`` checks the map contract on this
    call (:func:`raw_map_problems` on every raw map the method returns, :func:`final_map_problems` on the
    final maps) and raises :class:`~benchmark.errors.ContractError` listing what is wrong; by default the
    pipeline turns a non-finite raw map into a zero map flagged ``degenerate``.
    """
    entry = METHODS.entry(name)
    p = method_params(name, params)
    relu = bool(p.pop("relu", entry.meta["relu"]))

    def call(c: ExplainContext) -> Tensor:
        raw = entry.obj(c, **p)
        if validate:
            problems = raw_map_problems(raw, c.images)
            if problems:
                raise _contract_error(name, problems)
        return raw

    if ms_flip:
        config = ms_flip if isinstance(ms_flip, MultiScaleFlip) else None
        maps, raw, bad = run_method_ms_flip(ctx, call, relu, config)
    else:
        raw = call(ctx)
        maps, bad = finalize(raw, ctx.input_size, relu=relu)
    if validate:
        problems = final_map_problems(maps, ctx.input_size)
        if problems:
            raise _contract_error(name, problems)
    return MethodOutput(maps=maps, raw=raw.detach(), degenerate=bad)


def explain_context(
    model: nn.Module,
    layer: nn.Module | str | None,
    images: Tensor,
    targets: Tensor | Sequence[int] | int,
    **kwargs: Any,
) -> ExplainContext:
    """The :class:`ExplainContext` :func:`explain` builds: checks ``images`` (``[B,C,H,W]`` or
    ``[B,C,T,H,W]``), ``targets`` (one class per image, or one for all) and eval mode, and resolves ``layer``;
    ``kwargs`` are the context's other fields (``reshape``, ``forward_batch_size``, ``seed``, ``masks``...)."""
    if not isinstance(images, Tensor) or images.ndim not in (4, 5):
        raise InputError(
            f"images must be a [B,C,H,W] tensor (or [B,C,T,H,W] for volumes and clips); got "
            f"{getattr(images, 'shape', type(images).__name__)}. "
            "Add a batch dimension with images[None] for a single image."
        )
    b = images.shape[0]
    t = torch.as_tensor(targets, dtype=torch.long, device=images.device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise InputError(f"targets must hold one class per image ({b}); got shape {tuple(t.shape)}.")
    if model.training:
        raise InputError("The model is in training mode; call model.eval() before explaining it.")
    # Tensors made under torch.inference_mode() (e.g. targets = model(x).argmax(1)) cannot enter the
    # gradient capture: take normal copies of them.
    with torch.inference_mode(False):
        images = images.clone() if images.is_inference() else images
        t = t.clone() if t.is_inference() else t
    return ExplainContext(model=model, layer=resolve_layer(model, layer), images=images, targets=t, **kwargs)


_context = explain_context


def explain(
    model: nn.Module,
    layer: nn.Module | str | None,
    images: Tensor,
    targets: Tensor | Sequence[int] | int,
    names: Iterable[str] | None = None,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    reshape: Reshape | None = None,
    forward_batch_size: int = 64,
    seed: int = 0,
    masks: Tensor | None = None,
    gradient_noise: Callable[[Tensor], Tensor] | None = None,
    details: bool = False,
    ms_flip: Any = None,
) -> dict[str, Any]:
    """Compute several methods on one batch from **one** shared capture.

    ``images`` are ``[B,C,H,W]``, or ``[B,C,T,H,W]`` volumes and clips (maps are then ``[B,T,H,W]``).
    Returns ``{name: Tensor[B,H,W]}`` (or ``{name: MethodOutput}`` with ``details=True``). ``params`` maps a
    method name to hyper-parameter overrides. ``names=None`` runs every registered method that needs no
    ground truth and applies to ``model`` (:func:`is_applicable`). ``gradient_noise`` (``g -> g'``) perturbs the
    captured gradients before any method reads them (the CF-CAM robustness protocol,
    docs/metrics.md#gradient_noise_stability). ``ms_flip``: multi-scale + flip aggregation of every method (see
    :func:`run_method`).
    """
    if names is None:
        names = [n for n in METHODS.list() if n != "oracle" and is_applicable(n, model)]
    names = list(names)
    for n in names:
        METHODS.entry(n)  # fail early on unknown names, before any model work
    ctx = _context(
        model,
        layer,
        images,
        targets,
        reshape=reshape,
        forward_batch_size=forward_batch_size,
        seed=seed,
        masks=masks,
        gradient_noise=gradient_noise,
    )
    out: dict[str, Any] = {}
    for n in names:
        res = run_method(ctx, n, (params or {}).get(n), ms_flip=ms_flip)
        out[n] = res if details else res.maps
    return out


class Explainer:
    """A method bound to its hyper-parameters: ``Explainer(model, layer, images, targets) -> [B,H,W]``."""

    def __init__(self, name: str, **params: Any) -> None:
        self.name = name
        self.entry = METHODS.entry(name)
        self.params = _params(name, params)

    def __call__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None,
        images: Tensor,
        targets: Tensor | Sequence[int] | int,
        *,
        reshape: Reshape | None = None,
        forward_batch_size: int = 64,
        seed: int = 0,
        masks: Tensor | None = None,
    ) -> Tensor:
        ctx = _context(
            model,
            layer,
            images,
            targets,
            reshape=reshape,
            forward_batch_size=forward_batch_size,
            seed=seed,
            masks=masks,
        )
        return run_method(ctx, self.name, self.params).maps

    def __repr__(self) -> str:
        return f"Explainer({self.name!r}, {self.params})"


def get(name: str, **params: Any) -> Explainer:
    """The method ``name`` as a callable ``(model, layer, images, targets) -> Tensor[B,H,W]``."""
    return Explainer(name, **params)


def list_methods(pattern: str | None = None, **meta: Any) -> list[str]:
    return METHODS.list(pattern, **meta)
