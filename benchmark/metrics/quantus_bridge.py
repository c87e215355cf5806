"""``quantus/<ClassName>`` in the metric registry: every Quantus 0.6.0 metric by name, resolved lazily.

A suite names them like any metric (``metrics = ["quantus/Sparseness"]``, ``[metric_params."quantus/Sparseness"]``);
``run_bench.py list metrics`` shows them with their direction, family and status. Direction
(``score_direction``) and family (``evaluation_category``) are Quantus' own class metadata; the numbers
are computed by :func:`benchmark.metrics.functional.quantus_bridge.quantus_metric`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .base import METRICS, MetricContext
from .functional import quantus_bridge as Q

#: Quantus' evaluation_category -> cambench family (Quantus' spelling kept in meta ``quantus_category``).
FAMILY = {
    "Faithfulness": "faithfulness",
    "Localisation": "localization",
    "Robustness": "robustness",
    "Randomisation": "sanity",
    "Complexity": "complexity",
    "Axiomatic": "axiomatic",
    "None": "other",
}


def _reexplainer(explain_fn: Any, method: str) -> Callable[..., Tensor]:
    """Quantus' ``explain_func``: the same cambench method (same parameters) on new images or a new model."""

    def explain(model: Any, images: Tensor, targets: Tensor) -> Tensor:
        return explain_fn(model, images, targets, [method])[method]

    return explain


def _metric_fn(name: str) -> Callable[..., dict[str, Tensor]]:
    def fn(ctx: MetricContext, **params: Any) -> dict[str, Tensor]:
        Q.check_usable(name)
        out: dict[str, Tensor] = {}
        for method, maps in ctx.saliency.items():
            explain = _reexplainer(ctx.explain, method) if name in Q.REEXPLAIN and ctx.explain is not None else None
            out[method] = Q.quantus_metric(
                name,
                ctx.model,
                ctx.batch.images,
                ctx.batch.targets,
                maps,
                masks=ctx.batch.masks,
                explain=explain,
                seed=ctx.seed,
                batch_size=ctx.forward_batch_size,
                **params,
            )
        return out

    fn.__name__ = fn.__qualname__ = f"quantus_{name}"
    fn.__doc__ = f"Quantus {Q.QUANTUS_VERSION} {name} on every method's maps (one score per image)."
    return fn


def _paper(cls: type) -> str:
    for line in (cls.__doc__ or "").splitlines():
        line = line.strip()
        if line.startswith("Implementation of"):
            return f"Quantus {Q.QUANTUS_VERSION} {cls.__name__}: {line[len('Implementation of') :].strip().rstrip('.')}"
    return f"Quantus {Q.QUANTUS_VERSION} {cls.__name__}"


def resolve(name: str) -> tuple[Callable[..., dict[str, Tensor]], dict[str, Any]]:
    """``quantus/<name>`` -> (registry function, metadata); KeyError for a name Quantus does not export."""
    cls = Q.quantus_class(name)
    category = getattr(getattr(cls, "evaluation_category", None), "value", "None")
    direction = getattr(getattr(cls, "score_direction", None), "value", "higher")
    needs = ["saliency"]
    if category == "Localisation":
        needs.append("masks")
    if name in Q.REEXPLAIN:
        needs.append("explainer")
    status, reason = "ok", ""
    if name in Q.BROKEN:
        status, reason = "broken", Q.BROKEN[name]
    elif name in Q.UNSUPPORTED:
        status, reason = "unsupported", Q.UNSUPPORTED[name]
    meta = {
        "family": FAMILY.get(category, "other"),
        "higher_is_better": direction == "higher",
        "needs": tuple(needs),
        "defaults": Q.quantus_defaults(name),
        "paper": _paper(cls),
        "quantus_category": category,
        "data_applicability": tuple(sorted(d.value for d in getattr(cls, "data_applicability", ()))),
        "status": status,
        "reason": reason,
        "source": f"quantus {Q.QUANTUS_VERSION}",
        "level": "image",
    }
    return _metric_fn(name), meta


METRICS.add_prefix("quantus", resolve, Q.quantus_metric_names)
