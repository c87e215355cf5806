"""Any Quantus (Hedstroem et al. 2023, JMLR 24(34)) metric on cambench maps: ``quantus_metric(name, ...)``.

The bridge calls the Quantus 0.6.0 class ``name`` exactly as a user of Quantus would: its constructor
defaults (``abs``, ``normalise``, ``nr_samples``, ...) unless overridden, ``return_aggregate=False`` so that
it returns one score per image, the cambench maps as ``a_batch`` (``[B,1,H,W]``) and, for metrics that
re-explain (robustness, randomisation, input invariance), an ``explain_func`` that runs the same cambench
method again. What is done with outputs that are not one number per image is listed in
:data:`OUTPUT_RULES` and ``docs/bridges.md``; metrics that cannot run on this stack are in :data:`BROKEN`.

Quantus draws its perturbations from NumPy's global generator: each call here seeds it (and torch's) with
``seed`` inside a block that restores both generators afterwards, so a score is reproducible and calling
Quantus directly after ``np.random.seed(seed); torch.manual_seed(seed)`` gives the same number.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import CambenchError, InputError
from ...seeding import seeded

QUANTUS_VERSION = "0.6.0"

#: Metrics that cannot give a per-image score on cambench's stack (Quantus 0.6.0, NumPy >= 2.4, RGB
#: images): name -> the upstream problem. Looking them up works (``list metrics`` marks them), calling
#: them raises :class:`QuantusBridgeError` with this text. ``tests/test_quantus_bridge.py`` probes every
#: metric once and checks that exactly these fail.
BROKEN: dict[str, str] = {
    "BatchSufficiency": (
        "Quantus 0.6.0's BatchSufficiency reshapes the whole batch to one image's shape "
        "(model.shape_input(x_batch, x_batch[0].shape, batched=True) in custom_preprocess), which fails for any "
        "batch of more than one image. quantus/Sufficiency computes the same score and works."
    ),
    "IROF": (
        "Quantus 0.6.0's IROF passes a [B,1,H,W] superpixel mask to baseline_replacement_by_mask, which asserts "
        "the image's shape [B,C,H,W] (AssertionError on every RGB image), and its area over the curve calls "
        "numpy.trapz, removed in NumPy 2.4."
    ),
    "ROAD": (
        "Quantus 0.6.0's ROAD ranks the C*H*W features of the attribution but noisy_linear_imputation indexes "
        "an H*W array per channel (IndexError on RGB images); it also returns one accuracy per percentage for "
        "the whole batch, not a score per image. Use cambench's road_morf / road_lerf / road_combined."
    ),
}

#: Metrics that run but have no per-image score: name -> why (calling them raises, like BROKEN).
UNSUPPORTED: dict[str, str] = {
    "SensitivityN": (
        "Quantus' SensitivityN correlates, for each n, the attribution sums and output changes across the "
        "images of the batch: it returns one correlation per n (a dataset-level curve), not a score per image."
    ),
    "Focus": (
        "Quantus' Focus scores mosaics of four images with their mosaic coordinates (custom_batch); "
        "cambench's datasets are not mosaics."
    ),
}

#: How a Quantus output becomes ``Tensor[B]`` (the number must mean what Quantus means, per image).
OUTPUT_RULES: dict[str, str] = {
    "scores": "a list of B numbers (most metrics; booleans -> 0/1): used as is",
    "curves": "a list of B curves (PixelFlipping, RegionPerturbation, Selectivity): each image's area under its "
    "curve, np.trapezoid(curve, dx=1), the per-image term of Quantus' own get_auc_score (Quantus' "
    "calculate_auc calls numpy.trapz, removed in NumPy 2.4)",
    "layers": "a dict layer -> B scores (MPRT, ModelParameterRandomisation, SmoothMPRT): cambench sets "
    "return_last_correlation=True by default (Quantus' option: the similarity after the full cascade, as "
    "cambench's model_randomization), so Quantus returns B numbers; with both return_* options False the "
    "last layer's scores are used",
}

#: Quantus metrics that call ``explain_func`` (re-explain perturbed inputs or randomised models) in 0.6.0.
REEXPLAIN = frozenset(
    {
        "AvgSensitivity",
        "MaxSensitivity",
        "LocalLipschitzEstimate",
        "Continuity",
        "RelativeInputStability",
        "RelativeOutputStability",
        "RelativeRepresentationStability",
        "MPRT",
        "ModelParameterRandomisation",
        "SmoothMPRT",
        "EfficientMPRT",
        "RandomLogit",
        "InputInvariance",
    }
)

#: Constructor arguments the bridge fixes (per-image scores, no progress bars or printed warnings).
FIXED_INIT = {"return_aggregate": False, "disable_warnings": True, "display_progressbar": False}
_NOT_PARAMS = set(FIXED_INIT) | {"self", "args", "kwargs", "aggregate_func", "default_plot_func"}
#: ``__call__`` arguments a user may set through params (``softmax``: each metric's own default).
CALL_PARAMS = ("softmax", "model_predict_kwargs", "explain_func_kwargs", "custom_batch")
#: cambench defaults that differ from the Quantus constructor's (see OUTPUT_RULES; None = the model's classes).
BRIDGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "MPRT": {"return_last_correlation": True},
    "ModelParameterRandomisation": {"return_last_correlation": True},
    "SmoothMPRT": {"return_last_correlation": True},
    "RandomLogit": {"num_classes": None},
}


class QuantusBridgeError(CambenchError, RuntimeError):
    """A Quantus metric cannot run here (missing, broken upstream, unsupported, or it failed)."""


@functools.lru_cache(maxsize=1)
def _quantus() -> Any:
    try:
        import quantus
    except ImportError as exc:  # pragma: no cover - quantus is a runtime dependency
        raise QuantusBridgeError(
            f"The quantus/ metrics need Quantus {QUANTUS_VERSION}: pip install quantus=={QUANTUS_VERSION} "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    return quantus


@functools.lru_cache(maxsize=1)
def quantus_metric_classes() -> dict[str, type]:
    """``{class name: class}`` of every concrete metric Quantus exports (39 in Quantus 0.6.0)."""
    q = _quantus()
    base = q.metrics.base.Metric
    return {
        n: c
        for n in sorted(dir(q))
        if inspect.isclass(c := getattr(q, n)) and issubclass(c, base) and c is not base and not inspect.isabstract(c)
    }


def quantus_metric_names() -> list[str]:
    return sorted(quantus_metric_classes())


def quantus_class(name: str) -> type:
    classes = quantus_metric_classes()
    if name not in classes:
        raise KeyError(name)
    return classes[name]


def _init_signature(cls: type) -> inspect.Signature:
    for klass in cls.__mro__:  # ModelParameterRandomisation(*args, **kwargs) is MPRT's deprecated alias
        sig = inspect.signature(klass.__init__)  # type: ignore[misc]
        if any(p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self" for p in sig.parameters.values()):
            return sig
    return inspect.signature(cls.__init__)  # type: ignore[misc]


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def quantus_defaults(name: str) -> dict[str, Any]:
    """The parameters of Quantus metric ``name``: its constructor's defaults (a function default is given by
    its name, e.g. ``perturb_func="batch_uniform_noise"``), ``softmax`` as its ``__call__`` has it, and
    :data:`BRIDGE_DEFAULTS`."""
    cls = quantus_class(name)
    out: dict[str, Any] = {}
    for p in _init_signature(cls).parameters.values():
        if p.name in _NOT_PARAMS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        d = p.default
        if callable(d) and getattr(d, "__name__", None):
            out[p.name] = d.__name__
        elif d is not inspect.Parameter.empty and _plain(d):
            out[p.name] = d
    call = inspect.signature(cls.__call__).parameters
    out["softmax"] = call["softmax"].default if "softmax" in call else None
    out.update(BRIDGE_DEFAULTS.get(name, {}))
    return out


@functools.cache
def _quantus_function(fname: str) -> Callable | None:
    q = _quantus()
    for mod in (
        "perturb_func",
        "similarity_func",
        "normalise_func",
        "norm_func",
        "loss_func",
        "discretise_func",
        "complexity_func",
    ):
        m = getattr(q.functions, mod, None)
        if m is not None and callable(getattr(m, fname, None)):
            return getattr(m, fname)
    return None


def _init_kwargs(name: str, params: Mapping[str, Any], n_classes: int) -> dict[str, Any]:
    cls = quantus_class(name)
    sig = _init_signature(cls).parameters
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in CALL_PARAMS:
            continue
        if key not in sig or key in _NOT_PARAMS:
            raise TypeError(
                f"Quantus metric {name!r} has no parameter {key!r}. Its parameters: "
                f"{', '.join(sorted(quantus_defaults(name)))}."
            )
        default = sig[key].default
        if isinstance(value, str) and not isinstance(default, str):  # a Quantus function given by name
            fn = _quantus_function(value)
            if fn is None:
                raise TypeError(
                    f"Quantus metric {name!r}: {key}={value!r} names no function of quantus.functions "
                    "(perturb_func, similarity_func, normalise_func, norm_func, ...)."
                )
            if fn is not default:
                out[key] = fn
            continue
        if key == "num_classes" and value is None:
            value = n_classes
        out[key] = value
    return out


def _to_scores(name: str, out: Any, b: int) -> Tensor:
    """One float per image from a Quantus output (see :data:`OUTPUT_RULES`)."""
    if isinstance(out, dict):  # MPRT family without return_last/average_correlation: {layer: [B]}
        out = list(out.values())[-1]
    if isinstance(out, np.ndarray):
        out = list(out) if out.ndim else [out]
    if not isinstance(out, (list, tuple)) or len(out) != b:
        raise QuantusBridgeError(
            f"Quantus metric {name!r} returned {type(out).__name__} of length "
            f"{len(out) if hasattr(out, '__len__') else '?'} for {b} images; expected one score per image."
        )
    vals = []
    for v in out:
        arr = np.asarray(v, dtype=np.float64)
        vals.append(float(arr) if arr.ndim == 0 else float(np.trapezoid(arr.reshape(-1), dx=1)))
    return torch.tensor(vals, dtype=torch.float64).float()


def check_usable(name: str) -> None:
    """Raise :class:`QuantusBridgeError` naming the upstream problem for a metric in BROKEN/UNSUPPORTED."""
    quantus_class(name)
    if name in BROKEN:
        raise QuantusBridgeError(f"quantus/{name} is broken on this stack: {BROKEN[name]}")
    if name in UNSUPPORTED:
        raise QuantusBridgeError(f"quantus/{name} has no per-image score in cambench: {UNSUPPORTED[name]}")


def _check_call(name: str, model: nn.Module, images: Tensor, kwargs: Mapping[str, Any]) -> None:
    """Known upstream limits that depend on the model or the parameters: fail with the reason, not deep inside."""
    if name == "NonSensitivity" and int(kwargs.get("features_in_step", 1)) != 1 and images.shape[1] != 1:
        raise QuantusBridgeError(
            "quantus/NonSensitivity with features_in_step > 1 on images of more than one channel fails in Quantus "
            "0.6.0 (it compares per-feature-step arrays with per-C*H*W arrays: 'operands could not be broadcast'). "
            "Use features_in_step=1 (Quantus' default; one forward per pixel, slow on large images)."
        )
    if name == "InputInvariance":  # Quantus shifts the bias of the model's first submodule (Kindermans 2019)
        first = next(iter(model.children()), None)
        if first is None or not hasattr(first, "out_channels") or getattr(first, "bias", None) is None:
            raise QuantusBridgeError(
                f"quantus/InputInvariance absorbs an input shift into the bias of the model's first submodule, "
                f"which must be a convolution with a bias; this model's is {type(first).__name__}"
                f"{' without a bias' if hasattr(first, 'out_channels') else ''}."
            )


def quantus_metric(
    name: str,
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    masks: Tensor | None = None,
    explain: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    **params: Any,
) -> Tensor:
    """Quantus metric ``name`` (a class name, e.g. ``"Sparseness"``) on maps ``saliency`` ``[B,H,W]``.

    ``params`` override the metric's constructor arguments and ``softmax`` (defaults:
    :func:`quantus_defaults`); ``masks`` ``[B,H,W]`` are Quantus' ``s_batch`` (localisation metrics);
    ``explain(model, images, targets) -> [B,H,W]`` re-explains (robustness and randomisation metrics; the
    model may be a randomised copy). Returns ``Tensor[B]`` float32 on the CPU (see :data:`OUTPUT_RULES`).
    """
    check_usable(name)
    if saliency.ndim != 3 or images.ndim != 4 or saliency.shape[0] != images.shape[0]:
        raise InputError(
            f"saliency must be [B,H,W] and images [B,C,H,W] with the same B; got {tuple(saliency.shape)} and "
            f"{tuple(images.shape)}."
        )
    if name in REEXPLAIN and explain is None:
        raise QuantusBridgeError(f"quantus/{name} re-explains its inputs: pass explain=(model, images, targets)->maps.")
    b = int(images.shape[0])
    device = images.device
    merged = {**quantus_defaults(name), **params}
    n_classes = 0
    if merged.get("num_classes", 0) is None:  # RandomLogit: the model's number of outputs
        with torch.inference_mode():
            n_classes = int(model(images[:1]).shape[-1])
    kwargs = _init_kwargs(name, merged, n_classes)
    _check_call(name, model, images, kwargs)
    call = {k: params[k] for k in CALL_PARAMS if k in params}
    call.setdefault("softmax", quantus_defaults(name)["softmax"])

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=images.dtype, device=device)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device).reshape(-1)
        return explain(model, x, t).detach().float().cpu().numpy()[:, None]  # type: ignore[misc]

    cls = quantus_class(name)
    x = images.detach().float().cpu().numpy()
    a = saliency.detach().float().cpu().numpy()[:, None]
    s = None if masks is None else masks.detach().float().cpu().numpy().reshape(b, 1, *masks.shape[-2:])
    try:
        with seeded(seed), contextlib.redirect_stdout(io.StringIO()):
            metric = cls(**kwargs, **FIXED_INIT)
            out = metric(
                model=model,
                x_batch=x,
                y_batch=targets.detach().cpu().numpy(),
                a_batch=a,
                s_batch=s,
                channel_first=True,
                explain_func=explain_func if explain is not None else None,
                device=str(device),
                batch_size=batch_size,
                **call,
            )
    except AttributeError as exc:
        if "module 'numpy' has no attribute" in str(exc):
            raise QuantusBridgeError(
                f"quantus/{name} calls a NumPy function removed in NumPy 2 ({exc}; NumPy {np.__version__} is "
                "installed): an upstream Quantus 0.6.0 problem with these parameters."
            ) from exc
        raise QuantusBridgeError(f"quantus/{name} failed: {type(exc).__name__}: {exc}") from exc
    except CambenchError:
        raise
    except Exception as exc:
        raise QuantusBridgeError(f"quantus/{name} failed: {type(exc).__name__}: {exc}") from exc
    return _to_scores(name, out, b)


__all__ = [
    "BROKEN",
    "OUTPUT_RULES",
    "QUANTUS_VERSION",
    "QuantusBridgeError",
    "REEXPLAIN",
    "UNSUPPORTED",
    "quantus_class",
    "quantus_defaults",
    "quantus_metric",
    "quantus_metric_classes",
    "quantus_metric_names",
]
