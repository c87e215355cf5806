"""Run a suite: plan units of work, execute each one as a pure function, store every finished unit.

A *unit* is (experiment, contiguous shard of image indices). :func:`run_unit` is a pure function of
``(suite, unit)`` returning a picklable :class:`UnitResult` (a joblib/dask worker can call it); the
driver :func:`run_suite` skips units already in the store and writes each new one atomically.

Per batch of a unit:

1. targets: the ground-truth label, or the model's top-1 class (``target = "predicted"``, computed under
   ``torch.inference_mode``);
2. every method from **one** shared capture (an :class:`benchmark.methods.ExplainContext`, exactly what
   ``methods.explain(..., details=True)`` does, run method by method so that one failing method is
   recorded with ``status="error"`` while the others go on);
3. every metric through ``benchmark.metrics.compute_metrics`` on one :class:`MetricContext` (perturbation
   metrics batch all methods internally), one metric at a time so that a failure stays local.

Statuses in the score rows: ``ok`` (finite value), ``undefined`` (the metric returned NaN: undefined for
that image, e.g. an empty mask), ``error`` (the method or the metric raised; ``message`` says why).
Metrics whose needs the dataset cannot meet (masks, boxes) produce **no rows**; they are listed with the
reason in ``run.json`` (``skipped``) and in the report. Maps flagged degenerate (constant raw map, set to
zeros) keep their rows, with ``degenerate = True``.

Determinism: each batch seeds torch and the methods/metrics with ``batch_seed(suite.seed, unit.key, i)``,
so a unit's rows do not depend on which units ran before it (resume, parallel backends).
"""

from __future__ import annotations

import dataclasses

import hashlib
import importlib
import importlib.util
import json
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import CambenchError, SuiteError, UnknownNameError, WeightsError
from ..types import Batch, ModelHandle
from .suite import METRIC_FAMILIES, Experiment, Suite

SCORE_COLUMNS = [
    "model",
    "dataset",
    "method",
    "metric",
    "image_id",
    "value",
    "status",
    "message",
    "degenerate",
]
CURVE_COLUMNS = ["model", "dataset", "method", "metric", "step", "x", "value", "n"]
TIMING_COLUMNS = ["unit", "model", "dataset", "stage", "name", "seconds"]


# -- registries and plugins ------------------------------------------------------------------------


def load_registries(plugins: Sequence[str] = (), check: bool = False) -> None:
    """Import the packages that fill the registries, then ``plugins`` (module names or ``.py`` paths).

    A plugin is any module that registers methods, metrics, models or datasets on import; loading goes
    through :func:`benchmark.plugins.load_plugins` (once per process; name clashes and import errors fail
    early, naming the plugin). ``check`` also runs the method contract check on the plugins' methods (the
    CLI does for ``--plugin``; suite-file plugins are trusted, e.g. test fakes that fail on purpose).
    """
    for mod in ("benchmark.methods", "benchmark.metrics", "benchmark.models", "benchmark.data"):
        importlib.import_module(mod)
    from ..plugins import load_plugins

    load_plugins(list(plugins), check=check)


def load_plugin(plugin: str) -> Any:
    """Import one plugin (a dotted module name or a ``.py`` path); see :func:`load_registries`."""
    from ..plugins import load_plugins

    return load_plugins([plugin], entry_points=False, check=False)[0]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` if available, else ``mps`` if available, else ``cpu``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CambenchError(f"Device {device!r} was requested but CUDA is not available; use --device cpu.")
    return torch.device(device)


from ..methods.base import PRECISIONS as _FORWARD_DTYPES  # noqa: E402

PRECISIONS = tuple(_FORWARD_DTYPES)  # fp32, tf32, bf16, fp16: one list, in methods.base


@dataclass(frozen=True)
class ExecOptions:
    """*How* units run (picklable, sent to every worker); only ``precision`` can change scores.

    precision:     ``fp32`` | ``tf32`` | ``bf16`` | ``fp16``: ``bf16``/``fp16`` autocast the extra
                   (perturbation) forwards of Score-/Ablation-CAM and the perturbation metrics; the gradient
                   capture stays fp32. ``fp32`` is IEEE fp32 on every device (TF32 off on CUDA);
                   ``tf32`` lets CUDA use TF32 for all convolutions and matmuls (faster, maps move by ~1e-3;
                   :func:`~benchmark.methods.base.tf32`). A non-fp32 precision is part of the suite hash
                   (its parts are not mixed with fp32).
    channels_last: convert CNNs and batches to ``torch.channels_last``; ``None`` = for models without a
                   token reshape, on every device (measured faster on CUDA and on CPU: benchmarks/RESULTS.md).
    prefetch:      load/collate/pin the next batches in a background thread; ``None`` = on CUDA.
    threads:       ``torch.set_num_threads`` in the process running the unit (parallel CPU workers).
    """

    precision: str = "fp32"
    channels_last: Optional[bool] = None
    prefetch: Optional[bool] = None
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise CambenchError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")


# -- plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One unit of work: images ``start:stop`` of experiment ``experiment``, with resolved names."""

    key: str
    experiment: int
    start: int
    stop: int
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    gallery: int = 0  # images of this unit (from its start) kept for the gallery

    @property
    def indices(self) -> list[int]:
        return list(range(self.start, self.stop))


@dataclass
class ExperimentPlan:
    """An experiment with names resolved against the registries."""

    label: str
    model: str
    dataset: str
    n_images: int
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    skipped: dict[str, str]  # metric -> why it does not apply to this dataset
    method_params: dict[str, dict]
    metric_params: dict[str, dict]


@dataclass
class Plan:
    suite: Suite
    hash: str
    experiments: list[ExperimentPlan]
    units: list[Unit]
    directions: dict[str, bool]  # metric -> higher_is_better
    families: dict[str, str]  # metric -> family


def plan_run(suite: Suite, limit: Optional[int] = None, precision: str = "fp32") -> Plan:
    """Resolve every name against the registries and split each experiment into units.

    ``precision`` other than ``fp32`` (see :class:`ExecOptions`) is folded into the suite hash.

    Raises :class:`SuiteError` (before any model work) for unknown names or parameters, unset
    environment variables, missing data roots or checkpoint files.
    """
    _check_environment(suite)
    load_registries(suite.plugins)
    from ..data import DATASETS
    from ..metrics import METRICS
    from ..metrics.base import metric_params
    from ..models import MODELS

    exps: list[ExperimentPlan] = []
    units: list[Unit] = []
    directions: dict[str, bool] = {}
    families: dict[str, str] = {}
    for i, exp in enumerate(suite.experiments):
        where = f"experiment #{i} ({exp.label} on {exp.dataset})"
        _lookup(MODELS, exp.model, where)
        _lookup(DATASETS, exp.dataset, where)
        dataset = _get_dataset(exp, suite.seed)
        methods = _resolve_methods(exp, dataset, where, MODELS.entry(exp.model).meta.get("family"))
        metrics = _resolve_metrics(exp, where)
        for name in exp.metric_params:
            _lookup(METRICS, name, f"{where}: [metric_params.{name}]")
        mparams = {}
        for name in [*metrics, *(m for m in exp.metric_params if m not in metrics)]:
            try:
                mparams[name] = metric_params(name, exp.metric_params.get(name))
            except TypeError as exc:
                raise SuiteError(f"{where}: [metric_params.{name}]: {exc}") from None
        skipped = {}
        for name in metrics:
            needs = METRICS.entry(name).meta.get("needs", ())
            lack = [n for n in needs if (n == "masks" and not dataset.has_masks) or (n == "boxes" and not dataset.has_boxes)]
            if lack:
                skipped[name] = f"needs {' and '.join(lack)}, which dataset {exp.dataset!r} does not provide"
        mparams = {m: mparams[m] for m in metrics}
        run_metrics = tuple(m for m in metrics if m not in skipped)
        for name in metrics:
            entry = METRICS.entry(name)
            directions[name] = bool(entry.meta.get("higher_is_better", True))
            families[name] = str(entry.meta.get("family", ""))
        n = len(dataset)
        if limit is not None:
            n = min(n, int(limit))
        plan = ExperimentPlan(
            label=exp.label,
            model=exp.model,
            dataset=exp.dataset,
            n_images=n,
            methods=methods,
            metrics=run_metrics,
            skipped=skipped,
            method_params={m: _method_params(m, exp.method_params.get(m), where) for m in methods},
            metric_params=mparams,
        )
        exps.append(plan)
        for start in range(0, n, suite.shard_size):
            stop = min(start + suite.shard_size, n)
            units.append(
                Unit(
                    key=f"{i:02d}-{exp.key}-{start:06d}-{stop:06d}",
                    experiment=i,
                    start=start,
                    stop=stop,
                    methods=methods,
                    metrics=run_metrics,
                    gallery=max(0, min(stop, suite.gallery) - start),
                )
            )
    extra = [
        {"methods": e.methods, "metrics": e.metrics, "mp": e.method_params, "kp": e.metric_params}
        for e in exps
    ]
    hash_extra: Any = extra if precision == "fp32" else {"experiments": extra, "precision": precision}
    return Plan(suite, suite.hash(hash_extra), exps, units, directions, families)


def _check_environment(suite: Suite) -> None:
    missing = suite.unresolved_env()
    if missing:
        lines = "; ".join(f"{where} uses ${{{var}}}" for where, var in missing)
        var = missing[0][1]
        raise SuiteError(
            f"Suite {suite.name!r} needs environment variables that are not set: {lines}. "
            f"Set them (e.g. `export {var}=/path/to/data`) or pass --data-root DIR."
        )
    for e in suite.experiments:
        root = e.data.get("root")
        if isinstance(root, str) and not Path(root).expanduser().exists():
            raise SuiteError(
                f"Suite {suite.name!r}: the data root {root!r} of dataset {e.dataset!r} does not exist. "
                "Point the suite's `root` (or its environment variable, or --data-root) at your copy."
            )
        if e.weights not in ("default", "random") and not Path(e.weights).expanduser().is_file():
            raise WeightsError(
                f"Suite {suite.name!r}: the checkpoint {e.weights!r} for model {e.model!r} does not exist. "
                "Use weights = \"default\", \"random\" or the path of a saved state_dict."
            )


def _lookup(registry: Any, name: str, where: str) -> Any:
    try:
        return registry.entry(name)
    except UnknownNameError as exc:
        raise SuiteError(f"{where}: {exc}") from None


def _resolve_methods(exp: Experiment, dataset: Any, where: str, family: Any = None) -> tuple[str, ...]:
    from ..methods import METHODS, is_applicable

    for n in exp.method_params:
        _lookup(METHODS, n, f"{where}: [method_params.{n}]")
        _method_params(n, exp.method_params[n], where)
    families = {e.meta.get("family") for e in METHODS.entries()} - {None}
    if exp.reexplain_methods != "all":
        for n in exp.reexplain_methods:
            if n not in METHODS and n not in families:
                raise SuiteError(
                    f"{where}: `reexplain_methods` names {n!r}, which is neither a method nor a method "
                    f"family. Families: {', '.join(sorted(f for f in families if f))}; methods: "
                    f"{', '.join(METHODS.list())}."
                )
    def usable(n: str) -> bool:
        return (not METHODS.entry(n).meta.get("needs_ground_truth") or dataset.has_masks) and is_applicable(
            n, family
        )

    if exp.methods == "all":
        return tuple(n for n in METHODS.list() if usable(n))
    if any(n in families and n not in METHODS for n in exp.methods):
        # method families ("gradient", "projection", ...) expand to their usable members
        out: list[str] = []
        for n in exp.methods:
            names = [m for m in METHODS.list(family=n) if usable(m)] if n in families and n not in METHODS else [n]
            out += [m for m in names if m not in out]
        exp = dataclasses.replace(exp, methods=tuple(out))
    for n in exp.methods:
        entry = _lookup(METHODS, n, where)
        if entry.meta.get("needs_ground_truth") and not dataset.has_masks:
            raise SuiteError(
                f"{where}: method {n!r} needs ground-truth masks, which dataset {exp.dataset!r} lacks. "
                "Remove it from `methods`."
            )
    return tuple(exp.methods)


def _method_params(name: str, overrides: Optional[dict], where: str) -> dict:
    from ..methods import METHODS

    defaults = dict(METHODS.entry(name).meta.get("defaults", {}))
    for k in overrides or {}:
        if k not in defaults:
            raise SuiteError(
                f"{where}: [method_params.{name}]: method {name!r} has no parameter {k!r}. "
                f"Its parameters: {', '.join(sorted(defaults)) or '(none)'}."
            )
    return {**defaults, **(overrides or {})}


def _resolve_metrics(exp: Experiment, where: str) -> tuple[str, ...]:
    from ..metrics import METRICS

    if exp.metrics == "all":
        return tuple(METRICS.list())
    out: list[str] = []
    for n in exp.metrics:
        if n in METRIC_FAMILIES:
            out += [m for m in METRICS.list(family=n) if m not in out]
        elif n not in out:
            if n not in METRICS:
                _lookup_metric_or_family(n, where)
            out.append(n)
    return tuple(out)


def _lookup_metric_or_family(name: str, where: str) -> None:
    import difflib

    from ..metrics import METRICS

    valid = list(METRICS.list()) + list(METRIC_FAMILIES)
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise SuiteError(
        f"{where}: unknown metric {name!r}.{hint} Valid metrics: {', '.join(METRICS.list()) or '(none)'}; "
        f"families: {', '.join(METRIC_FAMILIES)}; or \"all\"."
    )


# -- per-process caches (a worker builds each model/dataset once) ---------------------------------

_MODELS: dict[str, tuple[ModelHandle, bool]] = {}
_DATASETS: dict[str, Any] = {}


def _get_model(exp: Experiment, device: torch.device, channels_last: Optional[bool] = False) -> tuple[ModelHandle, bool]:
    """The cached model on ``device`` and whether it is channels_last (``None``: CNNs)."""
    from ..models import create_model

    key = json.dumps([exp.model, exp.weights, exp.model_kwargs, str(device), channels_last], sort_keys=True, default=str)
    if key not in _MODELS:
        handle = create_model(exp.model, weights=exp.weights, device=device, **exp.model_kwargs)
        cl = _is_cnn(handle) if channels_last is None else bool(channels_last)
        if cl:
            handle.model.to(memory_format=torch.channels_last)
        _MODELS[key] = (handle, cl)
    return _MODELS[key]


def _is_cnn(handle: ModelHandle) -> bool:
    return handle.reshape is None and any(isinstance(m, torch.nn.Conv2d) for m in handle.model.modules())


def _pinned(batch: Batch) -> Batch:
    """The batch in page-locked host memory (so that the copy to the GPU can be asynchronous)."""
    pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
    return Batch(pin(batch.images), pin(batch.targets), list(batch.ids), pin(batch.masks),
                 None if batch.boxes is None else [pin(b) for b in batch.boxes], pin(batch.labels),
                 None if batch.extras is None else {k: pin(v) for k, v in batch.extras.items()})


def _device_batches(batches: Iterator[Batch], device: torch.device, prefetch: bool, channels_last: bool) -> Iterator[Batch]:
    """Batches on ``device``: on CUDA pinned and copied with ``non_blocking``; optionally prefetched."""
    cuda = device.type == "cuda"
    if prefetch:
        from .parallel import prefetch as _prefetch

        batches = _prefetch(batches, _pinned if cuda else (lambda b: b))
    for batch in batches:
        if cuda and not prefetch:
            batch = _pinned(batch)
        batch = batch.to(device, non_blocking=cuda)
        if channels_last and batch.images.ndim == 4:
            batch = replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
        yield batch


def _get_dataset(exp: Experiment, seed: int) -> Any:
    from ..data import create_dataset

    kwargs = {"seed": seed, **exp.data}
    key = json.dumps([exp.dataset, kwargs], sort_keys=True, default=str)
    if key not in _DATASETS:
        try:
            _DATASETS[key] = create_dataset(exp.dataset, **kwargs)
        except TypeError as exc:
            raise SuiteError(f"Dataset {exp.dataset!r} rejected the suite's `data` arguments {kwargs}: {exc}") from None
    return _DATASETS[key]


def clear_caches() -> None:
    """Forget the models and datasets built in this process."""
    _MODELS.clear()
    _DATASETS.clear()


def _make_batches(dataset: Any, handle: ModelHandle, batch_size: int, indices: list[int]) -> Iterator[Batch]:
    from ..data.transforms import make_batches

    return make_batches(dataset, handle, batch_size, indices=indices)


# -- one unit --------------------------------------------------------------------------------------


@dataclass
class UnitResult:
    """Everything one unit produced (picklable): score rows, mean curves, timings, gallery sample."""

    key: str
    scores: pd.DataFrame
    curves: pd.DataFrame
    timings: pd.DataFrame
    gallery: Optional[dict[str, np.ndarray]] = None
    info: dict = field(default_factory=dict)


def _reexplained(method: str, selection: tuple[str, ...] | str) -> bool:
    """Whether ``method`` is in a suite's ``reexplain_methods`` (names and/or method families)."""
    if selection == "all":
        return True
    from ..methods import METHODS

    family = METHODS.entry(method).meta.get("family") if method in METHODS else None
    return method in selection or family in selection


def batch_seed(seed: int, unit_key: str, batch_index: int) -> int:
    """A 31-bit seed from (suite seed, unit key, batch index): independent of execution order."""
    digest = hashlib.sha256(f"{seed}:{unit_key}:{batch_index}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def _err(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}"
    return msg if len(msg) <= 500 else msg[:497] + "..."


def run_unit(
    suite: Suite,
    unit: Unit,
    progress: Optional[Callable[[int], None]] = None,
    options: Optional[ExecOptions] = None,
) -> UnitResult:
    """Compute every method and metric on the images of ``unit`` (a pure function of its inputs).

    ``progress(n)`` is called after each batch with the number of images done. Method and metric
    failures become ``status="error"`` rows; model/weights/data-root problems raise. ``options``: see
    :class:`ExecOptions` (precision, channels_last, prefetch, threads).
    """
    from ..methods.base import forward_precision, tf32

    opts = options or ExecOptions()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    with forward_precision(opts.precision), tf32(allow=opts.precision == "tf32"), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _run_unit(suite, unit, progress, opts)
    # the warnings of methods and metrics (e.g. Ablation-CAM's sign note) travel with the result: the
    # parent logs each distinct one once (nothing under --quiet) and the part's metadata keeps them
    result.info["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return result


def _run_unit(suite: Suite, unit: Unit, progress: Optional[Callable[[int], None]], opts: ExecOptions) -> UnitResult:
    from .. import methods as M
    from ..metrics import METRICS, MetricContext, compute_metrics, missing_needs

    t_unit = time.perf_counter()
    exp = suite.experiments[unit.experiment]
    device = resolve_device(suite.device)
    timings: list[tuple[str, str, float]] = []

    t = time.perf_counter()
    handle, channels_last = _get_model(exp, device, opts.channels_last)
    if exp.layer is not None:
        handle = dataclasses.replace(handle, target_layer=exp.layer)
    prefetch = device.type == "cuda" if opts.prefetch is None else bool(opts.prefetch)
    dataset = _get_dataset(exp, suite.seed)
    n_errors_before = len(getattr(dataset, "errors", []))
    timings.append(("load", "model+dataset", time.perf_counter() - t))
    model = handle.model
    fbs = suite.forward_batch_size
    method_params = exp.method_params

    cols: dict[str, list] = {c: [] for c in SCORE_COLUMNS}

    def add(method: str, metric: str, ids: Sequence[str], values: Any, status: Any, message: Any, degenerate: Any) -> None:
        n = len(ids)
        cols["model"] += [exp.label] * n
        cols["dataset"] += [exp.dataset] * n
        cols["method"] += [method] * n
        cols["metric"] += [metric] * n
        cols["image_id"] += list(ids)
        cols["value"] += list(values)
        cols["status"] += list(status) if isinstance(status, (list, np.ndarray)) else [status] * n
        cols["message"] += [message] * n
        cols["degenerate"] += list(degenerate) if isinstance(degenerate, (list, np.ndarray)) else [degenerate] * n

    curve_sum: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
    gal: dict[str, list] = {"images": [], "ids": [], "targets": [], "masks": [], "boxes": [], "maps": []}
    n_done = 0

    batches = _device_batches(_make_batches(dataset, handle, suite.batch_size, unit.indices), device, prefetch, channels_last)
    for bi, batch in enumerate(batches):
        seed = batch_seed(suite.seed, unit.key, bi)
        torch.manual_seed(seed)
        ids = list(batch.ids)
        unknown = batch.targets < 0  # a loader's "explain the prediction" sentinel (e.g. data target="predicted")
        if exp.target == "predicted" or bool(unknown.any()):
            with torch.inference_mode():
                pred = model(batch.images).argmax(dim=1)
            pred = pred.clone()  # a normal tensor (inference tensors cannot enter autograd)
            if exp.target != "predicted":
                pred = torch.where(unknown, pred, batch.targets)
            labels = batch.labels if batch.labels is not None else batch.targets
            batch = Batch(batch.images, pred, ids, batch.masks, batch.boxes, labels, batch.extras)

        # 1. every method from one shared capture
        layer = M.resolve_layer(model, handle.target_layer)
        ectx = M.ExplainContext(
            model=model, layer=layer, images=batch.images, targets=batch.targets, reshape=handle.reshape,
            batch_size=fbs, seed=seed, masks=batch.masks,
        )
        outputs: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for name in unit.methods:
            t = time.perf_counter()
            try:
                outputs[name] = M.run_method(ectx, name, method_params.get(name))
            except Exception as exc:  # noqa: BLE001  (recorded, the run goes on)
                failed[name] = _err(exc)
            timings.append(("explain", name, time.perf_counter() - t))
        saliency = {m: o.maps for m, o in outputs.items()}
        degenerate = {m: o.degenerate.detach().cpu().numpy().astype(bool) for m, o in outputs.items()}

        def explain_fn(model_, images, targets, names, *, gradient_noise=None, _seed=seed, _masks=batch.masks):
            masks = _masks if _masks is not None and images.shape[0] == _masks.shape[0] else None
            return M.explain(
                model_, handle.target_layer, images, targets, names, reshape=handle.reshape,
                params={n: method_params[n] for n in names if n in method_params},
                batch_size=fbs, seed=_seed, masks=masks, gradient_noise=gradient_noise,
            )

        # 2. every metric (each scores all methods of the batch at once)
        mctx = MetricContext(model=model, batch=batch, saliency=saliency, explain=explain_fn, seed=seed, batch_size=fbs)
        # Metrics that re-explain (robustness, sanity, cost) see only the suite's reexplain_methods; the
        # contexts share one cache, so paired metrics still share their re-explanations.
        re_sal = {m: v for m, v in saliency.items() if _reexplained(m, exp.reexplain_methods)}
        mctx_re = dataclasses.replace(mctx, saliency=re_sal, cache=mctx.cache, curves=mctx.curves)
        for metric in unit.metrics:
            if missing_needs(metric, mctx):
                continue
            reexplains = "explainer" in METRICS.entry(metric).meta.get("needs", ())
            ctx_m = mctx_re if reexplains else mctx
            if not ctx_m.saliency:
                continue
            for name, msg in failed.items():
                if not reexplains or _reexplained(name, exp.reexplain_methods):
                    add(name, metric, ids, [np.nan] * len(ids), "error", f"method failed: {msg}", False)
            t = time.perf_counter()
            try:
                res = compute_metrics(ctx_m, [metric], exp.metric_params).get(metric, {})
            except Exception as exc:  # noqa: BLE001
                msg = f"metric failed: {_err(exc)}"
                for name in ctx_m.saliency:
                    add(name, metric, ids, [np.nan] * len(ids), "error", msg, degenerate[name])
            else:
                for name in ctx_m.saliency:
                    if name not in res:
                        continue
                    v = res[name].detach().float().cpu().double().numpy().reshape(-1)
                    if v.shape[0] != len(ids):
                        add(name, metric, ids, [np.nan] * len(ids), "error",
                            f"metric returned {v.shape[0]} values for {len(ids)} images", degenerate[name])
                        continue
                    status = np.where(np.isfinite(v), "ok", "undefined").tolist()
                    add(name, metric, ids, v.tolist(), status, "", degenerate[name])
            timings.append(("metric", metric, time.perf_counter() - t))

        # 3. curves (mean per unit) and the gallery sample
        for metric, per_method in mctx.curves.items():
            for name, c in per_method.items():
                arr = c.detach().float().cpu().double().numpy()
                if arr.ndim != 2 or arr.shape[0] == 0:
                    continue
                s, k = curve_sum.get((metric, name), (np.zeros(arr.shape[1]), 0))
                if s.shape[0] == arr.shape[1]:
                    curve_sum[(metric, name)] = (s + np.nan_to_num(arr).sum(0), k + arr.shape[0])
        keep = max(0, min(len(ids), unit.gallery - n_done))
        if keep:
            imgs = handle.denormalize(batch.images[:keep].detach()).clamp(0, 1)
            gal["images"].append((imgs.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
            gal["ids"] += ids[:keep]
            gal["targets"].append(batch.targets[:keep].cpu().numpy())
            if batch.masks is not None:
                gal["masks"].append(batch.masks[:keep].cpu().numpy())
            if batch.boxes is not None:
                gal["boxes"] += [b.detach().float().cpu().numpy().reshape(-1, 4) for b in batch.boxes[:keep]]
            gal["maps"].append({m: saliency[m][:keep].detach().cpu().numpy().astype(np.float16) for m in saliency})
        n_done += len(ids)
        if progress is not None:
            progress(len(ids))

    # image-level failures (corrupt/missing files skipped by the loader)
    new_errors = list(getattr(dataset, "errors", []))[n_errors_before:]
    for msg in new_errors:
        add("(data)", "(load)", [str(msg).split(":")[0]], [np.nan], "error", str(msg)[:500], False)

    scores = pd.DataFrame(cols, columns=SCORE_COLUMNS)
    scores["value"] = scores["value"].astype("float64")
    scores["degenerate"] = scores["degenerate"].astype(bool)
    curves = _curves_frame(exp, curve_sum)
    timings.append(("total", "unit", time.perf_counter() - t_unit))
    tdf = pd.DataFrame(
        [(unit.key, exp.label, exp.dataset, s, n, sec) for s, n, sec in timings], columns=TIMING_COLUMNS
    )
    tdf = tdf.groupby(["unit", "model", "dataset", "stage", "name"], sort=False, as_index=False)["seconds"].sum()
    return UnitResult(
        key=unit.key,
        scores=scores,
        curves=curves,
        timings=tdf,
        gallery=_gallery_arrays(gal, handle, exp) if gal["ids"] else None,
        info={"n_images": n_done, "data_errors": new_errors},
    )


def _curves_frame(exp: Experiment, curve_sum: dict[tuple[str, str], tuple[np.ndarray, int]]) -> pd.DataFrame:
    rows = []
    for (metric, method), (s, k) in sorted(curve_sum.items()):
        steps = s.shape[0]
        xs = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
        mean = s / max(k, 1)
        rows += [(exp.label, exp.dataset, method, metric, j, float(xs[j]), float(mean[j]), k) for j in range(steps)]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _gallery_arrays(gal: dict[str, list], handle: ModelHandle, exp: Experiment) -> dict[str, np.ndarray]:
    methods = list(gal["maps"][0])
    out = {
        "experiment": np.asarray([exp.label, exp.dataset], dtype=str),
        "images": np.concatenate(gal["images"]),
        "ids": np.asarray(gal["ids"], dtype=str),
        "targets": np.concatenate(gal["targets"]).astype(np.int64),
        "methods": np.asarray(methods, dtype=str),
        "maps": np.stack([np.concatenate([m[k] for m in gal["maps"]]) for k in methods], axis=1),
    }
    if gal["masks"]:
        out["masks"] = np.concatenate(gal["masks"]).astype(bool)
    if gal["boxes"]:
        kmax = max(b.shape[0] for b in gal["boxes"])
        pad = np.full((len(gal["boxes"]), max(kmax, 1), 4), np.nan, dtype=np.float32)
        for i, b in enumerate(gal["boxes"]):
            pad[i, : b.shape[0]] = b
        out["boxes"] = pad
    if handle.class_names:
        out["target_names"] = np.asarray([handle.class_names[t] if 0 <= t < len(handle.class_names) else str(t) for t in out["targets"]], dtype=str)
    return out


# -- the driver ------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What :func:`run_suite` did: the plan, the units it ran, those it found finished, the report."""

    plan: Plan
    out: Path
    ran: list[str]
    reused: list[str]
    report: Any = None


def versions() -> dict[str, str]:
    import platform

    from .. import __version__

    out = {"cambench": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "pandas": pd.__version__}
    from importlib import metadata

    for dist in ("torchvision", "timm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    out["platform"] = platform.platform(terse=True)
    return out


def run_record(plan: Plan, device: torch.device) -> dict:
    """The ``run.json`` record: what the report needs without the registries (directions, families...)."""
    s = plan.suite
    return {
        "suite": s.name,
        "suite_hash": plan.hash,
        "suite_path": s.path,
        "suite_toml": s.source,
        "seed": s.seed,
        "bootstrap": s.bootstrap,
        "batch_size": s.batch_size,
        "shard_size": s.shard_size,
        "device": str(device),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "versions": versions(),
        "directions": plan.directions,
        "families": plan.families,
        "units": [u.key for u in plan.units],
        "experiments": [
            {"label": e.label, "model": e.model, "dataset": e.dataset, "n_images": e.n_images,
             "methods": list(e.methods), "metrics": list(e.metrics), "skipped": e.skipped,
             "method_params": e.method_params, "metric_params": e.metric_params}
            for e in plan.experiments
        ],
    }


def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    fresh: bool = False,
    limit: Optional[int] = None,
    quiet: bool = False,
    report: bool = True,
    plots: bool = True,
    log: Optional[Callable[[str], None]] = None,
    backend: str = "sequential",
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    client: Any = None,
    options: Optional[ExecOptions] = None,
    plugins: Sequence[str] = (),
) -> RunOutcome:
    """Plan ``suite``, run every unit not already stored in ``out``, then write tables and the report.

    Killing the process at any point loses at most the units in flight; rerunning with the same
    arguments resumes and gives the same final tables as an uninterrupted run. ``backend``
    (``sequential`` | ``loky`` | ``dask``), ``workers``, ``scheduler`` and ``client``: see
    :func:`benchmark.runner.parallel.execute_units` (every backend gives the same scores, and the parent
    writes each unit's part as it arrives). ``options``: :class:`ExecOptions`; ``plugins``: extra
    plugins the workers import.
    """
    from ..store import Store, atomic_write_text
    from .parallel import execute_units

    log = log or (lambda msg: None if quiet else print(msg, file=sys.stderr))
    out = Path(out)
    options = options or ExecOptions()
    plan = plan_run(suite, limit, precision=options.precision)
    device = resolve_device(suite.device)
    store = Store(out, plan.hash, log)
    store.prepare(fresh)
    record = run_record(plan, device)
    record.update(precision=options.precision, backend=backend)
    atomic_write_text(out / "run.json", json.dumps(record, indent=1, default=str))
    done = store.done()
    todo = [u for u in plan.units if u.key not in done]
    reused = [u.key for u in plan.units if u.key in done]
    if reused:
        log(f"cambench: resuming in {out}: {len(reused)} of {len(plan.units)} unit(s) already finished.")
    show = not quiet and sys.stderr.isatty()
    from tqdm.auto import tqdm

    units_bar = tqdm(total=len(todo), desc="units", unit="unit", disable=not show, position=0)
    images_bar = tqdm(total=sum(u.stop - u.start for u in todo), desc="images", unit="img", disable=not show, position=1)
    ran = []
    results = execute_units(suite, todo, backend=backend, workers=workers, scheduler=scheduler, client=client,
                            options=options, plugins=plugins, progress=images_bar.update)
    try:
        seen: set[str] = set()
        for result in results:
            store.write_unit(result)
            for w in result.info.get("warnings", ()):
                if w not in seen:
                    seen.add(w)
                    log(f"cambench: {result.key}: {w}")
            ran.append(result.key)
            units_bar.set_postfix_str(result.key, refresh=False)
            units_bar.update(1)
    finally:
        results.close()
        images_bar.close()
        units_bar.close()
    rep = None
    if report:
        from ..report.build import write_report

        rep = write_report(out, plots=plots)
    return RunOutcome(plan, out, ran, reused, rep)
