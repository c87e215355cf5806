"""What happens to one batch: its targets, every method from one shared capture, every metric on one
:class:`~benchmark.metrics.MetricContext`. The public Python API for "explain and score", and the only path
the runner takes (``runner/unit.py`` calls :func:`evaluate_batch` on each batch, and again on each
perturbed model of the meta-evaluation).

>>> batch = resolve_targets(model, batch, "predicted")
>>> out = evaluate_batch(model, "layer4", None, batch, ["gradcam", "scorecam"], ["deletion_auc"], seed=0)
>>> out.scores["deletion_auc"]["gradcam"]  # Tensor[B]

Targets are resolved by kind (:data:`TARGET_KINDS`: ``label``, ``predicted``, ``labels``, ``tokens``,
``text``); a new kind of
target registers itself here with :func:`register_target_kind` (how to pick each image's target, and
optionally what it makes of a dataset's samples), so the runner never changes for one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from .data.captions import PerQueryTargets, caption_truth, expand_token_batch
from .data.transforms import check_class_count, per_class
from .errors import CambenchError, InputError, MethodTimeout, MethodUndefinedError, UnknownNameError
from .methods import METHODS, ExplainContext, explain, resolve_layer, run_method
from .metrics import METRICS, MetricContext, compute_metrics, missing_needs
from .progress import note_step
from .types import Batch, ModelHandle, Reshape

# -- targets -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetKind:
    """How a suite's ``target`` picks the class each image is explained for.

    ``resolve(model, batch) -> batch``: the batch with ``targets`` set (and ``labels`` keeping the true
    class where it differs). ``samples(dataset) -> dataset``: what the kind makes of a dataset's samples
    (``labels``: one sample per present class); ``check(handle, dataset)`` refuses a model the kind cannot
    explain on that dataset (raise a :class:`~benchmark.errors.CambenchError`).
    """

    name: str
    resolve: Callable[[nn.Module, Batch], Batch]
    samples: Callable[[Any], Any] | None = None
    check: Callable[[ModelHandle, Any], None] | None = None


#: The target kinds by name (a suite's ``target``), filled by :func:`register_target_kind`.
TARGET_KINDS: dict[str, TargetKind] = {}


def register_target_kind(
    name: str,
    *,
    samples: Callable[[Any], Any] | None = None,
    check: Callable[[ModelHandle, Any], None] | None = None,
) -> Callable[[Callable[[nn.Module, Batch], Batch]], Callable[[nn.Module, Batch], Batch]]:
    """Decorator registering ``resolve(model, batch) -> batch`` as target kind ``name`` (see :class:`TargetKind`)."""

    def deco(fn: Callable[[nn.Module, Batch], Batch]) -> Callable[[nn.Module, Batch], Batch]:
        TARGET_KINDS[name] = TargetKind(name, fn, samples, check)
        return fn

    return deco


def target_kind(name: str) -> TargetKind:
    """The registered target kind ``name``; :class:`~benchmark.errors.UnknownNameError` lists the valid ones."""
    try:
        return TARGET_KINDS[name]
    except KeyError:
        raise UnknownNameError(
            f"Unknown target {name!r}; expected one of {', '.join(sorted(TARGET_KINDS))}. Set the experiment's "
            "`target` to one of them."
        ) from None


def _top1(model: nn.Module, batch: Batch) -> Tensor:
    with torch.inference_mode():
        pred = model(batch.images).argmax(dim=1)
    return pred.clone()  # a normal tensor (inference tensors cannot enter autograd)


def _with_targets(batch: Batch, targets: Tensor) -> Batch:
    labels = batch.labels if batch.labels is not None else batch.targets
    return replace(batch, targets=targets, labels=labels)


def _label_targets(model: nn.Module, batch: Batch) -> Batch:
    """The ground-truth class; an image whose loader gave the sentinel ``-1`` ("explain the prediction",
    e.g. data ``target="predicted"``) gets the model's top-1 class."""
    unknown = batch.targets < 0
    if not bool(unknown.any()):
        return batch
    return _with_targets(batch, torch.where(unknown, _top1(model, batch), batch.targets))


register_target_kind("label")(_label_targets)
#: one sample per (image, present class), kept in the image's batch: data/transforms.py's ``per_class``
register_target_kind("labels", samples=per_class, check=check_class_count)(_label_targets)


@register_target_kind("predicted")
def _predicted_targets(model: nn.Module, batch: Batch) -> Batch:
    """The model's top-1 class (computed under ``torch.inference_mode``); ``labels`` keep the true class."""
    return _with_targets(batch, _top1(model, batch))


@register_target_kind("tokens", samples=caption_truth)
def _token_targets(model: nn.Module, batch: Batch) -> Batch:
    """One row per generated token (greedy decoding) of an image-to-text model, its logit as target: the
    model (the token view ``benchmark.models.captioner.TokenTargets`` of ``shapes_captioner``) captions each
    image, ``data/captions.py``'s ``expand_token_batch`` makes the rows (ids ``"<image>#t<pos>:<word>"``, the
    named object's mask as truth), and the view binds the batch's captions and the flat token targets."""
    generate, bind = getattr(model, "generate", None), getattr(model, "bind", None)
    if not (callable(generate) and callable(bind)):
        raise InputError(
            f'target = "tokens" explains the generated tokens of an image-to-text model; {type(model).__name__} '
            "has no token view (generate and bind). Use the model shapes_captioner, or another target."
        )
    with torch.no_grad():
        generated = generate(batch.images)
    return bind(expand_token_batch(batch, generated))


#: one sample per text query present in an image (ids ``"<image>#<colour>_<shape>"``), kept in the image's
#: batch; the target is the query id, the explained score the dual encoder's image-query similarity
register_target_kind("text", samples=PerQueryTargets)(_label_targets)


def resolve_targets(model: nn.Module, batch: Batch, kind: str = "label") -> Batch:
    """``batch`` with the targets of kind ``kind`` (:data:`TARGET_KINDS`)."""
    return target_kind(kind).resolve(model, batch)


# -- one batch -----------------------------------------------------------------------------------------


@dataclass
class BatchScores:
    """What :func:`evaluate_batch` computed on one batch (tensors, in the order the methods and metrics ran).

    ``maps``: ``{method: Tensor[B,H,W]}`` (or ``[B,T,H,W]``) in [0, 1]; ``degenerate``: ``{method: bool
    Tensor[B]}`` (constant raw map, published as zeros); ``scores``: image-level metrics, ``{metric: {method:
    Tensor[B]}}`` (NaN: undefined for that image); ``statistics``: dataset-level metrics' per-image sufficient
    statistics ``{metric: {method: Tensor[B,S]}}``; ``curves``: ``{metric: {method: Tensor[B,steps]}}``;
    ``scored``: for each metric that ran, the methods it was asked to score (failed methods included);
    ``method_failures`` / ``metric_failures``: ``{name: "Type: message"}`` (``method_undefined``: those of
    them not defined on the model); ``capture_facts``: facts of the
    shared capture (:func:`capture_facts`); ``seconds``: ``{(stage, name): seconds}``.
    """

    batch: Batch
    maps: dict[str, Tensor] = field(default_factory=dict)
    degenerate: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    statistics: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    scored: dict[str, tuple[str, ...]] = field(default_factory=dict)
    method_failures: dict[str, str] = field(default_factory=dict)
    metric_failures: dict[str, str] = field(default_factory=dict)
    #: the failed methods that are not defined on this model or layer (``MethodUndefinedError``): their rows
    #: are ``undefined``, not ``error``
    method_undefined: set[str] = field(default_factory=set)
    capture_facts: dict[str, float] = field(default_factory=dict)
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    #: images of the batch the model scores with a non-finite logit (NaN or inf: :func:`nonfinite_outputs`);
    #: when > 0 no metric ran and every row of the batch is ``error`` (:func:`nonfinite_message`)
    nonfinite: int = 0


def error_message(exc: BaseException) -> str:
    """``"Type: message"``, cut to 500 characters (what a score row's ``message`` keeps)."""
    msg = f"{type(exc).__name__}: {exc}"
    return msg if len(msg) <= 500 else msg[:497] + "..."


def timeout_message(seconds: float) -> str:
    """The ``message`` of the rows of a method stopped by ``--method-timeout``."""
    return f"timed out after {seconds:g} s (--method-timeout)"


def check_method_timeout(seconds: float | None) -> None:
    """Refuse a ``--method-timeout`` that is not a positive finite number of seconds, or that cannot fire here:
    ``SIGALRM`` (POSIX) is delivered to the main thread of a process only (dask runs units on worker threads)."""
    if seconds is None:
        return
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (math.isfinite(seconds) and seconds > 0)
    ):
        raise CambenchError(f"--method-timeout must be a positive number of seconds; got {seconds!r}.")
    if not hasattr(signal, "setitimer"):
        raise CambenchError("--method-timeout needs POSIX signals (SIGALRM), which this platform lacks; drop it.")
    if threading.current_thread() is not threading.main_thread():
        raise CambenchError(
            "--method-timeout stops a method with SIGALRM, which only the main thread of a process receives, but "
            f"this unit runs on thread {threading.current_thread().name!r} (dask workers run units on threads); "
            "use --backend sequential or loky, or drop --method-timeout."
        )


@contextlib.contextmanager
def method_deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`~benchmark.errors.MethodTimeout` in the block when it runs longer than ``seconds``
    (``None``: no limit). A one-shot ``ITIMER_REAL`` timer whose ``SIGALRM`` handler raises; the handler and
    any outer timer are restored on exit. Python runs a signal handler between bytecodes, so a single long C
    operation (one convolution, one ``scipy`` call) finishes before the method is stopped. Main thread of a
    POSIX process only (:func:`check_method_timeout`)."""
    if seconds is None:
        yield
        return
    check_method_timeout(seconds)
    armed = [True]

    def _alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise MethodTimeout(timeout_message(seconds))

    previous = signal.signal(signal.SIGALRM, _alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # an enclosing timer keeps its deadline (fires at once if it has passed)
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-6))


def reexplained(method: str, selection: Sequence[str] | str) -> bool:
    """Whether ``method`` is in a suite's ``reexplain_methods`` (names and/or method families, or ``"all"``)."""
    if selection == "all":
        return True
    family = METHODS.entry(method).meta.get("family") if method in METHODS else None
    return method in selection or family in selection


def method_meta(names: Sequence[str] | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The registry metadata of methods ``names`` (:attr:`benchmark.metrics.MetricContext.method_meta`)."""
    return {n: dict(METHODS.entry(n).meta) for n in names if n in METHODS}


def capture_facts(ectx: ExplainContext) -> dict[str, float]:
    """Facts of the shared capture that prove map identities (``equivalences.csv``'s reasons):
    ``activation_min`` (>= 0: non-negative activations) and ``grad_spatial_range``, the largest spatial range
    of a channel's gradient relative to the largest gradient magnitude (0: gradients constant over space).
    Empty when no method made the capture (no extra forward)."""
    cap = ectx._capture
    if cap is None:
        return {}
    out: dict[str, float] = {}
    with torch.inference_mode():
        out["activation_min"] = float(cap.activations.detach().float().min())
        if cap.gradients is not None and cap.gradients.ndim == 4:
            g = cap.gradients.detach().float().flatten(2)
            rng = (g.max(dim=2).values - g.min(dim=2).values).max()
            out["grad_spatial_range"] = float(rng / g.abs().max().clamp_min(1e-30))
    return out


def nonfinite_outputs(model: nn.Module, ectx: ExplainContext) -> int:
    """How many images of the batch ``model`` scores with a non-finite logit (NaN or inf): read from the shared
    capture's logits, or (no method made the capture) from one forward under ``torch.inference_mode``. A
    model whose plain forward raises counts 0 here (its methods already recorded why)."""
    cap = ectx._capture
    try:
        with torch.inference_mode():
            logits = cap.logits if cap is not None else model(ectx.images)
            if not isinstance(logits, Tensor) or logits.ndim == 0:
                return 0
            bad = ~torch.isfinite(logits.detach().float())
            return int(bad.reshape(bad.shape[0], -1).any(dim=1).sum())
    except Exception:
        return 0


def nonfinite_message(scores: BatchScores) -> str:
    """The ``message`` of the rows of a batch whose model outputs are non-finite (:attr:`BatchScores.nonfinite`)."""
    n = len(scores.batch.ids)
    return (
        f"model outputs non-finite logits (NaN or inf) for {scores.nonfinite} of {n} images of this batch: no "
        "metric was computed on it. Check the model's weights (a diverged training?) and input normalisation."
    )


def evaluate_batch(
    model: nn.Module,
    layer: nn.Module | str | None,
    reshape: Reshape | None,
    batch: Batch,
    methods: Sequence[str],
    metrics: Sequence[str],
    *,
    seed: int,
    forward_batch_size: int = 64,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    reexplain_methods: Sequence[str] | str = "all",
    ms_flip: Any = None,
    method_timeout: float | None = None,
) -> BatchScores:
    """Explain ``batch`` (targets already resolved: :func:`resolve_targets`) with every method in
    ``methods`` from one shared capture, then score the maps with every metric in ``metrics``.

    ``layer``: the target layer (a module or a dotted name, resolved on ``model``); ``reshape``: tokens ->
    ``[B,C,h,w]`` for transformers. ``seed`` seeds torch before the methods and before each metric, so a
    metric's score does not depend on which ran before it. ``forward_batch_size``: inputs per extra forward
    (perturbation methods and metrics). ``method_params`` / ``metric_params``: per-name overrides of the
    registered defaults. Each method starts from the global RNG state ``torch.manual_seed(seed)``, so its
    maps do not depend on the methods before it (an incremental run computes a subset). Metrics that
    re-explain (need ``explainer``: robustness, sanity, cost) see only the methods selected by
    ``reexplain_methods`` (names and/or families). ``ms_flip``: multi-scale + flip aggregation of every
    method (:func:`benchmark.methods.run_method`). ``method_timeout``: seconds after which a method's
    explanation of the batch is stopped (:func:`method_deadline`) and its rows are ``error`` with
    :func:`timeout_message`; a method stopped there has no maps, so no metric re-explains it either.

    A method or a metric that raises is recorded (``method_failures`` / ``metric_failures``) while the others
    go on; a metric whose needs the batch cannot meet (masks, boxes...) is left out. A model whose logits are
    non-finite on the batch (:func:`nonfinite_outputs`) gets no metric computed: ``nonfinite`` counts its
    images and ``scored`` still lists what each metric would have scored. See :class:`BatchScores`.
    """
    mparams = dict(method_params or {})
    out = BatchScores(batch=batch)
    torch.manual_seed(seed)
    ectx = ExplainContext(
        model=model,
        layer=resolve_layer(model, layer),
        images=batch.images,
        targets=batch.targets,
        reshape=reshape,
        forward_batch_size=forward_batch_size,
        seed=seed,
        masks=batch.masks,
    )
    for name in methods:
        t = time.perf_counter()
        torch.manual_seed(seed)  # each method's global RNG as if it ran alone (incremental runs compute subsets)
        note_step(f"explain {name}")  # what a long unit's progress line names (benchmark.progress)
        try:
            with method_deadline(method_timeout):
                res = run_method(ectx, name, mparams.get(name), ms_flip=ms_flip)
        except MethodTimeout as exc:
            out.method_failures[name] = str(exc)
        except Exception as exc:
            out.method_failures[name] = error_message(exc)
            if isinstance(exc, MethodUndefinedError):  # not defined on this model or layer (e.g. CAM)
                out.method_undefined.add(name)
        else:
            out.maps[name], out.degenerate[name] = res.maps, res.degenerate.detach()
        out.seconds[("explain", name)] = time.perf_counter() - t
    out.capture_facts = capture_facts(ectx)
    out.nonfinite = nonfinite_outputs(model, ectx)

    def explain_fn(
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        names: Sequence[str],
        *,
        gradient_noise: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        masks = batch.masks if batch.masks is not None and images.shape[0] == batch.masks.shape[0] else None
        return explain(
            model,
            layer,
            images,
            targets,
            names,
            params={n: mparams[n] for n in names if n in mparams},
            reshape=reshape,
            forward_batch_size=forward_batch_size,
            seed=seed,
            masks=masks,
            gradient_noise=gradient_noise,
            ms_flip=ms_flip,
        )

    mctx = MetricContext(
        model=model,
        batch=batch,
        saliency=dict(out.maps),
        explain=explain_fn,
        seed=seed,
        forward_batch_size=forward_batch_size,
        method_meta=method_meta(out.maps),
    )
    for metric in metrics:
        _score_metric(out, mctx, metric, tuple(methods), reexplain_methods, metric_params, seed)
    out.curves = mctx.curves
    return out


def _score_metric(
    out: BatchScores,
    mctx: MetricContext,
    metric: str,
    methods: tuple[str, ...],
    reexplain: Sequence[str] | str,
    params: Mapping[str, Mapping[str, Any]] | None,
    seed: int,
) -> None:
    """Run one metric on the batch's maps (all methods at once) and file its result in ``out``. A metric that
    re-explains sees the ``reexplain`` selection only, through a context sharing ``mctx``'s cache and curves
    (so paired metrics still share their re-explanations)."""
    if missing_needs(metric, mctx):
        return
    meta = METRICS.entry(metric).meta
    if "explainer" in meta.get("needs", ()):
        asked = tuple(m for m in methods if reexplained(m, reexplain))
        sal = {m: v for m, v in mctx.saliency.items() if m in asked}
        ctx = replace(mctx, saliency=sal, cache=mctx.cache, curves=mctx.curves)
    else:
        asked, ctx = methods, mctx
    out.scored[metric] = asked  # also when every method failed: their rows are errors, never left out
    if out.nonfinite or not ctx.saliency:  # scores of a non-finite model mean nothing (error rows)
        return
    t = time.perf_counter()
    note_step(f"metric {metric}")
    torch.manual_seed(seed)
    try:
        res = compute_metrics(ctx, [metric], params).get(metric, {})
    except Exception as exc:
        out.metric_failures[metric] = error_message(exc)
    else:
        (out.statistics if meta.get("level", "image") == "dataset" else out.scores)[metric] = res
    out.seconds[("metric", metric)] = time.perf_counter() - t
