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

With the suite's ``meta_evaluation`` (docs/metrics.md, "Meta-evaluation"), each batch is then re-explained
and its image-level metrics re-scored under K minor and K disruptive perturbed copies of the model
(:func:`perturb_model`, one set per experiment, seeded by :func:`meta_seed`); those rows are the unit's
``perturbed`` table (``PERTURBED_COLUMNS``), reduced by :mod:`benchmark.report.meta`. Off, nothing of it runs.

Statuses in the score rows: ``ok`` (finite value), ``undefined`` (the metric returned NaN: undefined for
that image, e.g. an empty mask), ``error`` (the method or the metric raised; ``message`` says why).
Metrics whose needs the dataset cannot meet (masks, boxes) produce **no rows**; they are listed with the
reason in ``run.json`` (``skipped``) and in the report. Maps flagged degenerate (constant raw map, set to
zeros) keep their rows, with ``degenerate = True``.

Determinism: each batch seeds torch and the methods/metrics with ``batch_seed(suite.seed, unit.key, i)``,
so a unit's rows do not depend on which units ran before it (resume, parallel backends).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import CambenchError, SuiteError, UnknownNameError, WeightsError
from ..schema import (  # re-exported
    CURVE_COLUMNS,
    PERTURBED_COLUMNS,
    SCORE_COLUMNS,
    STATS_COLUMNS,
    TIMING_COLUMNS,
    UnitResult,
)
from ..types import Batch, ModelHandle
from .suite import METRIC_FAMILIES, Experiment, Suite
from .validate import check_kwargs

#: The two kinds of perturbation of the meta-evaluation, in order (docs/metrics.md, "Meta-evaluation").
META_KINDS = ("minor", "disruptive")


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


def _method_meta(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The registry metadata of methods ``names`` for :attr:`benchmark.metrics.MetricContext.method_meta`."""
    from ..methods import METHODS

    return {n: dict(METHODS.entry(n).meta) for n in names if n in METHODS}


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
    compile:       ``torch.compile`` the extra (perturbation) forwards (``reduce-overhead``: CUDA graphs on
                   CUDA) and let cuDNN autotune its convolutions (``cudnn.benchmark``);
                   :func:`~benchmark.methods.base.forward_compile`. Scores move by float reassociation only.
    """

    precision: str = "fp32"
    channels_last: Optional[bool] = None
    prefetch: Optional[bool] = None
    threads: Optional[int] = None
    compile: bool = False

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
    #: images/annotations the dataset could not read when it was built ("id: reason"), reported by the run
    data_errors: list[str] = field(default_factory=list)


@dataclass
class Plan:
    suite: Suite
    hash: str
    experiments: list[ExperimentPlan]
    units: list[Unit]
    directions: dict[str, bool]  # metric -> higher_is_better
    families: dict[str, str]  # metric -> family
    levels: dict[str, str] = field(default_factory=dict)  # metric -> "image" | "dataset"


def plan_run(suite: Suite, limit: Optional[int] = None, precision: str = "fp32") -> Plan:
    """Resolve every name against the registries and split each experiment into units.

    ``precision`` other than ``fp32`` (see :class:`ExecOptions`) is folded into the suite hash.

    Raises :class:`SuiteError` (before any model work) for unknown names or parameters, unset
    environment variables, missing data roots or checkpoint files.
    """
    _check_environment(suite)
    load_registries(suite.plugins)
    from ..metrics import METRICS
    from ..metrics.base import metric_params
    from ..models import MODELS

    exps: list[ExperimentPlan] = []
    units: list[Unit] = []
    directions: dict[str, bool] = {}
    families: dict[str, str] = {}
    levels: dict[str, str] = {}
    for i, exp in enumerate(suite.experiments):  # every value typed right, before any dataset is built
        _check_values(exp, f"experiment #{i} ({exp.label} on {exp.dataset})")
    for i, exp in enumerate(suite.experiments):
        where = f"experiment #{i} ({exp.label} on {exp.dataset})"
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
            has = {"masks": dataset.has_masks, "boxes": dataset.has_boxes}
            lack = [n for n in needs if not has.get(n, True)]
            if lack:
                skipped[name] = f"needs {' and '.join(lack)}, which dataset {exp.dataset!r} does not provide"
        mparams = {m: mparams[m] for m in metrics}
        run_metrics = tuple(m for m in metrics if m not in skipped)
        for name in metrics:
            entry = METRICS.entry(name)
            directions[name] = bool(entry.meta.get("higher_is_better", True))
            families[name] = str(entry.meta.get("family", ""))
            levels[name] = str(entry.meta.get("level", "image"))
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
            data_errors=dataset_errors(exp, suite.seed),
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
    return Plan(suite, suite.hash(hash_extra), exps, units, directions, families, levels)


def _check_values(exp: Experiment, where: str) -> None:
    """Names and value types of an experiment's tables against the registries (:mod:`.validate`)."""
    from ..data import DATASETS
    from ..methods import METHODS
    from ..metrics import METRICS
    from ..models import MODELS

    _lookup(MODELS, exp.model, where)
    _lookup(DATASETS, exp.dataset, where)
    check_kwargs(DATASETS.get(exp.dataset), exp.data, f"{where}: `data` (arguments of dataset {exp.dataset!r})")
    check_kwargs(MODELS.get(exp.model), exp.model_kwargs, f"{where}: `model_kwargs` (of model {exp.model!r})")
    for name, params in exp.method_params.items():
        _lookup(METHODS, name, f"{where}: [method_params.{name}]")
        _method_params(name, params, where)
    for name, params in exp.metric_params.items():
        entry = _lookup(METRICS, name, f"{where}: [metric_params.{name}]")
        try:
            defaults = METRICS.params(name, params)
        except TypeError as exc:
            raise SuiteError(f"{where}: [metric_params.{name}]: {exc}") from None
        check_kwargs(entry.obj, params, f"{where}: [metric_params.{name}]", defaults=defaults, unknown_ok=True)


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
    check_kwargs(METHODS.get(name), overrides or {}, f"{where}: [method_params.{name}]", defaults=defaults,
                 unknown_ok=True)
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
_DATASET_ERRORS: dict[str, list[str]] = {}  # what each cached dataset could not read when it was built


def _get_model(
    exp: Experiment, device: torch.device, channels_last: Optional[bool] = False
) -> tuple[ModelHandle, bool]:
    """The cached model on ``device`` and whether it is channels_last (``None``: CNNs)."""
    from ..models import create_model

    key = json.dumps(
        [exp.model, exp.weights, exp.model_kwargs, str(device), channels_last], sort_keys=True, default=str
    )
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
    def opt(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.pin_memory()

    return Batch(batch.images.pin_memory(), batch.targets.pin_memory(), list(batch.ids), opt(batch.masks),
                 None if batch.boxes is None else [b.pin_memory() for b in batch.boxes], opt(batch.labels),
                 opt(batch.ignore))


def _device_batches(
    batches: Iterable[Batch], device: torch.device, prefetch: bool, channels_last: bool
) -> Iterator[Batch]:
    """Batches on ``device``: on CUDA pinned and copied with ``non_blocking``; optionally prefetched."""
    cuda = device.type == "cuda"
    if prefetch:
        from .parallel import prefetch as _prefetch

        batches = _prefetch(iter(batches), _pinned if cuda else (lambda b: b))
    for batch in batches:
        if cuda and not prefetch:
            batch = _pinned(batch)
        batch = batch.to(device, non_blocking=cuda)
        if channels_last and batch.images.ndim == 4:
            batch = replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
        yield batch


def _dataset_key(exp: Experiment, seed: int) -> tuple[str, dict]:
    kwargs = {"seed": seed, **exp.data}
    return json.dumps([exp.dataset, kwargs], sort_keys=True, default=str), kwargs


def _get_dataset(exp: Experiment, seed: int) -> Any:
    from ..data import create_dataset

    key, kwargs = _dataset_key(exp, seed)
    if key not in _DATASETS:
        try:
            _DATASETS[key] = create_dataset(exp.dataset, **kwargs)
        except CambenchError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise SuiteError(
                f"Dataset {exp.dataset!r} rejected the suite's `data` arguments {kwargs}: {type(exc).__name__}: "
                f"{exc}. Fix `data` (see `run_bench.py list datasets` for its arguments)."
            ) from None
        _DATASET_ERRORS[key] = [str(e) for e in getattr(_DATASETS[key], "errors", [])]
    if exp.target == "labels":  # one sample per (image, present class), kept in the image's batch
        from ..data.transforms import per_class

        return per_class(_DATASETS[key])
    return _DATASETS[key]


def dataset_errors(exp: Experiment, seed: int) -> list[str]:
    """What the experiment's dataset could not read when it was built (``"id: reason"`` each, no duplicates).

    Items that fail later, while a unit loads them, are recorded by that unit (``(data)`` score rows).
    """
    _get_dataset(exp, seed)
    return list(dict.fromkeys(_DATASET_ERRORS.get(_dataset_key(exp, seed)[0], [])))


def clear_caches() -> None:
    """Forget the models and datasets built in this process."""
    _MODELS.clear()
    _DATASETS.clear()
    _DATASET_ERRORS.clear()


def _make_batches(dataset: Any, handle: ModelHandle, batch_size: int, indices: list[int]) -> Iterable[Batch]:
    from ..data.transforms import make_batches

    return make_batches(dataset, handle, batch_size, indices=indices)


# -- one unit --------------------------------------------------------------------------------------


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


def meta_seed(seed: int, experiment: int, kind: str, k: int) -> int:
    """The seed of the ``k``-th ``kind`` perturbed model of an experiment: one model for all its units and
    images (the meta-evaluation perturbs the model once per ``k``, as MetaQuantus), whatever ran before."""
    digest = hashlib.sha256(f"{seed}:meta:{experiment}:{kind}:{k}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def perturb_model(model: torch.nn.Module, std: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every parameter multiplied by noise drawn from N(1, ``std``) on the CPU (so a
    seed gives the same model on every device): the model perturbation of MetaQuantus (Hedstrom et al., TMLR
    2023, Sec. 4: multiplicative Gaussian weight noise; small ``std`` = minor, large = disruptive)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in out.parameters():
            noise = 1.0 + std * torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.mul_(noise.to(device=p.device, dtype=p.dtype))
    return out.eval()


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
    from ..methods.base import cudnn_autotune, forward_compile, forward_precision, tf32

    opts = options or ExecOptions()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    autotune = cudnn_autotune(True) if opts.compile else contextlib.nullcontext()
    with forward_precision(opts.precision), tf32(allow=opts.precision == "tf32"), \
            forward_compile(opts.compile), autotune, warnings.catch_warnings(record=True) as caught:
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
    if exp.target == "labels":
        from ..data.transforms import check_class_count

        check_class_count(handle, dataset)
    n_errors_before = len(getattr(dataset, "errors", []))
    timings.append(("load", "model+dataset", time.perf_counter() - t))
    model = handle.model
    fbs = suite.forward_batch_size
    method_params = exp.method_params

    cols: dict[str, list] = {c: [] for c in SCORE_COLUMNS}

    def add(
        method: str, metric: str, ids: Sequence[str], values: Any, status: Any, message: Any, degenerate: Any
    ) -> None:
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

    scols: dict[str, list] = {c: [] for c in STATS_COLUMNS}

    def add_stats(method: str, metric: str, ids: Sequence[str], rows: np.ndarray, degenerate: Any) -> None:
        n = len(ids)
        for c, v in (("model", exp.label), ("dataset", exp.dataset), ("method", method), ("metric", metric)):
            scols[c] += [v] * n
        scols["image_id"] += list(ids)
        scols["stats"] += [np.ascontiguousarray(r, dtype=np.float64) for r in rows]
        scols["degenerate"] += list(degenerate) if isinstance(degenerate, (list, np.ndarray)) else [degenerate] * n

    map_diffs: dict[str, float] = {}  # "a|b" -> max |map_a - map_b| over the unit's images
    capture_facts: dict[str, float] = {}
    curve_sum: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
    gal: dict[str, list] = {"images": [], "ids": [], "targets": [], "masks": [], "boxes": [], "maps": []}
    n_done = 0
    pcols: Optional[dict[str, list]] = {c: [] for c in PERTURBED_COLUMNS} if exp.meta_evaluation else None
    perturbed_models: list[tuple[str, int, torch.nn.Module]] = []

    host = _make_batches(dataset, handle, suite.batch_size, unit.indices)
    batches = _device_batches(host, device, prefetch, channels_last)
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
            batch = replace(batch, targets=pred, labels=labels)

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
                outputs[name] = M.run_method(ectx, name, method_params.get(name), ms_flip=exp.ms_flip_config)
            except Exception as exc:
                failed[name] = _err(exc)
            timings.append(("explain", name, time.perf_counter() - t))
        saliency = {m: o.maps for m, o in outputs.items()}
        degenerate = {m: o.degenerate.detach().cpu().numpy().astype(bool) for m, o in outputs.items()}
        _accumulate_map_diffs(map_diffs, saliency)
        _accumulate_capture_facts(capture_facts, ectx)

        def explain_fn(model_, images, targets, names, *, gradient_noise=None, _seed=seed, _masks=batch.masks):
            masks = _masks if _masks is not None and images.shape[0] == _masks.shape[0] else None
            return M.explain(
                model_, handle.target_layer, images, targets, names, reshape=handle.reshape,
                params={n: method_params[n] for n in names if n in method_params},
                batch_size=fbs, seed=_seed, masks=masks, gradient_noise=gradient_noise, ms_flip=exp.ms_flip_config,
            )

        # 2. every metric (each scores all methods of the batch at once)
        mctx = MetricContext(model=model, batch=batch, saliency=saliency, explain=explain_fn, seed=seed, batch_size=fbs,
                             method_meta=_method_meta(saliency))
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
            except Exception as exc:
                msg = f"metric failed: {_err(exc)}"
                for name in ctx_m.saliency:
                    add(name, metric, ids, [np.nan] * len(ids), "error", msg, degenerate[name])
            else:
                dataset_level = METRICS.entry(metric).meta.get("level", "image") == "dataset"
                for name in ctx_m.saliency:
                    if name not in res:
                        continue
                    if dataset_level:  # per-image sufficient statistics [B, S], reduced by the leaderboard
                        st = res[name].detach().cpu().double().numpy()
                        if st.ndim != 2 or st.shape[0] != len(ids):
                            add(name, metric, ids, [np.nan] * len(ids), "error",
                                f"dataset-level metric returned statistics of shape {tuple(st.shape)}; "
                                f"expected [{len(ids)}, S]", degenerate[name])
                            continue
                        add_stats(name, metric, ids, st, degenerate[name])
                        continue
                    v = res[name].detach().float().cpu().double().numpy().reshape(-1)
                    if v.shape[0] != len(ids):
                        add(name, metric, ids, [np.nan] * len(ids), "error",
                            f"metric returned {v.shape[0]} values for {len(ids)} images", degenerate[name])
                        continue
                    status = np.where(np.isfinite(v), "ok", "undefined").tolist()
                    add(name, metric, ids, v.tolist(), status, "", degenerate[name])
            timings.append(("metric", metric, time.perf_counter() - t))

        if pcols is not None:  # 2b. the meta-evaluation: the same metrics under perturbed models
            if not perturbed_models:
                perturbed_models = [
                    (kind, k, perturb_model(model, std, meta_seed(suite.seed, unit.experiment, kind, k)))
                    for kind, std in zip(META_KINDS, (suite.meta_minor_std, suite.meta_disruptive_std))
                    for k in range(suite.meta_perturbations)
                ]
            _meta_batch(pcols, perturbed_models, model, handle, exp, unit, batch, outputs, explain_fn, seed, fbs,
                        timings)

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
            channels_last = (0, *range(2, imgs.ndim), 1)  # [B,H,W,3], or [B,T,H,W,3] for volumes and clips
            gal["images"].append((imgs.permute(*channels_last).cpu().numpy() * 255).round().astype(np.uint8))
            gal["ids"] += ids[:keep]
            gal["targets"].append(batch.targets[:keep].cpu().numpy())
            if batch.masks is not None:
                gal["masks"].append(batch.masks[:keep].cpu().numpy())
            if batch.boxes is not None:
                k = 6 if batch.images.ndim == 5 else 4  # 3-D boxes of volumes and clips
                gal["boxes"] += [b.detach().float().cpu().numpy().reshape(-1, k) for b in batch.boxes[:keep]]
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
    stats = pd.DataFrame(scols, columns=STATS_COLUMNS)
    stats["degenerate"] = stats["degenerate"].astype(bool)
    curves = _curves_frame(exp, curve_sum)
    perturbed = None
    if pcols is not None:
        perturbed = pd.DataFrame(pcols, columns=PERTURBED_COLUMNS)
        perturbed["value"] = perturbed["value"].astype("float64")
        perturbed["k"] = perturbed["k"].astype("int64")
        perturbed["pred_same"] = perturbed["pred_same"].astype(bool)
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
        info={"n_images": n_done, "data_errors": new_errors, "map_diffs": map_diffs, "capture": capture_facts},
        stats=stats,
        perturbed=perturbed,
    )


def _meta_batch(
    pcols: dict[str, list], perturbed_models: Sequence[tuple[str, int, torch.nn.Module]], model: torch.nn.Module,
    handle: ModelHandle, exp: Experiment, unit: Unit, batch: Batch, outputs: dict[str, Any], explain_fn: Callable,
    seed: int, fbs: int,
    timings: list[tuple[str, str, float]],
) -> None:
    """Re-explain the batch with every perturbed model and re-score its image-level metrics (MetaQuantus'
    model perturbation test; the report reduces the rows to IAC, IEC, NR and AR: benchmark/report/meta.py).

    Targets and seeds are those of the unperturbed scoring, so only the model differs. Dataset-level
    metrics are left out (the test compares per-image scores); a method or metric that fails under a
    perturbed model gives no rows there (the report uses the images both scorings have)."""
    from .. import methods as M
    from ..metrics import METRICS, MetricContext, compute_metrics, missing_needs

    ids = list(batch.ids)
    with torch.inference_mode():
        pred0 = model(batch.images).argmax(dim=1)
    for kind, k, mp in perturbed_models:
        t = time.perf_counter()
        with torch.inference_mode():
            same = (mp(batch.images).argmax(dim=1) == pred0).cpu().numpy().astype(bool)
        torch.manual_seed(seed)
        ectx = M.ExplainContext(
            model=mp, layer=M.resolve_layer(mp, handle.target_layer), images=batch.images, targets=batch.targets,
            reshape=handle.reshape, batch_size=fbs, seed=seed, masks=batch.masks,
        )
        sal: dict[str, torch.Tensor] = {}
        for name in outputs:
            try:
                sal[name] = M.run_method(ectx, name, exp.method_params.get(name)).maps
            except Exception:
                continue
        mctx = MetricContext(model=mp, batch=batch, saliency=sal, explain=explain_fn, seed=seed, batch_size=fbs,
                             method_meta=_method_meta(sal))
        re_sal = {m: v for m, v in sal.items() if _reexplained(m, exp.reexplain_methods)}
        mctx_re = dataclasses.replace(mctx, saliency=re_sal, cache=mctx.cache, curves=mctx.curves)
        for metric in unit.metrics:
            meta = METRICS.entry(metric).meta
            if meta.get("level", "image") == "dataset" or missing_needs(metric, mctx):
                continue
            ctx_m = mctx_re if "explainer" in meta.get("needs", ()) else mctx
            if not ctx_m.saliency:
                continue
            torch.manual_seed(seed)
            try:
                res = compute_metrics(ctx_m, [metric], exp.metric_params).get(metric, {})
            except Exception:
                continue
            for name, v in res.items():
                v = v.detach().float().cpu().double().numpy().reshape(-1)
                if v.shape[0] != len(ids):
                    continue
                n = len(ids)
                for c, x in (("model", exp.label), ("dataset", exp.dataset), ("method", name), ("metric", metric),
                             ("perturbation", kind), ("k", k)):
                    pcols[c] += [x] * n
                pcols["image_id"] += ids
                pcols["value"] += v.tolist()
                pcols["pred_same"] += same.tolist()
        timings.append(("meta", f"{kind} model", time.perf_counter() - t))


def _accumulate_map_diffs(acc: dict[str, float], saliency: dict[str, torch.Tensor]) -> None:
    """Pairwise ``max |map_a - map_b|`` of one batch's maps (one batched Chebyshev ``cdist``), folded into
    ``acc`` by max: what ``equivalences.csv`` needs, a few numbers per unit instead of the maps."""
    names = sorted(saliency)
    if len(names) < 2:
        return
    with torch.inference_mode():
        flat = torch.stack([torch.nan_to_num(saliency[m].detach().float(), nan=2.0).flatten() for m in names])
        d = torch.cdist(flat[None], flat[None], p=float("inf"))[0].cpu().double().numpy()
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            key = f"{a}|{names[j]}"
            acc[key] = max(acc.get(key, 0.0), float(d[i, j]))


def _accumulate_capture_facts(acc: dict[str, float], ectx: Any) -> None:
    """Facts of the shared capture that prove map identities (``equivalences.csv``'s reasons), folded over
    batches: ``grad_spatial_range`` = max over images and channels of the spatial range of the gradient at
    the target layer relative to its largest magnitude (0: gradients constant over space);
    ``activation_min`` = the smallest activation (>= 0: non-negative activations). Only read when a method
    made the capture (no extra forward)."""
    cap = getattr(ectx, "_capture", None)
    if cap is None:
        return
    with torch.inference_mode():
        a = cap.activations.detach().float()
        acc["activation_min"] = min(acc.get("activation_min", float("inf")), float(a.min()))
        if cap.gradients is not None and cap.gradients.ndim == 4:
            g = cap.gradients.detach().float().flatten(2)
            rng = (g.max(dim=2).values - g.min(dim=2).values).max()
            rel = float(rng / g.abs().max().clamp_min(1e-30))
            acc["grad_spatial_range"] = max(acc.get("grad_spatial_range", 0.0), rel)


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
        pad = np.full((len(gal["boxes"]), max(kmax, 1), gal["boxes"][0].shape[-1]), np.nan, dtype=np.float32)
        for i, b in enumerate(gal["boxes"]):
            pad[i, : b.shape[0]] = b
        out["boxes"] = pad
    if handle.class_names:
        names = handle.class_names
        out["target_names"] = np.asarray(
            [names[t] if 0 <= t < len(names) else str(t) for t in out["targets"]], dtype=str
        )
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
    #: items a dataset could not read (``model``, ``dataset``, ``item``, ``reason``), each once
    unreadable: list[dict] = field(default_factory=list)
    #: finished units on disk outside this run (another ``--limit``, ``n`` or setting): kept, not reported
    unreported: list[str] = field(default_factory=list)


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
        "levels": plan.levels,
        "plugins": [str(p) for p in s.plugins],
        "units": [u.key for u in plan.units],
        "experiments": [
            {"label": e.label, "model": e.model, "dataset": e.dataset, "n_images": e.n_images,
             "methods": list(e.methods), "metrics": list(e.metrics), "skipped": e.skipped,
             "method_params": e.method_params, "metric_params": e.metric_params,
             "data_errors": e.data_errors}
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
    report: Optional[Callable[[Path], Any]] = None,
    log: Optional[Callable[[str], None]] = None,
    backend: str = "sequential",
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    client: Any = None,
    options: Optional[ExecOptions] = None,
    plugins: Sequence[str] = (),
) -> RunOutcome:
    """Plan ``suite``, run every unit not already stored in ``out`` (its parts and ``run.json``).

    The report is the caller's: ``report`` (a callable, e.g. ``functools.partial(write_report, plots=False)``
    of :func:`benchmark.report.build.write_report`, which the CLI passes), when given, is called as
    ``report(out)`` at the end, still under the run's lock, and its result is :attr:`RunOutcome.report`;
    without it (``None`` or ``False``), call ``write_report(out)`` afterwards.

    Killing the process at any point loses at most the units in flight; rerunning with the same
    arguments resumes and gives the same final tables as an uninterrupted run. ``backend``
    (``sequential`` | ``loky`` | ``dask``), ``workers``, ``scheduler`` and ``client``: see
    :func:`benchmark.runner.parallel.execute_units` (every backend gives the same scores, and the parent
    writes each unit's part as it arrives). ``options``: :class:`ExecOptions`; ``plugins``: extra
    plugins the workers import.

    Before anything else ``out`` is checked (:func:`benchmark.outdir.check_out_dir`) and locked for this
    run (:class:`benchmark.outdir.RunLock`: a second run into it raises at once, naming the first one's
    pid). Progress: :class:`benchmark.runner.progress.Progress` (bars on a terminal, one line per finished
    unit otherwise; ``log`` replaces its printing). The tables cover the units of this plan only; other
    finished units in ``out`` are listed in :attr:`RunOutcome.unreported`.
    """
    from ..outdir import RunLock, check_out_dir
    from .progress import Progress

    if report is True or (report and not callable(report)):
        raise CambenchError(
            f"run_suite(report=...) takes a callable report(out) -> report, got {report!r}; pass e.g. "
            "functools.partial(benchmark.report.build.write_report, plots=False), or call write_report(out) "
            "after run_suite."
        )
    out = Path(out)
    check_out_dir(out)  # a bad --out is refused before any model or data work
    with Progress(quiet=quiet, log=log) as progress, RunLock(out, progress.log):
        return _run_locked(suite, out, progress, fresh=fresh, limit=limit, report=report,
                           backend=backend, workers=workers, scheduler=scheduler, client=client,
                           options=options or ExecOptions(), plugins=plugins)


def _run_locked(suite: Suite, out: Path, progress: Any, *, fresh: bool, limit: Optional[int],
                report: Optional[Callable[[Path], Any]], backend: str, workers: Optional[int],
                scheduler: Optional[str], client: Any,
                options: ExecOptions, plugins: Sequence[str]) -> RunOutcome:
    from ..store import Store, atomic_write_text
    from .parallel import execute_units

    log = progress.log
    plan = plan_run(suite, limit, precision=options.precision)
    device = resolve_device(suite.device)
    store = Store(out, plan.hash, log, units=[u.key for u in plan.units])
    store.prepare(fresh)
    record = run_record(plan, device)
    record.update(precision=options.precision, backend=backend)
    atomic_write_text(out / "run.json", json.dumps(record, indent=1, default=str))
    for e in plan.experiments:
        for msg in e.data_errors:
            log(f"cambench: {e.label}/{e.dataset}: unreadable, left out: {msg}")
    done = store.done()
    todo = [u for u in plan.units if u.key not in done]
    reused = [u.key for u in plan.units if u.key in done]
    if reused:
        log(f"cambench: resuming in {out}: {len(reused)} of {len(plan.units)} unit(s) already finished.")
    unreported = store.unreported()
    if unreported:
        log(f"cambench: {len(unreported)} finished unit(s) in {store.parts} lie outside this run (another "
            f"--limit, `n` or setting): kept on disk, not in the tables. Rerun with that setting to report them.")
    ran = []
    progress.start(len(todo), sum(u.stop - u.start for u in todo))
    results = execute_units(suite, todo, unit_fn=run_unit, setup_fn=load_registries, options=options,
                            backend=backend, workers=workers, scheduler=scheduler, client=client,
                            plugins=plugins, progress=progress.images)
    try:
        for result in results:
            store.write_unit(result)
            for w in result.info.get("warnings", ()):
                progress.warn_once(w, f"cambench: {result.key}: {w}")
            for msg in result.info.get("data_errors", ()):
                log(f"cambench: {result.key}: unreadable, left out: {msg}")
            ran.append(result.key)
            unit = next(u for u in todo if u.key == result.key)
            progress.unit_done(result.key, unit.stop - unit.start)
    finally:
        results.close()
        progress.stop()
    # every item a dataset could not read, named once: when it was built (plan) and while a unit loaded it
    unreadable = [
        {"model": e.label, "dataset": e.dataset, "item": m.split(":")[0], "reason": m} for e in plan.experiments
        for m in e.data_errors
    ]
    exp_of = {u.key: plan.experiments[u.experiment] for u in plan.units}
    for meta in store.load_meta():
        exp = exp_of[meta["unit"]]
        for m in dict.fromkeys(str(m) for m in meta.get("info", {}).get("data_errors", [])):
            unreadable.append({"model": exp.label, "dataset": exp.dataset, "item": m.split(":")[0], "reason": m})
    record.update(unreadable=unreadable, unreported_units=unreported)
    atomic_write_text(out / "run.json", json.dumps(record, indent=1, default=str))
    rep = report(out) if report else None
    return RunOutcome(plan, out, ran, reused, rep, unreadable=unreadable, unreported=unreported)
