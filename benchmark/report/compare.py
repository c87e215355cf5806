"""The regression gate: compare a new run with a baseline, row by row (model, dataset, method, metric).

Two rules, and every table says which one judged each row (``rule`` column; the verdict line names them):

- **paired** (the default whenever both sides have per-image scores: the new side is a results directory,
  the baseline a results directory or a per-image scores file, ``scores.parquet`` or a committed
  ``NAME-scores.parquet``): each row is tested on the images both runs scored, with the two-sided
  Wilcoxon signed-rank test of the per-image differences (exact where scipy's null is exact,
  :func:`benchmark.report.ranking.wilcoxon_pvalues`), Holm-corrected over the rows gated. A row
  **regresses** when its Holm-corrected p is below ``alpha`` (0.05) **and** its mean per-image difference
  is worse than ``tolerance`` (the minimum effect, absolute, direction-aware); **improved** symmetrically.
  An image the baseline scored (finite) that the new run leaves undefined or failed is a regression
  whatever the test says. Rows whose per-image differences are all exactly zero (an identical rerun) are
  ``ok`` and stay out of Holm's family: conditionally on the ``|d_i|`` their smallest attainable p is 1,
  so they can never be rejected, and leaving them out is Tarone's (1990, Biometrics 46) rule for discrete
  tests; the family is the rows that changed. The paired test sees what an unpaired CI cannot: a small
  shift of every image lies deep inside the spread *between* images. Dataset-level rows (one value per
  dataset, no per-image score) keep the CI rule.
- **ci** (a leaderboard CSV on either side): the new mean is worse than the baseline's (direction-aware)
  **and** lies outside the baseline's 95 % CI **and** differs by more than ``tolerance``. Rows without a
  baseline CI (e.g. n = 1) use the tolerance alone. This is an unpaired rule with no multiplicity control.

Both rules: ``mean_rank`` rows never gate (ranks move when other methods improve), nor do cost metrics
(latency, memory) unless ``gate_cost=True``; a metric is a cost metric when a leaderboard's ``family``
column (or the run's ``run.json``) says so. Rows present in the baseline but not in the new run are
``missing``, rows only in the new run ``new``. A NaN new mean where the baseline has a number is a
regression.

Inputs are checked before anything is compared (:class:`~benchmark.errors.CambenchError`, exit 2): an
empty or non-leaderboard CSV, a non-numeric or non-finite mean in the baseline, duplicated rows, a
non-finite or negative tolerance, and two results directories whose runs computed a shared metric with
different parameters (another suite's ``n_steps``...), which would compare different quantities.

:func:`gate_failures` is the verdict: the regressions, plus (``require_baseline_rows=True``, the CI gate
of the quick suite) every missing baseline row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CambenchError
from ..store import Store
from .ranking import holm, wilcoxon_pvalues
from .tables import KEYS, MEAN_RANK, cost_metrics

COMPARE_COLUMNS = KEYS + [
    "baseline",
    "new",
    "delta",
    "ci_low",
    "ci_high",
    "higher_is_better",
    "rule",
    "n_pairs",
    "p_holm",
    "status",
]
RULE_CI, RULE_PAIRED = "ci", "paired"
#: The paired rule's level (Holm-corrected over the rows gated).
ALPHA = 0.05


def _bad(path: Path, what: str) -> CambenchError:
    return CambenchError(f"{path} {what}")


def check_leaderboard(df: pd.DataFrame, where: str | Path = "leaderboard") -> pd.DataFrame:
    """``df`` with a numeric ``mean`` column, refused (:class:`CambenchError`) when it lacks the columns,
    holds a non-numeric mean or repeats a row (model, dataset, method, metric)."""
    need = set(KEYS + ["mean", "higher_is_better"])
    if not need <= set(df.columns):
        raise CambenchError(
            f"{where} is not a cambench leaderboard: it lacks columns {sorted(need - set(df.columns))}. "
            "Pass a leaderboard.csv written by `run_bench.py run` or `report`, or its results directory."
        )
    mean = pd.to_numeric(df["mean"], errors="coerce")
    text = mean.isna() & df["mean"].notna()
    if text.any():
        row = df.loc[text].iloc[0]
        raise CambenchError(
            f"{where}: the mean of {tuple(row[KEYS])} is {row['mean']!r}, not a number. Regenerate the "
            "leaderboard with `run_bench.py report DIR` instead of editing it."
        )
    dup = df.duplicated(KEYS, keep=False)
    if dup.any():
        first = tuple(df.loc[dup, KEYS].iloc[0])
        raise CambenchError(
            f"{where} repeats {int(dup.sum())} row(s) (model, dataset, method, metric), e.g. {first}: each row "
            "must appear once. Regenerate it with `run_bench.py report DIR`."
        )
    return df.assign(mean=mean.astype(np.float64))


def read_leaderboard(path: str | Path) -> pd.DataFrame:
    """A leaderboard CSV, or the ``leaderboard.csv`` inside a results directory (checked:
    :func:`check_leaderboard`)."""
    p = Path(path)
    if p.is_dir():
        p = p / "leaderboard.csv"
    if not p.is_file():
        raise FileNotFoundError(
            f"No leaderboard at {p}. Run `run_bench.py run ... --out DIR` (or `run_bench.py report DIR`) first."
        )
    try:
        df = pd.read_csv(p)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _bad(p, f"is not a readable leaderboard CSV ({exc}). Pass the leaderboard.csv of a run.") from None
    df = check_leaderboard(df, p)
    run_json = p.parent / "run.json"
    if "family" not in df.columns and run_json.is_file():  # an older run: its families are in its record
        families = _read_run(run_json).get("families", {})
        df["family"] = df["metric"].map(lambda m: families.get(m, ""))
    return df


def _read_run(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _bad(path, f"is not a readable run record ({exc}).") from None
    if not isinstance(out, dict):
        raise _bad(path, "is not a cambench run record (a JSON object).")
    return out


@dataclass
class Side:
    """One side of a comparison: its leaderboard (may be empty), per-image scores and run record (or None)."""

    board: pd.DataFrame
    scores: pd.DataFrame | None
    run: dict | None
    path: Path


SCORE_KEYS = KEYS + ["image_id", "value", "status"]


def _read_scores(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a foreign or truncated file
        raise _bad(path, f"is not a readable per-image scores file ({type(exc).__name__}: {exc}).") from None
    if not set(SCORE_KEYS) <= set(df.columns):
        raise _bad(
            path, f"is not a cambench scores file: it lacks columns {sorted(set(SCORE_KEYS) - set(df.columns))}."
        )
    dup = df.duplicated(KEYS + ["image_id"], keep=False)
    if dup.any():
        raise _bad(path, f"repeats {int(dup.sum())} per-image row(s); regenerate it with `run_bench.py report DIR`.")
    return df


def load_side(path: str | Path) -> Side:
    """A results directory (``leaderboard.csv``, plus ``scores.parquet`` and ``run.json`` when there), a
    per-image scores file (``scores.parquet`` / ``NAME-scores.parquet``, with the ``leaderboard.csv`` /
    ``NAME-leaderboard.csv`` and ``run.json`` beside it when there) or a leaderboard CSV."""
    p = Path(path)
    if p.is_dir():
        scores = p / "scores.parquet"
        run = p / "run.json"
        record = _read_run(run) if run.is_file() else None
        if record is not None:
            check_run_complete(p, record)
        return Side(read_leaderboard(p), _read_scores(scores) if scores.is_file() else None, record, p)
    if p.suffix == ".parquet":
        if not p.is_file():
            raise FileNotFoundError(f"No per-image scores file at {p}.")
        stem = p.name[: -len("scores.parquet")] if p.name.endswith("scores.parquet") else None
        board_path = p.parent / f"{stem}leaderboard.csv" if stem is not None else None
        board = (
            read_leaderboard(board_path)
            if board_path is not None and board_path.is_file()
            else pd.DataFrame(columns=KEYS + ["mean", "higher_is_better"])
        )
        run = p.parent / "run.json"
        return Side(board, _read_scores(p), _read_run(run) if run.is_file() else None, p)
    return Side(read_leaderboard(p), None, None, p)


def check_run_complete(path: Path, run: dict) -> None:
    """Refuse a results directory whose run (``run.json``) lacks verified parts for some of its units: its
    ``leaderboard.csv`` is then another run's (a suite interrupted in an older run's folder, a ``run.json``
    whose hash matches no part) or a partial one, and must not pass a gate. A folder without ``parts/`` (the
    tables alone, copied) is taken as it is."""
    if not (path / "parts").is_dir() or "suite_hash" not in run:
        return
    units = [str(u) for u in run.get("units", [])]
    missing = Store(path, str(run["suite_hash"]), units=units).missing()
    if missing:
        raise _bad(
            path,
            f"holds {len(units) - len(missing)} of the {len(units)} units of its run (suite "
            f"{run.get('suite', '?')!r}): its leaderboard.csv is incomplete or another run's. Finish the run "
            "(rerun the same `run` command) and compare again.",
        )


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


def check_same_settings(new_run: dict | None, base_run: dict | None) -> None:
    """Refuse two runs that computed a metric of a shared experiment with different parameters (the resolved
    ``metric_params`` each ``run.json`` records): their rows measure different quantities."""
    if not new_run or not base_run:
        return

    def params(run: dict) -> dict:
        return {(e.get("label"), e.get("dataset")): e.get("metric_params", {}) for e in run.get("experiments", [])}

    a, b = params(new_run), params(base_run)
    for exp in sorted(set(a) & set(b), key=str):
        for metric in sorted(set(a[exp]) & set(b[exp])):
            if a[exp][metric] != b[exp][metric]:
                raise CambenchError(
                    f"the two runs computed {metric} on {exp[0]}/{exp[1]} with different parameters "
                    f"(new {a[exp][metric]}, baseline {b[exp][metric]}): their rows are not comparable. Compare "
                    "runs of the same suite, or rerun the baseline with the new suite."
                )


def _check_inputs(new: pd.DataFrame, baseline: pd.DataFrame, tolerance: float) -> None:
    if not np.isfinite(tolerance) or tolerance < 0:
        raise CambenchError(f"--tolerance must be a finite number >= 0, got {tolerance!r}.")
    check_leaderboard(new, "the new leaderboard")
    check_leaderboard(baseline, "the baseline leaderboard")
    if len(baseline) and not np.isfinite(baseline["mean"].astype(np.float64)).any():
        raise CambenchError("the baseline leaderboard has no finite mean: it cannot judge anything; regenerate it.")
    bad = baseline[~np.isfinite(baseline["mean"].astype(np.float64)) & (baseline["metric"] != MEAN_RANK)]
    if len(bad):
        raise CambenchError(
            f"the baseline leaderboard has {len(bad)} non-finite mean(s), e.g. {tuple(bad[KEYS].iloc[0])}: a "
            "baseline row must be a number. Regenerate the baseline with `run_bench.py report DIR`."
        )


def _as_bool(s: pd.Series) -> pd.Series:
    return s.astype(str).str.lower().isin(["true", "1", "1.0"])


def compare(
    new: pd.DataFrame,
    baseline: pd.DataFrame,
    tolerance: float = 0.02,
    gate_cost: bool = False,
    *,
    new_scores: pd.DataFrame | None = None,
    baseline_scores: pd.DataFrame | None = None,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Row-by-row comparison with a ``status``: ok, improved, regression, missing, new, info.

    With ``new_scores`` and ``baseline_scores`` (per-image score rows) the rows that have per-image scores
    on both sides are judged by the paired rule, the others by the CI rule (module docstring); ``rule``
    says which. Cost metrics are those whose ``family`` (:func:`leaderboard_families` of ``new`` then
    ``baseline``) is the cost family; without ``gate_cost`` their rows are ``info``.
    """
    _check_inputs(new, baseline, tolerance)
    # leaderboard.csv's own ``baseline`` column (random/center/oracle flags) would collide with the name
    b = baseline.drop(columns=["baseline"], errors="ignore").rename(columns={"mean": "baseline"})
    for c in ("ci_low", "ci_high"):
        if c not in b.columns:
            b[c] = np.nan
    n = new.rename(columns={"mean": "new"})[KEYS + ["new", "higher_is_better"]].rename(
        columns={"higher_is_better": "hib_new"}
    )
    j = b[KEYS + ["baseline", "ci_low", "ci_high", "higher_is_better"]].merge(n, on=KEYS, how="outer", indicator=True)
    j["_merge"] = j["_merge"].astype(str)
    j["higher_is_better"] = j["higher_is_better"].where(j["higher_is_better"].notna(), j["hib_new"])
    hib = _as_bool(j["higher_is_better"])
    j["higher_is_better"] = hib
    j["rule"] = RULE_CI
    j["n_pairs"] = np.nan
    j["p_holm"] = np.nan
    paired = None
    if new_scores is not None and baseline_scores is not None:
        directions = dict(zip(j["metric"], hib, strict=True))
        paired = _paired_rows(new_scores, baseline_scores, directions)
        j = _with_paired_rows(j, paired)
        hib = _as_bool(j["higher_is_better"])
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
    status = np.where(j["new"].isna() & j["baseline"].notna(), "regression", status)  # NaN is never ok
    costs = set(cost_metrics(leaderboard_families(new, baseline)))
    info = (j["metric"] == MEAN_RANK).to_numpy().copy()
    if not gate_cost:
        info |= j["metric"].isin(costs).to_numpy()
    if paired is not None:
        status = _paired_status(j, status, info, tolerance, alpha)
    status = np.where(info, "info", status)
    status = np.where(j["_merge"] == "left_only", "missing", status)
    status = np.where(j["_merge"] == "right_only", "new", status)
    j["status"] = status
    order = {"regression": 0, "missing": 1, "improved": 2, "new": 3, "ok": 4, "info": 5}
    j = j.assign(_o=j["status"].map(order)).sort_values(["_o"] + KEYS, kind="mergesort")
    return j[COMPARE_COLUMNS].reset_index(drop=True)


def _valid(scores: pd.DataFrame) -> pd.DataFrame:
    v = pd.to_numeric(scores["value"], errors="coerce").astype(np.float64)
    return scores.assign(value=v.where((scores["status"] == "ok") & np.isfinite(v)))


def _paired_rows(new_scores: pd.DataFrame, base_scores: pd.DataFrame, directions: dict) -> pd.DataFrame:
    """Per row with per-image scores on both sides: the images shared, the oriented mean difference over
    those both scored, the images the new run lost, the raw Wilcoxon p (1 when nothing changed)."""
    a = _valid(base_scores)[KEYS + ["image_id", "value"]].rename(columns={"value": "b"})
    c = _valid(new_scores)[KEYS + ["image_id", "value"]].rename(columns={"value": "n"})
    j = a.merge(c, on=KEYS + ["image_id"], how="inner")
    rows = []
    for key, g in j.groupby(KEYS, sort=True):
        bv, nv = g["b"].to_numpy(), g["n"].to_numpy()
        lost = int((np.isfinite(bv) & ~np.isfinite(nv)).sum())
        both = np.isfinite(bv) & np.isfinite(nv)
        if not np.isfinite(bv).any():
            continue  # undefined in the baseline: nothing to hold the new run to
        sign = 1.0 if bool(directions.get(key[3], True)) else -1.0
        d = sign * (nv[both] - bv[both])
        changed = bool(np.any(d != 0))
        p = float(wilcoxon_pvalues(d[None])[0]) if changed else 1.0
        rows.append(
            (
                *key,
                int(both.sum()),
                float(bv[both].mean()) if both.any() else np.nan,
                float(nv[both].mean()) if both.any() else np.nan,
                float(d.mean()) if d.size else np.nan,
                lost,
                changed,
                p,
            )
        )
    return pd.DataFrame(rows, columns=KEYS + ["n_pairs", "b_mean", "n_mean", "oriented", "lost", "changed", "p"])


def _with_paired_rows(j: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    j = j.merge(paired, on=KEYS, how="left")
    has = j["n_pairs"].notna() if "n_pairs_y" not in j.columns else j["n_pairs_y"].notna()
    if "n_pairs_y" in j.columns:
        j = j.drop(columns=["n_pairs_x"]).rename(columns={"n_pairs_y": "n_pairs"})
    j.loc[has, "rule"] = RULE_PAIRED
    # the paired rule compares the images both runs scored: the means over those (equal to the
    # leaderboard's when the image sets agree)
    j.loc[has, "baseline"] = j.loc[has, "b_mean"]
    j.loc[has, "new"] = j.loc[has, "n_mean"]
    j.loc[has & (j["_merge"] == "left_only"), "_merge"] = "both"  # per-image rows exist on both sides
    j.loc[has & (j["_merge"] == "right_only"), "_merge"] = "both"
    return j


def paired_verdicts(
    p: np.ndarray,
    oriented: np.ndarray,
    changed: np.ndarray,
    lost: np.ndarray,
    gated: np.ndarray,
    tolerance: float,
    alpha: float = ALPHA,
) -> tuple[np.ndarray, np.ndarray]:
    """The paired rule on arrays of rows (module docstring): ``(status, p_holm)``.

    ``p``: raw two-sided p of each row; ``oriented``: mean per-image difference, > 0 better; ``changed``:
    some difference is non-zero; ``lost``: images the new run left undefined; ``gated``: rows that may fail
    (not info). Holm runs over the gated rows that changed; the others get ``p_holm`` 1 (NaN if not gated).
    """
    family = gated & changed
    p_holm = holm(np.where(family, p, np.nan))
    sig = np.nan_to_num(p_holm, nan=1.0) < alpha
    status = np.full(len(p), "ok", dtype=object)
    status[family & sig & (oriented > tolerance)] = "improved"
    status[family & sig & (oriented < -tolerance)] = "regression"
    status[lost > 0] = "regression"
    return status, np.where(family, p_holm, np.where(gated, 1.0, np.nan))


def _paired_status(j: pd.DataFrame, status: np.ndarray, info: np.ndarray, tolerance: float, alpha: float) -> np.ndarray:
    """The statuses of ``j``'s paired rows by :func:`paired_verdicts` (the CI rule's elsewhere)."""
    paired = (j["rule"] == RULE_PAIRED).to_numpy()
    st, ph = paired_verdicts(
        j["p"].to_numpy(dtype=np.float64),
        j["oriented"].to_numpy(dtype=np.float64),
        j["changed"].fillna(False).astype(bool).to_numpy(),
        j["lost"].fillna(0).to_numpy(dtype=np.float64),
        paired & ~info,
        tolerance,
        alpha,
    )
    j["p_holm"] = np.where(paired, ph, j["p_holm"])
    return np.where(paired, st, status)


def compare_paths(
    new: str | Path, baseline: str | Path, tolerance: float = 0.02, gate_cost: bool = False
) -> pd.DataFrame:
    """:func:`compare` of two paths (:func:`load_side`): the paired rule where both have per-image scores."""
    a, b = load_side(new), load_side(baseline)
    check_same_settings(a.run, b.run)
    if a.scores is not None and b.scores is not None:
        board_b = b.board
        if board_b.empty:  # a bare per-image reference: the new run's rows give directions and families
            board_b = _board_from_scores(b.scores, a.board)
        return compare(a.board, board_b, tolerance, gate_cost, new_scores=a.scores, baseline_scores=b.scores)
    return compare(a.board, b.board, tolerance, gate_cost)


def _board_from_scores(scores: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """Leaderboard-shaped rows (mean over images) of a per-image scores file, directions and families taken
    from ``like`` (the other side's leaderboard)."""
    v = _valid(scores).dropna(subset=["value"])
    board = v.groupby(KEYS, as_index=False)["value"].mean().rename(columns={"value": "mean"})
    meta = like.drop_duplicates("metric").set_index("metric")
    board["higher_is_better"] = board["metric"].map(meta["higher_is_better"]) if len(meta) else np.nan
    if "family" in like.columns:
        board["family"] = board["metric"].map(meta["family"])
    return board[board["higher_is_better"].notna()].reset_index(drop=True)


def gate_failures(table: pd.DataFrame, require_baseline_rows: bool = False) -> pd.DataFrame:
    """The rows of a :func:`compare` table that fail the gate: every ``regression``, and with
    ``require_baseline_rows`` every ``missing`` row (a baseline row the new run no longer produces).
    ``new`` rows (a method or metric added since the baseline) never fail it."""
    failing = {"regression", "missing"} if require_baseline_rows else {"regression"}
    return table[table["status"].isin(failing)].reset_index(drop=True)


def format_comparison(table: pd.DataFrame, show_ok: bool = False, require_baseline_rows: bool = False) -> str:
    """A plain-text report: the non-ok rows (all rows with ``show_ok``), the rules used and a one-line
    verdict (``require_baseline_rows``: missing baseline rows fail too, see :func:`gate_failures`)."""
    shown = table if show_ok else table[~table["status"].isin(["ok", "info"])]
    counts = table["status"].value_counts().to_dict()
    verdict = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    with pd.option_context("display.max_rows", 500, "display.width", 220, "display.float_format", "{:.4f}".format):
        body = shown.to_string(index=False) if len(shown) else "(no differences beyond tolerance)"
    rules = table.loc[~table["status"].isin(["missing", "new", "info"]), "rule"].value_counts().to_dict()
    names = {
        RULE_PAIRED: "paired (Wilcoxon signed-rank on shared images, Holm over the rows that changed)",
        RULE_CI: "ci (new mean outside the baseline's 95 % CI, unpaired)",
    }
    used = "; ".join(f"{names[r]}: {c} row(s)" for r, c in sorted(rules.items()))
    n_reg = int(counts.get("regression", 0))
    n_missing = int(counts.get("missing", 0)) if require_baseline_rows else 0
    heads = [f"REGRESSION: {n_reg} row(s) got worse beyond tolerance"] if n_reg else []
    if n_missing:
        heads.append(
            f"MISSING: {n_missing} baseline row(s) not in the new run (run the baseline's methods and "
            "metrics, or compare without --require-baseline-rows)"
        )
    head = "; ".join(heads) if heads else "OK: no regression"
    return f"{body}\n\nrule: {used or 'none'}\n{head} ({verdict})."
