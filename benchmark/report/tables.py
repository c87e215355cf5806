"""Aggregate score rows into the leaderboard (bootstrap CIs, direction-aware ranks) and significance tests.

- ``leaderboard``: one row per (model, dataset, method, metric) with the mean over images, a seeded
  percentile-bootstrap 95 % CI (Efron & Tibshirani 1993, ch. 13), ``n``, the rank among methods
  (1 = best for the metric's direction, ties averaged) and ``higher_is_better``; plus one
  ``metric = "mean_rank"`` row per (model, dataset, method): the method's rank averaged over the quality
  metrics (cost metrics -- latency, memory -- keep their own ranked rows but stay out of the mean: they
  measure the machine, and their timing noise would reorder the quality ranking from run to run).
- ``significance``: per (model, dataset, metric), the paired Wilcoxon signed-rank test (Wilcoxon 1945)
  of every method against the best one on their common images, with Holm's (1979) step-down correction
  over the methods compared.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd
from scipy import stats

KEYS = ["model", "dataset", "method", "metric"]
LEADERBOARD_COLUMNS = KEYS + ["mean", "ci_low", "ci_high", "n", "rank", "higher_is_better"]
SIGNIFICANCE_COLUMNS = [
    "model", "dataset", "metric", "method", "best", "n_pairs", "mean_diff", "statistic", "p_value",
    "p_holm", "significant",
]
MEAN_RANK = "mean_rank"


def _seed_for(seed: int, key: tuple) -> int:
    """A per-group seed: adding or removing groups never changes another group's resamples."""
    h = hashlib.sha256(repr((seed,) + tuple(map(str, key))).encode()).hexdigest()
    return int(h[:8], 16)


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaNs dropped), vectorised over resamples.

    One ``[n_boot, n]`` index draw from ``numpy.random.default_rng(seed)``; ``n = 1`` gives a zero-width
    interval, ``n = 0`` gives NaNs.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def valid_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``status == "ok"`` and a finite value."""
    ok = (scores["status"] == "ok") & np.isfinite(scores["value"].astype(float))
    return scores.loc[ok]


def direction_ranks(means: pd.Series, higher_is_better: bool) -> pd.Series:
    """Ranks of ``means`` with 1 = best for the direction; ties get the average rank."""
    return means.rank(ascending=not higher_is_better, method="average")


def leaderboard(
    scores: pd.DataFrame,
    directions: Mapping[str, bool],
    seed: int = 0,
    n_boot: int = 1000,
    exclude_from_mean_rank: Iterable[str] = (),
) -> pd.DataFrame:
    """The leaderboard table (see module docstring) from long score rows; ``exclude_from_mean_rank``
    names the metrics (the cost family) ranked on their own rows but left out of ``mean_rank``."""
    ok = valid_scores(scores)
    missing = sorted(set(ok["metric"]) - set(directions))
    if missing:
        raise KeyError(
            f"No direction (higher_is_better) known for metric(s) {missing}; pass them in `directions`."
        )
    rows = []
    for key, g in ok.groupby(KEYS, sort=True):
        v = g["value"].to_numpy(dtype=np.float64)
        lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=_seed_for(seed, key))
        rows.append((*key, float(v.mean()), lo, hi, int(v.size)))
    lb = pd.DataFrame(rows, columns=KEYS + ["mean", "ci_low", "ci_high", "n"])
    if lb.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    lb["higher_is_better"] = lb["metric"].map(lambda m: bool(directions[m]))
    lb["rank"] = np.nan
    for (_, _, metric), idx in lb.groupby(["model", "dataset", "metric"]).groups.items():
        lb.loc[idx, "rank"] = direction_ranks(lb.loc[idx, "mean"], bool(directions[metric]))
    quality = lb[~lb["metric"].isin(set(exclude_from_mean_rank))]
    mr = quality.groupby(["model", "dataset", "method"], as_index=False).agg(mean=("rank", "mean"), n=("rank", "size"))
    mr["metric"] = MEAN_RANK
    mr["ci_low"] = np.nan
    mr["ci_high"] = np.nan
    mr["higher_is_better"] = False
    mr["rank"] = mr.groupby(["model", "dataset"])["mean"].rank(ascending=True, method="average")
    out = pd.concat([lb, mr[lb.columns]], ignore_index=True)
    out = out.sort_values(["model", "dataset", "metric", "rank", "method"], kind="mergesort")
    return out[LEADERBOARD_COLUMNS].reset_index(drop=True)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaNs stay NaN and do not count in the family size."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    fin = np.flatnonzero(np.isfinite(p))
    m = fin.size
    if m == 0:
        return out
    order = fin[np.argsort(p[fin], kind="mergesort")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def paired_wilcoxon(a: pd.Series, b: pd.Series) -> tuple[int, float, float, float]:
    """Wilcoxon signed-rank test of two per-image series indexed by ``image_id`` (paired on the index).

    Returns ``(n_pairs, mean(a - b), statistic, p)``; all-zero differences give ``p = 1``, fewer than
    one pair gives NaNs.
    """
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    n = len(joined)
    if n == 0:
        return 0, float("nan"), float("nan"), float("nan")
    d = (joined["a"] - joined["b"]).to_numpy(dtype=np.float64)
    if np.all(d == 0):
        return n, 0.0, float("nan"), 1.0
    res = stats.wilcoxon(joined["a"].to_numpy(), joined["b"].to_numpy(), zero_method="wilcox", alternative="two-sided")
    return n, float(d.mean()), float(res.statistic), float(res.pvalue)


def significance(scores: pd.DataFrame, board: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Each method against the best (rank 1; first by name on ties) per (model, dataset, metric)."""
    ok = valid_scores(scores)
    rows = []
    lb = board[board["metric"] != MEAN_RANK]
    for (model, dataset, metric), g in lb.groupby(["model", "dataset", "metric"], sort=True):
        best = g.sort_values(["rank", "method"], kind="mergesort")["method"].iloc[0]
        sub = ok[(ok["model"] == model) & (ok["dataset"] == dataset) & (ok["metric"] == metric)]
        per = {m: s.groupby("image_id")["value"].mean() for m, s in sub.groupby("method")}
        fam = []
        for method in sorted(per):
            if method == best:
                continue
            n, diff, stat, p = paired_wilcoxon(per[method], per[best])
            fam.append([model, dataset, metric, method, best, n, diff, stat, p])
        if fam:
            adj = holm(np.array([r[-1] for r in fam]))
            for r, ph in zip(fam, adj, strict=True):
                rows.append(r + [ph, bool(np.isfinite(ph) and ph < alpha)])
    return pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)


def failures(scores: pd.DataFrame) -> pd.DataFrame:
    """Counts of non-ok rows by (model, dataset, method, metric, status) with one example message."""
    bad = scores[scores["status"] != "ok"]
    cols = ["model", "dataset", "method", "metric", "status", "count", "message"]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    out = bad.groupby(["model", "dataset", "method", "metric", "status"], as_index=False).agg(
        count=("image_id", "size"), message=("message", "first")
    )
    return out[cols]


def degenerate_counts(scores: pd.DataFrame) -> pd.DataFrame:
    """Images whose map was degenerate (constant raw map, set to zeros), per (model, dataset, method)."""
    cols = ["model", "dataset", "method", "degenerate_images", "images"]
    if scores.empty or "degenerate" not in scores:
        return pd.DataFrame(columns=cols)
    per = scores.drop_duplicates(["model", "dataset", "method", "image_id"])
    out = per.groupby(["model", "dataset", "method"], as_index=False).agg(
        degenerate_images=("degenerate", "sum"), images=("image_id", "size")
    )
    out = out[out["degenerate_images"] > 0]
    return out[cols].reset_index(drop=True)


def summary_table(board: pd.DataFrame, headline: Optional[list[str]] = None, max_metrics: int = 5) -> pd.DataFrame:
    """Methods x (a few headline metrics + mean rank), one block per (model, dataset), for the terminal."""
    if board.empty:
        return pd.DataFrame()
    metrics = [m for m in board["metric"].unique() if m != MEAN_RANK]
    if headline:
        metrics = [m for m in headline if m in metrics] or metrics
    metrics = sorted(metrics)[:max_metrics] if not headline else metrics[:max_metrics]
    sub = board[board["metric"].isin(metrics + [MEAN_RANK])]
    wide = sub.pivot_table(index=["model", "dataset", "method"], columns="metric", values="mean")
    cols = [m for m in metrics if m in wide.columns] + ([MEAN_RANK] if MEAN_RANK in wide.columns else [])
    wide = wide[cols]
    if MEAN_RANK in wide.columns:
        wide = wide.sort_values(["model", "dataset", MEAN_RANK])
    return wide
