"""Build every output of a run directory from its stored parts: tables, plots and ``report.html``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import CambenchError
from ..plugins import load_plugins
from ..schema import METRIC_FAMILIES
from ..store import Store, atomic_write_text, planned_methods, write_parquet
from . import tables
from .claims import claim_table, claims_html
from .findings import experiment_findings, findings_text


@dataclass
class Report:
    out: Path
    scores: pd.DataFrame
    leaderboard: pd.DataFrame
    significance: pd.DataFrame
    failures: pd.DataFrame
    timings: pd.DataFrame
    curves: pd.DataFrame
    plots: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    stats: pd.DataFrame | None = None  # per-image statistics of dataset-level metrics
    rank_tests: pd.DataFrame | None = None
    pairwise: pd.DataFrame | None = None
    equivalences: pd.DataFrame | None = None
    metric_card: pd.DataFrame | None = None
    #: "incomplete: k of n units" when units of the run are missing (``partial=True``); None when complete
    incomplete: str | None = None
    claims: pd.DataFrame | None = None  # the run's claims tested (benchmark.report.claims), claims.csv


class IncompleteRunError(CambenchError):
    """Units of the run are missing (interrupted, or quarantined after failing verification)."""


def read_run(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{out_dir} holds no cambench run (no run.json). Run `run_bench.py run SUITE --out {out_dir}` first."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _with_dataset_errors(fails: pd.DataFrame, run: dict) -> pd.DataFrame:
    """``fails`` plus one row per item a dataset could not read when it was built (``run.json``)."""
    rows = [
        {
            "model": e.get("label", e.get("model")),
            "dataset": e.get("dataset"),
            "method": tables.DATA_METHOD,
            "metric": "(load)",
            "status": "error",
            "count": 1,
            "message": str(msg),
        }
        for e in run.get("experiments", [])
        for msg in e.get("data_errors", [])
    ]
    if not rows:
        return fails
    return pd.concat([pd.DataFrame(rows, columns=fails.columns), fails], ignore_index=True)


def baseline_methods(names: Iterable[str], run: dict | None = None) -> list[str]:
    """The methods of the ``baseline`` family among ``names`` (references, never ranked): as the run
    recorded them (``run.json``'s ``baselines``); for a record without them, cambench's own registry."""
    if run is not None and "baselines" in run:
        recorded = {str(m) for m in run["baselines"]}
        return sorted(m for m in names if m in recorded)
    from ..methods import METHODS

    return sorted(m for m in names if m in METHODS and METHODS.entry(m).meta.get("family") == "baseline")


def function_id(fn: object) -> str:
    """``module:qualname`` of a function (how ``run.json`` names a dataset-level metric's reducer)."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def check_reducers(metrics: Iterable[str], run: dict) -> None:
    """Every dataset-level metric with stored statistics is reduced by the function the run recorded
    (``run.json``'s ``reducers``), found in what is loaded: cambench's own metrics and the plugins the user
    passed (``--plugin``). A results folder never names code to import; raise :class:`CambenchError` (one
    line) when the reducer is missing or is another function than the run's."""
    from ..metrics import METRICS

    recorded = run.get("reducers", {})
    for m in sorted(set(metrics)):
        want = recorded.get(m)
        if m not in METRICS:
            raise CambenchError(
                f"the statistics of dataset-level metric {m!r} in {run.get('suite', 'this run')!r} are reduced by "
                f"{want or 'a plugin function'}, which is not loaded; cambench never imports code named by a "
                f"results folder: pass the plugin yourself (run_bench.py --plugin FILE report DIR)."
            )
        have = function_id(METRICS.entry(m).meta.get("compute"))
        if want is not None and have != want:
            raise CambenchError(
                f"dataset-level metric {m!r}: the run reduced its statistics with {want}, but the loaded "
                f"registration uses {have}; pass the plugin the run used (--plugin FILE)."
            )


def write_report(
    out_dir: str | Path,
    *,
    plots: bool = True,
    html: bool = True,
    plugins: Sequence[str] = (),
    partial: bool = False,
) -> Report:
    """Write scores.parquet, stats.parquet, leaderboard.csv, significance.csv, rank_tests.csv, pairwise.csv,
    equivalences.csv, metric_card.csv, kendall_tau.csv, failures.csv, timings.csv, sanity.csv, claims.csv (with
    claims), curves.parquet, plots/*.png and report.html into ``out_dir`` (from its ``run.json`` and the parts
    of that hash).

    Nothing named by the folder is imported: families, directions, baselines and reducers come from
    ``run.json``; ``plugins`` (the user's ``--plugin``) are the only code loaded besides cambench.

    Every part is verified (:meth:`Store.verify`; a failing one is quarantined). When units of the run are
    missing, raise :class:`IncompleteRunError` (one line), or with ``partial`` write the tables of the units
    present and mark them: :attr:`Report.incomplete`, ``incomplete.txt`` and the summary."""
    out = Path(out_dir)
    run = read_run(out)
    if plugins:
        load_plugins(plugins)
    store = Store(out, run["suite_hash"], units=run.get("units"), methods=planned_methods(run))
    missing = store.missing()
    units = list(run.get("units", []))
    incomplete = f"incomplete: {len(units) - len(missing)} of {len(units)} units" if missing else None
    if missing and not partial:
        raise IncompleteRunError(
            f"{out} holds {len(units) - len(missing)} of the {len(units)} units of suite "
            f"{run.get('suite', '?')!r} (interrupted, or parts quarantined): rerun the same `run` command to "
            f"finish them, or pass `report --partial` for tables marked incomplete."
        )
    marker = out / "incomplete.txt"
    if incomplete:
        atomic_write_text(marker, f"{incomplete}; missing: {', '.join(missing)}\n")
    elif marker.is_file() and not marker.is_symlink():
        marker.unlink()
    scores = store.load_scores()
    stats = store.load_stats()
    if len(stats):
        check_reducers(stats["metric"], run)
    directions = {k: bool(v) for k, v in run.get("directions", {}).items()}
    families = {str(k): str(v) for k, v in run.get("families", {}).items()}  # recorded by the run, not looked up
    costs = tables.cost_metrics(families)
    mparams = {(e["label"], e["dataset"]): e.get("metric_params", {}) for e in run.get("experiments", [])}
    ranked = tables.ranked_leaderboard(
        scores,
        directions,
        seed=int(run.get("seed", 0)),
        n_boot=int(run.get("bootstrap", 1000)),
        exclude_from_mean_rank=costs,
        stats=stats,
        metric_params=mparams,
        baselines=baseline_methods(set(scores["method"]) | set(stats["method"]), run),
        families=families,
    )
    board = ranked.board
    sig = tables.significance(scores, board, pairwise=ranked.pairwise)
    from . import card as C

    equiv = C.equivalences(store.load_meta(), run)
    taus = C.kendall_taus(board, exclude=costs)
    perturbed = store.load_perturbed()
    meta = None
    if len(perturbed):  # the suite's meta_evaluation (MetaQuantus): NR and AR columns of the card
        from .meta import meta_scores

        meta = meta_scores(scores, perturbed, directions, baseline_methods(set(scores["method"]), run))
    mcard = C.metric_card(
        board,
        ranked.pairwise,
        ranked.tests,
        run.get("families", {}),
        run.get("levels", {}),
        taus,
        exclude=costs,
        meta=meta,
    )
    fails = _with_dataset_errors(tables.failures(scores), run)
    timings = store.load_timings()
    curves = store.load_curves()

    write_parquet(out / "scores.parquet", scores)
    write_parquet(out / "curves.parquet", curves)
    if len(stats):
        write_parquet(out / "stats.parquet", stats)
    atomic_write_text(out / "leaderboard.csv", board.to_csv(index=False))
    atomic_write_text(out / "significance.csv", sig.to_csv(index=False))
    atomic_write_text(out / "rank_tests.csv", ranked.tests.to_csv(index=False))
    atomic_write_text(out / "pairwise.csv", ranked.pairwise.to_csv(index=False))
    atomic_write_text(out / "equivalences.csv", equiv.to_csv(index=False))
    atomic_write_text(out / "metric_card.csv", mcard.to_csv(index=False))
    atomic_write_text(out / "kendall_tau.csv", taus.to_csv(index=False))
    atomic_write_text(out / "failures.csv", fails.to_csv(index=False))
    atomic_write_text(out / "timings.csv", timings.to_csv(index=False))
    atomic_write_text(out / "sanity.csv", C.sanity_verdicts(board, families).to_csv(index=False))
    claims = run_claims(run, scores, stats, mparams)
    if run.get("claims"):
        atomic_write_text(out / "claims.csv", claims.to_csv(index=False))

    from .seeds import write_seed_report

    seed_params = next(
        (
            e.get("metric_params", {}).get("seed_miou")
            for e in run.get("experiments", [])
            if "seed_miou" in e.get("metrics", [])
        ),
        None,
    )
    seed_files = write_seed_report(stats, out, params=seed_params, plots=plots) if len(stats) else {}
    figs: dict = {}
    if plots:
        from .plots import all_plots

        # curves of faithfulness metrics (deletion, insertion...) are plotted; other metrics may store
        # per-image rows in ctx.curves (e.g. PxAP histograms), kept in curves.parquet only
        fam = run.get("families", {})
        plotted = curves[curves["metric"].map(lambda m: fam.get(m, "faithfulness") == "faithfulness")]
        figs = all_plots(
            board,
            plotted,
            store.load_gallery(),
            out / "plots",
            families=fam,
            taus=taus,
            scores=scores,
            focus=run.get("focus"),
        )
        if "plot" in seed_files:
            figs["seeds"] = [seed_files["plot"]]
    if html:
        from .html import render

        degenerate = tables.degenerate_counts(scores)
        atomic_write_text(
            out / "report.html",
            render(
                run,
                board,
                sig,
                fails,
                timings,
                figs,
                degenerate,
                card=mcard,
                equivalences=equiv,
                tests=ranked.tests,
                claims=claims_html(claims),
                out_dir=out,
            ),
        )
    return Report(
        out,
        scores,
        board,
        sig,
        fails,
        timings,
        curves,
        figs,
        run,
        stats,
        ranked.tests,
        ranked.pairwise,
        equiv,
        mcard,
        incomplete,
        claims,
    )


def run_claims(run: dict, scores: pd.DataFrame, stats: pd.DataFrame | None, mparams: dict) -> pd.DataFrame:
    """The run's ``[[claims]]`` (and ``--focus``) tested: :func:`benchmark.report.claims.claim_table`."""
    if not run.get("claims"):
        return claim_table(scores, {})
    baselines = baseline_methods(set(scores["method"]) | (set(stats["method"]) if stats is not None else set()), run)

    def compute_for(model: str, dataset: str, metric: str) -> Callable[[Any, list], float]:
        return tables._dataset_compute(metric, (mparams.get((model, dataset)) or {}).get(metric, {}))

    return claim_table(scores, run, stats, baselines, compute_for=compute_for)


#: The metrics papers report first; the summary shows those present, then one per remaining family.
HEADLINE = ("deletion_auc", "insertion_auc", "pointing_game", "max_sensitivity", "model_randomization")


def headline_metrics(run: dict, board: pd.DataFrame, k: int = 5) -> list[str]:
    """A few metrics for the terminal summary: the usual headline ones, then one per family."""
    fam = run.get("families", {})
    present = [m for m in board["metric"].unique() if m != tables.MEAN_RANK]
    picked: list[str] = [m for m in HEADLINE if m in present]
    for f in METRIC_FAMILIES:
        if any(fam.get(m) == f for m in picked):
            continue
        for m in sorted(present):
            if fam.get(m) == f and m not in picked:
                picked.append(m)
                break
    for m in sorted(present):
        if m not in picked:
            picked.append(m)
    return picked[:k]


def summary_text(
    run: dict,
    board: pd.DataFrame,
    k: int = 5,
    card: pd.DataFrame | None = None,
    equivalences: pd.DataFrame | None = None,
    out_dir: Path | None = None,
) -> str | None:
    """The terminal summary: one finding per experiment (:mod:`benchmark.report.findings`), best-concluding
    first, then the claims' verdicts when the suite has claims; the tables are in report.html."""
    if board.empty:
        return None
    return findings_text(experiment_findings(board, card, equivalences, run), "")
