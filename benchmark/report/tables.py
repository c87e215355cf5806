"""Aggregate score rows into the leaderboard (bootstrap CIs, direction-aware ranks) and significance tests.

- ``leaderboard``: one row per (model, dataset, method, metric) with the mean over images, a seeded
  percentile-bootstrap 95 % CI (Efron & Tibshirani 1993, ch. 13), ``n``, the rank among methods
  (1 = best for the metric's direction, ties averaged) and ``higher_is_better``. The resamples are common
  random numbers: one seed per experiment (model, dataset) and rows in image order, so all methods and
  metrics of an experiment resample the same images (identical scores give identical CIs); plus one
  ``metric = "mean_rank"`` row per (model, dataset, method): the method's rank averaged over the quality
  metrics (cost metrics -- latency, memory -- keep their own ranked rows but stay out of the mean: they
  measure the machine, and their timing noise would reorder the quality ranking from run to run).
  Multi-label runs (``target = "labels"``, row ids ``image#class``): the mean is over the (image, class)
  rows, the CI a cluster bootstrap over images (an image's classes are resampled together), ``n`` the
  number of images. Dataset-level metrics (``register_metric(level="dataset")``) get ``mean`` = the metric's ``compute``
  over the per-image statistics of all images and a bootstrap CI over images. Baselines (``baseline``
  column: random, center, oracle) are shown beside every metric as references: no rank, no group, not in
  ``mean_rank``. ``group``, ``avg_rank`` and ``cd``: the rank statistics of
  :mod:`benchmark.report.ranking` (Friedman, Wilcoxon-Holm / paired bootstrap, Demsar's CD). ``family``:
  the metric's family as the run recorded it (``run.json``'s ``families``; empty for ``mean_rank``), so
  that the CSV alone says which rows are cost metrics (:func:`cost_metrics`).
- ``significance``: per (model, dataset, metric), the paired Wilcoxon signed-rank test (Wilcoxon 1945)
  of every method against the best one on their common images, with Holm's (1979) step-down correction
  over the methods compared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..data.transforms import image_key
from . import ranking as R
from .ranking import resample_values

KEYS = ["model", "dataset", "method", "metric"]
LEADERBOARD_COLUMNS = KEYS + [
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "rank",
    "higher_is_better",
    "group",
    "avg_rank",
    "cd",
    "baseline",
    "family",
]
SIGNIFICANCE_COLUMNS = [
    "model",
    "dataset",
    "metric",
    "method",
    "best",
    "n_pairs",
    "mean_diff",
    "statistic",
    "p_value",
    "p_holm",
    "significant",
]
MEAN_RANK = "mean_rank"
#: The metric family whose rows measure the machine (latency, memory): out of ``mean_rank``, and out of the
#: regression gate unless asked (:mod:`benchmark.report.compare`).
COST_FAMILY = "cost"


def cost_metrics(families: Mapping[str, Any]) -> list[str]:
    """The metrics of the cost family in ``families`` (metric -> family: ``run.json``'s ``families``, or a
    leaderboard's ``family`` column), sorted. The one place the report and the gate decide what is a cost."""
    return sorted(str(m) for m, f in families.items() if f == COST_FAMILY)


def _seed_for(seed: int, key: tuple) -> int:
    """A per-group seed: adding or removing groups never changes another group's resamples."""
    h = hashlib.sha256(repr((seed,) + tuple(map(str, key))).encode()).hexdigest()
    return int(h[:8], 16)


def bootstrap_ci(
    values: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[str] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaNs dropped), vectorised over resamples.

    One ``[n_boot, n]`` index draw from ``numpy.random.default_rng(seed)``; ``n = 1`` gives a zero-width
    interval, ``n = 0`` gives NaNs. ``clusters`` (one label per value, e.g. the image of a multi-label
    ``(image, class)`` row): the cluster bootstrap (Field & Welsh 2007), which resamples whole clusters
    with replacement and takes the mean of all their rows, so rows of one image are never treated as
    independent; ``n`` is then the number of clusters.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    v = v[finite]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    a = (1.0 - level) / 2.0
    if clusters is not None:
        codes, uniq = pd.factorize(np.asarray(list(clusters), dtype=object)[finite])
        if len(uniq) == 1:
            return float(v.mean()), float(v.mean())
        sums = np.bincount(codes, weights=v, minlength=len(uniq))
        counts = np.bincount(codes, minlength=len(uniq)).astype(np.float64)
        draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
        lo, hi = np.quantile(sums[draws].sum(axis=1) / counts[draws].sum(axis=1), [a, 1.0 - a])
        return float(lo), float(hi)
    if v.size == 1:
        return float(v[0]), float(v[0])
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def valid_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``status == "ok"`` and a finite value."""
    ok = (scores["status"] == "ok") & np.isfinite(scores["value"].astype(float))
    return scores.loc[ok]


def direction_ranks(means: pd.Series, higher_is_better: bool) -> pd.Series:
    """Ranks of ``means`` with 1 = best for the direction; ties get the average rank."""
    return means.rank(ascending=not higher_is_better, method="average")


def bootstrap_stat(
    fn: Callable[[np.ndarray, list], float],
    stats_rows: np.ndarray,
    ids: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of a dataset-level value ``fn(stats, ids)``: resample the images (rows)
    with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``) and recompute. One row gives a
    zero-width interval at the value; no row gives NaNs."""
    arr = np.asarray(stats_rows, dtype=np.float64)
    ids = list(ids)
    if arr.shape[0] == 0:
        return float("nan"), float("nan")
    if arr.shape[0] == 1:
        v = float(fn(arr, ids))
        return v, v
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, arr.shape[0], size=(n_boot, arr.shape[0]))
    vals = resample_values(fn, arr, ids, draws)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [a, 1.0 - a])
    return float(lo), float(hi)


def _dataset_compute(metric: str, params: Mapping[str, Any]) -> Callable[[np.ndarray, list], float]:
    from ..metrics.base import METRICS, metric_params

    entry = METRICS.entry(metric)
    fn = entry.meta.get("compute")
    if fn is None:
        raise KeyError(
            f"Metric {metric!r} has stored statistics but no `compute`: register it with level='dataset' and "
            "compute=fn, or load the plugin that does (--plugin)."
        )
    p = metric_params(metric, {k: v for k, v in (params or {}).items() if k in entry.meta.get("defaults", {})})

    def value(arr: np.ndarray, ids: list) -> float:
        return float(fn(arr, ids, **p))

    many = entry.meta.get("compute_weighted")
    if many is not None:
        value.weighted = lambda arr, w: many(arr, w, **p)  # type: ignore[attr-defined]
    return value


def _stats_groups(stats_rows: pd.DataFrame | None) -> dict[tuple, tuple[np.ndarray, list[str]]]:
    """``{(model, dataset, method, metric): (finite stats [N, S], ids)}`` from a stats table."""
    out: dict[tuple, tuple[np.ndarray, list[str]]] = {}
    if stats_rows is None or len(stats_rows) == 0:
        return out
    for key, g in stats_rows.groupby(KEYS, sort=True):
        g = g.sort_values("image_id", kind="mergesort")  # image order: common resamples (leaderboard)
        arr = np.stack([np.asarray(v, dtype=np.float64) for v in g["stats"]])
        keep = np.asarray(np.isfinite(arr).all(axis=1), dtype=bool)
        out[key] = (arr[keep], [i for i, k in zip(g["image_id"], keep.tolist(), strict=True) if k])
    return out


@dataclass
class Ranked:
    """A leaderboard with its rank statistics (see :mod:`benchmark.report.ranking`)."""

    board: pd.DataFrame
    tests: pd.DataFrame  # RANK_TEST_COLUMNS, one row per (model, dataset, metric) incl. mean_rank
    pairwise: pd.DataFrame  # PAIRWISE_COLUMNS


def leaderboard(
    scores: pd.DataFrame,
    directions: Mapping[str, bool],
    seed: int = 0,
    n_boot: int = 1000,
    exclude_from_mean_rank: Iterable[str] = (),
    **kwargs: Any,
) -> pd.DataFrame:
    """The leaderboard table (see module docstring) from long score rows; ``exclude_from_mean_rank``
    names the metrics (the cost family) ranked on their own rows but left out of ``mean_rank``. Other
    keyword arguments: :func:`ranked_leaderboard`."""
    return ranked_leaderboard(scores, directions, seed, n_boot, exclude_from_mean_rank, **kwargs).board


def ranked_leaderboard(
    scores: pd.DataFrame,
    directions: Mapping[str, bool],
    seed: int = 0,
    n_boot: int = 1000,
    exclude_from_mean_rank: Iterable[str] = (),
    stats: pd.DataFrame | None = None,
    metric_params: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]] | None = None,
    baselines: Iterable[str] = (),
    alpha: float = 0.05,
    families: Mapping[str, str] | None = None,
) -> Ranked:
    """The leaderboard and its rank statistics.

    ``stats``: the per-image statistics of dataset-level metrics (``Store.load_stats``); their row's mean
    is the metric's ``compute`` over all images, with a bootstrap CI over images, ``n`` = images.
    ``metric_params[(model, dataset)][metric]``: the parameters ``compute`` gets. ``baselines``: methods
    shown as references (``baseline = True``): no rank, no group, out of ``mean_rank`` and of the tests.
    ``families``: metric -> family (``run.json``), written into the ``family`` column ("" where unknown).
    """
    ok = valid_scores(scores)
    sgroups = _stats_groups(stats)
    missing = sorted((set(ok["metric"]) | {k[3] for k in sgroups}) - set(directions))
    if missing:
        raise KeyError(f"No direction (higher_is_better) known for metric(s) {missing}; pass them in `directions`.")
    baselines = set(baselines)
    cost = {m for m, f in (families or {}).items() if f == COST_FAMILY}
    rows = []
    dl = {k[3] for k in sgroups}
    # common random numbers: one seed per experiment (model, dataset), rows in image order, so every method
    # and metric of an experiment draws the same resampled images (identical scores, identical CIs)
    for key, g in ok[~ok["metric"].isin(dl)].groupby(KEYS, sort=True):
        g = g.sort_values("image_id", kind="mergesort")
        v = g["value"].to_numpy(dtype=np.float64)
        images = [image_key(i) for i in g["image_id"]]
        if key[3] in cost:  # one timing per batch copied to its images: summarise the timings, n = timings
            t = np.unique(v[np.isfinite(v)])
            lo, hi = bootstrap_ci(t, n_boot=n_boot, seed=_seed_for(seed, key[:2]))
            rows.append((*key, float(t.mean()) if t.size else float("nan"), lo, hi, int(t.size)))
        elif len(set(images)) < len(images):  # multi-label rows (image#class): resample images, n = images
            lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=_seed_for(seed, key[:2]), clusters=images)
            rows.append((*key, float(v.mean()), lo, hi, len(set(images))))
        else:
            lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=_seed_for(seed, key[:2]))
            rows.append((*key, float(v.mean()), lo, hi, int(v.size)))
    computes: dict[tuple, Callable] = {}
    for key, (arr, ids) in sgroups.items():
        model, dataset, _, metric = key
        fn = computes.setdefault(
            (model, dataset, metric),
            _dataset_compute(metric, ((metric_params or {}).get((model, dataset)) or {}).get(metric, {})),
        )
        value = fn(arr, ids) if len(ids) else float("nan")
        lo, hi = bootstrap_stat(fn, arr, ids, n_boot=n_boot, seed=_seed_for(seed, key[:2]))
        rows.append((*key, value, lo, hi, len({image_key(i) for i in ids})))  # n = images (multi-label too)
    lb = pd.DataFrame(rows, columns=KEYS + ["mean", "ci_low", "ci_high", "n"])
    if lb.empty:
        return Ranked(
            pd.DataFrame(columns=LEADERBOARD_COLUMNS),
            pd.DataFrame(columns=R.RANK_TEST_COLUMNS),
            pd.DataFrame(columns=R.PAIRWISE_COLUMNS),
        )
    lb["higher_is_better"] = lb["metric"].map(lambda m: bool(directions[m]))
    lb["baseline"] = lb["method"].isin(baselines)
    lb["rank"] = np.nan
    ranked = lb[~lb["baseline"]]
    for (_, _, metric), idx in ranked.groupby(["model", "dataset", "metric"]).groups.items():
        lb.loc[idx, "rank"] = direction_ranks(lb.loc[idx, "mean"], bool(directions[metric]))
    quality = lb[~lb["metric"].isin(set(exclude_from_mean_rank)) & ~lb["baseline"]]
    mr = quality.groupby(["model", "dataset", "method"], as_index=False).agg(mean=("rank", "mean"), n=("rank", "size"))
    mr["metric"] = MEAN_RANK
    mr["ci_low"] = np.nan
    mr["ci_high"] = np.nan
    mr["higher_is_better"] = False
    mr["baseline"] = False
    mr["rank"] = mr.groupby(["model", "dataset"])["mean"].rank(ascending=True, method="average")
    out = pd.concat([lb, mr[lb.columns]], ignore_index=True)

    # rank statistics per (model, dataset, metric) over the non-baseline methods
    out["group"] = ""
    out["avg_rank"] = np.nan
    out["cd"] = np.nan
    tests, pairs = [], []
    by_metric = {k: v for k, v in ok.groupby(["model", "dataset", "metric"], sort=False)}
    for (model, dataset, metric), g in out[~out["baseline"]].groupby(["model", "dataset", "metric"], sort=True):
        methods = sorted(g["method"])
        hib = bool(directions.get(metric, False)) if metric != MEAN_RANK else False
        level = "image"
        if metric in cost:  # copies of a few timings: no per-image test, no groups (docs/claims.md)
            tests.append({"model": model, "dataset": dataset, "metric": metric, "level": "timings", "k": len(methods)})
            continue
        if metric == MEAN_RANK:
            level = "metrics"
            rt = rank_table_of(quality, model, dataset)
            test, pw = R.mean_rank_tests(rt[methods] if len(rt) else pd.DataFrame(columns=methods), alpha)
            avg: dict = {}
        elif metric in dl:
            level = "dataset"
            dfn = computes.get((model, dataset, metric))
            sm = {m: sgroups[(model, dataset, m, metric)] for m in methods if (model, dataset, m, metric) in sgroups}
            if dfn is not None:
                test, pw = R.dataset_level_tests(
                    sm, dfn, n_boot=n_boot, seed=_seed_for(seed, (model, dataset, metric)), alpha=alpha
                )
            else:
                test, pw = {}, pd.DataFrame(columns=R.PAIRWISE_COLUMNS[3:])
            avg = {}
        else:
            sub = by_metric[(model, dataset, metric)]
            sub = sub[sub["method"].isin(methods)]
            per = sub.pivot_table(index="image_id", columns="method", values="value", aggfunc="mean")
            per = per.reindex(columns=methods)
            test, pw, avg = R.image_level_tests(per, hib, alpha)
        order = g.sort_values(["rank", "method"], kind="mergesort")["method"].tolist()
        grp = R.groups_from_pairwise(order, pw)
        idx = g.index
        out.loc[idx, "group"] = g["method"].map(grp).fillna("")
        out.loc[idx, "avg_rank"] = g["method"].map(avg).astype(float)
        out.loc[idx, "cd"] = test.get("cd", np.nan)
        tests.append({"model": model, "dataset": dataset, "metric": metric, "level": level, **test})
        if len(pw):
            pairs.append(pw.assign(model=model, dataset=dataset, metric=metric))
    out["family"] = [("" if m == MEAN_RANK else str((families or {}).get(m, ""))) for m in out["metric"]]
    out = out.sort_values(["model", "dataset", "metric", "baseline", "rank", "method"], kind="mergesort")
    tdf = pd.DataFrame(tests).reindex(columns=R.RANK_TEST_COLUMNS)
    pdf = pd.concat(pairs, ignore_index=True)[R.PAIRWISE_COLUMNS] if pairs else pd.DataFrame(columns=R.PAIRWISE_COLUMNS)
    return Ranked(out[LEADERBOARD_COLUMNS].reset_index(drop=True), tdf, pdf)


def rank_table_of(quality: pd.DataFrame, model: str, dataset: str) -> pd.DataFrame:
    """Metrics x methods ranks of one experiment (the blocks of the mean-rank Friedman test)."""
    sub = quality[(quality["model"] == model) & (quality["dataset"] == dataset)]
    return sub.pivot_table(index="metric", columns="method", values="rank")


holm = R.holm


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
    exact = bool(R._exact_ok(d[None])[0])
    res = stats.wilcoxon(
        joined["a"].to_numpy(),
        joined["b"].to_numpy(),
        zero_method="wilcox",
        method="exact" if exact else "approx",
        alternative="two-sided",
    )
    return n, float(d.mean()), float(res.statistic), float(res.pvalue)


def significance(
    scores: pd.DataFrame, board: pd.DataFrame, alpha: float = 0.05, pairwise: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Each method against the best (rank 1; first by name on ties) per (model, dataset, metric).

    With ``pairwise`` (the leaderboard's post-hoc table, :class:`Ranked`), each row is that table's test of
    the pair, with its p and its Holm correction over *all* pairs of the metric: the same test and
    correction as the groups, so "significantly worse than the best" and "shares no group letter with the
    best" never disagree. Without it (older callers): Wilcoxon of each method against the best, Holm over
    those k - 1 comparisons. Cost metrics (``family`` cost) and baselines are left out: their per-image
    rows are copies of a few timings."""
    ok = valid_scores(scores)
    rows = []
    lb = board[board["metric"] != MEAN_RANK]
    if "family" in lb.columns:
        lb = lb[lb["family"] != COST_FAMILY]
    if "baseline" in lb.columns:
        lb = lb[~lb["baseline"].astype(bool)]
    for (model, dataset, metric), g in lb.groupby(["model", "dataset", "metric"], sort=True):
        best = g.sort_values(["rank", "method"], kind="mergesort")["method"].iloc[0]
        if pairwise is not None:
            sel = (pairwise["model"] == model) & (pairwise["dataset"] == dataset) & (pairwise["metric"] == metric)
            for r in pairwise[sel].itertuples(index=False):
                if best not in (r.method_a, r.method_b):
                    continue
                method = r.method_b if r.method_a == best else r.method_a
                diff = -float(r.mean_diff) if r.method_a == best else float(r.mean_diff)
                test = [r.n_pairs, diff, np.nan, r.p_value, r.p_holm, bool(r.significant)]
                rows.append([model, dataset, metric, method, best, *test])
            continue
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


#: The ``method`` of the score rows that record an unreadable image or annotation (one row per item).
DATA_METHOD = "(data)"


def failures(scores: pd.DataFrame) -> pd.DataFrame:
    """Counts of ``error`` rows by (model, dataset, method, metric) with one example message.

    Unreadable images/annotations (method ``(data)``) get one row each, naming the item and its reason.
    ``undefined`` rows (a metric defined as NaN for that image or setting, e.g. peak memory on a CPU, a
    pointing game on an empty mask) are not failures: they stay in ``scores.parquet`` only.
    """
    bad = scores[scores["status"] == "error"]
    cols = ["model", "dataset", "method", "metric", "status", "count", "message"]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    is_data = bad["method"] == DATA_METHOD
    out = (
        bad[~is_data]
        .groupby(["model", "dataset", "method", "metric", "status"], as_index=False)
        .agg(count=("image_id", "size"), message=("message", "first"))
    )
    data = bad[is_data].drop_duplicates(["model", "dataset", "image_id", "message"]).assign(count=1)
    return pd.concat([data[cols], out[cols]], ignore_index=True) if len(data) else out[cols]


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


def summary_table(board: pd.DataFrame, headline: list[str] | None = None, max_metrics: int = 5) -> pd.DataFrame:
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
