"""The metric registry, the per-batch metric context, and ``compute_metrics``.

A registered metric is ``fn(ctx: MetricContext, **params) -> dict[method, Tensor[B]]``: it scores every
method of the batch at once, so perturbation metrics can stack methods along the batch dimension and
share forward passes. ``NaN`` means "undefined for this image" (each metric documents when).

Dataset-level metrics (torchmetrics' update/compute split): ``register_metric(..., level="dataset",
compute=fn)``. The metric function then returns, per method, ``Tensor[B, S]`` of per-image *sufficient
statistics* (S fixed for given params; usually counts or histograms that add up over images); the
runner stores them per (model, dataset, method, metric, image_id) and the leaderboard's value is
``compute(stats[N, S], ids, **params) -> float`` over all N images of an experiment (a pure function:
the leaderboard bootstraps it by resampling rows). A row with a non-finite statistic means "undefined
for this image" and is left out before ``compute`` (as a NaN per-image value is left out of a mean).
Optionally ``compute_weighted(stats [N, S], weights [R, N], **params) -> [R]`` evaluates ``compute`` on R
resamples at once, resample r holding image i ``weights[r, i]`` times (the leaderboard's bootstrap then
needs one call instead of R); it must equal ``compute`` on the resampled rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from ..registry import Registry, declared_defaults
from ..schema import METRIC_FAMILIES
from ..types import Batch

METRICS: Registry[Callable[..., dict[str, Tensor]]] = Registry("metric")

FAMILIES = METRIC_FAMILIES  # the one list, in benchmark/schema.py
LEVELS = ("image", "dataset")
#: What a metric may need beyond the model and the batch (which every metric receives): the methods'
#: maps, ground-truth masks or boxes, the ability to re-explain (``ctx.explain``), ``frames``: a time
#: (or depth) axis, i.e. volumes or clips ``[B,C,T,H,W]``, or ``truth``: what the model uses, known by
#: construction (``Batch.extras["truth_mask"]``), or ``contrast``: a second model on the same inputs whose
#: evidence is known to differ (BAM's scene head beside its object head): the model declares it as its
#: ``contrast_model`` attribute (an ``nn.Module`` with the same target-layer path, see
#: :attr:`MetricContext.contrast_model`) and the batch carries its targets (``Batch.extras["contrast_target"]``).
#: See ``missing_needs``.
#: ``tokens``: a batch of generated tokens (``target = "tokens"``, ``Batch.extras["function_word"]``).
NEEDS = ("saliency", "masks", "boxes", "explainer", "frames", "truth", "contrast", "tokens")


class ExplainFn(Protocol):
    """Recompute maps: ``(model, images, targets, names, *, gradient_noise=None) -> {name: [B,H,W]}``."""

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        names: Sequence[str],
        *,
        gradient_noise: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]: ...


@dataclass
class MetricContext:
    """What a metric may use for one batch."""

    model: nn.Module
    batch: Batch
    saliency: dict[str, Tensor]
    explain: ExplainFn | None = None
    seed: int = 0
    forward_batch_size: int = 64  # inputs per extra (perturbation) forward: the suite's forward_batch_size
    curves: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    #: Per-batch memo shared by metrics that need the same re-explanations (max/avg sensitivity draw the
    #: same perturbations, the two gradient-noise scores and the two randomisation similarities share
    #: their maps), so each costly explanation is computed once per batch.
    cache: dict = field(default_factory=dict)
    #: Registry metadata of the methods in ``saliency`` (``family``, ``needs_gradients``...), filled by the
    #: runner (``{name: METHODS.entry(name).meta}``): metrics read method facts here, never the registry.
    #: A method without an entry gets each key's default (a live, gradient-based method).
    method_meta: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """The former name of :attr:`forward_batch_size` (read-only; plugins written before the rename)."""
        return self.forward_batch_size

    @property
    def methods(self) -> list[str]:
        return list(self.saliency)

    @property
    def contrast_model(self) -> nn.Module | None:
        """The model's declared contrast model (its ``contrast_model`` attribute), or None: the model whose
        maps contrast metrics compare with this model's (e.g. BAM's scene head, ``models/bam.py``)."""
        other = getattr(self.model, "contrast_model", None)
        return other if isinstance(other, nn.Module) else None

    def method_info(self, name: str, key: str, default: Any = None) -> Any:
        """Metadata ``key`` of method ``name`` (from :attr:`method_meta`), ``default`` when not given."""
        return self.method_meta.get(name, {}).get(key, default)

    def is_baseline(self, name: str) -> bool:
        """Whether method ``name`` is a baseline (``family="baseline"``: input-independent reference maps)."""
        return self.method_info(name, "family", "") == "baseline"


def register_metric(
    name: str,
    *,
    family: str,
    higher_is_better: bool,
    needs: Iterable[str] = ("saliency",),
    defaults: Mapping[str, Any] | None = None,
    paper: str = "",
    level: str = "image",
    compute: Callable[..., float] | None = None,
    compute_weighted: Callable[..., Any] | None = None,
    **meta: Any,
) -> Callable:
    """Decorator registering a metric ``fn(ctx, **params) -> {method: Tensor[B]}`` (``level="image"``) or
    ``{method: Tensor[B, S]}`` of sufficient statistics reduced by ``compute(stats, ids, **params)``
    (``level="dataset"``; see the module docstring).

    The metric's parameters are the keyword parameters of ``fn``'s signature with their defaults (what
    ``[metric_params.NAME]`` may set); ``defaults`` only overrides them, for a second name sharing one
    function or a function taking ``**params`` (docs/interfaces.md, "Declaring parameters")."""
    if family not in FAMILIES:
        raise InputError(f"Unknown metric family {family!r}; expected one of {FAMILIES}.")
    if level not in LEVELS:
        raise InputError(f"Unknown metric level {level!r} for {name!r}; expected one of {LEVELS}.")
    if level == "dataset" and not callable(compute):
        raise InputError(
            f"Dataset-level metric {name!r} needs `compute=fn(stats [N,S], ids, **params) -> float`, the "
            "reduction of its per-image statistics; pass it to register_metric."
        )
    if level == "image" and compute is not None:
        raise InputError(f'Metric {name!r}: `compute` is only used with level="dataset"; remove it or set the level.')
    needs = tuple(needs)
    if "model" in needs:  # every metric receives the model; older plugins listed it as a need
        warnings.warn(
            f"Metric {name!r}: 'model' is no longer a need (every metric receives ctx.model); drop it from "
            f"needs=. Valid needs: {NEEDS}.",
            DeprecationWarning,
            stacklevel=2,
        )
        needs = tuple(n for n in needs if n != "model")
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise InputError(
            f"Metric {name!r} has unknown needs {bad}; expected a subset of {NEEDS}. Fix the needs= of "
            "its register_metric call."
        )
    override = bool(meta.pop("override", False))

    def deco(fn: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        METRICS.add(
            name,
            fn,
            override=override,
            family=family,
            higher_is_better=higher_is_better,
            needs=needs,
            defaults=declared_defaults(fn, defaults, f"Metric {name!r}"),
            paper=paper,
            level=level,
            compute=compute,
            compute_weighted=compute_weighted,
            **meta,
        )
        return fn

    return deco


def metric_level(name: str) -> str:
    """``"image"`` or ``"dataset"`` for a registered metric."""
    return str(METRICS.entry(name).meta.get("level", "image"))


def dataset_value(name: str, stats: Any, ids: Sequence[str], params: Mapping[str, Any] | None = None) -> float:
    """The dataset-level value of metric ``name`` from the per-image statistics ``stats [N, S]`` of one
    (model, dataset, method): rows with a non-finite entry are dropped, then the metric's ``compute`` runs
    with its default parameters updated by ``params``. NaN when no row is left."""
    import numpy as np

    entry = METRICS.entry(name)
    if entry.meta.get("level", "image") != "dataset":
        raise InputError(f"Metric {name!r} is a per-image metric (level='image'); dataset_value needs level='dataset'.")
    arr = np.asarray(stats, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"stats of {name!r} must be [N, S]; got shape {arr.shape}.")
    ids = list(ids)
    if len(ids) != arr.shape[0]:
        raise InputError(f"stats of {name!r} have {arr.shape[0]} rows but {len(ids)} ids were given.")
    keep = np.asarray(np.isfinite(arr).all(axis=1), dtype=bool)
    if not keep.any():
        return float("nan")
    p = metric_params(name, params)
    return float(entry.meta["compute"](arr[keep], [i for i, k in zip(ids, keep.tolist(), strict=True) if k], **p))


def metric_params(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metric's default parameters updated by ``overrides`` (unknown keys are an error)."""
    return METRICS.params(name, overrides)


def curve_positions(name: str, params: Mapping[str, Any] | None, steps: int) -> np.ndarray:
    """The x at which metric ``name`` measured the ``steps`` points of its curves (``ctx.curves``): its
    ``percentages`` parameter when it has one of that length (ROAD: the fractions of pixels removed,
    Rong et al. 2022), else evenly spaced on [0, 1] (deletion, insertion: RISE's evenly spaced steps)."""
    merged = {**METRICS.params(name, None), **dict(params or {})} if name in METRICS else dict(params or {})
    pct = merged.get("percentages")
    if pct is not None and len(pct) == steps:
        return np.asarray([float(v) for v in pct], dtype=np.float64)
    return np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)


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
        elif need == "frames" and ctx.batch.images.ndim != 5:
            missing.append(need)
        elif need == "truth" and not (ctx.batch.extras and "truth_mask" in ctx.batch.extras):
            missing.append(need)  # no model truth known for this dataset (see metrics/truth.py)
        elif need == "tokens" and not (ctx.batch.extras and "function_word" in ctx.batch.extras):
            missing.append(need)  # not a token batch (target = "tokens"; see metrics/tokens.py)
        elif need == "contrast" and (
            ctx.contrast_model is None or not (ctx.batch.extras and "contrast_target" in ctx.batch.extras)
        ):
            missing.append(need)  # the model declares no contrast model, or the data no contrast targets
    return missing


def compute_metrics(
    ctx: MetricContext,
    names: Iterable[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Run several metrics on one context: ``{metric: {method: Tensor[B]}}``.

    Metrics whose needs are not met are skipped (absent from the result); errors propagate.
    """
    out: dict[str, dict[str, Tensor]] = {}
    for name in names:
        if missing_needs(name, ctx):
            continue
        fn = METRICS.get(name)
        out[name] = leave_out_without_truth(name, ctx, fn(ctx, **metric_params(name, (params or {}).get(name))))
    return out


def leave_out_without_truth(name: str, ctx: MetricContext, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rows whose ground truth is undefined (``Batch.extras["has_truth"]`` False: a function-word token of
    ``target = "tokens"``, which names no object) are left out of the metrics that need ``masks`` or ``boxes``: NaN
    (``undefined``, counted) for an image-level metric, a zero statistics row (adds nothing to the sums of
    PxAP or the seed metrics) for a dataset-level one. A metric registered with ``scores_untruthed=True``
    (TAM's Func-IoU and F1-IoU) defines its value on those rows itself and is left alone."""
    extras = (ctx.batch.extras if ctx.batch is not None else None) or {}
    entry = METRICS.entry(name).meta
    needs = entry.get("needs", ())
    if "has_truth" not in extras or not ({"masks", "boxes"} & set(needs)) or entry.get("scores_untruthed"):
        return values
    keep = extras["has_truth"].bool().cpu()
    out = {}
    for method, v in values.items():
        k = keep.to(v.device).view(-1, *([1] * (v.ndim - 1)))
        fill = torch.zeros_like(v) if entry.get("level", "image") == "dataset" else torch.full_like(v, float("nan"))
        out[method] = torch.where(k, v, fill)
    return out


def list_metrics(pattern: str | None = None, **meta: Any) -> list[str]:
    return METRICS.list(pattern, **meta)
