"""Equivalent methods (identical maps, with the reason the capture proves), the inter-metric Kendall tau,
and the metric report card (saturated, separable, baseline order, beats random, verdict)."""

from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from benchmark.report import card as C
from benchmark.report.build import write_report
from benchmark.report.tables import ranked_leaderboard
from benchmark.runner import parse_suite, run_suite
from benchmark.runner.unit import fold_map_diffs

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

# fake_cnn: conv-ReLU-conv-ReLU (target layer "features": non-negative activations), global average
# pooling, linear head (gradients at the target layer constant over space)
SUITE = """
name = "equivalences"
seed = 1
device = "cpu"
batch_size = 2
shard_size = 2
gallery = 0
bootstrap = 20
plugins = ["{plugin}"]
methods = ["gradcam", "hirescam", "xgradcam", "layercam", "gradcamelementwise", "gradcampp", "eigencam", "random"]
metrics = ["fake_inside"]

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 4 }}
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    suite = parse_suite(SUITE.format(plugin=Path(runner_fakes.__file__).resolve()), default_name="equivalences")
    torch.set_num_threads(1)
    return run_suite(suite, tmp_path_factory.mktemp("eq"), quiet=True, report=partial(write_report, plots=False)).report


def test_equivalences_list_every_identical_pair_with_its_reason(report):
    eq = pd.read_csv(report.out / "equivalences.csv").fillna("")
    pairs = {frozenset((r.method, r.same_as)): r.reason for r in eq.itertuples(index=False)}
    assert frozenset(("gradcam", "hirescam")) in pairs and frozenset(("gradcam", "xgradcam")) in pairs
    assert frozenset(("hirescam", "xgradcam")) in pairs
    assert "constant over space" in pairs[frozenset(("gradcam", "hirescam"))]
    assert "non-negative activations" in pairs[frozenset(("gradcamelementwise", "layercam"))]
    assert (eq["max_abs_diff"] <= C.IDENTICAL).all()
    # every listed pair really has (almost) equal scores, and no non-identical pair is listed
    assert not any("eigencam" in p or "random" in p for p in pairs)
    sc = report.scores.pivot_table(index="image_id", columns="method", values="value")
    for p in pairs:
        a, b = sorted(p)
        np.testing.assert_allclose(sc[a], sc[b], atol=1e-5)


def test_map_diffs_are_the_pairwise_max_abs_difference():
    g = torch.Generator().manual_seed(0)
    sal = {"a": torch.rand(3, 5, 5, generator=g), "c": torch.rand(3, 5, 5, generator=g)}
    sal["b"] = sal["a"].clone()
    sal["b"][1, 2, 2] += 0.25
    acc: dict = {}
    fold_map_diffs(acc, sal)
    assert acc["a|b"] == pytest.approx(0.25)
    assert acc["a|c"] == pytest.approx(float((sal["a"] - sal["c"]).abs().max()))
    fold_map_diffs(acc, {k: v * 0 for k, v in sal.items()})  # a later batch: folded by max
    assert acc["a|b"] == pytest.approx(0.25)


def _scores(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [
        ("m", "d", method, metric, f"i{j:02d}", v, "ok", "", False)
        for (method, metric), vs in values.items()
        for j, v in enumerate(vs)
    ]
    return pd.DataFrame(
        rows, columns=["model", "dataset", "method", "metric", "image_id", "value", "status", "message", "degenerate"]
    )


def test_metric_card_known_answers():
    rng = np.random.default_rng(0)
    n = 25
    base = rng.uniform(0, 1, n)
    vals = {
        # saturated: 3 of 4 methods at 1.0 (a pointing game at its bound)
        ("a", "pg"): [1.0] * n,
        ("b", "pg"): [1.0] * n,
        ("c", "pg"): [1.0] * n,
        ("d", "pg"): list(base),
        ("random", "pg"): [0.5] * n,
        ("oracle", "pg"): [1.0] * n,
        # separable and in order: oracle >= methods >= random, every method beats random
        ("a", "sep"): list(base + 3),
        ("b", "sep"): list(base + 2),
        ("c", "sep"): list(base + 1),
        ("d", "sep"): list(base + 0.5),
        ("random", "sep"): list(base),
        ("oracle", "sep"): list(base + 4),
        # lower is better, one method worse than random
        ("a", "low"): list(base),
        ("b", "low"): list(base + 0.1),
        ("c", "low"): list(base + 0.2),
        ("d", "low"): list(base + 2),
        ("random", "low"): list(base + 1),
        ("oracle", "low"): list(base - 1),
    }
    dirs = {"pg": True, "sep": True, "low": False}
    r = ranked_leaderboard(_scores(vals), dirs, n_boot=100, baselines=["random", "oracle"])
    taus = C.kendall_taus(r.board)
    fams = {"pg": "localization", "sep": "faithfulness", "low": "faithfulness"}
    card = C.metric_card(r.board, r.pairwise, r.tests, fams, taus=taus).set_index("metric")
    assert card.loc["pg", "saturated_share"] == 0.75 and bool(card.loc["pg", "saturated"])
    assert card.loc["pg", "verdict"].startswith("saturated")
    assert card.loc["sep", "separable"] == 1.0 and card.loc["sep", "verdict"] == "ok"
    assert card.loc["sep", "baseline_order"] == "ok" and card.loc["sep", "beats_random"] == "4/4"
    assert card.loc["low", "baseline_order"] == "violated" and card.loc["low", "violators"] == "below random: d"
    assert card.loc["low", "beats_random"] == "3/4"
    assert card.loc["sep", "n_methods"] == 4 and card.loc["sep", "friedman_p"] < 1e-6
    # Kendall tau of the rankings, against scipy (direction-aware ranks: 1 = best)
    t = taus.set_index(["metric_a", "metric_b"])["tau"]
    b = r.board[~r.board["baseline"]].pivot_table(index="method", columns="metric", values="rank")
    assert t["sep", "low"] == pytest.approx(stats.kendalltau(b["sep"], b["low"]).statistic)
    assert t["sep", "sep"] == 1.0 and t["sep", "low"] == pytest.approx(1.0)
    assert card.loc["sep", "median_tau"] == pytest.approx(np.nanmedian([t["sep", "pg"], t["sep", "low"]]))
    # robustness / sanity: the baselines read neither input nor model, no reference order
    card2 = C.metric_card(r.board, r.pairwise, r.tests, {**fams, "low": "robustness"}).set_index("metric")
    assert card2.loc["low", "baseline_order"] == "n/a" and card2.loc["low", "beats_random"] == ""


def test_vectorised_kendall_tau_equals_scipy_with_ties_and_missing():
    rng = np.random.default_rng(5)
    r = rng.integers(1, 5, (9, 6)).astype(float)
    r[2, 1] = np.nan
    r[:, 5] = 2.0  # a constant ranking: NaN
    tau, common = C.kendall_tau_matrix(r)
    for a in range(6):
        for b in range(6):
            ok = np.isfinite(r[:, a]) & np.isfinite(r[:, b])
            assert common[a, b] == ok.sum()
            ref = stats.kendalltau(r[ok, a], r[ok, b]).statistic
            if np.isnan(ref):
                assert np.isnan(tau[a, b])
            else:
                assert tau[a, b] == pytest.approx(ref)


def test_report_sections_show_every_family_of_the_one_list_truth_included():
    """The report orders its family tables and its card rows by ``schema.METRIC_FAMILIES`` (+ "other"): a
    ``truth`` metric gets its table and its card row (it used to be missing from the card's rows), and a
    family outside the list (a Quantus bridge's ``complexity``) is shown as well, after the listed ones."""
    from benchmark.report.html import experiment_section
    from benchmark.schema import METRIC_FAMILIES

    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 20)
    vals = {
        (m, k): list(base + i + (j if k == "cx" else 0))
        for i, m in enumerate(["a", "b", "random", "oracle"])
        for j, k in enumerate(["tr", "del", "cx"])
    }
    r = ranked_leaderboard(
        _scores(vals), {"tr": True, "del": False, "cx": True}, n_boot=50, baselines=["random", "oracle"]
    )
    fams = {"tr": "truth", "del": "faithfulness", "cx": "complexity"}
    card = C.metric_card(r.board, r.pairwise, r.tests, fams)
    html = experiment_section("m", "d", r.board, card, pd.DataFrame(), r.tests, fams, {})
    heads = re.findall(r"<h4>([^<]*)</h4>", html)
    assert heads == ["faithfulness", "truth", "complexity"]
    from benchmark.report.build import headline_metrics

    # the terminal summary's pick (one metric per family, in the same order) reads the same list
    run = {"families": {**fams, "lat": "cost", "rob": "robustness"}}
    board = pd.DataFrame({"metric": ["lat", "cx", "tr", "rob", "del"]})
    assert headline_metrics(run, board, k=4) == ["del", "rob", "tr", "lat"]
    assert heads[:2] == [f for f in METRIC_FAMILIES if f in ("faithfulness", "truth")]
    card_rows = re.findall(r'<tr[^>]*><td class="l">([^<]*)</td><td class="l">image</td>', html)
    assert card_rows == ["del", "tr", "cx"]  # by family: faithfulness, truth, then "other"
