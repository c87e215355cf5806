"""The regression gate: identical passes, a deliberately worsened method fails (exit 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.report.compare import compare, format_comparison, gate_failures, read_leaderboard


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
