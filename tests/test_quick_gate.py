"""The CI gate end to end, on the real quick suite and its committed reference leaderboard.

- the full quick suite (``python run_bench.py``'s job) reproduces every row of
  ``results/reference/quick-leaderboard.csv`` within the gate's tolerance: ``compare --require-baseline-rows``
  exits 0 (rows of methods or metrics added since the reference are "new", not failures; the cheap
  version of this check is ``tests/test_report_compare.py::test_the_gate_compares_exactly_the_baseline_rows``);
- the gate is paired (per-image, ``REFERENCE_SCORES``) where the per-image reference is committed, else the
  leaderboard's CI rule, and says which;
- a deliberately broken Grad-CAM (a plugin that inverts its map) makes ``compare`` exit 1 and name it;
- the README's plugin example gets its own leaderboard rows next to the built-ins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference" / "quick-leaderboard.csv"
#: The per-image reference (the quick run's ``scores.parquet``): where it is committed, the gate uses the paired
#: rule (Wilcoxon on the shared images, Holm over the rows that changed); otherwise the leaderboard's CI rule.
REFERENCE_SCORES = ROOT / "results" / "reference" / "quick-scores.parquet"
GATE_BASELINE = REFERENCE_SCORES if REFERENCE_SCORES.is_file() else REFERENCE
GATE_RULE = "paired (Wilcoxon signed-rank on shared images" if REFERENCE_SCORES.is_file() else "rule: ci"
SHAPES_SUITE = ROOT / "tests" / "runner_suites" / "quick_shapes.toml"


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(var, None)  # the gate runs with the machine's threads, whatever the caller's shell set
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_quick_suite_reproduces_the_reference_leaderboard(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    run = _cli("run", "quick", "--out", str(out), "--quiet", "--no-plots", timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    new = pd.read_csv(out / "leaderboard.csv")
    ref = pd.read_csv(REFERENCE)
    keys = ["model", "dataset", "method", "metric"]
    # exactly the reference's rows are gated: each must be there and within tolerance; a method or metric
    # added since (quick.toml selects "all") only adds rows that compare reports as "new"
    assert set(map(tuple, ref[keys].values)) <= set(map(tuple, new[keys].values))
    gate = _cli("compare", str(out), "--baseline", str(GATE_BASELINE), "--require-baseline-rows")
    assert gate.returncode == 0, gate.stdout[-3000:]
    assert "OK: no regression" in gate.stdout and GATE_RULE in gate.stdout


def test_compare_fails_when_a_method_is_deliberately_broken(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    run = _cli("run", str(SHAPES_SUITE), "--out", str(good), "--quiet", "--no-plots")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ok = _cli("compare", str(good), "--baseline", str(GATE_BASELINE))
    assert ok.returncode == 0, ok.stdout[-3000:]  # the same rows as the reference: no regression

    broken = ROOT / "tests" / "plugins" / "broken_gradcam.py"
    run = _cli("run", str(SHAPES_SUITE), "--out", str(bad), "--quiet", "--no-plots", "--plugin", str(broken))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    gate = _cli("compare", str(bad), "--baseline", str(GATE_BASELINE))
    assert gate.returncode == 1, gate.stdout[-3000:]
    assert GATE_RULE in gate.stdout
    assert "REGRESSION" in gate.stdout
    regressed = [line for line in gate.stdout.splitlines() if line.rstrip().endswith(" regression")]
    assert regressed and all(" gradcam " in f" {line} " for line in regressed), regressed
    assert not any("layercam" in line for line in regressed)
    # the paired rule against the good run's results directory (per-image scores on both sides)
    paired = _cli("compare", str(bad), "--baseline", str(good))
    assert paired.returncode == 1 and "rule: paired" in paired.stdout, paired.stdout[-3000:]
    regressed = [line for line in paired.stdout.splitlines() if line.rstrip().endswith(" regression")]
    assert regressed and all(" gradcam " in f" {line} " for line in regressed), regressed
    same = _cli("compare", str(good), "--baseline", str(good))
    assert same.returncode == 0 and "rule: paired" in same.stdout, same.stdout[-3000:]


def test_plugin_example_gets_a_leaderboard_row(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    example = ROOT / "examples" / "my_cam.py"
    text = SHAPES_SUITE.read_text()
    assert 'methods = ["gradcam", "layercam"]' in text
    suite = tmp_path / "quick_shapes_mine.toml"  # the reduced quick suite, with the plugin's method added
    suite.write_text(text.replace('methods = ["gradcam", "layercam"]', 'methods = ["gradcam", "topk_gradcam"]'))
    run = _cli("run", str(suite), "--out", str(out), "--quiet", "--no-plots", "--plugin", str(example))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lb = pd.read_csv(out / "leaderboard.csv")
    mine = lb[lb["method"] == "topk_gradcam"]
    assert set(mine["metric"]) >= {"pointing_game", "deletion_auc", "insertion_auc", "mask_iou", "mean_rank"}
    assert mine["mean"].notna().all()
