"""Fault injection for the cases of issue #24's "Measured" list that tests/test_integrity.py did not cover:
stale tables under another run's record, a truncated gallery file, a full disk while plotting, a checkpoint
overwritten between runs, and SIGTERM while loky workers compute."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.report.build import write_report
from benchmark.runner import parse_suite, run_suite

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent
FAKES = Path(runner_fakes.__file__).resolve()
SLEEPY = HERE / "plugins" / "sleepy_method.py"
SUITE = runner_fakes.fake_suite_toml("faults")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "a"
    run_suite(parse_suite(SUITE, default_name="faults"), out, quiet=True, report=partial(write_report, plots=False))
    return out


@pytest.fixture
def copy(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out, symlinks=True)
    return out


def test_compare_refuses_tables_whose_run_record_matches_no_part(finished, copy, capsys):
    record = json.loads((copy / "run.json").read_text())
    record["suite_hash"] = "0" * len(record["suite_hash"])
    (copy / "run.json").write_text(json.dumps(record))
    assert main(["compare", str(copy), "--baseline", str(finished)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 0 of the 2 units of its run (suite 'faults')" in err[0]
    assert main(["report", str(copy)]) == 2  # report refuses it too (no empty leaderboard, exit 0)


def test_an_interrupted_suite_in_another_suites_folder_never_passes_compare_on_the_old_tables(
    finished, copy, capsys, monkeypatch
):
    import benchmark.runner.driver as D

    def interrupted(*a, **k):
        raise KeyboardInterrupt  # suite B stops before its first unit, leaving A's tables in the folder

    other = SUITE.replace('name = "faults"', 'name = "other"').replace("n = 4", "n = 2")
    monkeypatch.setattr(D, "run_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(parse_suite(other, default_name="other"), copy, quiet=True, report=False)
    monkeypatch.undo()
    assert json.loads((copy / "run.json").read_text())["suite"] == "other"
    assert (copy / "leaderboard.csv").is_file()  # A's, stale
    capsys.readouterr()
    assert main(["compare", str(copy), "--baseline", str(finished)]) == 2
    assert "holds 0 of the 1 units of its run (suite 'other')" in capsys.readouterr().err
    assert main(["compare", str(finished), "--baseline", str(finished)]) == 0  # a finished run still compares


def test_a_truncated_gallery_file_is_named_quarantined_and_its_unit_recomputed(copy, capsys):
    gallery = sorted((copy / "gallery").iterdir())[0]
    gallery.write_bytes(gallery.read_bytes()[:50])
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{gallery} fails its checksum: moved unit" in err and "holds 1 of the 2 units" in err
    assert not gallery.exists() and any((copy / "quarantine").iterdir())
    again = run_suite(parse_suite(SUITE, default_name="faults"), copy, quiet=True, report=False)
    assert len(again.ran) == 1 and len(again.reused) == 1


def test_a_full_disk_while_plotting_is_one_line_and_keeps_the_units(copy, capsys, monkeypatch):
    import matplotlib.figure

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it is on a full disk (no space left on device). Finished units are kept" in err[0]
    assert "Traceback" not in "\n".join(err) and len(list((copy / "parts").glob("*.parquet"))) == 2


def test_a_checkpoint_overwritten_between_runs_recomputes_its_units(tmp_path):
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"first checkpoint")
    suite = parse_suite(SUITE.replace("[[experiments]]", f'[[experiments]]\nweights = "{ckpt}"'), default_name="f")
    out = tmp_path / "out"
    assert len(run_suite(suite, out, quiet=True, report=False).ran) == 2
    assert len(run_suite(suite, out, quiet=True, report=False).reused) == 2
    ckpt.write_bytes(b"other checkpoint bytes")  # overwritten in place (same path)
    os.utime(ckpt, ns=(10**9, 10**9))  # whatever the mtime, the bytes decide
    lines: list[str] = []
    again = run_suite(suite, out, quiet=True, report=False, log=lines.append)
    assert len(again.ran) == 2 and any("recomputed" in m and "checkpoint" in m for m in lines), lines


SIGTERM_SCRIPT = """
import json, sys
from functools import partial
from benchmark.cli import _terminate_as_interrupt
from benchmark.report.build import write_report
from benchmark.runner import ExecOptions, parse_suite, run_suite

_terminate_as_interrupt()
suite = parse_suite(sys.argv[1], default_name="x")
kw = dict(quiet=True, report=False, backend="loky", workers=2)
# 1. --method-timeout in loky workers (units on their main thread): the slow method's rows are errors
opts = ExecOptions(threads=1, method_timeout_s=0.5)
res = run_suite(suite, sys.argv[2] + "1", options=opts, **{**kw, "report": partial(write_report, plots=False)})
scores = res.report.scores
print(json.dumps([len(res.ran), sorted(set(zip(scores["status"], scores["message"])))]), flush=True)
# 2. the same pool again, no timeout: the method sleeps until the parent's SIGTERM
try:
    run_suite(parse_suite(sys.argv[3], default_name="y"), sys.argv[2] + "2", options=ExecOptions(threads=1), **kw)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_method_timeout_in_loky_workers_and_sigterm_to_the_parent_ending_them(tmp_path):
    """One loky pool for two checks (each pool start imports torch in every worker: ~15 s here)."""
    pidfile = tmp_path / "worker.pid"
    suite = SUITE.replace(f'plugins = ["{FAKES}"]', f'plugins = ["{FAKES}", "{SLEEPY}"]').replace(
        'methods = ["gradcam", "random"]', 'methods = ["sleepy"]'
    )
    script = tmp_path / "term.py"
    script.write_text(SIGTERM_SCRIPT)
    marked = suite.replace("[[experiments]]", f'[method_params.sleepy]\npidfile = "{pidfile}"\n\n[[experiments]]')
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(script), suite, str(tmp_path / "out"), marked], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.is_file() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # both workers started their unit
        worker = int(pidfile.read_text())
        assert worker != proc.pid  # the method runs in a loky worker
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        first, last = out.strip().splitlines()[0], out.strip().splitlines()[-1]
        timed = "method failed: timed out after 0.5 s (--method-timeout)"
        assert json.loads(first) == [2, [["error", timed]]] and last == "interrupted", out
        for _ in range(50):  # the worker is gone (killed), not left sleeping
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"loky worker {worker} outlived its parent's SIGTERM")
    finally:
        proc.kill()


def test_the_gallery_leaves_out_a_method_that_failed_on_one_of_its_batches_or_has_another_shape():
    import torch

    from benchmark.runner.unit import Gallery
    from benchmark.types import Batch

    handle = runner_fakes.fake_cnn()
    batch = Batch(images=torch.rand(2, 3, 8, 8), targets=torch.tensor([0, 1]), ids=["a", "b"])
    good, small = torch.rand(2, 8, 8), torch.rand(2, 4, 4)
    gallery = Gallery(4)
    gallery.add(handle, batch, {"gradcam": good, "flaky": good, "tiny": small})
    gallery.add(handle, Batch(batch.images, batch.targets, ["c", "d"]), {"gradcam": good})  # flaky failed here
    out = gallery.arrays(handle, "m", "d")
    assert out is not None and out["methods"].tolist() == ["gradcam"] and out["maps"].shape == (4, 1, 8, 8)
    none = Gallery(2)
    none.add(handle, batch, {})  # every method failed (or timed out) on the gallery's batch
    assert none.arrays(handle, "m", "d") is None
