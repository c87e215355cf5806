"""Cost before running: a plan summary with a time per experiment from a one-image probe, and a warning.

:func:`estimate_plan` probes each experiment on the first image it still has to compute, on the real model
and device, through the same :func:`~benchmark.evaluate.evaluate_batch` the units run: once with every method
and no metric (each method's explanation time, sharing one capture as in a unit), then once with one
reference method (Grad-CAM where the experiment runs it) and every metric (each metric's time for one map).
A run explains ``batch_size`` images per call, so explanation times are scaled by the model's batch
efficiency (one forward of 1 image and one of ``batch_size`` copies: :func:`batch_efficiency`). A metric runs
once per batch on every map, so it is timed on one map and on two (those carrying a tenth of the time): the
difference is its time per map, the rest a fixed time per call shared by the batch's images and maps. A metric
that re-explains (robustness, sanity, cost) adds, per method and re-explanation, that method's explanation time
beyond the reference's. Model forwards are counted on the way (a forward pre-hook). The meta-evaluation
multiplies an experiment by ``1 + 2K`` (it re-evaluates every batch under ``2K`` perturbed models).

An experiment with fewer than :data:`PROBE_MIN_IMAGES` images left is not probed (the probe would be a
visible part of its cost); ``--estimate`` probes every one. The probe explains one image per experiment and
scores one or two maps per metric, a few percent of a run's work at most; the models it builds are the run's
own (cached per process, :func:`~benchmark.runner.resources.get_model`). Measured on the quick suite (2 loaded
cores): the estimate errs high, by about 1 to 5x per experiment (a probe at batch size 1 pays per-call costs
that a run's batches share); on large models, whose time is compute per image, it is closer.

:func:`estimate_text` is the summary (one line per experiment, the total) and :func:`warning_text` the
warning when the total exceeds ``--warn-minutes``, naming the methods and metrics that dominate and the
suite keys that drop them. :func:`count_forwards` counts the forwards of each method alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CambenchError
from ..evaluate import evaluate_batch, reexplained, resolve_targets
from ..methods import METHODS, explain_context, run_method
from ..metrics import METRICS
from ..progress import current_step, note_step
from .resources import get_dataset, get_model, unit_batches
from .unit import evaluate_options

#: An experiment with fewer images left to compute is not probed before a run (``--estimate`` probes all): the
#: probe explains one image and scores one or two maps, the work of one or two images, so at most ~5 % of what
#: it estimates (in the quick suite only the 64 composites are probed, a few seconds of its run).
PROBE_MIN_IMAGES = 32
#: Default of ``--warn-minutes``: the plan summary warns when the estimate exceeds this many minutes.
WARN_MINUTES = 10.0


def count_forwards(
    model: nn.Module,
    layer: str,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    params: Mapping[str, Mapping] | None = None,
    *,
    reshape: object = None,
    forward_batch_size: int = 64,
    masks: Tensor | None = None,
) -> dict[str, float]:
    """Images forwarded through ``model`` per input image, per method alone (each from its own capture).

    NaN where the method refuses the input (a :class:`~benchmark.errors.CambenchError`: the oracle without
    ground truth, CAM on a model without a GAP head); any other exception is a bug of the method and raises a
    :class:`~benchmark.errors.CambenchError` naming it."""

    seen = [0]

    def hook(_mod: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            seen[0] += int(args[0].shape[0])

    handle = model.register_forward_pre_hook(hook)
    out: dict[str, float] = {}
    try:
        for name in methods:
            seen[0] = 0
            ctx = explain_context(
                model, layer, images, targets, reshape=reshape, forward_batch_size=forward_batch_size, seed=0
            )
            ctx.masks = masks
            try:
                run_method(ctx, name, (params or {}).get(name))
            except CambenchError:  # the method's own refusal of this input: the run reports it as an error row
                out[name] = float("nan")
                continue
            except Exception as exc:
                raise CambenchError(
                    f"Method {name!r} failed while its forwards were counted: {type(exc).__name__}: {exc}. "
                    "Run it alone (benchmark.methods.run_method) to debug it, or leave it out of `methods`."
                ) from exc
            out[name] = seen[0] / images.shape[0]
    finally:
        handle.remove()
    return out


@dataclass
class ExperimentEstimate:
    """The probe of one experiment: seconds per image of each method's explanation and of each metric (over
    all the methods it scores), forwards per image, the images and units left to compute."""

    label: str
    dataset: str
    n_images: int
    n_units: int = 1
    #: explanation seconds per image, per method (methods that failed on the probe: their time to fail)
    explain_s: dict[str, float] = field(default_factory=dict)
    #: seconds per image of each (method, metric): the metric's time on one map, scaled for re-explaining ones
    metric_s: dict[tuple[str, str], float] = field(default_factory=dict)
    forwards: float = float("nan")  # model forwards per image (explanations and metrics)
    factor: float = 1.0  # the meta-evaluation's 1 + 2K
    probed: bool = True
    note: str = ""  # why not probed, or what failed on the probe

    @property
    def seconds_per_image(self) -> float:
        return self.factor * (sum(self.explain_s.values()) + sum(self.metric_s.values()))

    @property
    def seconds(self) -> float:
        return self.n_images * self.seconds_per_image

    def by_method(self) -> dict[str, float]:
        """Seconds of the whole experiment per method: its explanation and every metric's work on its map."""
        out = {m: s for m, s in self.explain_s.items()}
        for (m, _), s in self.metric_s.items():
            out[m] = out.get(m, 0.0) + s
        return {m: self.n_images * self.factor * s for m, s in out.items()}

    def by_metric(self) -> dict[str, float]:
        """Seconds of the whole experiment per metric (over every map it scores)."""
        out: dict[str, float] = {}
        for (_, k), s in self.metric_s.items():
            out[k] = out.get(k, 0.0) + s
        return {k: self.n_images * self.factor * s for k, s in out.items()}


def _counter(model: nn.Module) -> tuple[dict[str, int], Any]:
    """A forward pre-hook on ``model`` counting the images it forwards, per step (:func:`note_step`: the
    method or metric :func:`~benchmark.evaluate.evaluate_batch` runs)."""
    seen: dict[str, int] = {}

    def hook(_mod: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            step = current_step()
            seen[step] = seen.get(step, 0) + int(args[0].shape[0])

    return seen, model.register_forward_pre_hook(hook)


def _reference(ok: Sequence[str], forwards: Mapping[str, float]) -> str | None:
    """The method whose map the metrics are timed on: Grad-CAM where it ran, else the non-baseline method with
    the fewest forwards that worked on the probe, else any that worked."""
    if "gradcam" in ok:
        return "gradcam"
    model_based = [m for m in ok if METHODS.entry(m).meta.get("family") != "baseline"]
    pool = model_based or list(ok)
    return min(pool, key=lambda m: forwards.get(m, 0.0)) if pool else None


def batch_efficiency(model: nn.Module, images: Tensor, batch_size: int) -> float:
    """Seconds per image of one forward of ``batch_size`` copies of ``images`` over that of ``images`` alone
    (after the probe's warm-up capture): from ``1 / batch_size`` (a small model: the call's overhead) to 1 (a
    large one: compute per image). A probe of one image times it to the run's batches."""
    if batch_size <= 1:
        return 1.0
    many = images.repeat(batch_size, *([1] * (images.ndim - 1)))
    seconds = []
    with torch.inference_mode():
        for x in (images, many):
            t0 = time.perf_counter()
            model(x)
            seconds.append(time.perf_counter() - t0)
    one, batch = seconds
    return float(min(1.0, max(1.0 / batch_size, batch / batch_size / max(one, 1e-9))))


def _metric_pass(
    handle: Any, batch: Any, methods: list[str], metrics: Sequence[str], ep: Any, opts: dict, seen: dict[str, int]
) -> tuple[dict, dict[str, int]]:
    """Seconds per (stage, name) of ``metrics`` on the maps of ``methods``, and the forwards counted."""
    seen.clear()
    out = evaluate_batch(
        handle.model, handle.target_layer, handle.reshape, batch, methods, metrics,
        seed=ep.seed, **{**opts, "reexplain_methods": "all"},
    )  # fmt: skip
    return out.seconds, dict(seen)


def probe_experiment(ep: Any, device: torch.device, index: int, n_images: int, n_units: int) -> ExperimentEstimate:
    """Probe experiment plan ``ep`` (:class:`~benchmark.runner.plan.ExperimentPlan`) on its image ``index``
    (see the module docstring)."""
    exp = ep.spec
    est = ExperimentEstimate(ep.label, ep.dataset, n_images, n_units)
    handle, channels_last = get_model(exp, device, None)
    dataset = get_dataset(exp, ep.seed)
    batch = next(iter(unit_batches(dataset, handle, [index], 1, device, False, channels_last)))
    batch = resolve_targets(handle.model, batch, exp.target)
    opts = evaluate_options(ep)
    images = max(1, int(batch.images.shape[0]))  # a multi-label image is one sample per class present
    if any(METHODS.entry(m).meta.get("family") != "baseline" for m in ep.methods):
        with contextlib.suppress(CambenchError):  # one untimed capture: first-call kernel set-up is no per-image cost
            _ = explain_context(
                handle.model, handle.target_layer, batch.images, batch.targets, reshape=handle.reshape
            ).capture
    eff = batch_efficiency(handle.model, batch.images, ep.batch_size)
    seen, hook = _counter(handle.model)
    try:
        explained = evaluate_batch(
            handle.model, handle.target_layer, handle.reshape, batch, ep.methods, [], seed=ep.seed, **opts
        )
        # a run explains batch_size images per call: its time per image shrinks as the model's forwards do
        # (eff: measured, from 1 / batch_size on a small model to 1 on a large one)
        est.explain_s = {m: explained.seconds[("explain", m)] / images * eff for m in ep.methods}
        ok = [m for m in ep.methods if m in explained.maps]
        # a method's forwards on its own: those it ran, and the shared capture for a model-based one
        fw = {
            m: max(seen.get(f"explain {m}", 0), 0 if METHODS.entry(m).meta.get("family") == "baseline" else 1) / images
            for m in ep.methods
        }
        failed = sorted(set(explained.method_failures) - explained.method_undefined)
        if failed:
            est.note = f"failed on the probe: {', '.join(failed)}"
        ref = _reference(ok, fw)
        est.forwards = sum(seen.values()) / images
        if ref is not None and ep.metrics:
            # each metric on one map, then on two: a metric runs once per batch on all its maps, so its time is
            # a fixed part per call (model copies, set-up) and a part per map; the run has batch_size images
            pair = [ref, *[m for m in sorted(ok, key=lambda m: (fw[m], m)) if m != ref][:1]]
            one, seen1 = _metric_pass(handle, batch, [ref], ep.metrics, ep, opts, seen)
            # on two maps: only the metrics that matter (a tenth of the one-map time or more), the others count
            # their whole one-map time per map (an upper bound on what they add)
            total1 = sum(one.get(("metric", k), 0.0) for k in ep.metrics)
            big = [k for k in ep.metrics if one.get(("metric", k), 0.0) >= 0.1 * total1]
            two = one
            if len(pair) == 2 and big:
                two, _ = _metric_pass(handle, batch, pair, big, ep, opts, seen)
            n_maps = max(1, len(ok))
            for k in ep.metrics:
                t1, t2 = one.get(("metric", k), 0.0) / images, two.get(("metric", k), 0.0) / images
                per_map = min(max(t2 - t1, 0.0), t1) if two is not one and k in big else t1
                fixed = (t1 - per_map) / max(1, ep.batch_size)  # per image, shared by the batch's maps
                k_fw = seen1.get(f"metric {k}", 0) / images
                re = "explainer" in METRICS.entry(k).meta.get("needs", ())
                for m in ok:
                    if re and not reexplained(m, exp.reexplain_methods):
                        continue
                    # a metric that re-explains (k_fw times for the reference, one forward each; none where the
                    # explanations are shared with a metric before it) pays each method's extra time each time
                    extra = k_fw * max(0.0, est.explain_s[m] - est.explain_s[ref]) if re else 0.0  # batched
                    est.metric_s[(m, k)] = fixed / n_maps + per_map + extra
                    est.forwards += k_fw * (max(1.0, fw[m]) if re else 1.0)
    finally:
        hook.remove()
        note_step("")
    if ep.meta is not None:
        est.factor = 1.0 + 2.0 * ep.meta.perturbations
    return est


def estimate_plan(
    plan: Any,
    device: torch.device | str = "cpu",
    units: Sequence[Any] | None = None,
    *,
    min_images: int | None = None,
) -> list[ExperimentEstimate]:
    """One :class:`ExperimentEstimate` per experiment of ``plan`` with units left in ``units`` (default: all
    of the plan's), probed with the methods those units compute (an incremental run's subset); experiments with
    fewer than ``min_images`` (default :data:`PROBE_MIN_IMAGES`) images left are listed, not probed."""
    device = torch.device(device)
    min_images = PROBE_MIN_IMAGES if min_images is None else min_images
    units = plan.units if units is None else units
    out = []
    for i, ep in enumerate(plan.experiments):
        mine = [u for u in units if u.experiment == i]
        if not mine:
            continue
        n = sum(u.stop - u.start for u in mine)
        if n < min_images:
            out.append(ExperimentEstimate(ep.label, ep.dataset, n, len(mine), probed=False, note="not probed"))
            continue
        left = tuple(m for m in ep.methods if any(m in u.methods for u in mine))  # an incremental run: a subset
        ep = ep if left == tuple(ep.methods) else replace(ep, methods=left)
        out.append(probe_experiment(ep, device, mine[0].start, n, len(mine)))
    return out


def _dur(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _per(seconds: float) -> str:
    return f"{seconds:.2g} s" if seconds < 90 else _dur(seconds)


def _shares(costs: Mapping[str, float], total: float, k: int = 3) -> list[tuple[str, float]]:
    ranked = sorted(costs.items(), key=lambda kv: -kv[1])
    return [(n, s / total) for n, s in ranked[:k] if total > 0 and s > 0]


def _dominant(shares: list[tuple[str, float]], at_least: float = 0.15) -> list[tuple[str, float]]:
    """The names with at least ``at_least`` of the cost (the largest one at least): an even spread names one."""
    return [x for x in shares if x[1] >= at_least] or shares[:1]


def _top(estimates: Sequence[ExperimentEstimate]) -> tuple[dict[str, float], dict[str, float]]:
    methods: dict[str, float] = {}
    metrics: dict[str, float] = {}
    for e in estimates:
        for m, s in e.by_method().items():
            methods[m] = methods.get(m, 0.0) + s
        for k, s in e.by_metric().items():
            metrics[k] = metrics.get(k, 0.0) + s
    return methods, metrics


def _most(e: ExperimentEstimate) -> str:
    """``"; most: methods a 60%, b 20%; metrics c 50%"``: the largest shares of the experiment's time, methods
    and metrics listed apart (a method's share includes the metrics' work on its map, so the two overlap)."""
    parts = []
    for kind, costs in (("methods", e.by_method()), ("metrics", e.by_metric())):
        top = _shares(costs, e.seconds, k=2)
        if top:
            parts.append(f"{kind} " + ", ".join(f"{n} {p:.0%}" for n, p in top))
    return "; most: " + "; ".join(parts) if parts else ""


def estimate_text(estimates: Sequence[ExperimentEstimate], probe_s: float | None = None) -> str:
    """The plan summary: per probed experiment the images and units left, seconds and forwards per image, the
    time and what costs most; the small experiments not probed in one line; then the total."""
    n_img = sum(e.n_images for e in estimates)
    n_units = sum(e.n_units for e in estimates)
    head = f"cambench: plan: {len(estimates)} experiment(s), {n_units} unit(s), {n_img} image(s) to compute"
    probed = [e for e in estimates if e.probed]
    small = [f"{e.label} on {e.dataset} ({e.n_images})" for e in estimates if not e.probed]
    if not probed:
        return f"{head}; each experiment is small (under {PROBE_MIN_IMAGES} images): no cost probe."
    probe = f"; probe {probe_s:.1f} s" if probe_s is not None else ""
    lines = [f"{head}; estimate from a one-image probe per experiment{probe}:"]
    for e in probed:
        fw = f" (~{e.forwards:,.0f} forwards)" if e.forwards == e.forwards else ""
        most = _most(e)
        meta = f" (x{e.factor:g} meta-evaluation)" if e.factor != 1 else ""
        note = f" [{e.note}]" if e.note else ""
        lines.append(
            f"  {e.label} on {e.dataset}: {e.n_images} images in {e.n_units} unit(s) x {_per(e.seconds_per_image)}"
            f"/image{fw} ~ {_dur(e.seconds)}{meta}{most}{note}"
        )
    if small:
        lines.append(f"  not probed (small: a probe would be a visible part of them): {', '.join(small)}")
    rest = f" (+ {len(small)} small experiment(s))" if small else ""
    lines.append(f"  total ~ {_dur(sum(e.seconds for e in estimates))}{rest}")
    return "\n".join(lines)


def warning_text(estimates: Sequence[ExperimentEstimate], warn_minutes: float = WARN_MINUTES) -> str | None:
    """None, or (the estimate above ``warn_minutes``) the warning naming the methods and metrics that dominate
    the cost and the suite keys that leave them out."""
    total = sum(e.seconds for e in estimates)
    if total <= 60.0 * warn_minutes:
        return None
    methods, metrics = _top(estimates)
    m_top, k_top = _dominant(_shares(methods, total)), _dominant(_shares(metrics, total))
    expensive = sorted(m for m in methods if METHODS.entry(m).meta.get("cost") == "expensive")
    parts = []
    if m_top:
        parts.append("methods " + ", ".join(f"{n} ({p:.0%})" for n, p in m_top))
    if k_top:
        parts.append("metrics " + ", ".join(f"{n} ({p:.0%})" for n, p in k_top))
    keep = [m for m in methods if m not in {n for n, _ in m_top}]
    example = ", ".join(f'"{m}"' for m in keep[:4]) + (", ..." if len(keep) > 4 else "")
    exp_note = f" Expensive methods in this run: {', '.join(expensive)}." if expensive else ""
    return (
        f"cambench: warning: this run is estimated at ~ {_dur(total)} (over --warn-minutes {warn_minutes:g}); most "
        f"of it is {'; '.join(parts)} (shares of the whole run).{exp_note} To leave some out, list what to keep "
        f"in the suite's `methods = [{example}]` and `metrics = [...]` (top level or per [[experiments]]), or "
        "lower `data.n` / --limit N, or run on a GPU (--device cuda). The run goes on."
    )


def quiet_line(estimates: Sequence[ExperimentEstimate], warn_minutes: float = WARN_MINUTES) -> str:
    """The one line of ``--quiet``: the total, and whether it exceeds ``warn_minutes`` and because of what."""
    total = sum(e.seconds for e in estimates)
    n_img = sum(e.n_images for e in estimates)
    units = f"{n_img} images in {sum(e.n_units for e in estimates)} unit(s)"
    small = sum(1 for e in estimates if not e.probed)
    if small == len(estimates):
        return f"cambench: plan: {units}; each experiment is small: no cost probe"
    line = f"cambench: estimate ~ {_dur(total)} for {units}" + (f" (+ {small} small experiment(s))" if small else "")
    if total > 60.0 * warn_minutes:
        methods, metrics = _top(estimates)
        top = [n for n, _ in _shares({**methods, **metrics}, total)]
        line += f" (over --warn-minutes {warn_minutes:g}; most: {', '.join(top)})"
    return line


def announce(
    plan: Any,
    units: Sequence[Any],
    device: torch.device,
    log: Any,
    *,
    quiet: bool = False,
    warn_minutes: float = WARN_MINUTES,
) -> list[ExperimentEstimate]:
    """Probe ``units``' experiments and log the plan summary (and the warning); under ``quiet`` one line.
    Never blocks and never asks: the run goes on whatever the estimate."""
    if not units:
        return []
    t0 = time.perf_counter()
    estimates = estimate_plan(plan, device, units)
    probe_s = time.perf_counter() - t0
    if quiet:
        log(quiet_line(estimates, warn_minutes))
        return estimates
    for line in estimate_text(estimates, probe_s).splitlines():
        log(line)
    warn = warning_text(estimates, warn_minutes)
    if warn:
        log(warn)
    return estimates


def announce_run(plan: Any, units: Sequence[Any], device: torch.device, progress: Any) -> None:
    """:func:`announce` through a run's :class:`~benchmark.runner.progress.Progress` (its one line under quiet)
    with its ``warn_minutes``; nothing when that is None (no estimate asked) or no unit is left."""
    if progress.warn_minutes is None or not units:
        return
    announce(
        plan, units, device, progress.notice if progress.quiet else progress.log,
        quiet=progress.quiet, warn_minutes=progress.warn_minutes,
    )  # fmt: skip


__all__ = [
    "PROBE_MIN_IMAGES",
    "WARN_MINUTES",
    "ExperimentEstimate",
    "announce",
    "announce_run",
    "count_forwards",
    "estimate_plan",
    "estimate_text",
    "quiet_line",
    "warning_text",
]
