"""Reliability: a bad --out is refused first, one run per directory, modes follow the umask, the tables
describe the run asked for, unreadable images are named once, progress without a terminal, small CLI items."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

from benchmark import cli
from benchmark.outdir import LOCK_NAME, OutputDirError, RunLock, check_out_dir
from benchmark.report.build import write_report
from benchmark.runner import load_suite, run_suite
from benchmark.runner.progress import Progress
from benchmark.store import atomic_write_text

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = runner_fakes.SUITES / "tiny.toml"


# -- the output directory, checked first ---------------------------------------------------------------
def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    f = tmp_path / "afile.txt"
    f.write_text("x")
    with pytest.raises(OutputDirError, match=r"afile.txt: is an existing file, not a directory; pass --out"):
        check_out_dir(f)
    with pytest.raises(OutputDirError, match=r"its parent .*afile.txt is an existing file"):
        check_out_dir(f / "sub")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "parts").write_text("x")
    with pytest.raises(OutputDirError, match="parts is a file"):
        check_out_dir(tmp_path / "o")


@pytest.mark.parametrize("path", ["/proc/cambench-out", "/sys/cambench-out", "/dev/cambench-out"])
def test_out_on_a_special_filesystem_is_refused(path):
    """(/dev/shm, a tmpfs, stays allowed: see test_dev_shm_is_an_ordinary_place.)"""
    with pytest.raises(OutputDirError, match="special system filesystem"):
        check_out_dir(path)
    assert not Path(path).exists()


@pytest.mark.parametrize(
    "code, needle",
    [
        (errno.EROFS, "read-only filesystem"),
        (errno.EACCES, "not writable (permission denied)"),
        (errno.EPERM, "immutable"),
        (errno.ENOSPC, "full disk"),
    ],
)
def test_unwritable_out_names_the_reason(tmp_path, monkeypatch, code, needle):
    import tempfile

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputDirError) as exc:
        check_out_dir(tmp_path / "o")
    msg = str(exc.value)
    assert needle in msg and str(tmp_path / "o") in msg and "pass --out a directory on a writable disk" in msg
    assert "\n" not in msg


def test_immutable_directory_for_real(tmp_path):
    d = tmp_path / "imm"
    d.mkdir()
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(OutputDirError, match="operation not permitted|permission denied"):
            check_out_dir(d)
    finally:
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)


def test_cli_refuses_a_bad_out_before_any_model_work(tmp_path, capsys, monkeypatch):
    from benchmark import runner

    f = tmp_path / "afile.txt"
    f.write_text("x")
    monkeypatch.setattr(runner, "run_suite", lambda *a, **k: pytest.fail("model work started"))
    monkeypatch.setattr(runner, "load_registries", lambda *a, **k: pytest.fail("registries loaded"))
    assert cli.main(["run", str(TINY), "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "afile.txt" in err and "\n" not in err


# -- one run per directory ------------------------------------------------------------------------------
def test_a_second_run_into_a_locked_directory_exits_at_once(tmp_path, capsys, monkeypatch):
    from benchmark import runner

    out = tmp_path / "o"
    monkeypatch.setattr(runner, "load_registries", lambda *a, **k: pytest.fail("registries loaded"))
    with RunLock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputDirError) as exc:
            RunLock(out).acquire()
        assert f"pid {os.getpid()}" in str(exc.value) and str(out / LOCK_NAME) in str(exc.value)
        assert cli.main(["run", str(TINY), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"another cambench run (pid {os.getpid()})" in err and LOCK_NAME in err
        assert not (out / "parts").exists()  # refused before any work
    RunLock(out).acquire().release()  # released: free again


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / LOCK_NAME).write_text(f"{pid}\n")
    notes: list[str] = []
    lock = RunLock(out, notes.append).acquire()
    try:
        assert len(notes) == 1 and f"left by pid {pid} (no longer running)" in notes[0]
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
    finally:
        lock.release()
    RunLock(out, notes.append).acquire().release()
    assert len(notes) == 1  # a cleanly released lock leaves no note


# -- file modes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.csv", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == mode


# -- tables describe the run that was asked for ---------------------------------------------------------
def test_a_smaller_limit_reports_only_its_images_and_says_so(tmp_path):
    suite = load_suite(TINY)
    out = tmp_path / "o"
    full = run_suite(suite, out, quiet=True, report=partial(write_report, plots=False))
    n_full = full.report.scores["image_id"].nunique()
    small = run_suite(suite, out, quiet=True, report=partial(write_report, plots=False), limit=2)
    assert small.ran == [] and len(small.reused) == 2  # its units are the first shard of each experiment
    ids = small.report.scores.groupby("dataset")["image_id"].nunique()
    assert ids.to_dict() == {"fake_plain": 2, "fake_shapes": 2} and n_full > 2
    assert sorted(small.unreported) == sorted({u.key for u in full.plan.units} - set(small.reused))
    run = json.loads((out / "run.json").read_text())
    assert [e["n_images"] for e in run["experiments"]] == [2, 2] and run["unreported_units"] == small.unreported
    assert len(list((out / "parts").glob("*.parquet"))) == len(full.plan.units)  # kept on disk
    lb = pd.read_csv(out / "leaderboard.csv")
    assert set(lb.loc[lb["metric"] != "mean_rank", "n"]) <= {1, 2}
    again = run_suite(suite, out, quiet=True, report=partial(write_report, plots=False))
    assert again.unreported == [] and again.report.scores["image_id"].nunique() == n_full


# -- unreadable images: named once, everywhere ------------------------------------------------------------
def _folder(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"good{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "corrupt.jpg")
    data = (root / "corrupt.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 2])  # header fine, truncated
    (root / "empty.png").write_bytes(b"")
    (root / "random.jpg").write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    return root


def test_every_unreadable_image_is_named_once_in_failures_run_json_and_summary(tmp_path, capsys):
    root = _folder(tmp_path)
    plugin = Path(runner_fakes.__file__).resolve()
    text = f"""
name = "folder"
device = "cpu"
batch_size = 2
shard_size = 4
gallery = 0
bootstrap = 10
plugins = ["{plugin}"]
methods = ["gradcam"]
metrics = ["fake_drop"]

[[experiments]]
model = "fake_cnn"
dataset = "folder"
data = {{ root = "{root}" }}
"""
    (tmp_path / "folder.toml").write_text(text)
    out = tmp_path / "o"
    assert cli.main(["run", str(tmp_path / "folder.toml"), "--out", str(out), "--quiet", "--no-plots"]) == 0
    summary = capsys.readouterr().out
    names = ["corrupt.jpg", "empty.png", "random.jpg"]
    assert "3 image(s)/annotation(s) could not be read" in summary
    for n in names:
        assert sum(n in line for line in summary.splitlines()) == 1, summary
    assert "empty file (0 bytes)" in summary and "truncated" in summary
    f = pd.read_csv(out / "failures.csv")
    data = f[f["method"] == "(data)"]
    assert sorted(data["message"].str.split(":").str[0]) == names and (data["count"] == 1).all()
    run = json.loads((out / "run.json").read_text())
    assert sorted(u["item"] for u in run["unreadable"]) == names
    assert cli.main(["report", str(out), "--no-plots"]) == 0
    again = capsys.readouterr().out
    assert all(sum(n in line for line in again.splitlines()) == 1 for n in names)
    scores = pd.read_parquet(out / "scores.parquet")
    assert sorted(scores.loc[scores["method"] == "gradcam", "image_id"].unique()) == [f"good{i}.jpg" for i in range(3)]


def test_a_truncated_image_is_recorded_once_by_the_batch_builder(tmp_path):
    import torch

    from benchmark.data import create_dataset, make_batches
    from benchmark.types import ModelHandle

    root = _folder(tmp_path)
    ds = create_dataset("folder", root=str(root))
    assert sorted(e.split(":")[0] for e in ds.errors) == ["empty.png", "random.jpg"]
    handle = ModelHandle("m", torch.nn.Identity(), "", input_size=(32, 32))
    batches = make_batches(ds, handle, 2)
    assert sum(len(b.ids) for b in batches) == 3
    trunc = [e for e in ds.errors if "corrupt.jpg" in e]
    assert len(trunc) == 1 and trunc[0].startswith("corrupt.jpg: DataError") and batches.errors == trunc


def test_list_datasets_shows_the_arguments(capsys):
    assert cli.main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("folder "))
    assert "args: root=None, n=None, seed=0, target='predicted', verify=True" in line


# -- progress -------------------------------------------------------------------------------------------
def test_without_a_terminal_each_unit_logs_elapsed_and_eta_and_logging_reaches_it():
    stream = io.StringIO()
    with Progress(stream=stream, tty=False) as p:
        p.start(2, 8)
        logging.getLogger("benchmark.models.synthetic").info("epoch 1/3: loss 0.5")
        p.unit_done("u0", 4)
        p.unit_done("u1", 4)
        for _ in range(3):
            warnings.warn("overflow in exp", RuntimeWarning, stacklevel=1)
            p.warn_once("UserWarning: x", "cambench: u0: UserWarning: x")
    lines = stream.getvalue().splitlines()
    assert "benchmark.models.synthetic: epoch 1/3: loss 0.5" in lines
    units = [x for x in lines if "unit " in x and " done" in x]
    assert len(units) == 2 and "unit 1/2 done (u0, 4 images; 4/8 images): elapsed 0:00, ETA 0:0" in units[0]
    assert sum("overflow in exp" in x for x in lines) == 1 and sum("UserWarning: x" in x for x in lines) == 1
    assert not logging.getLogger("benchmark").handlers  # removed after the run


def test_quiet_prints_nothing_and_a_terminal_gets_messages_above_the_bars(monkeypatch):
    stream = io.StringIO()
    with Progress(quiet=True, stream=stream, tty=False) as p:
        p.start(1, 1)
        p.log("hello")
        p.unit_done("u", 1)
    assert stream.getvalue() == ""
    import tqdm.auto
    import tqdm.std

    written: list[str] = []

    class Shown(tqdm.std.tqdm):  # bars on even under TQDM_DISABLE=1 (set for the test session)
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "disable": False})

        @classmethod
        def write(cls, s, file=None, end="\n", nolock=False):
            written.append(s)

    monkeypatch.setattr(tqdm.auto, "tqdm", Shown)
    stream = io.StringIO()
    with Progress(stream=stream, tty=True) as p:
        p.start(1, 2)
        assert p.bars_shown
        p.log("a message")
        warnings.warn("careful", RuntimeWarning, stacklevel=1)
        p.unit_done("u", 2)
    assert "a message" in written and any("careful" in w for w in written)
    assert not any(" done (" in w for w in written)  # the bar shows units; no extra lines


# -- small items ------------------------------------------------------------------------------------------
def test_list_metrics_is_aligned_with_needs_as_words(capsys):
    assert cli.main(["list", "metrics"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    cols = {x.index("family=") for x in lines}
    assert len(cols) == 1 and len({x.index("higher_is_better=") for x in lines}) == 1
    assert not any("('" in x or "needs=(" in x for x in lines)
    assert cli.main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    base = [x for x in lines if "family=baseline" in x]
    assert base and not any(x.rstrip().endswith("paper=") or "paper=  " in x for x in base)


def test_precision_choices_are_the_engines():
    from benchmark.forward import PRECISIONS

    assert cli.PRECISIONS == tuple(PRECISIONS)


def test_help_does_not_import_torch_and_compare_into_head_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        "import sys; from benchmark import cli; cli._parser().format_help(); "
        "from benchmark.runner.suite import load_suite; import benchmark.outdir; print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.stdout.strip() == "False", r.stderr
    ref = REPO / "results" / "reference" / "quick-leaderboard.csv"
    cmd = f"{sys.executable} run_bench.py compare {ref} --baseline {ref} --all | head -n 2"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=REPO)
    assert len(r.stdout.splitlines()) == 2 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_failures_hold_errors_not_undefined_by_design_rows():
    from benchmark.report.tables import failures

    scores = pd.DataFrame(
        {
            "model": "m",
            "dataset": "d",
            "method": ["gradcam", "gradcam", "gradcam", "(data)", "(data)"],
            "metric": ["peak_memory_mb", "deletion_auc", "deletion_auc", "(load)", "(load)"],
            "image_id": ["a", "a", "b", "x.jpg", "y.jpg"],
            "value": np.nan,
            "status": ["undefined", "error", "error", "error", "error"],
            "message": ["", "metric failed: boom", "metric failed: boom", "x.jpg: bad", "y.jpg: empty"],
            "degenerate": False,
        }
    )
    f = failures(scores)
    assert "peak_memory_mb" not in set(f["metric"]) and (f["status"] == "error").all()
    assert f.loc[f["metric"] == "deletion_auc", "count"].tolist() == [2]
    assert sorted(f.loc[f["method"] == "(data)", "message"]) == ["x.jpg: bad", "y.jpg: empty"]


def test_dev_shm_is_an_ordinary_place():
    if not Path("/dev/shm").is_dir() or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        assert check_out_dir(Path(d) / "o") == Path(d) / "o"
