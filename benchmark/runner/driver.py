"""The driver: :func:`run_suite` plans a suite, skips the units already in the store, runs the others
on a backend (:func:`benchmark.runner.parallel.execute_units`) and writes each one as it arrives, then the
``run.json`` record (:func:`run_record`). The report is the caller's. Re-exported by
:mod:`benchmark.runner.execute`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..cpukernels import describe
from ..errors import CambenchError
from ..methods import METHODS
from ..metrics import METRICS
from ..outdir import RunLock, check_out_dir
from ..store import Store, Todo, atomic_write_text
from .estimate import announce_run
from .fingerprint import method_fingerprints, unit_fingerprints, unit_method_fingerprints
from .parallel import default_workers, execute_units, reemit_logs
from .plan import Plan, Unit, load_registries, plan_run
from .progress import Progress
from .resources import resolve_device
from .suite import Suite, check_claims
from .unit import ExecOptions, run_unit

# -- the driver ------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What :func:`run_suite` did: the plan, the units it ran, those it found finished, the report."""

    plan: Plan
    out: Path
    ran: list[str]
    reused: list[str]
    report: Any = None
    #: items a dataset could not read (``model``, ``dataset``, ``item``, ``reason``), each once
    unreadable: list[dict] = field(default_factory=list)
    #: finished units on disk outside this run (another ``--limit``, ``n`` or setting): kept, not reported
    unreported: list[str] = field(default_factory=list)
    #: ``{unit key: the methods computed on it}`` (all its methods, or the new and changed ones of an
    #: incremental run); units absent were reused whole
    computed: dict[str, tuple[str, ...]] = field(default_factory=dict)


def versions() -> dict[str, str]:
    import platform

    out = {
        "cambench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }
    from importlib import metadata

    for dist in ("torchvision", "timm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    out["platform"] = platform.platform(terse=True)

    out["cpu_kernels"] = describe()
    return out


def method_notes(methods: Sequence[str]) -> dict[str, str]:
    """``{method: note}`` for the methods whose registration carries a ``note`` (a caveat a reader of the
    report must see next to the numbers, e.g. the oracle's silhouette artefact on deletion/insertion)."""

    out = {}
    for m in methods:
        note = METHODS.entry(m).meta.get("note")
        if note:
            out[m] = str(note)
    return out


def recorded_identities(plan: Plan) -> dict[str, Any]:
    """What the report needs of the registries, recorded by the run so that reading a results folder
    imports nothing: the baseline methods (``baselines``) and, per dataset-level metric, the
    ``module:qualname`` of its reducer (``reducers``; the report checks the loaded one is the same)."""
    methods = sorted({m for e in plan.experiments for m in e.methods})
    reducers = {}
    for m, level in sorted(plan.levels.items()):
        fn = METRICS.entry(m).meta.get("compute") if level == "dataset" and m in METRICS else None
        if fn is not None:
            reducers[m] = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    return {
        "baselines": [m for m in methods if METHODS.entry(m).meta.get("family") == "baseline"],
        "method_families": {m: str(METHODS.entry(m).meta.get("family", "")) for m in methods},
        "reducers": reducers,
    }


def _check_claims(plan: Plan) -> None:
    """:func:`benchmark.runner.suite.check_claims` of the suite's claims against the planned experiments."""
    if not plan.suite.claims:
        return
    names = {m for e in plan.experiments for m in e.methods}
    baselines = [m for m in names if METHODS.entry(m).meta.get("family") == "baseline"]
    check_claims(
        plan.suite.claims,
        [(e.label, e.dataset, e.methods, e.metrics) for e in plan.experiments],
        plan.families,
        baselines,
        plan.suite.path or plan.suite.name,
    )


def run_record(plan: Plan, device: torch.device) -> dict:
    """The ``run.json`` record: what the report needs without the registries (directions, families,
    baselines, reducers: :func:`recorded_identities`)."""
    s = plan.suite
    return {
        "suite": s.name,
        "suite_hash": plan.hash,
        "suite_path": s.path,
        "suite_toml": s.source,
        "seed": s.seed,
        "bootstrap": s.bootstrap,
        "batch_size": s.batch_size,
        "shard_size": s.shard_size,
        "device": str(device),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "versions": versions(),
        "directions": plan.directions,
        "families": plan.families,
        "levels": plan.levels,
        **recorded_identities(plan),
        "plugins": [str(p) for p in s.plugins],
        "claims": [asdict(c) for c in s.claims],  # tested by the report (benchmark.report.claims)
        "units": [u.key for u in plan.units],
        "method_notes": method_notes(sorted({m for e in plan.experiments for m in e.methods})),
        "experiments": [
            {
                "label": e.label,
                "model": e.model,
                "dataset": e.dataset,
                "n_images": e.n_images,
                "methods": list(e.methods),
                "metrics": list(e.metrics),
                "skipped": e.skipped,
                "method_params": e.method_params,
                "metric_params": e.metric_params,
                "data_errors": e.data_errors,
            }
            for e in plan.experiments
        ],
    }


def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    fresh: bool = False,
    limit: int | None = None,
    quiet: bool = False,
    report: Callable[[Path], Any] | None = None,
    log: Callable[[str], None] | None = None,
    backend: str = "sequential",
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    options: ExecOptions | None = None,
    plugins: Sequence[str] = (),
    warn_minutes: float | None = None,
) -> RunOutcome:
    """Plan ``suite``, run every unit not already stored in ``out`` (its parts and ``run.json``).

    The report is the caller's: ``report`` (a callable, e.g. ``functools.partial(write_report, plots=False)``
    of :func:`benchmark.report.build.write_report`, which the CLI passes), when given, is called as
    ``report(out)`` at the end, still under the run's lock, and its result is :attr:`RunOutcome.report`;
    without it (``None`` or ``False``), call ``write_report(out)`` afterwards.

    Killing the process at any point loses at most the units in flight; rerunning with the same
    arguments resumes and gives the same final tables as an uninterrupted run. ``backend``
    (``sequential`` | ``loky`` | ``dask``), ``workers``, ``scheduler`` and ``client``: see
    :func:`benchmark.runner.parallel.execute_units` (every backend gives the same scores, and the parent
    writes each unit's part as it arrives). ``options``: :class:`ExecOptions`; ``plugins``: extra
    plugins the workers import.

    Before anything else ``out`` is checked (:func:`benchmark.outdir.check_out_dir`) and locked for this
    run (:class:`benchmark.outdir.RunLock`: a second run into it raises at once, naming the first one's
    pid). Progress: :class:`benchmark.runner.progress.Progress` (bars on a terminal, one line per finished
    unit otherwise; ``log`` replaces its printing). ``warn_minutes``: before the first unit, log the plan summary
    with a cost estimate from a one-image probe per experiment, warning above that many minutes
    (:func:`benchmark.runner.estimate.announce`; one line under ``quiet``); ``None``: no estimate. The tables
    cover the units of this plan only; other finished units in ``out`` are listed in :attr:`RunOutcome.unreported`.
    """

    if report is True or (report and not callable(report)):
        raise CambenchError(
            f"run_suite(report=...) takes a callable report(out) -> report, got {report!r}; pass e.g. "
            "functools.partial(benchmark.report.build.write_report, plots=False), or call write_report(out) "
            "after run_suite."
        )
    out = Path(out)
    check_out_dir(out)  # a bad --out is refused before any model or data work
    with Progress(quiet=quiet, log=log, warn_minutes=warn_minutes) as progress, RunLock(out, progress.log):
        return _run_locked(
            suite,
            out,
            progress,
            fresh=fresh,
            limit=limit,
            report=report,
            backend=backend,
            workers=workers,
            scheduler=scheduler,
            client=client,
            options=options or ExecOptions(),
            plugins=plugins,
        )


def _run_locked(
    suite: Suite,
    out: Path,
    progress: Any,
    *,
    fresh: bool,
    limit: int | None,
    report: Callable[[Path], Any] | None,
    backend: str,
    workers: int | None,
    scheduler: str | None,
    client: Any,
    options: ExecOptions,
    plugins: Sequence[str],
) -> RunOutcome:
    log = progress.log
    plan = plan_run(suite, limit, precision=options.precision)
    _check_claims(plan)  # a claim naming a method or metric no experiment runs is refused before any work
    store, record = _open_store(plan, out, log, fresh)
    record.update(precision=options.precision, backend=backend)
    atomic_write_text(out / "run.json", json.dumps(record, indent=1, default=str))
    for e in plan.experiments:
        for msg in e.data_errors:
            log(f"cambench: {e.label}/{e.dataset}: unreadable, left out: {msg}")
    todo = incremental_units(plan, store.todo(), log, out)
    reused = [u.key for u in plan.units if u.key not in {t.key for t in todo}]
    unreported = store.unreported()
    if unreported:
        log(
            f"cambench: {len(unreported)} finished unit(s) in {store.parts} lie outside this run (another "
            f"--limit, `n` or setting): kept on disk, not in the tables. Rerun with that setting to report them."
        )
    announce_run(plan, todo, resolve_device(suite.device), progress)  # the cost of what is left, before any unit
    ran = []
    in_flight = 1 if backend == "sequential" else (workers or default_workers(suite.device))
    progress.start(len(todo), sum(u.stop - u.start for u in todo), [u.key for u in todo], in_flight)
    results = execute_units(
        suite,
        todo,
        unit_fn=run_unit,
        setup_fn=load_registries,
        options=options,
        backend=backend,
        workers=workers,
        scheduler=scheduler,
        client=client,
        plugins=plugins,
        progress=progress.images,
    )
    seen_logs: set[tuple[str, int, str]] = set()
    computed = {u.key: u.methods for u in todo}
    try:
        for result in results:
            store.write_unit(result, methods=computed[result.key])
            reemit_logs(getattr(result, "logs", ()), seen_logs)  # a worker's messages, each warning once
            for w in result.info.get("warnings", ()):
                progress.warn_once(w, f"cambench: {result.key}: {w}")
            for msg in result.info.get("data_errors", ()):
                log(f"cambench: {result.key}: unreadable, left out: {msg}")
            ran.append(result.key)
            unit = next(u for u in todo if u.key == result.key)
            progress.unit_done(result.key, unit.stop - unit.start)
    finally:
        results.close()
        progress.stop()
    unreadable = _unreadable(plan, store)
    record.update(unreadable=unreadable, unreported_units=unreported)
    atomic_write_text(out / "run.json", json.dumps(record, indent=1, default=str))
    rep = report(out) if report else None
    done = {k: computed[k] for k in ran}
    return RunOutcome(plan, out, ran, reused, rep, unreadable=unreadable, unreported=unreported, computed=done)


def _open_store(plan: Plan, out: Path, log: Callable[[str], None], fresh: bool) -> tuple[Store, dict[str, Any]]:
    """The run's :class:`Store` (prepared; with each unit's base fingerprint and its methods' fingerprints) and
    its ``run.json`` record (:func:`run_record` with the fingerprints of each experiment and of its methods)."""
    fingerprints = unit_fingerprints(plan)  # plugin sources, checkpoint bytes, CPU kernels, versions
    store = Store(
        out,
        plan.hash,
        log,
        units=[u.key for u in plan.units],
        fingerprints=fingerprints,
        methods=unit_method_fingerprints(plan),  # each method's plugin source and parameters
    )
    store.prepare(fresh)
    record = run_record(plan, resolve_device(plan.suite.device))
    record["fingerprints"] = {plan.experiments[u.experiment].label: fingerprints[u.key] for u in plan.units}
    for i, e in enumerate(record["experiments"]):  # what a reader takes each method's rows by
        e["method_fingerprints"] = method_fingerprints(plan, i)
    return store, record


def incremental_units(plan: Plan, todo: dict[str, Todo], log: Callable[[str], None], out: Path) -> list[Unit]:
    """The units to run (:meth:`benchmark.store.Store.todo`): a unit with stored current rows of some of its
    methods runs the others only (``methods`` = that subset; same key, so the same batch seeds). Says once,
    one line per reason, what is recomputed and why, and how many units are reused whole."""
    units = []
    for u in plan.units:
        t = todo.get(u.key)
        if t is None:
            continue
        whole = not t.methods or set(t.methods) >= set(u.methods)
        units.append(u if whole else dataclasses.replace(u, methods=t.methods))
    reused = len(plan.units) - len(units)
    if reused:
        log(f"cambench: resuming in {out}: {reused} of {len(plan.units)} unit(s) already finished.")
    by_unit_reason: dict[str, list[str]] = {}
    by_method_reason: dict[str, list[str]] = {}
    for key, t in todo.items():
        for reason in t.unit_reasons:
            by_unit_reason.setdefault(reason, []).append(key)
        for reason in t.method_reasons.values():
            by_method_reason.setdefault(reason, []).append(key)
    for reason, keys in by_unit_reason.items():
        log(f"cambench: {len(keys)} finished unit(s) recomputed: {reason}.")
    planned = {u.key: u.methods for u in plan.units}
    for reason, keys in by_method_reason.items():
        others = {m for k in keys for m in planned[k]} - {m for k in keys for m in todo[k].methods}
        log(f"cambench: {reason}: computing it on {len(keys)} unit(s); {len(others)} other method(s) reused.")
    return units


def _unreadable(plan: Plan, store: Store) -> list[dict[str, str]]:
    """Every item a dataset could not read, named once: when it was built (plan) and while a unit loaded it."""
    unreadable = [
        {"model": e.label, "dataset": e.dataset, "item": m.split(":")[0], "reason": m}
        for e in plan.experiments
        for m in e.data_errors
    ]
    exp_of = {u.key: plan.experiments[u.experiment] for u in plan.units}
    for meta in store.load_meta():
        exp = exp_of[meta["unit"]]
        for m in dict.fromkeys(str(m) for m in meta.get("info", {}).get("data_errors", [])):
            unreadable.append({"model": exp.label, "dataset": exp.dataset, "item": m.split(":")[0], "reason": m})
    return unreadable
