"""Suites (TOML -> validated Suite), units of work and their execution (see execute.py)."""

from .execute import (
    ExecOptions,
    Plan,
    RunOutcome,
    Unit,
    UnitResult,
    batch_seed,
    load_registries,
    plan_run,
    resolve_device,
    run_suite,
    run_unit,
)
from .suite import Experiment, Suite, list_suites, load_suite, packaged_suites, parse_suite

__all__ = [
    "ExecOptions",
    "Experiment",
    "Plan",
    "RunOutcome",
    "Suite",
    "Unit",
    "UnitResult",
    "batch_seed",
    "list_suites",
    "load_registries",
    "load_suite",
    "packaged_suites",
    "parse_suite",
    "plan_run",
    "resolve_device",
    "run_suite",
    "run_unit",
]
