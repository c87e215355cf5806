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
from . import faithfulness  # noqa: E402,F401  (registers the faithfulness metrics)
from . import localization  # noqa: F401,E402  (registration side effects)
from . import robustness  # noqa: F401,E402
from . import sanity  # noqa: F401,E402
from . import cost  # noqa: F401,E402
from . import truth  # noqa: F401,E402  (model-truth family)

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
