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

The code lives in these modules, re-exported here (the public names only): :mod:`benchmark.runner.plan`
(``plan_run``, ``Plan``, ``ExperimentPlan``, ``Unit``, ``load_registries``), :mod:`benchmark.runner.resources`
(the per-process model/dataset caches, device batches), :mod:`benchmark.runner.unit` (``run_unit``,
``ExecOptions``; each batch goes through :func:`benchmark.evaluate.evaluate_batch`) and
:mod:`benchmark.runner.driver` (``run_suite``, ``run_record``, ``RunOutcome``).
"""

from __future__ import annotations

from ..schema import (
    CURVE_COLUMNS,
    PERTURBED_COLUMNS,
    SCORE_COLUMNS,
    STATS_COLUMNS,
    TIMING_COLUMNS,
    UnitResult,
)
from .driver import RunOutcome, run_record, run_suite, versions
from .plan import ExperimentPlan, MetaSettings, Plan, Unit, load_registries, plan_run
from .resources import clear_caches, dataset_errors, resolve_device
from .unit import META_KINDS, PRECISIONS, ExecOptions, batch_seed, meta_seed, perturb_model, run_unit

__all__ = [
    "CURVE_COLUMNS",
    "META_KINDS",
    "PERTURBED_COLUMNS",
    "PRECISIONS",
    "SCORE_COLUMNS",
    "STATS_COLUMNS",
    "TIMING_COLUMNS",
    "ExecOptions",
    "ExperimentPlan",
    "MetaSettings",
    "Plan",
    "RunOutcome",
    "Unit",
    "UnitResult",
    "batch_seed",
    "clear_caches",
    "dataset_errors",
    "load_registries",
    "meta_seed",
    "perturb_model",
    "plan_run",
    "resolve_device",
    "run_record",
    "run_suite",
    "run_unit",
    "versions",
]
