"""Suites (TOML -> validated Suite), units of work and their execution (see execute.py).

Names are imported on first use (PEP 562): ``benchmark.runner.suite`` (parsing a suite file) does not
import torch, so that the command line refuses a bad suite or ``--out`` in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXECUTE = (
    "ExecOptions",
    "Plan",
    "RunOutcome",
    "Unit",
    "UnitResult",
    "batch_seed",
    "load_registries",
    "plan_run",
    "resolve_device",
    "run_suite",
    "run_unit",
)
_SUITE = ("Experiment", "Suite", "list_suites", "load_suite", "packaged_suites", "parse_suite")

__all__ = sorted(_EXECUTE + _SUITE)


def __getattr__(name: str) -> Any:
    if name in _EXECUTE:
        return getattr(importlib.import_module(".execute", __name__), name)
    if name in _SUITE:
        return getattr(importlib.import_module(".suite", __name__), name)
    if name in ("execute", "parallel", "progress", "suite", "validate"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
