"""The regression gate: compare a new leaderboard with a baseline leaderboard CSV.

A row (model, dataset, method, metric) regresses when the new mean is **worse** than the baseline's
(direction-aware: lower for higher-is-better metrics) **and** lies outside the baseline's 95 % CI **and**
differs by more than ``tolerance`` (absolute). Rows without a baseline CI (e.g. n = 1) use the
tolerance alone. ``mean_rank`` rows are shown for information but never gate (ranks move when other
methods improve), nor do cost metrics (latency, memory: they measure the machine as much as the method)
unless ``gate_cost=True``; a metric is a cost metric when a leaderboard's ``family`` column says so (the
family the run recorded in ``run.json``; a leaderboard written before the column existed takes the other
side's, or its run directory's ``run.json``). Rows present in the baseline but not in the new run are
reported as ``missing``, rows only in the new run as ``new``.

:func:`gate_failures` is the verdict: the regressions, plus (``require_baseline_rows=True``, the CI gate
of the quick suite) every missing baseline row. The gate thereby compares exactly the baseline's rows: a
method or metric added since only adds ``new`` rows and never fails it, while one that disappeared does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CambenchError
from .tables import KEYS, MEAN_RANK, cost_metrics

COMPARE_COLUMNS = KEYS + ["baseline", "new", "delta", "ci_low", "ci_high", "higher_is_better", "status"]


def read_leaderboard(path: str | Path) -> pd.DataFrame:
    """A leaderboard CSV, or the ``leaderboard.csv`` inside a results directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "leaderboard.csv"
    if not p.is_file():
        raise FileNotFoundError(
            f"No leaderboard at {p}. Run `run_bench.py run ... --out DIR` (or `run_bench.py report DIR`) first."
        )
    df = pd.read_csv(p)
    need = set(KEYS + ["mean", "higher_is_better"])
    if not need <= set(df.columns):
        raise CambenchError(f"{p} is not a cambench leaderboard: it lacks columns {sorted(need - set(df.columns))}.")
    run_json = p.parent / "run.json"
    if "family" not in df.columns and run_json.is_file():  # an older run: its families are in its record
        import json

        families = json.loads(run_json.read_text(encoding="utf-8")).get("families", {})
        df["family"] = df["metric"].map(lambda m: families.get(m, ""))
    return df


def leaderboard_families(*boards: pd.DataFrame) -> dict[str, str]:
    """metric -> family from the ``family`` columns of ``boards`` (the first board that names a metric's
    family wins; boards without the column, or blank cells, name none)."""
    out: dict[str, str] = {}
    for board in boards:
        if "family" not in board.columns:
            continue
        for metric, family in zip(board["metric"], board["family"], strict=True):
            if isinstance(family, str) and family and metric not in out:
                out[str(metric)] = family
    return out


def compare(
    new: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = 0.02, gate_cost: bool = False
) -> pd.DataFrame:
    """Row-by-row comparison with a ``status``: ok, improved, regression, missing, new, info.

    Cost metrics are those whose ``family`` (:func:`leaderboard_families` of ``new`` then ``baseline``) is
    the cost family; without ``gate_cost`` their rows are ``info``.
    """
    # leaderboard.csv's own ``baseline`` column (random/center/oracle flags) would collide with the name
    b = baseline.drop(columns=["baseline"], errors="ignore").rename(columns={"mean": "baseline"})
    for c in ("ci_low", "ci_high"):
        if c not in b.columns:
            b[c] = np.nan
    n = new.rename(columns={"mean": "new"})[KEYS + ["new", "higher_is_better"]].rename(
        columns={"higher_is_better": "hib_new"}
    )
    j = b[KEYS + ["baseline", "ci_low", "ci_high", "higher_is_better"]].merge(n, on=KEYS, how="outer", indicator=True)
    j["higher_is_better"] = j["higher_is_better"].where(j["higher_is_better"].notna(), j["hib_new"])
    hib = j["higher_is_better"].astype(str).str.lower().isin(["true", "1", "1.0"])
    sign = np.where(hib, 1.0, -1.0)
    j["delta"] = j["new"] - j["baseline"]
    better = j["delta"] * sign  # > 0 means improvement
    outside = np.where(
        hib,
        j["new"] < j["ci_low"].fillna(np.inf),
        j["new"] > j["ci_high"].fillna(-np.inf),
    )
    worse = (better < 0) & outside & (j["delta"].abs() > tolerance)
    status = np.where(better > tolerance, "improved", "ok")
    status = np.where(worse, "regression", status)
    status = np.where(j["metric"] == MEAN_RANK, "info", status)
    if not gate_cost:
        status = np.where(j["metric"].isin(cost_metrics(leaderboard_families(new, baseline))), "info", status)
    status = np.where(j["_merge"] == "left_only", "missing", status)
    status = np.where(j["_merge"] == "right_only", "new", status)
    j["status"] = status
    j["higher_is_better"] = hib
    order = {"regression": 0, "missing": 1, "improved": 2, "new": 3, "ok": 4, "info": 5}
    j = j.assign(_o=j["status"].map(order)).sort_values(["_o"] + KEYS, kind="mergesort")
    return j[COMPARE_COLUMNS].reset_index(drop=True)


def gate_failures(table: pd.DataFrame, require_baseline_rows: bool = False) -> pd.DataFrame:
    """The rows of a :func:`compare` table that fail the gate: every ``regression``, and with
    ``require_baseline_rows`` every ``missing`` row (a baseline row the new run no longer produces).
    ``new`` rows (a method or metric added since the baseline) never fail it."""
    failing = {"regression", "missing"} if require_baseline_rows else {"regression"}
    return table[table["status"].isin(failing)].reset_index(drop=True)


def format_comparison(table: pd.DataFrame, show_ok: bool = False, require_baseline_rows: bool = False) -> str:
    """A plain-text report: the non-ok rows (all rows with ``show_ok``) and a one-line verdict
    (``require_baseline_rows``: missing baseline rows fail too, see :func:`gate_failures`)."""
    shown = table if show_ok else table[~table["status"].isin(["ok", "info"])]
    counts = table["status"].value_counts().to_dict()
    verdict = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.float_format", "{:.4f}".format):
        body = shown.to_string(index=False) if len(shown) else "(no differences beyond tolerance)"
    n_reg = int(counts.get("regression", 0))
    n_missing = int(counts.get("missing", 0)) if require_baseline_rows else 0
    heads = [f"REGRESSION: {n_reg} row(s) got worse beyond tolerance"] if n_reg else []
    if n_missing:
        heads.append(
            f"MISSING: {n_missing} baseline row(s) not in the new run (run the baseline's methods and "
            "metrics, or compare without --require-baseline-rows)"
        )
    head = "; ".join(heads) if heads else "OK: no regression"
    return f"{body}\n\n{head} ({verdict})."
