"""The shape of the results: score, curve and timing columns, and what one unit produces.

A leaf module (it imports nothing of cambench): the runner fills these tables, the store writes and reads
them, the report reads them. ``status`` in a score row: ``ok`` (finite value), ``undefined`` (the metric
returned NaN: undefined for that image), ``error`` (the method or the metric raised; ``message`` says why).
``degenerate``: the method's raw map was constant or non-finite, so its published map is all zeros.
See docs/interfaces.md (Result schema, Store).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: The metric families, in the order the report shows them (then "other": a family outside this tuple, e.g.
#: a Quantus bridge's) and the terminal summary picks its headline metrics; cost, which says nothing of a
#: map's quality, last. ``register_metric(family=...)`` accepts these; a suite's ``metrics`` may name one to
#: select its members. The one list: metrics, runner and report import it from here.
METRIC_FAMILIES = ("faithfulness", "localization", "robustness", "sanity", "truth", "cost")

#: One row per (experiment, method, metric, image). ``model`` is the experiment's *label* (the suite's
#: ``label``, by default the registered model name), so two experiments of one model stay apart; run.json's
#: ``experiments`` map each label to its model. (A class label is ``Batch.labels``, never a column.)
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
#: Per-image sufficient statistics of dataset-level metrics (``register_metric(level="dataset")``): one
#: row per (model, dataset, method, metric, image_id), ``stats`` a float64 vector of the metric's S values.
STATS_COLUMNS = ["model", "dataset", "method", "metric", "image_id", "stats", "degenerate"]
#: Per-image scores of image-level metrics re-computed under MetaQuantus' model perturbations (only with
#: ``meta_evaluation``): ``perturbation`` is ``minor`` or ``disruptive``, ``k`` the perturbed model's index,
#: ``pred_same`` whether that model predicts the image's class as the unperturbed model does.
PERTURBED_COLUMNS = ["model", "dataset", "method", "metric", "image_id", "perturbation", "k", "value", "pred_same"]
CURVE_COLUMNS = ["model", "dataset", "method", "metric", "step", "x", "value", "n"]
TIMING_COLUMNS = ["unit", "model", "dataset", "stage", "name", "seconds"]


@dataclass
class UnitResult:
    """Everything one unit produced (picklable): score rows, mean curves, timings, gallery sample."""

    key: str
    scores: pd.DataFrame
    curves: pd.DataFrame
    timings: pd.DataFrame
    gallery: dict[str, np.ndarray] | None = None
    info: dict = field(default_factory=dict)
    #: per-image statistics of the dataset-level metrics (``STATS_COLUMNS``); None or empty when none ran
    stats: pd.DataFrame | None = None
    #: scores under the meta-evaluation's perturbed models (``PERTURBED_COLUMNS``); None when it is off
    perturbed: pd.DataFrame | None = None
    #: ``logging`` records emitted while a worker process (loky, dask) computed the unit, for the parent to
    #: re-emit (messages formatted, no arguments or tracebacks left to pickle); empty in-process. Not stored.
    logs: list = field(default_factory=list)
