"""Rank statistics of a leaderboard: Friedman test, post-hoc groups, critical differences (Demsar 2006).

Per experiment (model, dataset) and metric, over the methods that are not baselines:

- image-level metrics: the Friedman (1937) test over the images where every method has a value
  (``scipy.stats.friedmanchisquare``; images are the blocks), the methods' average ranks over those
  images (1 = best for the metric's direction, ties averaged), Nemenyi's critical difference
  ``CD = q_alpha sqrt(k (k+1) / (6 N))`` with ``q_alpha`` the studentized range quantile / sqrt(2)
  (Demsar 2006, eq. after Table 5), and pairwise two-sided Wilcoxon signed-rank tests on the common images,
  Holm-corrected over all pairs (the Wilcoxon-Holm post-hoc of Benavoli et al. 2016, JMLR 17);
- dataset-level metrics (one value per dataset, ``register_metric(level="dataset")``): there is no
  per-image value to rank, so Friedman and the CD do not apply; pairs are tested with a paired bootstrap
  over images (the same resampled images for both methods; two-sided p = twice the smaller share of
  resampled differences on either side of 0), Holm-corrected over all pairs;
- ``mean_rank`` (the rank averaged over the quality metrics): Friedman with the metrics as blocks, its CD
  with ``N`` = number of metrics, and Nemenyi's test (two methods differ when their mean ranks differ by
  more than the CD).

Groups (compact letters): methods sorted best first; every maximal run of consecutive methods whose pairs
are all *not* significantly different gets a letter (a, b, ...), as the bars of a critical-difference
diagram. Methods sharing a letter are not significantly different at ``alpha``.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

PAIRWISE_COLUMNS = [
    "model",
    "dataset",
    "metric",
    "method_a",
    "method_b",
    "test",
    "n_pairs",
    "mean_diff",
    "p_value",
    "p_holm",
    "significant",
]
RANK_TEST_COLUMNS = ["model", "dataset", "metric", "level", "k", "n_blocks", "friedman_chi2", "friedman_p", "cd"]


def q_alpha(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical value ``q_alpha`` for ``k`` methods: the studentized range quantile (infinite
    degrees of freedom) divided by sqrt(2) (Demsar 2006, Table 5a: 1.960, 2.343, 2.569 ... for k = 2, 3, 4)."""
    if k < 2:
        return float("nan")
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / np.sqrt(2.0))


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks, ``q_alpha sqrt(k (k+1) / (6 N))`` (Demsar 2006)."""
    if k < 2 or n < 1:
        return float("nan")
    return q_alpha(k, alpha) * float(np.sqrt(k * (k + 1) / (6.0 * n)))


def block_ranks(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Ranks within each row of ``values [N, k]`` (1 = best for the direction, ties averaged)."""
    v = np.asarray(values, dtype=np.float64)
    return stats.rankdata(-v if higher_is_better else v, axis=1, method="average")


def friedman(values: np.ndarray) -> tuple[float, float]:
    """``scipy.stats.friedmanchisquare`` over the columns of ``values [N, k]`` (rows are blocks).

    ``(chi2, p)``; NaNs when ``k < 3`` or ``N < 2``; ``(0, 1)`` when every block is all tied."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 3 or v.shape[0] < 2:
        return float("nan"), float("nan")
    if np.all(v == v[:, :1]):
        return 0.0, 1.0
    with np.errstate(all="ignore"):
        res = stats.friedmanchisquare(*v.T)
    chi2, p = float(res.statistic), float(res.pvalue)
    return (chi2, p) if np.isfinite(p) else (0.0, 1.0)


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


def _exact_ok(d: np.ndarray) -> np.ndarray:
    """Rows of differences ``[P, N]`` whose Wilcoxon null distribution scipy computes exactly: at most 50
    values, none zero, no tied ``|d|``."""
    d = np.atleast_2d(d)
    a = np.sort(np.abs(d), axis=1)
    ties = (np.diff(a, axis=1) == 0).any(axis=1) if d.shape[1] > 1 else np.zeros(len(d), bool)
    return (d.shape[1] <= 50) & ~(d == 0).any(axis=1) & ~ties


def wilcoxon_pvalues(d: np.ndarray) -> np.ndarray:
    """Two-sided Wilcoxon signed-rank p (zero_method "wilcox") of each row of paired differences ``[P, N]``.

    Exact where scipy's null distribution is exact (:func:`_exact_ok`), else the normal approximation with
    tie correction. (scipy's ``method="auto"`` runs a permutation test whenever small samples have ties or
    zeros: seconds per pair, a critical cost for a leaderboard of hundreds of pairs.)"""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    out = np.ones(len(d))
    live = ~np.all(d == 0, axis=1)
    exact = _exact_ok(d) & live
    approx = live & ~exact
    with np.errstate(all="ignore"):
        if exact.any():
            out[exact] = stats.wilcoxon(d[exact], axis=1, method="exact", alternative="two-sided").pvalue
        if approx.any():
            out[approx] = stats.wilcoxon(
                d[approx], axis=1, zero_method="wilcox", method="approx", alternative="two-sided"
            ).pvalue
    return out


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired samples; 1 when all differences are 0, NaN without pairs."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon_pvalues(d[None])[0])


def bootstrap_p(diffs: np.ndarray, n_images: int | None = None) -> float:
    """Two-sided paired-bootstrap p of ``H0: difference = 0`` from resampled differences: twice the smaller
    share of resamples on either side of 0 (at most 1); 1 when every resampled difference is 0.

    ``n_images`` floors p at ``2^(1 - n)``, the smallest two-sided p a paired test on n images can reach
    (the sign test with every image on one side): with 2 images the bootstrap has only 3 distinct
    resamples and would call any consistent difference significant."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    p = float(min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0)))))
    if n_images is not None:
        p = max(p, min(1.0, 2.0 ** (1 - int(n_images))))
    return float(p)


def letter_groups(order: Sequence[str], differ: Callable[[str, str], bool]) -> dict[str, str]:
    """Compact letters: ``order`` best first; each maximal run of consecutive methods with no significant
    pair gets a letter; a method gets the letters of every run it belongs to."""
    order = list(order)
    runs: list[tuple[int, int]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and not any(differ(order[a], order[j + 1]) for a in range(i, j + 1)):
            j += 1
        if not runs or j > runs[-1][1]:
            runs.append((i, j))
    letters = _letters(len(runs))
    out = {m: "" for m in order}
    for (i, j), letter in zip(runs, letters, strict=True):
        for m in order[i : j + 1]:
            out[m] += letter
    return out


def _letters(n: int) -> list[str]:
    base = string.ascii_lowercase
    return [base[i] if i < 26 else base[i // 26 - 1] + base[i % 26] for i in range(n)]


def _pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]


def image_level_tests(
    per_image: pd.DataFrame, higher_is_better: bool, alpha: float = 0.05
) -> tuple[dict, pd.DataFrame, dict[str, float]]:
    """Friedman, average ranks, CD and pairwise Wilcoxon-Holm for ``per_image`` (images x methods).

    Returns ``(test, pairwise, avg_rank)``: ``test`` = {k, n_blocks, friedman_chi2, friedman_p, cd};
    ``pairwise`` rows (method_a, method_b, test, n_pairs, mean_diff, p_value, p_holm, significant)."""
    methods = list(per_image.columns)
    full = per_image.dropna()
    k, n = len(methods), len(full)
    chi2, p = friedman(full.to_numpy())
    avg = dict(zip(methods, block_ranks(full.to_numpy(), higher_is_better).mean(axis=0), strict=True)) if n else {}
    rows = []
    pairs = _pairs(methods)
    if pairs and n >= 1 and n == len(per_image):  # complete block: every pair in one vectorised scipy call
        x = full.to_numpy(dtype=np.float64)
        ia = np.array([methods.index(a) for a, _ in pairs])
        ib = np.array([methods.index(b) for _, b in pairs])
        d = x[:, ia].T - x[:, ib].T  # [pairs, N]
        pv = wilcoxon_pvalues(d)
        rows = [[a, b, "wilcoxon", n, float(d[i].mean()), float(pv[i])] for i, (a, b) in enumerate(pairs)]
    else:
        for a, b in pairs:
            j = per_image[[a, b]].dropna()
            p_ab = wilcoxon_p(j[a].to_numpy(), j[b].to_numpy())
            rows.append([a, b, "wilcoxon", len(j), float((j[a] - j[b]).mean()) if len(j) else np.nan, p_ab])
    pw = pd.DataFrame(rows, columns=["method_a", "method_b", "test", "n_pairs", "mean_diff", "p_value"])
    pw["p_holm"] = holm(pw["p_value"].to_numpy()) if len(pw) else []
    pw["significant"] = pw["p_holm"] < alpha
    test = {
        "k": k,
        "n_blocks": n,
        "friedman_chi2": chi2,
        "friedman_p": p,
        "cd": critical_difference(k, n, alpha) if n else float("nan"),
    }
    return test, pw, {m: float(v) for m, v in avg.items()}


def resample_values(fn: Callable, arr: np.ndarray, ids: Sequence[str], draws: np.ndarray) -> np.ndarray:
    """``fn(arr[d], ids[d])`` for every row ``d`` of ``draws [R, N]``; through ``fn.weighted(arr, W)`` (the
    metric's ``compute_weighted``, ``W[r, i]`` = times image i is drawn in resample r) when it has one."""
    weighted = getattr(fn, "weighted", None)
    if weighted is not None:
        r, n = draws.shape
        w = np.bincount((draws + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n)
        return np.asarray(weighted(arr, w), dtype=np.float64)
    ids = list(ids)
    return np.array([fn(arr[d], [ids[x] for x in d]) for d in draws], dtype=np.float64)


def dataset_level_tests(
    stats_by_method: Mapping[str, tuple[np.ndarray, list[str]]],
    compute: Callable[[np.ndarray, list[str]], float],
    n_boot: int,
    seed: int,
    alpha: float = 0.05,
) -> tuple[dict, pd.DataFrame]:
    """Paired-bootstrap pairwise tests of a dataset-level metric (see the module docstring).

    ``stats_by_method[m] = (stats [N_m, S], ids)`` (finite rows); pairs use the images common to all
    methods, resampled identically for every method (``numpy.random.default_rng(seed)``)."""
    methods = list(stats_by_method)
    common = None
    for m in methods:
        s = set(stats_by_method[m][1])
        common = s if common is None else common & s
    ids = sorted(common or [])
    rows = []
    if ids and len(methods) >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(ids), size=(n_boot, len(ids)))
        vals, point = {}, {}
        for m in methods:
            arr, mids = stats_by_method[m]
            pos = {i: r for r, i in enumerate(mids)}
            sub = arr[[pos[i] for i in ids]]
            point[m] = compute(sub, ids)
            vals[m] = resample_values(compute, sub, ids, draws)
        for a, b in _pairs(methods):
            rows.append(
                [a, b, "paired_bootstrap", len(ids), point[a] - point[b], bootstrap_p(vals[a] - vals[b], len(ids))]
            )
    pw = pd.DataFrame(rows, columns=["method_a", "method_b", "test", "n_pairs", "mean_diff", "p_value"])
    pw["p_holm"] = holm(pw["p_value"].to_numpy()) if len(pw) else []
    pw["significant"] = pw["p_holm"] < alpha
    test = {"k": len(methods), "n_blocks": len(ids), "friedman_chi2": np.nan, "friedman_p": np.nan, "cd": np.nan}
    return test, pw


def mean_rank_tests(ranks: pd.DataFrame, alpha: float = 0.05) -> tuple[dict, pd.DataFrame]:
    """Friedman over metrics (blocks) of a methods' rank table ``ranks [metrics, methods]`` (lower = better)
    and Nemenyi's pairwise test (significant when mean ranks differ by more than the CD)."""
    full = ranks.dropna()
    methods = list(ranks.columns)
    k, n = len(methods), len(full)
    chi2, p = friedman(full.to_numpy())
    cd = critical_difference(k, n, alpha) if n else float("nan")
    mean = full.mean(axis=0) if n else pd.Series(np.nan, index=methods)
    rows = []
    for a, b in _pairs(methods):
        diff = float(mean[a] - mean[b])
        rows.append([a, b, "nemenyi", n, diff, np.nan, np.nan, bool(np.isfinite(cd) and abs(diff) > cd)])
    pw = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS[3:])
    return {"k": k, "n_blocks": n, "friedman_chi2": chi2, "friedman_p": p, "cd": cd}, pw


def groups_from_pairwise(order: Sequence[str], pairwise: pd.DataFrame) -> dict[str, str]:
    """:func:`letter_groups` with "differ" read from a pairwise table's ``significant`` column."""
    sig = {frozenset((r.method_a, r.method_b)) for r in pairwise.itertuples(index=False) if bool(r.significant)}
    return letter_groups(order, lambda a, b: frozenset((a, b)) in sig)


def rank_table(board: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Metrics x methods table of one experiment's ranks (from leaderboard rows)."""
    sub = board if metrics is None else board[board["metric"].isin(list(metrics))]
    return sub.pivot_table(index="metric", columns="method", values="rank")
