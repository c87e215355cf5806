"""The resume fingerprint of an experiment: everything outside the suite that can change its numbers.

The suite hash (:meth:`benchmark.runner.suite.Suite.hash`) covers the suite, cambench's version and the
resolved parameters; a unit's part also records this fingerprint (:func:`experiment_fingerprint`):

- ``code``: SHA-256 of the source text of every registered metric, model and dataset the
  experiment uses that lives outside cambench's package (a plugin's file; the file that defines the
  function or class, not the modules it imports);
- ``checkpoint``: SHA-256 of the bytes of a ``weights = PATH`` file (cached per process by path, mtime
  and size, so a large checkpoint is read once);
- ``cpu_kernels``: the CPU-kernel mode the run computes with (:func:`benchmark.cpukernels.describe`);
- ``versions``: torch's and cambench's versions;
- ``params``: a digest of the resolved metric parameters (the methods' are in their own fingerprints).

A finished unit whose recorded fingerprint differs is recomputed, and the driver says which entry changed
in one line (:func:`benchmark.store.fingerprint_changes`).

Incremental runs split the fingerprint in two (docs/architecture.md, "Incremental runs"): the unit's
*base* fingerprint (:func:`experiment_fingerprint`: the metrics', model's and dataset's plugin sources, the
checkpoint, CPU kernels, versions and the metric parameters) and one *method* fingerprint per method
(:func:`method_fingerprints`: its plugin source file and its resolved parameters). A changed base
recomputes the whole unit; a changed method fingerprint recomputes that method's rows only.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..cpukernels import describe
from ..data import DATASETS
from ..methods import METHODS
from ..metrics import METRICS
from ..models import MODELS
from .plan import Plan

_PACKAGE = Path(__file__).resolve().parents[1]
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, cached by (real path, mtime, size): a changed file is hashed again."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _source_file(obj: Any) -> Path | None:
    target = inspect.unwrap(obj) if callable(obj) else obj
    try:
        src = inspect.getsourcefile(target) or inspect.getfile(target)
    except (TypeError, OSError):
        return None
    return Path(src).resolve() if src else None


def plugin_sources(objects: list[Any]) -> dict[str, str]:
    """``{file: SHA-256 of its text}`` of the files outside cambench's package defining ``objects``."""
    out = {}
    for obj in objects:
        path = _source_file(obj)
        if path is None or path.is_relative_to(_PACKAGE) or not path.is_file():
            continue
        out[str(path)] = file_sha256(path)
    return dict(sorted(out.items()))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def experiment_fingerprint(plan: Plan, index: int) -> dict[str, Any]:
    """The base fingerprint (see the module docstring) of experiment ``index`` of ``plan``: everything
    but its methods (those are :func:`method_fingerprints`)."""
    e, exp = plan.experiments[index], plan.suite.experiments[index]
    objects: list[Any] = [METRICS.get(m) for m in e.metrics if m in METRICS]
    objects += [MODELS.get(e.model), DATASETS.get(e.dataset)]
    weights = str(exp.weights)
    checkpoint = None if weights in ("default", "random", "train") else file_sha256(Path(weights).expanduser())
    return {
        "code": plugin_sources(objects),
        "checkpoint": checkpoint,
        "cpu_kernels": describe(),
        "versions": {"torch": torch.__version__, "cambench": __version__},
        "params": _digest(e.metric_params),
    }


def method_fingerprints(plan: Plan, index: int) -> dict[str, dict[str, Any]]:
    """``{method: its fingerprint}`` of experiment ``index``: ``code`` (``{file: SHA-256}`` of its plugin
    source, empty for a built-in method) and ``params`` (a digest of its resolved parameters), in the
    experiment's method order."""
    e = plan.experiments[index]
    return {
        m: {
            "code": plugin_sources([METHODS.get(m)]) if m in METHODS else {},
            "params": _digest(e.method_params.get(m, {})),
        }
        for m in e.methods
    }


def unit_fingerprints(plan: Plan) -> dict[str, dict[str, Any]]:
    """``{unit key: its experiment's base fingerprint}`` for every unit of ``plan``."""
    per_exp = {i: experiment_fingerprint(plan, i) for i in {u.experiment for u in plan.units}}
    return {u.key: per_exp[u.experiment] for u in plan.units}


def unit_method_fingerprints(plan: Plan) -> dict[str, dict[str, dict[str, Any]]]:
    """``{unit key: {method: fingerprint}}`` (:func:`method_fingerprints`) for every unit of ``plan``."""
    per_exp = {i: method_fingerprints(plan, i) for i in {u.experiment for u in plan.units}}
    return {u.key: per_exp[u.experiment] for u in plan.units}
