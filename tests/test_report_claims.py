"""Paired comparisons with verdicts (benchmark/report/claims.py): known answers against scipy and by hand,
properties (antisymmetry, invariance under relabelling of images and of the family's order)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from benchmark.report import claims as C


def test_rank_biserial_by_hand():
    # |d| ranks 1..4; T+ = 1 + 3 + 4 = 8, T- = 2: r = (8 - 2) / 10
    assert C.rank_biserial(np.array([1.0, -2.0, 3.0, 4.0])) == pytest.approx(0.6)
    # zeros dropped, ties averaged: |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3; T+ = 1.5 + 3, T- = 1.5
    assert C.rank_biserial(np.array([0.0, 1.0, -1.0, 2.0])) == pytest.approx((4.5 - 1.5) / 6.0)
    assert C.rank_biserial(np.zeros(4)) == 0.0
    assert C.rank_biserial(np.array([0.3, 0.1, 2.0])) == 1.0


def test_rank_biserial_matches_scipy_signed_rank_statistic():
    rng = np.random.default_rng(3)
    d = rng.normal(0.2, 1.0, 30)
    t_plus = stats.wilcoxon(d, alternative="greater").statistic  # one-sided: the sum of positive ranks
    s = d.size * (d.size + 1) / 2
    assert C.rank_biserial(d) == pytest.approx((2 * t_plus - s) / s)


@pytest.mark.parametrize("n, seed", [(8, 0), (20, 1), (45, 2), (80, 3)])
def test_wilcoxon_p_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.5, 0.1, n), rng.normal(0.47, 0.1, n)
    c = C.paired_comparison(a, b, higher_is_better=True, n_boot=200)
    method = "exact" if n <= 50 else "approx"
    ref = stats.wilcoxon(a, b, method=method, alternative="two-sided").pvalue
    assert c.p_value == pytest.approx(ref, rel=1e-12)
    assert c.mean_diff == pytest.approx(float(np.mean(a - b)))
    assert c.n == n and c.test == "wilcoxon"


def test_exact_p_by_hand_and_mdd_infinite_when_n_cannot_reach_alpha():
    # every image better: exact two-sided p = 2 / 2^n
    c5 = C.paired_comparison(np.arange(1.0, 6.0), np.zeros(5), True, n_boot=100)
    assert c5.p_value == pytest.approx(2 / 32)
    c6 = C.paired_comparison(np.arange(1.0, 7.0), np.zeros(6), True, n_boot=100)
    assert c6.p_value == pytest.approx(2 / 64)
    t = C.verdicts([c5, c6])  # Holm over 2: 0.0625 -> 0.0625, 0.03125 * 2 = 0.0625
    assert t["p_holm"].tolist() == pytest.approx([0.0625, 0.0625])
    assert t["verdict"].tolist() == [C.NO_DIFF, C.NO_DIFF]
    assert np.isinf(t["mdd"]).all()  # 2^(1-n) >= 0.05 / 2 for n = 5, 6: no verdict possible
    t1 = C.verdicts([c6])
    assert t1["verdict"].tolist() == [C.BETTER] and np.isfinite(t1["mdd"]).all()


def test_lower_is_better_flips_the_verdict():
    a, b = np.linspace(0.1, 0.3, 12), np.linspace(0.2, 0.4, 12) + 0.01 * np.arange(12)
    up = C.verdicts([C.paired_comparison(a, b, higher_is_better=True)])
    down = C.verdicts([C.paired_comparison(a, b, higher_is_better=False)])
    assert up["verdict"].item() == C.WORSE and down["verdict"].item() == C.BETTER
    assert up["mean_diff"].item() == pytest.approx(-down["mean_diff"].item())


def test_mdd_formula_by_hand():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 0.1, 40)
    c = C.paired_comparison(d, np.zeros(40), True, n_boot=50)
    z = stats.norm.ppf(1 - 0.05 / 6) + stats.norm.ppf(0.8)  # family of 3: alpha / 3, two-sided
    want = z * d.std(ddof=1) / np.sqrt(40) * np.sqrt(np.pi / 3)
    assert C.min_detectable_difference(c, 0.05, 3) == pytest.approx(want)


def test_margin_requires_the_differences_above_it():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.2, 0.8, 60)
    a = b + 0.05 + rng.normal(0, 0.01, 60)  # better by about 0.05
    plain = C.verdicts([C.paired_comparison(a, b, True)])
    assert plain["verdict"].item() == C.BETTER
    small = C.verdicts([C.paired_comparison(a, b, True, margin=0.02)])
    assert small["verdict"].item() == C.BETTER
    big = C.verdicts([C.paired_comparison(a, b, True, margin=0.1)])
    assert big["verdict"].item() == C.NO_DIFF  # 0.05 is not "better by at least 0.1"
    with pytest.raises(ValueError, match="margin"):
        C.paired_comparison(a, b, True, margin=float("nan"))


def test_nan_images_are_dropped_pairwise_and_identical_scores_give_no_difference():
    a = np.array([0.1, np.nan, 0.3, 0.5, 0.2])
    c = C.paired_comparison(a, np.array([0.0, 0.2, np.nan, 0.4, 0.1]), True, n_boot=100)
    assert c.n == 3
    same = C.paired_comparison(a, a.copy(), True, n_boot=100)
    t = C.verdicts([same])
    assert same.p_value == 1.0 and same.ci_low == same.ci_high == 0.0 and t["verdict"].item() == C.NO_DIFF


def test_common_random_numbers_identical_scores_identical_intervals():
    rng = np.random.default_rng(5)
    base, x = rng.uniform(size=30), rng.uniform(size=30)
    w = C.draw_weights(C.experiment_draws(30, 500, C.experiment_seed(0, ("m", "d"))), 30)
    c1 = C.paired_comparison(x, base, True, weights=w)
    c2 = C.paired_comparison(x.copy(), base, True, weights=w)
    assert (c1.ci_low, c1.ci_high) == (c2.ci_low, c2.ci_high)


def test_dataset_level_paired_bootstrap_of_the_mean_agrees_with_the_image_level_difference():
    rng = np.random.default_rng(2)
    n = 40
    sa, sb = rng.uniform(size=(n, 1)), rng.uniform(size=(n, 1)) - 0.3
    ids = [f"i{k}" for k in range(n)]
    draws = C.experiment_draws(n, 800, 7)
    c = C.paired_bootstrap_comparison(lambda s, i: float(s[:, 0].mean()), sa, sb, ids, True, draws=draws)
    assert c.mean_diff == pytest.approx(float((sa - sb).mean()))
    w = C.draw_weights(draws, n)
    img = C.paired_comparison(sa[:, 0], sb[:, 0], True, weights=w)
    assert (c.ci_low, c.ci_high) == pytest.approx((img.ci_low, img.ci_high))  # the same resamples
    assert c.p_value == pytest.approx(2 / 801) and C.verdicts([c])["verdict"].item() == C.BETTER  # 0 of 800
    # 800 resamples cannot resolve p below 2 / 801: a family of 30 such claims can give no verdict
    assert np.isinf(C.min_detectable_difference(c, 0.05, 30)) and np.isfinite(C.min_detectable_difference(c, 0.05, 1))


finite = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=40), st.booleans(), st.randoms())
def test_antisymmetry_and_relabelling(pairs, hib, rnd):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    n = a.size
    w = C.draw_weights(C.experiment_draws(n, 200, 11), n)
    ab = C.paired_comparison(a, b, hib, weights=w)
    ba = C.paired_comparison(b, a, hib, weights=w)
    assert ab.p_value == pytest.approx(ba.p_value)
    assert ab.mean_diff == pytest.approx(-ba.mean_diff, abs=1e-12)
    assert ab.effect == pytest.approx(-ba.effect, abs=1e-12)
    assert (ab.ci_low, ab.ci_high) == pytest.approx((-ba.ci_high, -ba.ci_low), abs=1e-12)
    flipped = C.paired_comparison(b, a, not hib, weights=w)  # the other direction of the same pair
    assert flipped.mean_diff == pytest.approx(ab.mean_diff, abs=1e-12) and flipped.p_value == ab.p_value
    perm = np.array(rnd.sample(range(n), n))  # relabel the images: the same comparison
    re = C.paired_comparison(a[perm], b[perm], hib, weights=w[:, perm])
    assert re.p_value == pytest.approx(ab.p_value) and re.effect == pytest.approx(ab.effect, abs=1e-12)
    assert (re.ci_low, re.ci_high) == pytest.approx((ab.ci_low, ab.ci_high), abs=1e-12)
    va, vb = C.verdicts([ab, ba]), C.verdicts([ba, ab])  # the family's order does not matter
    assert va["verdict"].tolist() == vb["verdict"].tolist()[::-1]
    assert {va["verdict"][0], va["verdict"][1]} in ({C.NO_DIFF}, {C.BETTER, C.WORSE})
