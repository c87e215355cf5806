"""Metrics: pure functions in ``benchmark.metrics.functional`` plus a registry of batch-level entries."""

from . import (
    cost,  # noqa: F401
    faithfulness,  # noqa: F401  (registers the faithfulness metrics)
    localization,  # noqa: F401  (registration side effects)
    quantus_bridge,  # noqa: F401  (the quantus/<ClassName> prefix, resolved lazily)
    robustness,  # noqa: F401
    sanity,  # noqa: F401
    seeds,  # noqa: F401  (WSSS seed metrics, dataset level)
    tokens,  # noqa: F401  (TAM's token-level metrics)
    truth,  # noqa: F401  (model-truth family)
)
from .base import (
    METRICS,
    ExplainFn,
    MetricContext,
    compute_metrics,
    dataset_value,
    list_metrics,
    metric_level,
    metric_params,
    missing_needs,
    register_metric,
)

__all__ = [
    "METRICS",
    "ExplainFn",
    "MetricContext",
    "compute_metrics",
    "dataset_value",
    "list_metrics",
    "metric_level",
    "metric_params",
    "missing_needs",
    "register_metric",
]
