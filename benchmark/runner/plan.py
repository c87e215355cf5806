"""Plan a suite: resolve models, datasets, methods, metrics and parameters, check them once before any
model work, and cut each experiment into units (experiment x contiguous shard of image indices) with stable
keys. Each :class:`Unit` carries its :class:`ExperimentPlan` (everything a worker needs: the experiment as
written, its resolved names and parameters, the suite's run settings), so workers never read the suite.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..data import DATASETS
from ..errors import SuiteError, UnknownNameError, WeightsError
from ..evaluate import TARGET_KINDS
from ..methods import METHODS, is_applicable
from ..metrics import METRICS
from ..models import MODELS
from ..plugins import load_plugins
from ..schema import METRIC_FAMILIES
from .resources import dataset_errors, get_dataset
from .suite import Experiment, Suite
from .validate import check_kwargs

# -- registries and plugins ------------------------------------------------------------------------


def load_registries(plugins: Sequence[str] = (), check: bool = False) -> None:
    """Load ``plugins`` (module names or ``.py`` paths) into the registries (the built-in methods, metrics,
    models and datasets are registered when this module is imported).

    A plugin is any module that registers methods, metrics, models or datasets on import; loading goes
    through :func:`benchmark.plugins.load_plugins` (once per process; name clashes and import errors fail
    early, naming the plugin). ``check`` also runs the method contract check on the plugins' methods (the
    CLI does for ``--plugin``; suite-file plugins are trusted, e.g. test fakes that fail on purpose).
    """
    load_plugins(list(plugins), check=check)


# -- plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaSettings:
    """The suite's meta-evaluation (docs/metrics.md, "Meta-evaluation"): K perturbed models per kind, and the
    std of the multiplicative weight noise of a minor and of a disruptive perturbation."""

    perturbations: int
    minor_std: float
    disruptive_std: float


@dataclass
class ExperimentPlan:
    """An experiment with names resolved against the registries and parameters resolved (defaults updated by
    the suite's values) and validated once; with the suite's run settings, all a worker needs."""

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
    #: the experiment as the suite wrote it (model and dataset arguments, target, layer, ms_flip, ...)
    spec: Experiment | None = None
    index: int = 0  # its position in the suite (seeds of the meta-evaluation's perturbed models)
    levels: dict[str, str] = field(default_factory=dict)  # metric -> "image" | "dataset"
    seed: int = 0
    batch_size: int = 1  # images per batch
    forward_batch_size: int = 64  # inputs per extra (perturbation) forward
    meta: MetaSettings | None = None  # None: no meta-evaluation


@dataclass(frozen=True)
class Unit:
    """One unit of work: images ``start:stop`` of experiment ``experiment``, with resolved names; ``plan``
    is the experiment's resolved plan (what :func:`benchmark.runner.unit.run_unit` computes from)."""

    key: str
    experiment: int
    start: int
    stop: int
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    gallery: int = 0  # images of this unit (from its start) kept for the gallery
    plan: ExperimentPlan | None = field(default=None, compare=False, repr=False)

    @property
    def indices(self) -> list[int]:
        return list(range(self.start, self.stop))


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
    for i, exp in enumerate(suite.experiments):  # every value typed right, before any dataset is built
        _check_values(exp, f"experiment #{i} ({exp.label} on {exp.dataset})")
    exps = [_plan_experiment(suite, i, exp, limit) for i, exp in enumerate(suite.experiments)]
    units = [u for e in exps for u in _units(suite, e)]
    entries = {name: METRICS.entry(name) for e in exps for name in e.metric_params}  # every resolved metric
    directions = {n: bool(e.meta.get("higher_is_better", True)) for n, e in entries.items()}
    families = {n: str(e.meta.get("family", "")) for n, e in entries.items()}
    levels = {n: str(e.meta.get("level", "image")) for n, e in entries.items()}
    extra = [{"metrics": e.metrics, "kp": e.metric_params} for e in exps]
    hash_extra: Any = extra if precision == "fp32" else {"experiments": extra, "precision": precision}
    return Plan(suite, base_hash(suite, hash_extra), exps, units, directions, families, levels)


#: What the base hash leaves out: the methods, their parameters and the plugin list (a method's own
#: fingerprint covers its name, parameters and source: :func:`benchmark.runner.fingerprint.method_fingerprints`).
PER_METHOD_KEYS = ("methods", "method_params")


def base_hash(suite: Suite, extra: Any = None) -> str:
    """The suite hash of incremental runs: :meth:`Suite.hash` of everything but the per-method part
    (:data:`PER_METHOD_KEYS` of each experiment, the suite's ``plugins``). Changing a metric, its
    parameters, the data, model, seed, shard size or precision changes it (every unit recomputed); adding,
    removing or editing a method does not (that method's rows alone are recomputed: docs/architecture.md)."""
    d = suite.normalized()
    d.pop("plugins", None)
    for e in d["experiments"]:
        for k in PER_METHOD_KEYS:
            e.pop(k, None)
    blob = json.dumps({"suite": d, "version": __version__, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _plan_experiment(suite: Suite, i: int, exp: Experiment, limit: int | None) -> ExperimentPlan:
    """Experiment ``i`` with its names and parameters resolved (and checked) once, and its run settings."""
    where = f"experiment #{i} ({exp.label} on {exp.dataset})"
    dataset = get_dataset(exp, suite.seed)
    methods = _resolve_methods(exp, dataset, where, MODELS.entry(exp.model).meta.get("family"))
    metrics = _resolve_metrics(exp, where)
    for name in exp.metric_params:
        _lookup(METRICS, name, f"{where}: [metric_params.{name}]")
    mparams = {}
    for name in [*metrics, *(m for m in exp.metric_params if m not in metrics)]:
        try:
            mparams[name] = METRICS.params(name, exp.metric_params.get(name))
        except TypeError as exc:
            raise SuiteError(f"{where}: [metric_params.{name}]: {exc}") from None
    skipped = {}
    has = {"masks": dataset.has_masks, "boxes": dataset.has_boxes}
    for name in metrics:
        lack = [n for n in METRICS.entry(name).meta.get("needs", ()) if not has.get(n, True)]
        if lack:
            skipped[name] = f"needs {' and '.join(lack)}, which dataset {exp.dataset!r} does not provide"
    meta = MetaSettings(suite.meta_perturbations, suite.meta_minor_std, suite.meta_disruptive_std)
    return ExperimentPlan(
        label=exp.label,
        model=exp.model,
        dataset=exp.dataset,
        n_images=len(dataset) if limit is None else min(len(dataset), int(limit)),
        methods=methods,
        metrics=tuple(m for m in metrics if m not in skipped),
        skipped=skipped,
        method_params={m: METHODS.params(m, exp.method_params.get(m)) for m in methods},  # checked above
        metric_params={m: mparams[m] for m in metrics},
        data_errors=dataset_errors(exp, suite.seed),
        spec=exp,
        index=i,
        levels={m: str(METRICS.entry(m).meta.get("level", "image")) for m in metrics},
        seed=suite.seed,
        batch_size=suite.batch_size,
        forward_batch_size=suite.forward_batch_size,
        meta=meta if exp.meta_evaluation else None,
    )


def _units(suite: Suite, plan: ExperimentPlan) -> list[Unit]:
    """The experiment's images cut into shards of ``suite.shard_size``, with stable keys."""
    assert plan.spec is not None
    out = []
    for start in range(0, plan.n_images, suite.shard_size):
        stop = min(start + suite.shard_size, plan.n_images)
        out.append(
            Unit(
                key=f"{plan.index:02d}-{plan.spec.key}-{start:06d}-{stop:06d}",
                experiment=plan.index,
                start=start,
                stop=stop,
                methods=plan.methods,
                metrics=plan.metrics,
                gallery=max(0, min(stop, suite.gallery) - start),
                plan=plan,
            )
        )
    return out


def _check_values(exp: Experiment, where: str) -> None:
    """Names and value types of an experiment's tables against the registries (:mod:`.validate`)."""
    _lookup(MODELS, exp.model, where)
    if exp.target not in TARGET_KINDS:
        raise SuiteError(f"{where}: `target` must be one of {tuple(TARGET_KINDS)}, got {exp.target!r}.")
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
        if e.weights not in ("default", "random", "train") and not Path(e.weights).expanduser().is_file():
            raise WeightsError(
                f"Suite {suite.name!r}: the checkpoint {e.weights!r} for model {e.model!r} does not exist. "
                'Use weights = "default", "random", "train" or the path of a saved state_dict.'
            )


def _lookup(registry: Any, name: str, where: str) -> Any:
    try:
        return registry.entry(name)
    except UnknownNameError as exc:
        raise SuiteError(f"{where}: {exc}") from None


def _resolve_methods(exp: Experiment, dataset: Any, where: str, family: Any = None) -> tuple[str, ...]:
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
    if exp.methods == "default":  # a suite naming no methods: the expensive ones are opt-in (cli says which)
        return tuple(n for n in METHODS.list() if usable(n) and METHODS.entry(n).meta.get("cost") != "expensive")
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
    valid = list(METRICS.list()) + list(METRIC_FAMILIES)
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise SuiteError(
        f"{where}: unknown metric {name!r}.{hint} Valid metrics: {', '.join(METRICS.list()) or '(none)'}; "
        f'families: {", ".join(METRIC_FAMILIES)}; or "all".'
    )
