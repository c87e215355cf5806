"""The findings: per experiment one line (best group per family, what cannot be concluded, the n needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.report import card as C
from benchmark.report.findings import (
    collapse,
    equivalence_classes,
    experiment_findings,
    findings_html,
    findings_text,
    min_n_to_separate,
    short_names,
)
from benchmark.report.ranking import holm, wilcoxon_pvalues
from benchmark.report.tables import ranked_leaderboard


def _best_holm_p(k: int, n: int) -> float:
    """The smallest Holm-adjusted p over the k (k-1)/2 pairs when one pair's n differences all share a sign
    (distinct magnitudes: scipy's exact null distribution), the other pairs null."""
    m = k * (k - 1) // 2
    d = np.tile(np.linspace(1.0, 2.0, n), (m, 1)) * np.where(np.arange(n) % 2, 1.0, -1.0)  # p = 1-ish
    d[0] = np.linspace(1.0, 2.0, n)  # every difference positive: the smallest exact p, 2 / 2**n
    return float(np.nanmin(holm(wilcoxon_pvalues(d))))


@pytest.mark.parametrize("k", [2, 3, 5, 9, 22])
def test_min_n_is_where_the_exact_wilcoxon_holm_test_first_can_separate(k):
    n = min_n_to_separate(k)
    assert _best_holm_p(k, n) < 0.05
    assert _best_holm_p(k, n - 1) >= 0.05
    if k == 2:
        assert n == 6  # 2 / 2**6 = 0.031 < 0.05 <= 2 / 2**5 (the textbook minimum of the signed-rank test)


@given(st.integers(2, 60))
@settings(max_examples=30, deadline=None)
def test_min_n_grows_with_the_number_of_pairs(k):
    assert min_n_to_separate(k + 1) >= min_n_to_separate(k)
    assert 2.0 ** (1 - min_n_to_separate(k)) < 0.05 / (k * (k - 1) / 2)


def test_short_names_and_collapse():
    assert short_names(["a", "b"]) == "a, b"
    assert short_names(list("abcdef")) == "a, b, c +3"
    eq = pd.DataFrame(
        [("m", "d", "hirescam", "gradcam", 0.0, ""), ("m", "d", "xgradcam", "hirescam", 0.0, "")],
        columns=C.EQUIVALENCE_COLUMNS,
    )
    classes = equivalence_classes(eq, "m", "d")
    assert classes == {"gradcam": ["gradcam", "hirescam", "xgradcam"]}
    assert equivalence_classes(eq, "m", "other") == {}
    assert collapse(["layercam", "xgradcam", "gradcam", "hirescam", "cam"], classes) == [
        "layercam",
        "xgradcam (=gradcam, hirescam)",
        "cam",
    ]


def _scores(values: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    rows = [
        ("m", dataset, method, metric, f"i{j:02d}", v, "ok", "", False)
        for (dataset, method, metric), vs in values.items()
        for j, v in enumerate(vs)
    ]
    cols = ["model", "dataset", "method", "metric", "image_id", "value", "status", "message", "degenerate"]
    return pd.DataFrame(rows, columns=cols)


def test_findings_of_a_separating_and_a_saturated_experiment():
    rng = np.random.default_rng(0)
    n = 30
    base = rng.uniform(0, 1, n)
    vals: dict = {}
    # "clear": a and b (identical maps) best on both faithfulness metrics, c, d, e clearly worse; the pointing
    # game saturated
    for metric, shift in (("del", 0.0), ("ins", 0.5)):
        vals[("clear", "a", metric)] = list(base + 3 + shift)
        vals[("clear", "b", metric)] = list(base + 3 + shift)
        for meth, off in zip("cde", (0.0, 1.0, 2.0), strict=True):
            vals[("clear", meth, metric)] = list(base + shift + off)
    for meth in "abcde":
        vals[("clear", meth, "pg")] = [1.0] * n
    # "flat": 3 images, nothing can be separated (n below the test's minimum for 3 methods)
    for meth, off in zip("abc", (0.0, 0.1, 0.2), strict=True):
        for metric in ("del", "ins", "pg"):
            vals[("flat", meth, metric)] = list(base[:3] + off)
    scores = _scores(vals)
    fams = {"del": "faithfulness", "ins": "faithfulness", "pg": "localization"}
    r = ranked_leaderboard(scores, {"del": True, "ins": True, "pg": True}, n_boot=50, families=fams)
    card = C.metric_card(r.board, r.pairwise, r.tests, fams)
    eq = pd.DataFrame([("m", "clear", "b", "a", 0.0, "")], columns=C.EQUIVALENCE_COLUMNS)
    run = {"families": fams, "experiments": [{"label": "m", "dataset": "clear", "n_images": n}]}
    found = experiment_findings(r.board, card, eq, run)
    assert [f.dataset for f in found] == ["clear", "flat"]  # the one that concludes something first
    clear, flat = found
    fam = {b.family: b for b in clear.best}
    assert fam["faithfulness"].names == ["a (=b)"] and fam["faithfulness"].in_a == 2
    assert fam["localization"].rankable == 0 and clear.cannot == {"saturated": ["pg"]}
    assert flat.n == 3 and flat.rankable == 0 and flat.n_needed == min_n_to_separate(3) > 3
    text = findings_text(found)
    lines = text.splitlines()
    assert len(lines) <= 1 + 2 * len(found)  # one line per experiment, one more for what it cannot conclude
    assert "faithfulness: a (=b) (a on 2/2)" in lines[1]
    assert f"n = 3 < {flat.n_needed}" in text
    html = findings_html(found, {("m", "clear"): "exp-clear"})
    assert html.index("clear") < html.index("flat") and 'href="#exp-clear"' in html


def test_card_cells_give_counts_and_at_most_three_names():
    from benchmark.report.html import _few

    text = "; ".join(f"above oracle: m{i}" for i in range(7)) + "; below random: x; oracle below random"
    assert _few(text) == "above oracle: 7 (m0, m1, m2 +4); below random: 1 (x); oracle below random"
    assert _few("") == ""
