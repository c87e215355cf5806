"""The regression gate: identical passes, a deliberately worsened method fails (exit 1)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.report.compare import (
    compare,
    compare_paths,
    format_comparison,
    gate_failures,
    paired_verdicts,
    read_leaderboard,
)
from benchmark.report.ranking import wilcoxon_pvalues


def _board() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["m"] * 5,
            "dataset": ["d"] * 5,
            "method": ["gradcam", "layercam", "gradcam", "layercam", "gradcam"],
            "metric": ["insertion", "insertion", "deletion", "deletion", "mean_rank"],
            "mean": [0.60, 0.55, 0.20, 0.25, 1.0],
            "ci_low": [0.55, 0.50, 0.15, 0.20, np.nan],
            "ci_high": [0.65, 0.60, 0.25, 0.30, np.nan],
            "n": [50] * 5,
            "rank": [1, 2, 1, 2, 1],
            "higher_is_better": [True, True, False, False, False],
        }
    )


def test_identical_leaderboards_pass():
    t = compare(_board(), _board())
    assert set(t["status"]) <= {"ok", "info"} and "OK: no regression" in format_comparison(t)


@pytest.mark.parametrize(
    "row, new_mean, expected",
    [
        (0, 0.50, "regression"),  # higher-is-better dropped below the CI by 0.10
        (2, 0.30, "regression"),  # lower-is-better rose above the CI by 0.10
        (0, 0.70, "improved"),
        (2, 0.10, "improved"),
        (0, 0.56, "ok"),  # worse but inside the baseline CI
        (4, 3.0, "info"),  # mean rank never gates
    ],
)
def test_direction_aware_regressions(row, new_mean, expected):
    new = _board()
    new.loc[row, "mean"] = new_mean
    t = compare(new, _board()).set_index(["method", "metric"])
    key = tuple(_board().loc[row, ["method", "metric"]])
    assert t.loc[key, "status"] == expected


def test_tolerance_is_an_absolute_floor_besides_the_ci():
    new = _board()
    new.loc[1, "mean"] = 0.49  # below the CI [0.50, 0.60] by 0.01, 0.06 below the mean
    status = lambda t: t.set_index(["method", "metric"]).loc[("layercam", "insertion"), "status"]
    assert status(compare(new, _board(), tolerance=0.02)) == "regression"
    assert status(compare(new, _board(), tolerance=0.1)) == "ok"
    no_ci = _board().assign(ci_low=np.nan, ci_high=np.nan)
    new.loc[1, "mean"] = 0.54  # no baseline CI: the tolerance alone decides
    assert status(compare(new, no_ci, tolerance=0.005)) == "regression"
    assert status(compare(new, no_ci, tolerance=0.02)) == "ok"


def test_missing_and_new_rows_are_reported():
    new = _board().drop(index=1)
    extra = _board().iloc[[0]].assign(method="scorecam")
    t = compare(pd.concat([new, extra]), _board()).set_index(["method", "metric"])
    assert t.loc[("layercam", "insertion"), "status"] == "missing"
    assert t.loc[("scorecam", "insertion"), "status"] == "new"


def test_cli_exit_codes(tmp_path, capsys):
    base = tmp_path / "base.csv"
    _board().to_csv(base, index=False)
    run = tmp_path / "run"
    run.mkdir()
    _board().to_csv(run / "leaderboard.csv", index=False)
    assert main(["compare", str(run), "--baseline", str(base)]) == 0
    broken = _board()
    broken.loc[0, "mean"] = 0.40  # gradcam insertion broken
    broken.to_csv(run / "leaderboard.csv", index=False)
    assert main(["compare", str(run), "--baseline", str(base)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: 1 row(s)" in out and "gradcam" in out
    assert main(["compare", str(run), "--baseline", str(base), "--tolerance", "0.5"]) == 0
    assert main(["compare", str(tmp_path / "nope"), "--baseline", str(base)]) == 2


def _with_cost(family_column: bool = True) -> pd.DataFrame:
    b = _board()
    cost = b[b["metric"] == "insertion"].assign(
        metric="latency_ms", mean=[10.0, 12.0], ci_low=[9.0, 11.0], ci_high=[11.0, 13.0], higher_is_better=False
    )
    b = pd.concat([b, cost], ignore_index=True)
    if family_column:
        b["family"] = b["metric"].map(
            {"insertion": "faithfulness", "deletion": "faithfulness", "latency_ms": "cost", "mean_rank": ""}
        )
    return b


def test_cost_rows_are_read_from_the_family_column():
    slow = _with_cost()
    slow.loc[slow["metric"] == "latency_ms", "mean"] += 50.0
    t = compare(slow, _with_cost()).set_index(["method", "metric"])
    assert t.loc[("gradcam", "latency_ms"), "status"] == "info"
    assert (
        compare(slow, _with_cost(), gate_cost=True)
        .set_index(["method", "metric"])
        .loc[("gradcam", "latency_ms"), "status"]
        == "regression"
    )
    # the recorded family decides, not the live registry (where latency_ms is a cost metric)
    relabelled = slow.assign(family=slow["family"].replace("cost", "faithfulness"))
    ref = _with_cost().assign(family=lambda d: d["family"].replace("cost", "faithfulness"))
    t = compare(relabelled, ref).set_index(["method", "metric"])
    assert t.loc[("gradcam", "latency_ms"), "status"] == "regression"


def test_an_older_reference_without_the_family_column_is_accepted(tmp_path):
    slow = _with_cost()
    slow.loc[slow["metric"] == "latency_ms", "mean"] += 50.0
    old = _with_cost(family_column=False)
    t = compare(slow, old)  # the new board's families serve both sides
    assert set(t["status"]) == {"ok", "info"}
    assert t.set_index(["method", "metric"]).loc[("layercam", "latency_ms"), "status"] == "info"
    run = tmp_path / "old_run"  # an older run directory: no column, but its run.json recorded the families
    run.mkdir()
    old.to_csv(run / "leaderboard.csv", index=False)
    (run / "run.json").write_text('{"families": {"latency_ms": "cost", "insertion": "faithfulness"}}')
    back = read_leaderboard(run)
    assert dict(zip(back["metric"], back["family"], strict=True)) == {
        "insertion": "faithfulness",
        "deletion": "",
        "mean_rank": "",
        "latency_ms": "cost",
    }
    old.to_csv(tmp_path / "bare.csv", index=False)
    assert "family" not in read_leaderboard(tmp_path / "bare.csv").columns
    assert set(compare(old, old)["status"]) == {"ok", "info"}


def test_the_gate_compares_exactly_the_baseline_rows(tmp_path, capsys):
    """The quick gate (--require-baseline-rows): every baseline row must be present and within tolerance; a
    method added since the baseline only adds "new" rows and passes; a baseline row that disappeared fails."""
    base = tmp_path / "reference.csv"
    _board().to_csv(base, index=False)
    extra = pd.concat([_board(), _board().iloc[[0, 2]].assign(method="newcam", mean=[0.1, 0.9])])
    (tmp_path / "extra.csv").write_text(extra.to_csv(index=False))
    assert main(["compare", str(tmp_path / "extra.csv"), "--baseline", str(base), "--require-baseline-rows"]) == 0
    out = capsys.readouterr().out
    assert "OK: no regression" in out and "new: 2" in out and "newcam" in out
    t = compare(extra, _board())
    assert gate_failures(t, require_baseline_rows=True).empty and (t["status"] == "new").sum() == 2

    missing = _board().drop(index=1)  # layercam's insertion row is gone
    (tmp_path / "missing.csv").write_text(missing.to_csv(index=False))
    assert main(["compare", str(tmp_path / "missing.csv"), "--baseline", str(base), "--require-baseline-rows"]) == 1
    out = capsys.readouterr().out
    assert "MISSING: 1 baseline row(s) not in the new run" in out and "layercam" in out
    failed = gate_failures(compare(missing, _board()), require_baseline_rows=True)
    assert failed[["method", "metric", "status"]].values.tolist() == [["layercam", "insertion", "missing"]]
    # without the flag a partial run (a reduced suite) may be compared with the full reference
    assert main(["compare", str(tmp_path / "missing.csv"), "--baseline", str(base)]) == 0
    broken = extra.copy()
    broken.loc[(broken["method"] == "gradcam") & (broken["metric"] == "insertion"), "mean"] = 0.40
    (tmp_path / "broken.csv").write_text(broken.to_csv(index=False))
    assert main(["compare", str(tmp_path / "broken.csv"), "--baseline", str(base), "--require-baseline-rows"]) == 1
    assert "REGRESSION: 1 row(s)" in capsys.readouterr().out


# --- bad inputs are refused (exit 2), NaN is never "OK" (issue #24) ---------------------------------------


def _gate(tmp_path, new: pd.DataFrame | str, base: pd.DataFrame | str, *extra: str) -> int:
    paths = []
    for name, side in (("new.csv", new), ("base.csv", base)):
        p = tmp_path / name
        p.write_text(side if isinstance(side, str) else side.to_csv(index=False))
        paths.append(str(p))
    return main(["compare", paths[0], "--baseline", paths[1], *extra])


def test_bad_compare_inputs_exit_2_with_one_line(tmp_path, capsys):
    assert _gate(tmp_path, _board(), "") == 2  # an empty CSV
    assert "not a readable leaderboard" in capsys.readouterr().err
    text = _board().astype({"mean": object})
    text.loc[0, "mean"] = "high"
    assert _gate(tmp_path, _board(), text) == 2
    assert "'high', not a number" in capsys.readouterr().err
    assert _gate(tmp_path, text, _board()) == 2
    dup = pd.concat([_board(), _board().iloc[[0]]])
    assert _gate(tmp_path, _board(), dup) == 2
    assert "repeats 2 row(s)" in capsys.readouterr().err
    assert _gate(tmp_path, _board(), _board(), "--tolerance", "nan") == 2
    assert "--tolerance must be a finite number" in capsys.readouterr().err
    assert _gate(tmp_path, _board(), _board(), "--tolerance", "-1") == 2
    nan_base = _board()
    nan_base.loc[0, "mean"] = np.nan
    assert _gate(tmp_path, _board(), nan_base) == 2
    assert "non-finite mean" in capsys.readouterr().err
    assert _gate(tmp_path, _board(), _board().assign(mean=np.nan)) == 2
    assert "no finite mean" in capsys.readouterr().err


def test_a_nan_new_mean_is_a_regression(tmp_path, capsys):
    nan_new = _board()
    nan_new.loc[0, "mean"] = np.nan
    t = compare(nan_new, _board()).set_index(["method", "metric"])
    assert t.loc[("gradcam", "insertion"), "status"] == "regression"
    assert _gate(tmp_path, nan_new, _board()) == 1


def test_runs_with_other_metric_parameters_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = _run_dir(tmp_path / "a", _scores(rng), n_steps=16)
    b = _run_dir(tmp_path / "b", _scores(rng), n_steps=8)
    assert main(["compare", str(a), "--baseline", str(b)]) == 2
    assert "different parameters" in capsys.readouterr().err


# --- the paired gate (issue #25 item 4) --------------------------------------------------------------------

_DIRS = {"insertion": True, "deletion": False}


def _scores(rng, n: int = 40, shift: dict | None = None, noise: float = 0.0, base=None) -> pd.DataFrame:
    """Per-image scores of 2 methods x 2 metrics on n images; ``base`` (another such table) is reused with
    ``shift[(method, metric)]`` added (in the metric's better direction when positive) plus noise."""
    if base is None:
        rows = [
            ("m", "d", meth, met, f"img{i:03d}", float(rng.uniform(0.1, 0.9)), "ok")
            for meth in ("gradcam", "layercam")
            for met in _DIRS
            for i in range(n)
        ]
        return pd.DataFrame(rows, columns=["model", "dataset", "method", "metric", "image_id", "value", "status"])
    out = base.copy()
    for (meth, met), s in (shift or {}).items():
        sel = (out["method"] == meth) & (out["metric"] == met)
        out.loc[sel, "value"] += s if _DIRS[met] else -s
    if noise:
        out["value"] += rng.normal(0.0, noise, len(out))
    return out


def _run_dir(path, scores: pd.DataFrame, n_steps: int = 16):
    from benchmark.report.tables import leaderboard

    path.mkdir(parents=True)
    scores.to_parquet(path / "scores.parquet")
    leaderboard(scores, _DIRS, seed=0, n_boot=500).to_csv(path / "leaderboard.csv", index=False)
    exp = {"label": "m", "dataset": "d", "metric_params": {"deletion": {"n_steps": n_steps}}}
    (path / "run.json").write_text(json.dumps({"experiments": [exp]}))
    return path


def test_a_small_regression_the_ci_rule_misses_and_the_paired_rule_catches(tmp_path, capsys):
    rng = np.random.default_rng(1)
    base = _scores(rng)
    worse = _scores(rng, shift={("gradcam", "insertion"): -0.04}, noise=0.005, base=base)
    b, w = _run_dir(tmp_path / "base", base), _run_dir(tmp_path / "new", worse)
    ci = compare(read_leaderboard(w), read_leaderboard(b)).set_index(["method", "metric"])
    assert ci.loc[("gradcam", "insertion"), "status"] == "ok"  # 0.04 lies inside the spread between images
    assert main(["compare", str(w), "--baseline", str(tmp_path / "base" / "leaderboard.csv")]) == 0
    assert "rule: ci (" in capsys.readouterr().out
    assert main(["compare", str(w), "--baseline", str(b)]) == 1
    out = capsys.readouterr().out
    assert "rule: paired" in out and "REGRESSION: 1 row(s)" in out
    t = compare_paths(w, b / "scores.parquet").set_index(["method", "metric"])  # the scores file alone
    assert t.loc[("gradcam", "insertion"), "status"] == "regression"
    assert t.loc[("gradcam", "insertion"), "rule"] == "paired" and t.loc[("gradcam", "insertion"), "p_holm"] < 0.05
    assert set(t.drop(index=("gradcam", "insertion"))["status"]) <= {"ok", "info"}


def test_an_identical_rerun_never_fails_and_a_lost_image_always_does(tmp_path):
    rng = np.random.default_rng(2)
    base = _scores(rng, n=5)  # tiny n: the test could never reach significance, the rerun is identical
    b, same = _run_dir(tmp_path / "base", base), _run_dir(tmp_path / "same", base.copy())
    t = compare_paths(same, b)
    t = t[t["metric"] != "mean_rank"]  # information only
    assert set(t["status"]) == {"ok"} and set(t["rule"]) == {"paired"} and (t["p_holm"] == 1.0).all()
    lost = base.copy()
    lost.loc[3, ["value", "status"]] = [np.nan, "error"]
    t = compare_paths(_run_dir(tmp_path / "lost", lost), b)
    assert (t["status"] == "regression").sum() == 1


def test_an_equal_in_distribution_rerun_fails_at_no_more_than_the_nominal_rate():
    """4,000 seeded reruns of a 6-row gate whose per-image differences are symmetric around 0 (a changed but
    equivalent method), minimum effect 0: the share of reruns with any failing row is the family-wise error
    rate, at most alpha = 0.05 under Holm (plus 3 binomial SDs of simulation noise); a few reruns go through
    the whole ``compare`` too."""
    rng = np.random.default_rng(3)
    sims, rows, n = 4000, 6, 30
    d = rng.normal(0.0, 0.02, (sims * rows, n)) * rng.uniform(0.2, 1.0, (sims * rows, 1))
    p = wilcoxon_pvalues(d).reshape(sims, rows)
    ones = np.ones(rows, dtype=bool)
    fails = 0
    for s in range(sims):
        oriented = d[s * rows : (s + 1) * rows].mean(axis=1)
        status, _ = paired_verdicts(p[s], oriented, ones, np.zeros(rows), ones, tolerance=0.0)
        fails += bool((status == "regression").any() or (status == "improved").any())
    assert fails / sims <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / sims)
    assert fails > 0  # the simulation is not vacuous: Holm is not a wall
    base = _scores(rng, n=30)
    board = pd.DataFrame(
        [("m", "d", me, mt, 0.5, _DIRS[mt]) for me in ("gradcam", "layercam") for mt in _DIRS],
        columns=["model", "dataset", "method", "metric", "mean", "higher_is_better"],
    )
    for _ in range(5):
        rerun = _scores(rng, noise=0.001, base=base)  # an equivalent rerun below the minimum effect
        t = compare(board, board, new_scores=rerun, baseline_scores=base)
        assert set(t["status"]) == {"ok"} and set(t["rule"]) == {"paired"}
