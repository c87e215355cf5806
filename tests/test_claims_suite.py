"""``[[claims]]`` in suites: validated at load (form, experiments) and against the plan (methods, metrics);
tested by the report (claims.csv, the report's leading section); ``--focus`` adds the focused method's claims
against the field with a win/tie/loss summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import SuiteError
from benchmark.report import claims as C
from benchmark.runner.suite import Claim, check_claims, parse_suite

SUITE = """
name = "s"
methods = ["gradcam", "layercam"]
[[experiments]]
model = "shapes_cnn"
dataset = "shapes"
"""


def _suite(claims: str):
    return parse_suite(SUITE + claims)


def test_claims_parse_and_stay_out_of_the_hash():
    s = _suite('[[claims]]\nmethod = "layercam"\nthan = "gradcam"\nmetrics = ["deletion_auc"]\nmargin = 0.01\n')
    assert s.claims == (Claim("layercam", ("gradcam",), ("deletion_auc",), "all", 0.01, ""),)
    assert s.hash() == parse_suite(SUITE).hash()  # a claim never recomputes anything


@pytest.mark.parametrize(
    "claim, message",
    [
        ('method = "layercam"\nmetrics = "faithfulness"', "needs `than = ...`"),
        ('method = "layercam"\nthan = ["layercam"]\nmetrics = "x"', "names the claim's own method"),
        ('method = "layercam"\nthan = "gradcam"\nmetrics = []', "`metrics` must be a name"),
        (
            'method = "layercam"\nthan = "gradcam"\nmetrics = "x"\nmargin = nan',
            "`claims[0].margin` = nan: numbers in a suite must be finite",
        ),
        ('method = "layercam"\nthan = "gradcam"\nmetrics = "x"\nmargin = -0.1', "`margin` must be a finite"),
        (
            'method = "layercam"\nthan = "gradcam"\nmetrics = "x"\nexperiments = ["shapes_cn"]',
            "Did you mean 'shapes_cnn'",
        ),
        ('method = "layercam"\nthan = "gradcam"\nmetric = "x"', "Did you mean 'metrics'"),
    ],
)
def test_malformed_claims_are_refused_with_the_fix(claim, message):
    with pytest.raises(SuiteError, match="claims") as e:
        _suite("[[claims]]\n" + claim + "\n")
    assert message in str(e.value)


def test_claims_naming_what_no_experiment_runs_are_refused():
    exps = [("shapes_cnn", "shapes", ("gradcam", "layercam", "random"), ("deletion_auc", "latency_ms"))]
    fams = {"deletion_auc": "faithfulness", "latency_ms": "cost"}
    ok = Claim("layercam", ("gradcam",), ("faithfulness",))
    check_claims([ok], exps, fams, ["random"])
    for bad, msg in [
        (Claim("layercm", ("gradcam",), ("deletion_auc",)), "Did you mean 'layercam'"),
        (Claim("layercam", ("scorecam",), ("deletion_auc",)), "'scorecam' is not run"),
        (Claim("layercam", ("gradcam",), ("insertion_auc",)), "Did you mean 'deletion_auc'"),
        (Claim("layercam", ("gradcam",), ("localization",)), "neither a metric nor a family"),
    ]:
        with pytest.raises(SuiteError, match="claims") as e:
            check_claims([bad], exps, fams, ["random"])
        assert msg in str(e.value)
    only = [("m", "d", ("gradcam", "random"), ("deletion_auc",))]
    with pytest.raises(SuiteError, match="finds no other"):
        check_claims([Claim("gradcam", "all", "quality")], only, fams, ["random"])


def _scores(rng, n=30) -> pd.DataFrame:
    rows = []
    for i in range(n):
        g = rng.uniform(0.2, 0.8)
        rows += [
            ("m", "d", "gradcam", "deletion_auc", f"i{i}", g, "ok"),
            ("m", "d", "layercam", "deletion_auc", f"i{i}", g - 0.05 + rng.normal(0, 0.01), "ok"),  # better
            ("m", "d", "eigencam", "deletion_auc", f"i{i}", g + (0.01 if i % 2 else -0.01), "ok"),  # tie
            ("m", "d", "random", "deletion_auc", f"i{i}", 0.9, "ok"),
        ]
        for m, t in (("gradcam", 10.0), ("layercam", 10.0), ("eigencam", 30.0), ("random", 0.1)):
            rows.append(("m", "d", m, "latency_ms", f"i{i}", t + i // 5, "ok"))  # one timing per 5 images
    return pd.DataFrame(rows, columns=["model", "dataset", "method", "metric", "image_id", "value", "status"])


def _run(claims) -> dict:
    return {
        "claims": claims,
        "directions": {"deletion_auc": False, "latency_ms": False},
        "families": {"deletion_auc": "faithfulness", "latency_ms": "cost"},
        "seed": 0,
        "bootstrap": 300,
    }


def test_claim_table_verdicts_groups_and_win_tie_loss():
    rng = np.random.default_rng(0)
    scores = _scores(rng)
    suite_claim = {"method": "layercam", "than": ["gradcam", "eigencam"], "metrics": ["deletion_auc"]}
    focus = {"method": "gradcam", "than": "all", "metrics": "quality", "group": "focus"}
    t = C.claim_table(scores, _run([suite_claim, focus]), baselines=["random"])
    own = t[t["group"] == "claims"].set_index("than")
    assert own.loc["gradcam", "verdict"] == C.BETTER and own.loc["eigencam", "verdict"] == C.BETTER
    assert own.loc["gradcam", "mean_diff"] > 0 and own.loc["gradcam", "n"] == 30  # oriented: lower deletion
    # Holm within each group: the suite's two claims form one family
    raw = own["p_value"].sort_values().to_numpy()
    assert own["p_holm"].sort_values().to_numpy() == pytest.approx(np.minimum(1, np.maximum.accumulate(raw * [2, 1])))
    f = t[t["group"] == "focus"]
    assert set(f["than"]) == {"layercam", "eigencam"}  # every other non-baseline method
    assert set(f["metric"]) == {"deletion_auc"}  # quality metrics only: no cost
    wtl = C.win_tie_loss(f).set_index("family")
    assert wtl.loc["faithfulness", ["win", "tie", "loss"]].tolist() == [0, 1, 1]
    html = C.claims_html(t)
    assert html.startswith("<h2>Claims</h2>") and "win / tie / loss" in html


def test_cost_claims_use_the_timings_not_the_copied_image_values():
    scores = _scores(np.random.default_rng(1))
    t = C.claim_table(
        scores, _run([{"method": "gradcam", "than": ["eigencam", "layercam"], "metrics": ["latency_ms"]}])
    )
    t = t.set_index("than")
    assert (t["test"] == "mannwhitney").all() and (t["n"] == 6).all()  # 6 timings each, not 30 images
    assert t.loc["eigencam", "verdict"] == C.BETTER  # 20 ms faster on every timing: 2 / C(12, 6) = 0.002
    assert t.loc["layercam", "verdict"] == C.NO_DIFF and t.loc["layercam", "mean_diff"] == 0.0
    # the per-image (copied) values would give n = 30 and a p no measurement supports
    assert t.loc["eigencam", "p_value"] == pytest.approx(2 / 924)


RUN_SUITE = """
name = "claims_e2e"
device = "cpu"
gallery = 0
bootstrap = 200
methods = ["gradcam", "layercam", "random"]
metrics = ["pointing_game", "deletion_auc"]
metric_params.deletion_auc = { n_steps = 4 }
[[experiments]]
model = "shapes_cnn"
dataset = "shapes"
data = { n = 8, split = "test", scene = "clutter" }
"""


def test_run_writes_claims_and_focus_leads_the_report(tmp_path, capsys):
    from benchmark.cli import main

    suite = tmp_path / "s.toml"
    suite.write_text(RUN_SUITE + '[[claims]]\nmethod = "layercam"\nthan = "gradcam"\nmetrics = "faithfulness"\n')
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--no-plots", "--focus", "gradcam"]) == 0
    printed = capsys.readouterr().out
    assert "--focus gradcam: win / tie / loss" in printed and "claims: 1 comparison(s)" in printed
    t = pd.read_csv(out / "claims.csv")
    assert t[t["group"] == "claims"][["method", "than", "metric", "n"]].values.tolist() == [
        ["layercam", "gradcam", "deletion_auc", 8]
    ]
    assert set(t[t["group"] == "focus"]["metric"]) == {"pointing_game", "deletion_auc"}
    assert set(t[t["group"] == "focus"]["than"]) == {"layercam"}  # the random baseline is no opponent
    html = (out / "report.html").read_text()
    assert html.index("<h2>Claims</h2>") < html.index("<h2>shapes_cnn on shapes</h2>")

    bad = tmp_path / "bad.toml"
    bad.write_text(RUN_SUITE + '[[claims]]\nmethod = "layercam"\nthan = "scorecam"\nmetrics = "faithfulness"\n')
    assert main(["run", str(bad), "--out", str(tmp_path / "bad"), "--quiet", "--no-plots"]) == 2
    assert "'scorecam' is not run" in capsys.readouterr().err
    assert not list((tmp_path / "bad").glob("parts/*.parquet"))  # refused before any work


def test_dataset_level_claims_use_the_paired_bootstrap_over_images():
    rng = np.random.default_rng(4)
    n = 40
    rows = []
    for i in range(n):
        x = rng.uniform(0.3, 0.7)
        rows += [
            ("m", "d", "gradcam", "pxap", f"i{i}", [x, 1.0]),
            ("m", "d", "layercam", "pxap", f"i{i}", [x + 0.1, 1.0]),
        ]
    stats = pd.DataFrame(rows, columns=["model", "dataset", "method", "metric", "image_id", "stats"])
    scores = pd.DataFrame(columns=["model", "dataset", "method", "metric", "image_id", "value", "status"])
    run = {**_run([{"method": "layercam", "than": ["gradcam"], "metrics": ["pxap"]}]), "directions": {"pxap": True}}
    run["families"] = {"pxap": "localization"}

    def compute_for(model, dataset, metric):
        return lambda arr, ids: float(arr[:, 0].sum() / arr[:, 1].sum())

    t = C.claim_table(scores, run, stats, compute_for=compute_for)
    r = t.iloc[0]
    assert r["test"] == "paired_bootstrap" and r["n"] == n and r["verdict"] == C.BETTER
    assert r["mean_diff"] == pytest.approx(0.1) and r["ci_low"] == pytest.approx(0.1) == r["ci_high"]
