"""Rank statistics: Nemenyi's q and critical difference (Demsar 2006 known answers), Friedman against
scipy, average ranks, compact letter groups, the leaderboard's group / avg_rank / cd columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from benchmark.report import ranking as R
from benchmark.report.tables import MEAN_RANK, ranked_leaderboard


def test_q_alpha_matches_demsar_table_5a():
    # Demsar (2006), JMLR 7, Table 5(a): critical values of the two-tailed Nemenyi test, alpha = 0.05
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, q in zip(range(2, 11), table, strict=True):
        assert R.q_alpha(k) == pytest.approx(q, abs=1e-3)  # the table has 3 decimals
    assert R.q_alpha(2, alpha=0.10) == pytest.approx(1.645, abs=1e-3)  # Table 5(a), alpha = 0.10


def test_critical_difference_by_hand():
    # Demsar's worked example (Sec. 3.2.2): 4 classifiers on 14 data sets, CD = 2.569 sqrt(4*5/(6*14)) = 1.25
    assert R.critical_difference(4, 14) == pytest.approx(2.569 * np.sqrt(20 / 84), abs=1e-3)
    assert R.critical_difference(4, 14) == pytest.approx(1.25, abs=5e-3)
    assert np.isnan(R.critical_difference(1, 10)) and np.isnan(R.critical_difference(3, 0))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 25), k=st.integers(3, 7))
def test_friedman_equals_scipy(seed, n, k):
    x = np.random.default_rng(seed).normal(size=(n, k)).round(1)  # rounding makes ties
    chi2, p = R.friedman(x)
    if np.all(x == x[:, :1]):
        return
    ref = stats.friedmanchisquare(*x.T)
    assert chi2 == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)


def test_friedman_degenerate_inputs():
    assert R.friedman(np.ones((5, 3))) == (0.0, 1.0)  # every block tied
    assert all(np.isnan(R.friedman(np.ones((5, 2)))))  # Friedman needs k >= 3
    assert all(np.isnan(R.friedman(np.ones((1, 4)))))


def test_block_ranks_follow_the_direction_and_average_ties():
    x = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.8]])
    np.testing.assert_array_equal(R.block_ranks(x, True), [[1, 3, 2], [2.5, 2.5, 1]])
    np.testing.assert_array_equal(R.block_ranks(x, False), [[3, 1, 2], [1.5, 1.5, 3]])


def test_letter_groups_known_answer():
    sig = {frozenset(p) for p in [("a", "c"), ("a", "d"), ("b", "d")]}
    g = R.letter_groups(["a", "b", "c", "d"], lambda x, y: frozenset((x, y)) in sig)
    assert g == {"a": "a", "b": "ab", "c": "bc", "d": "c"}
    assert R.letter_groups(["a", "b", "c"], lambda x, y: False) == {"a": "a", "b": "a", "c": "a"}
    assert R.letter_groups(["a", "b", "c"], lambda x, y: True) == {"a": "a", "b": "b", "c": "c"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=12))
def test_methods_sharing_a_letter_are_never_significantly_different(pairs):
    names = list("abcdef")
    sig = {frozenset((names[i], names[j])) for i, j in pairs if i != j}
    g = R.letter_groups(names, lambda x, y: frozenset((x, y)) in sig)
    assert all(g[m] for m in names)  # everyone has a letter
    for x in names:
        for y in names:
            if x != y and set(g[x]) & set(g[y]):
                assert frozenset((x, y)) not in sig


def test_bootstrap_p():
    assert R.bootstrap_p(np.zeros(10)) == 1.0
    assert R.bootstrap_p(np.ones(10)) == 0.0
    assert R.bootstrap_p(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.5)
    # floored at the smallest p a paired test on n images can give: 2 images never differ significantly
    assert R.bootstrap_p(np.ones(10), n_images=2) == 0.5 and R.bootstrap_p(np.ones(10), n_images=30) == 2.0**-29


def _scores(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [
        ("m", "d", method, metric, f"i{j:02d}", v, "ok", "", False)
        for (method, metric), vs in values.items()
        for j, v in enumerate(vs)
    ]
    return pd.DataFrame(
        rows, columns=["model", "dataset", "method", "metric", "image_id", "value", "status", "message", "degenerate"]
    )


def test_leaderboard_groups_avg_rank_cd_and_friedman():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 20)
    s = _scores(
        {
            ("best", "x"): list(base + 0.5),
            ("twin", "x"): list(base + 0.5 + rng.normal(0, 1e-3, 20)),
            ("worst", "x"): list(base - 0.5),
            ("random", "x"): list(rng.uniform(0, 1, 20)),
            ("best", "y"): list(base),
            ("twin", "y"): list(base + 0.1),
            ("worst", "y"): list(base + 0.2),
            ("random", "y"): list(base),
        }
    )
    r = ranked_leaderboard(s, {"x": True, "y": False}, n_boot=50, baselines=["random"])
    b = r.board.set_index(["metric", "method"])
    assert b.loc[("x", "best"), "group"] == b.loc[("x", "twin"), "group"] == "a"
    assert b.loc[("x", "worst"), "group"] == "b"
    assert b.loc[("x", "random"), "group"] == "" and np.isnan(b.loc[("x", "random"), "rank"])
    # avg ranks over images: worst is last on every image; best/twin share ranks 1-2
    assert b.loc[("x", "worst"), "avg_rank"] == 3.0
    assert b.loc[("x", "best"), "avg_rank"] + b.loc[("x", "twin"), "avg_rank"] == pytest.approx(3.0)
    assert b.loc[("x", "best"), "cd"] == pytest.approx(R.critical_difference(3, 20))
    t = r.tests.set_index("metric")
    x = s[(s["metric"] == "x") & (s["method"] != "random")].pivot(index="image_id", columns="method", values="value")
    ref = stats.friedmanchisquare(*x.to_numpy().T)
    assert t.loc["x", "friedman_chi2"] == pytest.approx(ref.statistic)
    assert t.loc["x", "friedman_p"] == pytest.approx(ref.pvalue)
    assert (t.loc["x", "k"], t.loc["x", "n_blocks"], t.loc["x", "level"]) == (3, 20, "image")
    pw = r.pairwise[r.pairwise["metric"] == "x"]
    assert len(pw) == 3 and (pw["p_holm"] >= pw["p_value"]).all()
    # lower-is-better y: best (lowest) ranks first on every image
    assert b.loc[("y", "best"), "avg_rank"] == 1.0 and b.loc[("y", "best"), "group"] == "a"
    # mean rank: Friedman over the 2 metrics, CD with N = 2, no baseline row
    assert (MEAN_RANK, "random") not in b.index
    assert t.loc[MEAN_RANK, "n_blocks"] == 2 and t.loc[MEAN_RANK, "level"] == "metrics"
    assert b.loc[(MEAN_RANK, "best"), "cd"] == pytest.approx(R.critical_difference(3, 2))


def test_wilcoxon_pvalues_exact_without_ties_normal_approximation_with_ties():
    from scipy import stats as st

    from benchmark.report.ranking import wilcoxon_pvalues

    rng = np.random.default_rng(5)
    clean = rng.normal(0.1, 1.0, size=(3, 12))  # continuous: no zeros, no ties -> scipy's exact null
    tied = np.round(rng.normal(0.3, 1.0, size=(2, 12)), 1)  # ties and zeros (scipy "auto": a permutation test)
    tied[:, 0] = 0.0
    got = wilcoxon_pvalues(np.vstack([clean, tied, np.zeros((1, 12))]))
    want_exact = st.wilcoxon(clean, axis=1, method="exact").pvalue
    want_approx = st.wilcoxon(tied, axis=1, zero_method="wilcox", method="approx").pvalue
    np.testing.assert_allclose(got[:3], want_exact)
    np.testing.assert_allclose(got[3:5], want_approx)
    assert got[5] == 1.0  # identical scores: nothing to test
    # a known answer: 8 positive differences of distinct size -> exact two-sided p = 2 / 2^8
    assert wilcoxon_pvalues(np.arange(1.0, 9.0)[None])[0] == pytest.approx(2 / 256)
