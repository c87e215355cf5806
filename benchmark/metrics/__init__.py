"""Metrics: pure functions in ``benchmark.metrics.functional`` plus a registry of batch-level entries."""

from .base import (
    METRICS,
    ExplainFn,
    MetricContext,
    compute_metrics,
    list_metrics,
    metric_params,
    missing_needs,
    register_metric,
)

__all__ = [
    "METRICS",
    "ExplainFn",
    "MetricContext",
    "compute_metrics",
    "list_metrics",
    "metric_params",
    "missing_needs",
    "register_metric",
]
