"""Benchmark suites: ``suites/*.toml`` parsed (stdlib ``tomllib``) into a validated :class:`Suite`.

A suite file looks like::

    name = "quick"
    seed = 0
    device = "auto"            # auto | cpu | cuda | cuda:N | mps
    batch_size = 8             # images per explain/metric call
    shard_size = 8             # images per unit of work (one Parquet part each; default 4: an interrupt keeps
                               # every finished shard)
    forward_batch_size = 64    # chunk size of the extra forwards of Score-CAM, perturbation metrics...
    gallery = 4                # first N images of each experiment kept for the CAM gallery
    plugins = []               # modules or .py files imported first (they register extra entries)
    methods = "all"            # default for every experiment: "all", a list of names and/or families, or
                               # "default" (also when no `methods` is given anywhere): every applicable method
                               # except the expensive ones (cost = "expensive": Score-, SS-, IS-, Ablation-CAM)
    metrics = "all"            # "all", family names ("faithfulness", ...) and/or metric names
    reexplain_methods = "all"  # methods that re-explaining metrics (robustness, sanity, cost) run on:
                               # "all", or method names and/or families ("gradient", "perturbation", ...)
    meta_evaluation = false    # MetaQuantus meta-evaluation of every image-level metric (docs/metrics.md,
                               # "Meta-evaluation"); also a key of one experiment
    meta_perturbations = 3     # K: perturbed models per kind (minor, disruptive)
    meta_minor_std = 0.001     # std of the multiplicative N(1, std) weight noise of a minor perturbation
    meta_disruptive_std = 2.0  # ... and of a disruptive one

    [method_params.smoothgradcampp]   # hyper-parameters shared by every experiment
    n_samples = 2
    [metric_params.deletion_auc]
    step = 64

    [[experiments]]
    model = "shapes_cnn"
    weights = "default"        # default | random | path to a checkpoint
    dataset = "shapes"
    target = "label"           # label (ground truth) | predicted (top-1) | labels (every class present)
    data = { n = 16, split = "test" }   # keyword arguments of the dataset factory
    layer = "layer4"           # optional: target layer (dotted name); default = the model's own
    ms_flip = false            # true: every method's maps summed over ms_scales and flips (WSSS protocol)
    # label, model_kwargs, methods, metrics, reexplain_methods, method_params, metric_params may be
    # overridden here

    [[claims]]                 # a claim tested by the report (claims.csv; docs/claims.md)
    method = "cfcam"
    than = ["gradcam", "gradcampp"]   # one or more methods, or "all" (every other non-baseline method)
    metrics = ["deletion_auc"] # metric names and/or families ("faithfulness", ...), or "quality"
    experiments = "all"        # or a list of experiment labels ("label" or "label/dataset")
    margin = 0.0               # optional: "better by at least margin" (in the metric's units)
    note = "CF-CAM paper, Table 2"  # optional: where the claim comes from

Strings in ``data``, ``weights`` and ``model_kwargs`` may use ``${ENV_VAR}``; a variable that is not set
is reported (with the way to set it) when the suite is *run*, so ``list suites`` never fails.

Names are checked against the registries at run time (:func:`benchmark.runner.execute.plan_run`), not
here, so importing this module never imports models, datasets or metrics.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import SuiteError
from ..schema import QUALITY, Claim, claim_experiments, claim_metrics

#: Top-level keys of a suite file and their defaults.
SUITE_DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": "",
    "seed": 0,
    "device": "auto",
    "batch_size": 8,
    "shard_size": 4,
    "forward_batch_size": 64,
    "gallery": 4,
    "bootstrap": 1000,
    "plugins": [],
    "methods": "default",
    "metrics": "all",
    "reexplain_methods": "all",
    "meta_evaluation": False,
    "meta_perturbations": 3,
    "meta_minor_std": 0.001,
    "meta_disruptive_std": 2.0,
    "method_params": {},
    "metric_params": {},
    "experiments": None,
    "claims": [],
}

#: Keys of one ``[[experiments]]`` table.
EXPERIMENT_KEYS = (
    "model",
    "dataset",
    "label",
    "weights",
    "model_kwargs",
    "data",
    "target",
    "layer",
    "methods",
    "metrics",
    "reexplain_methods",
    "meta_evaluation",
    "method_params",
    "metric_params",
    "ms_flip",
    "ms_scales",
)
#: Keys of one ``[[claims]]`` table (``method``, ``than`` and ``metrics`` required).
CLAIM_KEYS = ("method", "than", "metrics", "experiments", "margin", "note")
#: Suite keys of the meta-evaluation (left out of the suite hash while no experiment turns it on).
META_KEYS = ("meta_perturbations", "meta_minor_std", "meta_disruptive_std")

#: ``labels`` explains every class present in an image (one score row per image and class, ids
#: ``"<image>#<class>"``; datasets with per-class ground truth: shapes_multilabel, voc, coco).
#: The built-in target kinds (examples for messages): planning checks a suite's ``target`` against the
#: registry of target kinds, ``benchmark.evaluate.TARGET_KINDS``, where a new kind registers itself.
TARGETS = ("label", "predicted", "labels")
#: Scales of ``ms_flip = true`` unless ``ms_scales`` is given (benchmark/methods/msflip.py).
MS_SCALES = (0.5, 1.0, 1.5, 2.0)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Experiment:
    """One (model, dataset) cell of a suite with its methods, metrics and their parameters."""

    model: str
    dataset: str
    label: str  # the value of the ``model`` column (defaults to ``model``)
    weights: str = "default"
    model_kwargs: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    target: str = "label"
    layer: str | None = None  # target layer override (dotted name); None = the model's default
    methods: tuple[str, ...] | str = "all"
    metrics: tuple[str, ...] | str = "all"
    #: Methods that metrics which re-explain (robustness, sanity, cost) run on: "all", or method names
    #: and/or method families ("gradient", "projection", "perturbation", "baseline").
    reexplain_methods: tuple[str, ...] | str = "all"
    method_params: dict = field(default_factory=dict)
    metric_params: dict = field(default_factory=dict)
    #: the WSSS CAM protocol for every method: maps summed over ``ms_scales`` and horizontal flips
    ms_flip: bool = False
    ms_scales: tuple[float, ...] = MS_SCALES

    @property
    def ms_flip_config(self) -> Any:
        """The :class:`~benchmark.methods.msflip.MultiScaleFlip` of ``ms_flip = true``, else None."""
        if not self.ms_flip:
            return None
        from ..methods.msflip import MultiScaleFlip

        return MultiScaleFlip(scales=tuple(self.ms_scales), flip=True)

    #: MetaQuantus meta-evaluation of this experiment's image-level metrics (docs/metrics.md)
    meta_evaluation: bool = False

    @property
    def key(self) -> str:
        """Filesystem-safe ``label-dataset`` key used in unit names."""
        return _safe(f"{self.label}-{self.dataset}")


@dataclass(frozen=True)
class Suite:
    """A validated suite: global settings plus experiments (names not yet checked against registries)."""

    name: str
    experiments: tuple[Experiment, ...]
    description: str = ""
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    shard_size: int = 4
    forward_batch_size: int = 64
    gallery: int = 4
    bootstrap: int = 1000
    plugins: tuple[str, ...] = ()
    #: MetaQuantus model perturbation test (docs/metrics.md, "Meta-evaluation"): K perturbed models per kind
    meta_perturbations: int = 3
    meta_minor_std: float = 0.001
    meta_disruptive_std: float = 2.0
    source: str = ""  # the TOML text as read (recorded in the report)
    path: str | None = None
    #: claims the report tests (analysis only: not in the hash, so adding one never recomputes)
    claims: tuple[Claim, ...] = ()

    def normalized(self) -> dict[str, Any]:
        """Everything that changes results, as plain JSON-able data (device, paths of the file excluded).

        The device is left out on purpose: a run resumed on another device keeps its finished parts
        (CPU and CUDA scores agree to float tolerance, not bit for bit).
        """
        d = asdict(self)
        for k in ("source", "path", "description", "device", "name", "claims"):
            d.pop(k)
        d["experiments"] = [_exp_dict(e) for e in self.experiments]
        if not self.meta_evaluation:  # suites without meta-evaluation keep the hash they always had
            for k in META_KEYS:
                d.pop(k)
            for e in d["experiments"]:
                e.pop("meta_evaluation")
        return d

    @property
    def meta_evaluation(self) -> bool:
        """Whether any experiment runs the meta-evaluation."""
        return any(e.meta_evaluation for e in self.experiments)

    def hash(self, extra: Any = None) -> str:
        """Stable 12-hex-digit hash of the normalised suite, the package version and ``extra``."""

        blob = json.dumps(
            {"suite": self.normalized(), "version": __version__, "extra": extra},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def with_overrides(
        self,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        data_root: str | None = None,
    ) -> Suite:
        """A copy with CLI overrides applied (``--device``, ``--batch-size``, ``--data-root``)."""
        s = self
        if device is not None:
            _check_device(device, "--device")
            s = replace(s, device=device)
        if batch_size is not None:
            if int(batch_size) < 1:
                raise SuiteError(f"--batch-size must be a positive integer, got {batch_size}.")
            s = replace(s, batch_size=int(batch_size))
        if data_root is not None:
            exps = tuple(replace(e, data={**e.data, "root": str(data_root)}) for e in s.experiments)
            s = replace(s, experiments=exps)
        return s

    def unresolved_env(self) -> list[tuple[str, str]]:
        """``(experiment label/dataset, VAR)`` for each ``${VAR}`` left unexpanded (variable not set)."""
        out = []
        for e in self.experiments:
            for value in _strings([e.weights, e.data, e.model_kwargs]):
                for var in _ENV.findall(value):
                    out.append((f"{e.label}/{e.dataset}", var))
        return out


def _exp_dict(e: Experiment) -> dict[str, Any]:
    """An experiment as hashed: the multi-scale keys only when ``ms_flip`` is on (older hashes unchanged)."""
    d = asdict(e)
    if not e.ms_flip:
        d.pop("ms_flip")
        d.pop("ms_scales")
    return d


# -- loading ---------------------------------------------------------------------------------------


def packaged_suites() -> dict[str, str]:
    """``{name: toml text}`` of the suites shipped inside the package (``benchmark/suites``)."""
    out = {}
    for item in resources.files("benchmark").joinpath("suites").iterdir():
        if item.name.endswith(".toml"):
            out[item.name[: -len(".toml")]] = item.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


def suite_search_path() -> list[Path]:
    """Folders searched for ``NAME.toml``: ``./suites`` then ``$CAMBENCH_SUITES`` (os.pathsep list)."""
    paths = [Path.cwd() / "suites"]
    extra = os.environ.get("CAMBENCH_SUITES", "")
    paths += [Path(p) for p in extra.split(os.pathsep) if p]
    return paths


def list_suites() -> dict[str, str]:
    """``{name: where}`` of every suite found on the search path and in the package."""
    found: dict[str, str] = {}
    for folder in suite_search_path():
        if folder.is_dir():
            for f in sorted(folder.glob("*.toml")):
                found.setdefault(f.stem, str(f))
    for name in packaged_suites():
        found.setdefault(name, f"(packaged) benchmark/suites/{name}.toml")
    return dict(sorted(found.items()))


def load_suite(spec: str | os.PathLike) -> Suite:
    """Load a suite from a path, or a name looked up in ``./suites``, ``$CAMBENCH_SUITES``, the package."""
    spec_s = str(spec)
    path = Path(spec_s)
    if path.suffix == ".toml" or os.sep in spec_s or "/" in spec_s:
        if not path.is_file():
            raise SuiteError(
                f"Suite file {spec_s!r} does not exist. Pass a path to a .toml file or the name of a "
                f"suite ({', '.join(list_suites()) or 'none found'})."
            )
        return parse_suite(_read_text(path), path=str(path.resolve()))
    for folder in suite_search_path():
        candidate = folder / f"{spec_s}.toml"
        if candidate.is_file():
            return parse_suite(_read_text(candidate), path=str(candidate.resolve()))
    packaged = packaged_suites()
    if spec_s in packaged:
        return parse_suite(packaged[spec_s], path=f"benchmark/suites/{spec_s}.toml", default_name=spec_s)
    names = sorted(list_suites())
    close = difflib.get_close_matches(spec_s, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise SuiteError(
        f"Unknown suite {spec_s!r}.{hint} Known suites: {', '.join(names) or '(none)'}. "
        "Pass a path to a .toml file to run your own."
    )


#: The most images one experiment may ask for (``data.n``): a bound checked before planning allocates.
MAX_IMAGES = 1_000_000
#: The longest suite name, experiment label, model or dataset name (they name files and folders).
MAX_NAME_LENGTH = 100


def _read_text(path: Path) -> str:
    """A suite file's text; a file that is not UTF-8 text (a binary file) is one line."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(
            f"{path}: is not a UTF-8 text file (byte {exc.start} cannot be decoded); a suite is a TOML text "
            "file (see suites/quick.toml)."
        ) from None


def _check_finite(value: Any, key: str, where: str) -> None:
    """Refuse a NaN or infinite number anywhere in a suite: no parameter of cambench takes one (a NaN
    tolerance, threshold, radius or sigma would give every method the same meaningless score)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SuiteError(
            f"{where}: `{key}` = {value!r}: numbers in a suite must be finite; give a finite value (or remove "
            "the key for its default)."
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}" if key else str(k), where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]", where)


def _check_name(value: str, what: str, where: str) -> None:
    if len(value) > MAX_NAME_LENGTH:
        raise SuiteError(
            f"{where}: `{what}` is {len(value)} characters long ({value[:24]!r}...); it names files and "
            f"folders, so at most {MAX_NAME_LENGTH} characters: give a shorter one."
        )


def parse_suite(text: str, path: str | None = None, default_name: str | None = None) -> Suite:
    """Parse and validate the TOML ``text`` of a suite (``path`` is used in messages only)."""
    where = path or "<suite>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{where}: invalid TOML: {exc}.") from None
    _check_finite(raw, "", where)
    _check_keys(raw, SUITE_DEFAULTS, where)
    cfg = {k: raw.get(k, v) for k, v in SUITE_DEFAULTS.items()}
    name = cfg["name"] or default_name or (Path(path).stem if path else None)
    if not isinstance(name, str) or not name:
        raise SuiteError(f'{where}: the suite needs a `name = "..."`.')
    _check_name(name, "name", where)
    for key in ("seed", "batch_size", "shard_size", "forward_batch_size", "gallery", "bootstrap", "meta_perturbations"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key in ("seed", "gallery") else 1):
            kind = "non-negative" if key in ("seed", "gallery") else "positive"
            raise SuiteError(f"{where}: `{key}` must be a {kind} integer, got {v!r}.")
    for key in ("meta_minor_std", "meta_disruptive_std"):
        v = cfg[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise SuiteError(
                f"{where}: `{key}` must be a positive number (the std of the multiplicative N(1, std) "
                f"weight noise), got {v!r}."
            )
    if not isinstance(cfg["meta_evaluation"], bool):
        raise SuiteError(f"{where}: `meta_evaluation` must be true or false, got {cfg['meta_evaluation']!r}.")
    if not isinstance(cfg["description"], str):
        raise SuiteError(f"{where}: `description` must be a string, got {cfg['description']!r}.")
    _check_device(cfg["device"], f"{where}: `device`")
    plugins = cfg["plugins"]
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise SuiteError(f"{where}: `plugins` must be a list of module names or .py paths.")
    if path and not path.startswith("benchmark/"):
        base = Path(path).parent
        plugins = [str((base / p).resolve()) if p.endswith(".py") and not Path(p).is_absolute() else p for p in plugins]
    exps = cfg["experiments"]
    if not isinstance(exps, list) or not exps:
        raise SuiteError(f"{where}: a suite needs at least one [[experiments]] table with `model` and `dataset`.")
    experiments = tuple(_experiment(e, i, cfg, where) for i, e in enumerate(exps))
    seen: dict[tuple[str, str], int] = {}
    for i, e in enumerate(experiments):
        if (e.label, e.dataset) in seen:
            raise SuiteError(
                f"{where}: experiments {seen[(e.label, e.dataset)]} and {i} both score model "
                f'{e.label!r} on dataset {e.dataset!r}; give one a distinct `label = "..."` '
                "(it names the model column)."
            )
        seen[(e.label, e.dataset)] = i
    claims = _claims(cfg["claims"], experiments, where)
    return Suite(
        name=name,
        description=str(cfg["description"]),
        experiments=experiments,
        seed=cfg["seed"],
        device=cfg["device"],
        batch_size=cfg["batch_size"],
        shard_size=cfg["shard_size"],
        forward_batch_size=cfg["forward_batch_size"],
        gallery=cfg["gallery"],
        bootstrap=cfg["bootstrap"],
        plugins=tuple(plugins),
        meta_perturbations=cfg["meta_perturbations"],
        meta_minor_std=float(cfg["meta_minor_std"]),
        meta_disruptive_std=float(cfg["meta_disruptive_std"]),
        source=text,
        path=path,
        claims=claims,
    )


def _claim_names(
    value: Any, key: str, w: str, example: str, allow: tuple[str, ...] = ("all",)
) -> tuple[str, ...] | str:
    if isinstance(value, str) and value in allow:
        return value
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        if len(set(value)) != len(value):
            raise SuiteError(f"{w}: `{key}` lists a name twice: {value}.")
        return tuple(value)
    raise SuiteError(f"{w}: `{key}` must be a name or a non-empty list of names, e.g. {example}; got {value!r}.")


def _claims(raw: Any, experiments: tuple[Experiment, ...], where: str) -> tuple[Claim, ...]:
    """The ``[[claims]]`` tables, checked for form and experiment names (methods and metrics are checked
    against the plan by :func:`check_claims`)."""
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise SuiteError(f"{where}: `claims` must be [[claims]] tables (method, than, metrics...).")
    labels = {e.label for e in experiments} | {f"{e.label}/{e.dataset}" for e in experiments}
    out = []
    for i, c in enumerate(raw):
        w = f"{where}: [[claims]] #{i}"
        _check_keys(c, CLAIM_KEYS, w)
        for req in ("method", "than", "metrics"):
            if req not in c:
                raise SuiteError(
                    f'{w} needs `{req} = ...` (e.g. method = "cfcam", than = ["gradcam"], metrics = ["deletion_auc"]).'
                )
        if not isinstance(c["method"], str) or not c["method"]:
            raise SuiteError(f'{w}: `method` must be one method name, e.g. "cfcam"; got {c["method"]!r}.')
        than = _claim_names(c["than"], "than", w, '["gradcam", "gradcampp"] or "all"')
        if isinstance(than, tuple) and c["method"] in than:
            raise SuiteError(f"{w}: `than` names the claim's own method {c['method']!r}; remove it.")
        metrics = _claim_names(c["metrics"], "metrics", w, '["deletion_auc"], "faithfulness" or "quality"', (QUALITY,))
        exps = _claim_names(c.get("experiments", "all"), "experiments", w, '["shapes_cnn"] or "all"')
        if isinstance(exps, tuple):
            unknown = [e for e in exps if e not in labels]
            if unknown:
                close = difflib.get_close_matches(unknown[0], sorted(labels), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise SuiteError(
                    f"{w}: unknown experiment(s) {unknown}.{hint} Experiments of this suite: "
                    f'{", ".join(sorted(labels))} (or "all").'
                )
        margin = c.get("margin", 0.0)
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin) or margin < 0:
            raise SuiteError(f"{w}: `margin` must be a finite number >= 0 (in the metric's units), got {margin!r}.")
        note = c.get("note", "")
        if not isinstance(note, str):
            raise SuiteError(f"{w}: `note` must be a string, got {note!r}.")
        out.append(Claim(c["method"], than, metrics, exps, float(margin), note))
    return tuple(out)


def check_claims(
    claims: Sequence[Claim],
    experiments: Sequence[tuple[str, str, Sequence[str], Sequence[str]]],
    families: Mapping[str, str],
    baselines: Sequence[str] = (),
    where: str = "<suite>",
) -> None:
    """Refuse a claim whose method, compared methods or metrics no experiment it covers runs.

    ``experiments``: ``(label, dataset, methods, metrics)`` as planned (names resolved); ``families``:
    metric -> family. A claim must find its method, at least one compared method and at least one metric
    in some covered experiment."""
    known_methods = sorted({m for e in experiments for m in e[2]})
    known_metrics = sorted({m for e in experiments for m in e[3]})
    fams = sorted({families.get(m, "") for m in known_metrics} - {""})
    for i, c in enumerate(claims):
        w = f"{where}: [[claims]] #{i} ({c.method})"
        covered = [e for e in experiments if (e[0], e[1]) in claim_experiments(c, [(x[0], x[1]) for x in experiments])]
        names = [c.method] + (list(c.than) if isinstance(c.than, tuple) else [])
        for name in names:
            if not any(name in e[2] for e in covered):
                close = difflib.get_close_matches(name, known_methods, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise SuiteError(
                    f"{w}: method {name!r} is not run by the experiments the claim covers.{hint} Add it to their "
                    f"`methods`, or name one of {', '.join(known_methods)}."
                )
        if c.metrics != QUALITY:
            for name in c.metrics:
                if name not in known_metrics and name not in fams:
                    close = difflib.get_close_matches(name, known_metrics + fams, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise SuiteError(
                        f"{w}: metric {name!r} is neither a metric nor a family the experiments run.{hint} "
                        f"Metrics: {', '.join(known_metrics)}; families: {', '.join(fams)}."
                    )
        if not any(claim_metrics(c, list(e[3]), families) for e in covered):
            raise SuiteError(f"{w}: no metric of the claim is run by the experiments it covers; add one to `metrics`.")
        if c.than == "all" and not any(set(e[2]) - {c.method} - set(baselines) for e in covered):
            raise SuiteError(f'{w}: `than = "all"` finds no other (non-baseline) method to compare with.')


def _experiment(raw: Any, i: int, cfg: Mapping[str, Any], where: str) -> Experiment:
    w = f"{where}: [[experiments]] #{i}"
    if not isinstance(raw, dict):
        raise SuiteError(f"{w} must be a table.")
    _check_keys(raw, EXPERIMENT_KEYS, w)
    for req in ("model", "dataset"):
        if not isinstance(raw.get(req), str) or not raw[req]:
            raise SuiteError(f'{w} needs `{req} = "..."` (see `run_bench.py list {req}s`).')
    target = raw.get("target", "label")
    if not isinstance(target, str) or not target:
        raise SuiteError(f"{w}: `target` must be the name of a target kind (e.g. {TARGETS}), got {target!r}.")
    for key in ("data", "model_kwargs"):
        if not isinstance(raw.get(key, {}), dict):
            raise SuiteError(f"{w}: `{key}` must be a table of keyword arguments.")
    label = raw.get("label", raw["model"])
    if not isinstance(label, str) or not label:
        raise SuiteError(f"{w}: `label` must be a non-empty string (it names the model column), got {label!r}.")
    for what, value in (("label", label), ("model", raw["model"]), ("dataset", raw["dataset"])):
        _check_name(value, what, w)
    n = raw.get("data", {}).get("n")
    if isinstance(n, (int, float)) and not isinstance(n, bool) and not 1 <= n <= MAX_IMAGES:  # types: plan
        raise SuiteError(
            f"{w}: `data.n` must be a number of images from 1 to {MAX_IMAGES:,}, got {n!r}; pass a "
            f"smaller n (or --limit N)."
        )
    weights = raw.get("weights", "default")
    if not isinstance(weights, str):
        raise SuiteError(f'{w}: `weights` must be "default", "random" or a checkpoint path.')
    methods = _names(raw.get("methods", cfg["methods"]), "methods", w)
    metrics = _names(raw.get("metrics", cfg["metrics"]), "metrics", w)
    reexplain = _names(raw.get("reexplain_methods", cfg["reexplain_methods"]), "reexplain_methods", w)
    layer = raw.get("layer")
    if layer is not None and (not isinstance(layer, str) or not layer):
        raise SuiteError(f'{w}: `layer` must be a dotted module name such as "layer4" or "blocks.15".')
    ms_flip = raw.get("ms_flip", False)
    if not isinstance(ms_flip, bool):
        raise SuiteError(f"{w}: `ms_flip` must be true or false (multi-scale + flip CAMs), got {ms_flip!r}.")
    scales = raw.get("ms_scales", list(MS_SCALES))
    if (
        not isinstance(scales, list)
        or not scales
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in scales)
    ):
        raise SuiteError(
            f"{w}: `ms_scales` must be a non-empty list of positive numbers such as "
            f"[0.5, 1.0, 1.5, 2.0], got {scales!r}."
        )
    meta = raw.get("meta_evaluation", cfg["meta_evaluation"])
    if not isinstance(meta, bool):
        raise SuiteError(f"{w}: `meta_evaluation` must be true or false, got {meta!r}.")
    mparams = _merge_params(cfg["method_params"], raw.get("method_params", {}), "method_params", w)
    kparams = _merge_params(cfg["metric_params"], raw.get("metric_params", {}), "metric_params", w)
    return Experiment(
        model=raw["model"],
        dataset=raw["dataset"],
        label=label,
        weights=_expand(weights),
        model_kwargs=_expand(dict(raw.get("model_kwargs", {}))),
        data=_expand(dict(raw.get("data", {}))),
        target=target,
        layer=layer,
        methods=methods,
        metrics=metrics,
        reexplain_methods=reexplain,
        method_params=mparams,
        metric_params=kparams,
        ms_flip=ms_flip,
        ms_scales=tuple(float(v) for v in scales),
        meta_evaluation=meta,
    )


#: ``methods = "default"`` (also a suite that names no methods): every applicable method but the expensive ones.
DEFAULT_METHODS = "default"


def _names(value: Any, key: str, where: str) -> tuple[str, ...] | str:
    if value == "all" or (key == "methods" and value == DEFAULT_METHODS):
        return value
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(set(value)) != len(value):
            raise SuiteError(f"{where}: `{key}` lists a name twice: {value}.")
        return tuple(value)
    raise SuiteError(f'{where}: `{key}` must be "all" or a non-empty list of names, got {value!r}.')


def _merge_params(base: Any, over: Any, key: str, where: str) -> dict:
    for v in (base, over):
        if not isinstance(v, dict) or not all(isinstance(p, dict) for p in v.values()):
            raise SuiteError(
                f"{where}: `{key}` must map a name to a table of parameters, e.g. "
                f"[{key}.NAME] then `param = value` lines."
            )
    out = {k: dict(v) for k, v in base.items()}
    for k, v in over.items():
        out[k] = {**out.get(k, {}), **v}
    return out


def _check_keys(raw: Mapping[str, Any], valid: Any, where: str) -> None:
    valid = list(valid)
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SuiteError(f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(valid)}.")


def _check_device(device: Any, where: str) -> None:
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise SuiteError(f"{where} must be auto, cpu, cuda, cuda:N or mps; got {device!r}.")


def _expand(value: Any) -> Any:
    """Expand ``${VAR}`` in strings (recursively); unset variables are left as is (reported at run time)."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", s)
