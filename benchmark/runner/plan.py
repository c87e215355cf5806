"""Plan a suite: resolve models, datasets, methods, metrics and parameters, check them before any model
work, and cut each experiment into units (experiment x contiguous shard of image indices) with stable keys.

Also the per-process caches of built models and datasets (planning reads each dataset once; a worker
builds each model and dataset once) and :func:`load_registries`. Re-exported by
:mod:`benchmark.runner.execute`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import CambenchError, SuiteError, UnknownNameError, WeightsError
from ..schema import METRIC_FAMILIES
from ..types import Batch, ModelHandle
from .suite import Experiment, Suite
from .validate import check_kwargs

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


def plan_run(suite: Suite, limit: int | None = None, precision: str = "fp32") -> Plan:
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
    extra = [{"methods": e.methods, "metrics": e.metrics, "mp": e.method_params, "kp": e.metric_params} for e in exps]
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
                'Use weights = "default", "random" or the path of a saved state_dict.'
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
        return (not METHODS.entry(n).meta.get("needs_ground_truth") or dataset.has_masks) and is_applicable(n, family)

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


def _method_params(name: str, overrides: dict | None, where: str) -> dict:
    """The method's parameters (its signature's defaults, then the suite's values), type-checked."""
    from ..methods import METHODS

    try:
        params = METHODS.params(name, overrides)
    except TypeError as exc:  # a key the method does not take: Registry.params names the valid ones
        raise SuiteError(f"{where}: [method_params.{name}]: {exc}") from None
    check_kwargs(
        METHODS.get(name),
        overrides or {},
        f"{where}: [method_params.{name}]",
        defaults=METHODS.params(name),
        unknown_ok=True,
    )
    return params


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
        f'families: {", ".join(METRIC_FAMILIES)}; or "all".'
    )


# -- per-process caches (a worker builds each model/dataset once) ---------------------------------

_MODELS: dict[str, tuple[ModelHandle, bool]] = {}
_DATASETS: dict[str, Any] = {}
_DATASET_ERRORS: dict[str, list[str]] = {}  # what each cached dataset could not read when it was built


def _get_model(exp: Experiment, device: torch.device, channels_last: bool | None = False) -> tuple[ModelHandle, bool]:
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

    def opt(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.pin_memory()

    extras = None if batch.extras is None else {k: v.pin_memory() for k, v in batch.extras.items()}
    return Batch(
        batch.images.pin_memory(),
        batch.targets.pin_memory(),
        list(batch.ids),
        opt(batch.masks),
        None if batch.boxes is None else [b.pin_memory() for b in batch.boxes],
        opt(batch.labels),
        opt(batch.ignore),
        extras,
    )


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
    if exp.target in ("tokens", "text"):  # one row per generated token / per present text query
        from ..data.captions import PerQueryTargets, caption_truth

        return caption_truth(_DATASETS[key]) if exp.target == "tokens" else PerQueryTargets(_DATASETS[key])
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
