"""The metric registry, the per-batch metric context, and ``compute_metrics``.

A registered metric is ``fn(ctx: MetricContext, **params) -> dict[method, Tensor[B]]``: it scores every
method of the batch at once, so perturbation metrics can stack methods along the batch dimension and
share forward passes. ``NaN`` means "undefined for this image" (each metric documents when).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

from torch import Tensor, nn

from ..registry import Registry
from ..types import Batch

METRICS: Registry[Callable[..., dict[str, Tensor]]] = Registry("metric")

FAMILIES = ("faithfulness", "localization", "robustness", "sanity", "cost", "truth")
NEEDS = ("saliency", "masks", "boxes", "model", "explainer", "truth")


class ExplainFn(Protocol):
    """Recompute maps: ``(model, images, targets, names, *, gradient_noise=None) -> {name: [B,H,W]}``."""

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        names: Sequence[str],
        *,
        gradient_noise: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> dict[str, Tensor]: ...


@dataclass
class MetricContext:
    """What a metric may use for one batch."""

    model: nn.Module
    batch: Batch
    saliency: dict[str, Tensor]
    explain: Optional[ExplainFn] = None
    seed: int = 0
    batch_size: int = 64
    curves: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    #: Per-batch memo shared by metrics that need the same re-explanations (max/avg sensitivity draw the
    #: same perturbations, the two gradient-noise scores and the two randomisation similarities share
    #: their maps), so each costly explanation is computed once per batch.
    cache: dict = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.saliency)


def register_metric(
    name: str,
    *,
    family: str,
    higher_is_better: bool,
    needs: Iterable[str] = ("saliency",),
    defaults: Optional[Mapping[str, Any]] = None,
    paper: str = "",
    **meta: Any,
) -> Callable:
    """Decorator registering a metric ``fn(ctx, **params) -> {method: Tensor[B]}``."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown metric family {family!r}; expected one of {FAMILIES}.")
    needs = tuple(needs)
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"Unknown needs {bad}; expected a subset of {NEEDS}.")
    return METRICS.register(
        name,
        family=family,
        higher_is_better=higher_is_better,
        needs=needs,
        defaults=dict(defaults or {}),
        paper=paper,
        **meta,
    )


def metric_params(name: str, overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The metric's default parameters updated by ``overrides`` (unknown keys are an error)."""
    return METRICS.params(name, overrides)


def missing_needs(name: str, ctx: MetricContext) -> list[str]:
    """What ``ctx`` lacks for metric ``name`` (e.g. ``["masks"]`` on a dataset without masks)."""
    missing = []
    for need in METRICS.entry(name).meta["needs"]:
        if need == "masks" and ctx.batch.masks is None:
            missing.append(need)
        elif need == "boxes" and ctx.batch.boxes is None:
            missing.append(need)
        elif need == "explainer" and ctx.explain is None:
            missing.append(need)
        elif need == "truth" and not (ctx.batch.extras and "truth_mask" in ctx.batch.extras):
            missing.append(need)  # no model truth known for this dataset (see metrics/truth.py)
    return missing


def compute_metrics(
    ctx: MetricContext,
    names: Iterable[str],
    params: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> dict[str, dict[str, Tensor]]:
    """Run several metrics on one context: ``{metric: {method: Tensor[B]}}``.

    Metrics whose needs are not met are skipped (absent from the result); errors propagate.
    """
    out: dict[str, dict[str, Tensor]] = {}
    for name in names:
        if missing_needs(name, ctx):
            continue
        fn = METRICS.get(name)
        out[name] = fn(ctx, **metric_params(name, (params or {}).get(name)))
    return out


def list_metrics(pattern: str | None = None, **meta: Any) -> list[str]:
    return METRICS.list(pattern, **meta)
