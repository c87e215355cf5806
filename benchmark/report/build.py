"""Build every output of a run directory from its stored parts: tables, plots and ``report.html``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from ..store import Store, atomic_write_text, write_parquet
from . import tables


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


def read_run(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{out_dir} holds no cambench run (no run.json). Run `run_bench.py run SUITE --out {out_dir}` first."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def cost_metrics(names: Iterable[str]) -> list[str]:
    """The registered metrics of the ``cost`` family among ``names`` (left out of ``mean_rank``)."""
    from ..metrics import METRICS

    return [m for m in names if m in METRICS and METRICS.entry(m).meta.get("family") == "cost"]


def write_report(out_dir: str | Path, *, plots: bool = True, html: bool = True) -> Report:
    """Write scores.parquet, leaderboard.csv, significance.csv, failures.csv, timings.csv, curves.parquet,
    plots/*.png and report.html into ``out_dir`` (from its ``run.json`` and the parts of that hash)."""
    out = Path(out_dir)
    run = read_run(out)
    store = Store(out, run["suite_hash"])
    scores = store.load_scores()
    directions = {k: bool(v) for k, v in run.get("directions", {}).items()}
    board = tables.leaderboard(scores, directions, seed=int(run.get("seed", 0)), n_boot=int(run.get("bootstrap", 1000)),
                               exclude_from_mean_rank=cost_metrics(directions))
    sig = tables.significance(scores, board)
    fails = tables.failures(scores)
    timings = store.load_timings()
    curves = store.load_curves()

    write_parquet(out / "scores.parquet", scores)
    write_parquet(out / "curves.parquet", curves)
    atomic_write_text(out / "leaderboard.csv", board.to_csv(index=False))
    atomic_write_text(out / "significance.csv", sig.to_csv(index=False))
    atomic_write_text(out / "failures.csv", fails.to_csv(index=False))
    atomic_write_text(out / "timings.csv", timings.to_csv(index=False))

    figs: dict = {}
    if plots:
        from .plots import all_plots

        # curves of faithfulness metrics (deletion, insertion...) are plotted; other metrics may store
        # per-image rows in ctx.curves (e.g. PxAP histograms), kept in curves.parquet only
        fam = run.get("families", {})
        plotted = curves[curves["metric"].map(lambda m: fam.get(m, "faithfulness") == "faithfulness")]
        figs = all_plots(board, plotted, store.load_gallery(), out / "plots")
    if html:
        from .html import render

        degenerate = tables.degenerate_counts(scores)
        atomic_write_text(out / "report.html", render(run, board, sig, fails, timings, figs, degenerate))
    return Report(out, scores, board, sig, fails, timings, curves, figs, run)


#: The metrics papers report first; the summary shows those present, then one per remaining family.
HEADLINE = ("deletion_auc", "insertion_auc", "pointing_game", "max_sensitivity", "model_randomization")


def headline_metrics(run: dict, board: pd.DataFrame, k: int = 5) -> list[str]:
    """A few metrics for the terminal summary: the usual headline ones, then one per family."""
    fam = run.get("families", {})
    present = [m for m in board["metric"].unique() if m != tables.MEAN_RANK]
    order = ["faithfulness", "localization", "robustness", "sanity", "truth", "cost"]
    picked: list[str] = [m for m in HEADLINE if m in present]
    for f in order:
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


def summary_text(run: dict, board: pd.DataFrame, k: int = 5) -> Optional[str]:
    """The one-screen terminal summary: methods x headline metrics + mean rank, per (model, dataset)."""
    if board.empty:
        return None
    wide = tables.summary_table(board, headline_metrics(run, board, k), max_metrics=k)
    with pd.option_context("display.max_rows", 200, "display.width", 160, "display.float_format", "{:.3f}".format):
        return wide.to_string()
