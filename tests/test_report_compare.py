"""The regression gate: identical passes, a deliberately worsened method fails (exit 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.report.compare import compare, format_comparison


def _board() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["m"] * 5, "dataset": ["d"] * 5,
        "method": ["gradcam", "layercam", "gradcam", "layercam", "gradcam"],
        "metric": ["insertion", "insertion", "deletion", "deletion", "mean_rank"],
        "mean": [0.60, 0.55, 0.20, 0.25, 1.0],
        "ci_low": [0.55, 0.50, 0.15, 0.20, np.nan],
        "ci_high": [0.65, 0.60, 0.25, 0.30, np.nan],
        "n": [50] * 5, "rank": [1, 2, 1, 2, 1],
        "higher_is_better": [True, True, False, False, False],
    })


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
