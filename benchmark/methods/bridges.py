"""CAM methods of other libraries by name: ``pgc/<Class>`` (pytorch-grad-cam), ``torchcam/<Class>``, ``captum/<Class>``.

Each bridged method returns its library's **raw** low-resolution map, so the shared post-processing of
``methods/postprocess.py`` (ReLU where the method has one, per-image min-max, bilinear upsampling, constant
-> zeros flagged) is applied exactly as for the built-ins; ``docs/bridges.md`` lists each library's own
upsampling and normalisation and how this aligns it. The libraries are imported on first use: a missing
one raises a :class:`BridgeError` naming the ``pip install``.

A researcher's own class is registered with :func:`from_pytorch_grad_cam` / :func:`from_torchcam` (also from
a ``--plugin`` file, where the plugin loader contract-checks it before any work).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CambenchError, ContractError
from ..seeding import seeded
from .base import METHODS, ExplainContext, register_method
from .capture import layer_name
from .contract import check_method

LIBRARIES = {
    "pgc": ("pytorch_grad_cam", "grad-cam==1.5.7", "pytorch-grad-cam"),
    "torchcam": ("torchcam.methods", "torchcam==0.5.0", "torchcam"),
    "captum": ("captum.attr", "captum", "Captum"),
}


#: Library classes not offered by name: prefix -> {class: why} (docs/bridges.md).
EXCLUDED: dict[str, dict[str, str]] = {
    "captum": {
        "LayerFeaturePermutation": "permutes each feature across the images of the batch: a map of one "
        "image depends on the others, and a single image gives no permutation (all zeros)"
    },
}


class BridgeError(CambenchError, RuntimeError):
    """A bridged library is missing, or a class given to a bridge is not what it must be."""


def _import(prefix: str) -> Any:
    module, pip, title = LIBRARIES[prefix]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BridgeError(
            f"The {prefix}/ methods need {title}, which is not installed ({type(exc).__name__}: {exc}). "
            f'Install it with `pip install {pip}` (or `pip install "cambench[bridges]"`).'
        ) from exc


@contextlib.contextmanager
def _keep_grads(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``.grad`` after a library's ``loss.backward()`` (which fills them)."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, g in saved:
            p.grad = g


@contextlib.contextmanager
def _gradient_noise(ctx: ExplainContext) -> Iterator[None]:
    """Apply ``ctx.gradient_noise`` (the CF-CAM robustness protocol) to the gradient reaching the target layer.

    Installed before the library's own hooks, so the gradient the library reads at the target layer is the
    perturbed one, as for the built-ins (which perturb the captured ``dy/dA``).
    """
    if ctx.gradient_noise is None:
        yield
        return
    noise = ctx.gradient_noise

    def forward_hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(noise)

    handle = ctx.layer.register_forward_hook(forward_hook)
    try:
        yield
    finally:
        handle.remove()


def _library_classes(prefix: str) -> dict[str, type]:
    lib = _import(prefix)
    if prefix == "pgc":
        base = importlib.import_module("pytorch_grad_cam.base_cam").BaseCAM
    elif prefix == "torchcam":
        base = importlib.import_module("torchcam.methods.core")._CAM
    else:
        base = lib.LayerAttribution
    return {
        n: c
        for n in sorted(dir(lib))
        if inspect.isclass(c := getattr(lib, n))
        and issubclass(c, base)
        and c is not base
        and not n.startswith("_")
        and not inspect.isabstract(c)
        and n not in EXCLUDED.get(prefix, {})
    }


def _lister(prefix: str) -> Callable[[], list[str]]:
    def names() -> list[str]:
        try:
            return sorted(_library_classes(prefix))
        except BridgeError:
            return []  # not installed: nothing to list (a lookup names the pip install)

    return names


def _targets(ctx: ExplainContext) -> list[int]:
    return [int(t) for t in ctx.targets.detach().cpu().tolist()]


# -- pytorch-grad-cam ---------------------------------------------------------------------------------
#: pytorch-grad-cam ``__call__`` arguments (the rest of a method's params go to the constructor).
PGC_CALL = ("aug_smooth", "eigen_smooth")


def pgc_raw(cls: type, ctx: ExplainContext, **params: Any) -> Tensor:
    """The raw ``[B,h,w]`` map of pytorch-grad-cam class ``cls`` (``get_cam_image`` on the target layer).

    The class runs its own forward/backward through its own hooks (``BaseCAM.forward``); the output of
    ``get_cam_image`` (before pytorch-grad-cam's ReLU, min-max and cv2 resize) is recorded and returned.
    A class that never calls ``get_cam_image`` (FullGrad aggregates many layers) gives its final map
    (input size, already in [0,1]), which the shared post-processing leaves unchanged.
    """
    targets_mod = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    call = {k: params.pop(k) for k in PGC_CALL if k in params}
    seen: list[np.ndarray] = []
    with _gradient_noise(ctx), seeded(ctx.seed):
        with contextlib.redirect_stdout(io.StringIO()):  # FullGrad print()s that it ignores target_layers
            cam = cls(model=ctx.model, target_layers=[ctx.layer], reshape_transform=ctx.reshape, **params)
        try:
            original = cam.get_cam_image

            def record(*args: Any, **kwargs: Any) -> np.ndarray:
                out = original(*args, **kwargs)
                seen.append(np.asarray(out, dtype=np.float32))
                return out

            cam.get_cam_image = record  # instance attribute: BaseCAM calls self.get_cam_image(...)
            targets = [targets_mod.ClassifierOutputTarget(t) for t in _targets(ctx)]
            with torch.enable_grad(), _keep_grads(ctx.model):
                final = cam(input_tensor=ctx.images, targets=targets, **call)
        finally:
            cam.activations_and_grads.release()
    raw = seen[-1] if len(seen) == 1 and not call.get("aug_smooth") else np.asarray(final, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(raw)).to(ctx.images.device)


def _pgc_family(name: str) -> tuple[str, bool]:
    if name in ("ScoreCAM", "AblationCAM"):
        return "perturbation", False
    if name in ("EigenCAM", "KPCA_CAM", "SegEigenCAM", "FEM"):
        return "projection", False
    if name == "RandomCAM":  # random channel weights on the activations: reads the model, unlike the baselines
        return "projection", False
    return "gradient", True


def _ctor_defaults(cls: type, skip: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():  # type: ignore[misc]
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is inspect.Parameter.empty:
            continue
        if p.default is None or isinstance(p.default, (bool, int, float, str)):
            out[p.name] = p.default
    return out


def _pgc_meta(name: str, cls: type, **meta: Any) -> dict[str, Any]:
    family, needs_gradients = _pgc_family(name)
    defaults = {
        **_ctor_defaults(cls, ("self", "model", "target_layers", "reshape_transform")),
        "aug_smooth": False,
        "eigen_smooth": False,
    }
    return {
        "family": family,
        "relu": True,
        "needs_gradients": needs_gradients,
        "defaults": defaults,
        "paper": f"pytorch-grad-cam {cls.__name__}",
        "library": "pytorch-grad-cam",
        "batch_consistent": name != "RandomCAM",
        **meta,
    }


def _resolve_pgc(rest: str) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    classes = _library_classes("pgc")
    if rest not in classes:
        raise KeyError(rest)
    cls = classes[rest]

    def method(ctx: ExplainContext, **params: Any) -> Tensor:
        return pgc_raw(cls, ctx, **params)

    method.__name__ = method.__qualname__ = f"pgc_{rest}"
    return method, _pgc_meta(rest, cls, source="pytorch-grad-cam")


def from_pytorch_grad_cam(
    name: str,
    cls: type,
    *,
    family: str = "gradient",
    paper: str = "",
    batch_consistent: bool = True,
    check: bool = True,
    **defaults: Any,
) -> Callable[..., Tensor]:
    """Register pytorch-grad-cam ``BaseCAM`` subclass ``cls`` as cambench method ``name``; returns the method.

    ``defaults`` are its hyper-parameters (constructor keywords, plus ``aug_smooth``/``eigen_smooth`` of
    ``__call__``), overridable per suite with ``[method_params.NAME]``. The method computes the class's
    ``get_cam_image`` on the suite's target layer and gets the shared post-processing (pytorch-grad-cam
    applies a ReLU to every CAM: ``relu=True``). With ``check`` (default) the method contract of
    :func:`benchmark.plugins.check_method` runs now, on a tiny model, and a failure unregisters the method
    and raises :class:`benchmark.plugins.ContractError`; a ``--plugin`` file is also checked when loaded.
    """
    _import("pgc")
    base = importlib.import_module("pytorch_grad_cam.base_cam").BaseCAM
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise BridgeError(
            f"from_pytorch_grad_cam({name!r}, ...) needs a subclass of pytorch_grad_cam.base_cam.BaseCAM; got "
            f"{cls!r}. Subclass BaseCAM and override get_cam_weights (or get_cam_image)."
        )
    ctor = inspect.signature(cls.__init__).parameters
    bad = [k for k in defaults if k not in ctor and k not in PGC_CALL]
    if bad and not any(p.kind is p.VAR_KEYWORD for p in ctor.values()):
        raise TypeError(
            f"{cls.__name__} takes no parameter(s) {bad}; its constructor: {inspect.signature(cls.__init__)}."
        )

    def method(ctx: ExplainContext, **params: Any) -> Tensor:
        return pgc_raw(cls, ctx, **params)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"pytorch-grad-cam {cls.__name__} (raw get_cam_image map on the target layer)."
    meta = _pgc_meta(cls.__name__, cls)
    register_method(
        name,
        family=family,
        relu=True,
        needs_gradients=family == "gradient",
        paper=paper or meta["paper"],
        defaults={"aug_smooth": False, "eigen_smooth": False, **defaults},
        library="pytorch-grad-cam",
        batch_consistent=batch_consistent,
    )(method)
    if check:
        _check_now(name)
    return method


def _check_now(name: str) -> None:
    problems = check_method(name)
    if problems:
        source = METHODS.entry(name).meta.get("source", "cambench")
        METHODS.remove(name)
        raise ContractError(
            f"CAM method contract check failed before any benchmark work:\nmethod {name!r} "
            f"({'plugin ' + repr(source) if source != 'cambench' else 'bridged class'}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


# -- torchcam -----------------------------------------------------------------------------------------
def torchcam_raw(cls: type, ctx: ExplainContext, **params: Any) -> Tensor:
    """The raw ``[B,h,w]`` map of torchcam extractor ``cls``: ``extractor(class_idx, scores, normalized=False)``.

    torchcam hooks the target layer, the model is run once with gradients enabled, the extractor combines
    (ReLU for its gradient methods, no min-max with ``normalized=False``, no upsampling); hooks removed after.
    """
    kwargs = dict(params)
    if ctx.reshape is not None and "reshape_transform" in inspect.signature(cls.__init__).parameters:  # type: ignore[misc]
        kwargs["reshape_transform"] = ctx.reshape
    with _gradient_noise(ctx), seeded(ctx.seed):
        extractor = cls(ctx.model, target_layer=layer_name(ctx.model, ctx.layer), **kwargs)
        try:
            with torch.enable_grad(), _keep_grads(ctx.model):
                scores = ctx.model(ctx.images)
                cams = extractor(class_idx=_targets(ctx), scores=scores, normalized=False)
        finally:
            extractor.remove_hooks()
    return cams[0].detach().float()


def _torchcam_meta(name: str, cls: type, **meta: Any) -> dict[str, Any]:
    gradient = importlib.import_module("torchcam.methods.gradient")._GradCAM
    grad = issubclass(cls, gradient) or name == "LeGrad"
    family = "gradient" if grad else ("projection" if name == "CAM" else "perturbation")
    return {
        "family": family,
        "relu": grad,
        "needs_gradients": grad,
        "defaults": _ctor_defaults(cls, ("self", "model", "target_layer", "fc_layer", "input_shape", "enable_hooks")),
        "paper": f"torchcam {cls.__name__}",
        "library": "torchcam",
        "batch_consistent": name not in ("SSCAM", "ISCAM", "SmoothGradCAMpp"),  # noise drawn per batch
        **meta,
    }


def _resolve_torchcam(rest: str) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    classes = _library_classes("torchcam")
    if rest not in classes:
        raise KeyError(rest)
    cls = classes[rest]

    def method(ctx: ExplainContext, **params: Any) -> Tensor:
        return torchcam_raw(cls, ctx, **params)

    method.__name__ = method.__qualname__ = f"torchcam_{rest}"
    meta = _torchcam_meta(rest, cls, source="torchcam")
    if rest == "LeGrad":
        meta["architectures"] = ("vit",)
    return method, meta


def from_torchcam(
    name: str,
    cls: type,
    *,
    family: str = "gradient",
    relu: bool | None = None,
    paper: str = "",
    batch_consistent: bool = True,
    check: bool = True,
    **defaults: Any,
) -> Callable[..., Tensor]:
    """Register torchcam extractor class ``cls`` (a ``torchcam.methods.core._CAM`` subclass) as method ``name``.

    ``defaults`` are constructor keywords; ``relu`` defaults to torchcam's own choice (gradient extractors
    apply one). Contract-checked like :func:`from_pytorch_grad_cam`.
    """
    _import("torchcam")
    base = importlib.import_module("torchcam.methods.core")._CAM
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise BridgeError(
            f"from_torchcam({name!r}, ...) needs a torchcam extractor class (a subclass of "
            f"torchcam.methods.core._CAM, e.g. of torchcam.methods.GradCAM); got {cls!r}."
        )
    meta = _torchcam_meta(cls.__name__, cls)

    def method(ctx: ExplainContext, **params: Any) -> Tensor:
        return torchcam_raw(cls, ctx, **params)

    method.__name__ = method.__qualname__ = name
    register_method(
        name,
        family=family,
        relu=meta["relu"] if relu is None else bool(relu),
        needs_gradients=family == "gradient",
        paper=paper or meta["paper"],
        defaults=dict(defaults),
        library="torchcam",
        batch_consistent=batch_consistent,
    )(method)
    if check:
        _check_now(name)
    return method


# -- Captum -------------------------------------------------------------------------------------------
#: Captum layer attributions whose ``attribute`` needs a baseline distribution: zeros (two samples).
CAPTUM_ZERO_BASELINES = ("LayerGradientShap", "LayerDeepLiftShap")


def captum_raw(cls: type, ctx: ExplainContext, **params: Any) -> Tensor:
    """The raw ``[B,h,w]`` map of Captum layer attribution ``cls`` on the target layer: ``attribute(...)``
    (``[B,C,h,w]``; the ViT reshape applied to token outputs) summed over channels."""
    init = {k: params.pop(k) for k in list(params) if k in inspect.signature(cls.__init__).parameters}  # type: ignore[misc]
    attr = cls(ctx.model, ctx.layer, **init)
    sig = inspect.signature(attr.attribute).parameters
    kwargs = dict(params)
    if "target" in sig:
        kwargs["target"] = ctx.targets
    if cls.__name__ in CAPTUM_ZERO_BASELINES and "baselines" not in kwargs:
        kwargs["baselines"] = torch.zeros((2, *ctx.images.shape[1:]), dtype=ctx.images.dtype, device=ctx.images.device)
    with _gradient_noise(ctx), seeded(ctx.seed), torch.enable_grad(), _keep_grads(ctx.model):
        out = attr.attribute(ctx.images, **kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = out.detach().float()
    if out.ndim == 3 and ctx.reshape is not None:  # tokens [B,N,C] -> [B,C,h,w]
        out = ctx.reshape(out)
    if out.ndim != 4:
        raise BridgeError(
            f"captum/{cls.__name__} returned attributions of shape {tuple(out.shape)} on the target layer; expected "
            "[B,C,h,w] (a convolutional layer, or a ViT block with the suite's reshape)."
        )
    return out.sum(dim=1)


def _resolve_captum(rest: str) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    classes = _library_classes("captum")
    if rest not in classes:
        raise KeyError(rest)
    cls = classes[rest]

    def method(ctx: ExplainContext, **params: Any) -> Tensor:
        return captum_raw(cls, ctx, **params)

    method.__name__ = method.__qualname__ = f"captum_{rest}"
    defaults = {
        **_ctor_defaults(cls, ("self", "forward_func", "model", "layer", "device_ids")),
        **_ctor_defaults(
            type("_A", (), {"__init__": getattr(cls, "attribute")}),  # noqa: B009 - any Captum class
            (
                "self",
                "inputs",
                "target",
                "additional_forward_args",
                "attribute_to_layer_input",
                "return_convergence_delta",
                "verbose",
                "baselines",
                "layer_baselines",
            ),
        ),
    }
    perturbation = rest in ("LayerFeatureAblation", "LayerFeaturePermutation")
    return method, {
        "family": "perturbation" if perturbation else ("projection" if rest == "LayerActivation" else "gradient"),
        "relu": rest == "LayerGradCam",
        "needs_gradients": not perturbation and rest != "LayerActivation",
        "defaults": defaults,
        "paper": f"Captum {rest} (summed over channels)",
        "library": "captum",
        "source": "captum",
        "batch_consistent": rest != "LayerFeaturePermutation",  # permutes features across the batch
    }


METHODS.add_prefix("pgc", _resolve_pgc, _lister("pgc"))
METHODS.add_prefix("torchcam", _resolve_torchcam, _lister("torchcam"))
METHODS.add_prefix("captum", _resolve_captum, _lister("captum"))

__all__ = ["BridgeError", "captum_raw", "from_pytorch_grad_cam", "from_torchcam", "pgc_raw", "torchcam_raw"]
