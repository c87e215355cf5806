"""Leaderboard statistics: bootstrap CIs, direction-aware ranks, mean rank, Holm, paired Wilcoxon."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from benchmark.report.tables import (
    MEAN_RANK,
    bootstrap_ci,
    holm,
    leaderboard,
    paired_wilcoxon,
    significance,
    summary_table,
)


def _scores(values: dict[tuple[str, str], list[float]], ids=None) -> pd.DataFrame:
    rows = []
    for (method, metric), vs in values.items():
        for i, v in enumerate(vs):
            image_id = (ids or {}).get(method, [f"i{j}" for j in range(len(vs))])[i]
            rows.append(("m", "d", method, metric, image_id, v, "ok", "", False))
    columns = ["model", "dataset", "method", "metric", "image_id", "value", "status", "message", "degenerate"]
    return pd.DataFrame(rows, columns=columns)


def test_bootstrap_ci_contains_the_mean_is_seeded_and_matches_a_loop():
    rng = np.random.default_rng(0)
    v = rng.normal(2.0, 1.0, size=40)
    lo, hi = bootstrap_ci(v, n_boot=1000, seed=7)
    assert lo < v.mean() < hi and hi - lo < 1.5
    assert bootstrap_ci(v, n_boot=1000, seed=7) == (lo, hi)
    assert bootstrap_ci(v, n_boot=1000, seed=8) != (lo, hi)
    # the vectorised draw equals resampling one row at a time with the same generator stream
    g = np.random.default_rng(7)
    idx = g.integers(0, v.size, size=(1000, v.size))
    means = np.array([v[row].mean() for row in idx])
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), rel=1e-12)
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    assert all(np.isnan(bootstrap_ci([np.nan])))


def test_ranks_respect_the_metric_direction_and_average_ties():
    s = _scores(
        {
            ("a", "up"): [0.9, 0.8],
            ("b", "up"): [0.1, 0.2],
            ("c", "up"): [0.5, 0.5],
            ("a", "down"): [0.9, 0.8],
            ("b", "down"): [0.1, 0.2],
            ("c", "down"): [0.17, 0.17],
            ("a", "tie"): [1.0, 1.0],
            ("b", "tie"): [1.0, 1.0],
            ("c", "tie"): [0.0, 0.0],
        }
    )
    lb = leaderboard(s, {"up": True, "down": False, "tie": True}, n_boot=100)
    r = lb.set_index(["metric", "method"])["rank"]
    assert (r["up", "a"], r["up", "c"], r["up", "b"]) == (1, 2, 3)
    assert (r["down", "b"], r["down", "c"], r["down", "a"]) == (1, 2, 3)
    assert (r["tie", "a"], r["tie", "b"], r["tie", "c"]) == (1.5, 1.5, 3)
    mr = lb[lb["metric"] == MEAN_RANK].set_index("method")
    assert mr.loc["a", "mean"] == pytest.approx((1 + 3 + 1.5) / 3) and mr.loc["a", "n"] == 3
    assert mr.loc["b", "mean"] == pytest.approx((3 + 1 + 1.5) / 3)
    assert (mr.loc["a", "rank"], mr.loc["b", "rank"], mr.loc["c", "rank"]) == (1.5, 1.5, 3)
    assert not mr["higher_is_better"].any()
    assert list(lb.columns) == [
        "model",
        "dataset",
        "method",
        "metric",
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
    row = lb[(lb["metric"] == "up") & (lb["method"] == "a")].iloc[0]
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n"] == 2 and row["higher_is_better"]


def test_cost_metrics_are_ranked_but_stay_out_of_mean_rank():
    """Latency keeps its ranked rows; mean_rank is averaged over the quality metrics only, so a timing
    change cannot reorder it (the report passes the cost family the run recorded in run.json)."""
    from benchmark.report.tables import cost_metrics

    got = cost_metrics({"peak_memory_mb": "cost", "deletion_auc": "faithfulness", "latency_ms": "cost", "x": ""})
    assert got == ["latency_ms", "peak_memory_mb"]
    assert cost_metrics({"latency_ms": "faithfulness"}) == []  # the recorded family decides, not the registry
    quality = {("a", "up"): [0.9], ("b", "up"): [0.1]}
    fast_a = _scores({**quality, ("a", "latency_ms"): [1.0], ("b", "latency_ms"): [9.0]})
    slow_a = _scores({**quality, ("a", "latency_ms"): [9.0], ("b", "latency_ms"): [1.0]})
    dirs = {"up": True, "latency_ms": False}
    boards = [leaderboard(s, dirs, n_boot=10, exclude_from_mean_rank=["latency_ms"]) for s in (fast_a, slow_a)]
    for lb in boards:
        mr = lb[lb["metric"] == MEAN_RANK].set_index("method")
        assert (mr.loc["a", "mean"], mr.loc["b", "mean"], mr.loc["a", "n"]) == (1.0, 2.0, 1)
    assert boards[0].set_index(["metric", "method"]).loc[("latency_ms", "a"), "rank"] == 1
    assert boards[1].set_index(["metric", "method"]).loc[("latency_ms", "a"), "rank"] == 2
    mixed = leaderboard(slow_a, dirs, n_boot=10).set_index(["metric", "method"])  # without the exclusion
    assert mixed.loc[(MEAN_RANK, "a"), "mean"] == 1.5


def test_the_family_column_comes_from_the_families_passed():
    s = _scores({("a", "up"): [0.9], ("b", "up"): [0.1], ("a", "latency_ms"): [1.0], ("b", "latency_ms"): [2.0]})
    dirs = {"up": True, "latency_ms": False}
    lb = leaderboard(s, dirs, n_boot=10, families={"up": "localization", "latency_ms": "cost"})
    fam = lb.groupby("metric")["family"].agg(set).to_dict()
    assert fam == {"up": {"localization"}, "latency_ms": {"cost"}, MEAN_RANK: {""}}
    assert set(leaderboard(s, dirs, n_boot=10)["family"]) == {""}  # nothing recorded: blank, never looked up


def test_leaderboard_ignores_failed_and_undefined_rows_and_needs_directions():
    s = _scores({("a", "x"): [1.0, 2.0, 3.0]})
    s.loc[1, "status"] = "error"
    s.loc[2, "value"] = np.nan
    s.loc[2, "status"] = "undefined"
    lb = leaderboard(s, {"x": True})
    row = lb[lb["metric"] == "x"].iloc[0]
    assert row["n"] == 1 and row["mean"] == 1.0
    with pytest.raises(KeyError, match="higher_is_better"):
        leaderboard(s, {})


def test_holm_known_answers():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005,0.01,0.03,0.04 x (4,3,2,1) = 0.02,0.03,0.06,0.04 -> running max 0.02,0.03,0.06,0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])  # min(1, 2*0.5), then running max
    assert holm(np.array([0.01, 0.02, 0.03])) == pytest.approx([0.03, 0.04, 0.04])
    out = holm(np.array([0.01, np.nan, 0.02]))
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12))
def test_holm_properties(ps):
    p = np.array(ps)
    a = holm(p)
    assert np.all(a >= p - 1e-12) and np.all(a <= 1.0)
    order = np.argsort(p, kind="mergesort")
    assert np.all(np.diff(a[order]) >= -1e-12)  # monotone in the raw p-values
    assert np.all(a <= np.minimum(1.0, p * len(p)) + 1e-12)  # never more conservative than Bonferroni


def test_wilcoxon_pairs_by_image_id_not_by_row_order():
    rng = np.random.default_rng(1)
    ids = [f"i{j}" for j in range(20)]
    a = pd.Series(rng.normal(0.6, 0.2, 20), index=ids)
    b = a - rng.normal(0.1, 0.05, 20)
    shuffled = b.sample(frac=1.0, random_state=3)
    n, diff, stat, p = paired_wilcoxon(a, shuffled)
    ref = stats.wilcoxon(a.to_numpy(), b.to_numpy())
    assert n == 20 and p == pytest.approx(ref.pvalue) and stat == pytest.approx(ref.statistic)
    assert diff == pytest.approx((a - b).mean())
    assert paired_wilcoxon(a, b.iloc[:10])[0] == 10  # only common images are paired
    assert paired_wilcoxon(a, a)[3] == 1.0


def test_significance_tests_every_method_against_the_best_with_holm():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 15)
    s = _scores(
        {
            ("best", "x"): list(base + 0.3),
            ("close", "x"): list(base + 0.29),
            ("bad", "x"): list(base - 0.2 + rng.normal(0, 0.01, 15)),
        }
    )
    lb = leaderboard(s, {"x": True}, n_boot=100)
    sig = significance(s, lb)
    assert set(sig["method"]) == {"close", "bad"} and (sig["best"] == "best").all()
    assert (sig["p_holm"] >= sig["p_value"]).all() and (sig["n_pairs"] == 15).all()
    assert bool(sig.set_index("method").loc["bad", "significant"])
    assert summary_table(lb).loc[("m", "d", "best"), MEAN_RANK] == 1.0


def test_multilabel_rows_get_a_cluster_bootstrap_over_images_and_n_images() -> None:
    """(image, class) rows of one image are not independent: resample images, count images."""
    rng = np.random.default_rng(0)
    ids, vals = [], []
    for i in range(12):  # each image's classes share most of their score: strong within-image correlation
        base = rng.normal()
        for c in ("a", "b", "c"):
            ids.append(f"img{i}#{c}")
            vals.append(base + 0.01 * rng.normal())
    v = np.array(vals)
    images = [x.split("#")[0] for x in ids]
    naive = bootstrap_ci(v, seed=3)
    clustered = bootstrap_ci(v, seed=3, clusters=images)
    # the naive interval treats 36 rows as independent: about sqrt(3) too narrow
    assert (clustered[1] - clustered[0]) > 1.4 * (naive[1] - naive[0])
    # singleton clusters: the cluster bootstrap is the ordinary one
    assert bootstrap_ci(v, seed=3, clusters=ids) == pytest.approx(naive, abs=1e-12)
    assert bootstrap_ci([2.0, 4.0], clusters=["x", "x"]) == (3.0, 3.0)
    scores = pd.DataFrame(
        {"model": "m", "dataset": "d", "method": "g", "metric": "pg", "image_id": ids, "value": v, "status": "ok"}
    )
    board = leaderboard(scores, {"pg": True})
    row = board[board["metric"] == "pg"].iloc[0]
    assert row["n"] == 12 and row["mean"] == pytest.approx(v.mean())
    assert (row["ci_low"], row["ci_high"]) != naive


def test_common_random_numbers_identical_scores_give_identical_intervals():
    """One set of resamples per experiment (not per method): two methods with the same per-image scores get
    the same CI (the old per-method seed gave them different ones), whatever the rows' order."""
    rng = np.random.default_rng(7)
    v = list(rng.uniform(0, 1, 20))
    ids = {"b": [f"i{j}" for j in reversed(range(20))]}
    s = _scores({("a", "x"): v, ("b", "x"): v[::-1]}, ids=ids)  # b's rows in reverse image order
    lb = leaderboard(s, {"x": True}, n_boot=300).query("metric == 'x'").set_index("method")
    assert (lb.loc["a", "ci_low"], lb.loc["a", "ci_high"]) == (lb.loc["b", "ci_low"], lb.loc["b", "ci_high"])


def test_cost_metrics_are_summarised_per_timing_without_groups_or_tests():
    """A latency measured once per batch of 8 and copied to its images: the row's n is the number of
    timings, its CI a bootstrap over timings (never the zero-width interval of copies), and no group letter,
    pairwise test or significance row comes from the copies."""
    from benchmark.report.tables import ranked_leaderboard

    a = [10.0] * 8 + [12.0] * 8 + [11.0] * 8
    b = [10.5] * 8 + [12.5] * 8 + [11.5] * 8
    q = list(np.linspace(0, 1, 24))
    s = _scores({("a", "latency_ms"): a, ("b", "latency_ms"): b, ("a", "up"): q, ("b", "up"): q[::-1]})
    fams = {"latency_ms": "cost", "up": "faithfulness"}
    r = ranked_leaderboard(s, {"latency_ms": False, "up": True}, n_boot=300, families=fams)
    lat = r.board[r.board["metric"] == "latency_ms"].set_index("method")
    assert lat.loc["a", "n"] == 3 and lat.loc["a", "mean"] == pytest.approx(11.0)
    assert lat.loc["a", "ci_high"] > lat.loc["a", "ci_low"]
    assert (lat["group"] == "").all() and not (r.pairwise["metric"] == "latency_ms").any()
    assert "latency_ms" not in set(significance(s, r.board, pairwise=r.pairwise)["metric"])


@pytest.mark.parametrize("seed", range(6))
def test_significance_and_groups_tell_one_story(seed):
    """significance.csv (each method against the best) reads the same test and Holm correction as the group
    letters: a method is significantly different from the best iff it shares no letter with it."""
    from benchmark.report.tables import ranked_leaderboard

    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, 12)
    vals = {
        (m, "x"): list(base + shift + rng.normal(0, 0.05, 12))
        for m, shift in zip("abcde", [0, -0.02, -0.04, -0.06, -0.08], strict=True)
    }
    s = _scores(vals)
    r = ranked_leaderboard(s, {"x": True}, n_boot=100)
    sig = significance(s, r.board, pairwise=r.pairwise).set_index("method")
    groups = r.board.query("metric == 'x'").set_index("method")["group"]
    best = sig["best"].iloc[0]
    for m in sig.index:
        shares = bool(set(groups[m]) & set(groups[best]))
        assert bool(sig.loc[m, "significant"]) == (not shares), (m, groups.to_dict(), sig["p_holm"].to_dict())
