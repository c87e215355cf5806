"""The store: atomic parts, stale/temporary files, and a real SIGKILL in the middle of a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.runner.execute import UnitResult
from benchmark.store import Store, atomic_write_bytes, read_meta

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _result(key: str, value: float = 1.0) -> UnitResult:
    scores = pd.DataFrame(
        {
            "model": ["m"],
            "dataset": ["d"],
            "method": ["gradcam"],
            "metric": ["x"],
            "image_id": ["i0"],
            "value": [value],
            "status": ["ok"],
            "message": [""],
            "degenerate": [False],
        }
    )
    curves = pd.DataFrame(
        {
            "model": ["m"] * 2,
            "dataset": ["d"] * 2,
            "method": ["gradcam"] * 2,
            "metric": ["x"] * 2,
            "step": [0, 1],
            "x": [0.0, 1.0],
            "value": [1.0, 0.5],
            "n": [1, 1],
        }
    )
    timings = pd.DataFrame(
        {"unit": [key], "model": ["m"], "dataset": ["d"], "stage": ["total"], "name": ["unit"], "seconds": [0.1]}
    )
    return UnitResult(key, scores, curves, timings)


def test_parts_are_committed_atomically_with_their_hash(tmp_path):
    st = Store(tmp_path, "abc123")
    st.prepare()
    path = st.write_unit(_result("00-u-000000-000001"))
    assert path.name == "00-u-000000-000001__abc123.parquet"
    assert st.done() == {"00-u-000000-000001"}
    meta = read_meta(path)
    assert meta["suite_hash"] == "abc123" and meta["curve_rows"] == 2 and "curves" not in meta
    assert pd.read_parquet(st.curves_path("00-u-000000-000001"))["value"].tolist() == [1.0, 0.5]
    assert not [p for p in (tmp_path / "parts").iterdir() if p.name.startswith(".")]
    st.write_unit(_result("00-u-000001-000002", 3.0))
    curves = st.load_curves()
    assert curves["n"].tolist() == [2, 2] and curves["value"].tolist() == [1.0, 0.5]
    assert st.load_scores()["value"].tolist() == [1.0, 3.0]


def test_prepare_keeps_other_settings_parts_unread_removes_temp_files_and_fresh_starts_over(tmp_path):
    old = Store(tmp_path, "old000")
    old.prepare()
    old.write_unit(_result("00-u-000000-000001"))
    (tmp_path / "parts" / ".00-u.parquet.x1y2.tmp").write_bytes(b"partial")
    logs: list[str] = []
    new = Store(tmp_path, "new111", log=logs.append, units=["00-u-000000-000001"])
    new.prepare()
    assert [p.name for p in (tmp_path / "parts").iterdir()] == ["00-u-000000-000001__old000.parquet"]
    assert "1 result part(s)" in logs[0] and "kept, not reported" in logs[0]
    assert new.done() == set() and new.load_scores().empty and new.unreported() == ["00-u-000000-000001__old000"]
    new.write_unit(_result("00-u-000000-000001", 5.0))
    assert new.done() == {"00-u-000000-000001"} and new.load_scores()["value"].tolist() == [5.0]
    assert old.load_scores()["value"].tolist() == [1.0]  # switching back finds its results again
    new.prepare(fresh=True)
    assert new.done() == set() and old.done() == set()


def test_reading_sees_only_the_units_asked_for(tmp_path):
    st = Store(tmp_path, "h")
    st.prepare()
    for k in ("00-u-000000-000001", "00-u-000001-000002"):
        st.write_unit(_result(k, float(k[-1])))
    part = Store(tmp_path, "h", units=["00-u-000000-000001"])
    assert part.load_scores()["value"].tolist() == [1.0] and part.unreported() == ["00-u-000001-000002"]
    assert len(part.load_timings()) == 1 and part.load_curves()["n"].tolist() == [1, 1]
    assert st.load_scores()["value"].tolist() == [1.0, 2.0] and st.unreported() == []


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_tables_as_an_uninterrupted_run(tmp_path):
    suite = runner_fakes.SUITES / "resume.toml"
    out = tmp_path / "killed"
    cmd = [sys.executable, "run_bench.py", "run", str(suite), "--out", str(out), "--no-plots"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = out / "parts"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if parts.is_dir() and any(p.suffix == ".parquet" for p in parts.iterdir()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_before = len(list(parts.glob("*.parquet")))
    assert 1 <= n_before < 8 and not (out / "scores.parquet").exists()

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{n_before} of 8 unit(s) already finished" in rerun.stderr
    assert f"{8 - n_before} unit(s) run, {n_before} reused" in rerun.stdout

    clean = runner_fakes.run_cached(tmp_path, "resume")
    assert (out / "scores.parquet").read_bytes() == (clean.out / "scores.parquet").read_bytes()
    assert (out / "leaderboard.csv").read_text() == (clean.out / "leaderboard.csv").read_text()
    curves = pd.read_parquet(out / "curves.parquet")
    pd.testing.assert_frame_equal(curves, pd.read_parquet(clean.out / "curves.parquet"))
