"""Log records of worker processes reach the driver: a worker keeps the ``logging`` records of its unit and
draws no bar, the driver re-emits them (each warning once per run), end to end with the loky backend."""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path

import pandas as pd
import pytest

from benchmark.progress import bars_enabled
from benchmark.runner import parse_suite, run_suite
from benchmark.runner.parallel import _work, captured_logs, reemit_logs
from benchmark.runner.progress import Progress
from benchmark.schema import UnitResult

import logging_fakes
import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = """
name = "worker-logs"
seed = 1
device = "cpu"
batch_size = 2
shard_size = 2
gallery = 0
bootstrap = 10
plugins = ["{fakes}", "{logs}"]
methods = ["fake_logs", "random"]
metrics = ["fake_inside"]

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 4 }}
"""


def _suite():
    fakes, logs = (Path(m.__file__).resolve() for m in (runner_fakes, logging_fakes))
    return parse_suite(SUITE.format(fakes=fakes, logs=logs), default_name="worker-logs")


def _empty(key: str = "k") -> UnitResult:
    return UnitResult(key, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())


def _logging_unit(suite, unit, options=None):
    """A unit function that logs what units log, and reports whether it could draw a bar."""
    logging.getLogger("benchmark.models.training").info("tiny epoch %d/%d: loss %.3f", 1, 2, 0.5)
    logging.getLogger("some_plugin").warning("skipping %s: truncated", "img_003.png")
    logging.getLogger("some_plugin").info("a plugin's INFO (not kept)")
    try:
        raise OSError("disk on fire")
    except OSError:
        logging.getLogger("benchmark.data.folder").exception("could not read %s", "img_004.png")
    result = _empty()
    result.info["bars"] = bars_enabled()
    return result


def test_a_worker_keeps_its_records_prints_nothing_and_draws_no_bar(capsys):
    suite = _suite()
    root, ours = logging.getLogger(), logging.getLogger("benchmark")
    handlers, level = list(root.handlers), ours.level
    result = _work(suite, None, None, (), "tok", _logging_unit, lambda plugins: None)
    assert result.info["bars"] is False  # its stderr is the parent's terminal: no bar drawn into the parent's
    got = [(r.name, r.levelno, r.getMessage()) for r in result.logs]
    assert got[:2] == [
        ("benchmark.models.training", logging.INFO, "tiny epoch 1/2: loss 0.500"),
        ("some_plugin", logging.WARNING, "skipping img_003.png: truncated"),
    ]
    assert len(got) == 3 and got[2][:2] == ("benchmark.data.folder", logging.ERROR)  # no foreign INFO
    assert "OSError: disk on fire" in result.logs[2].exc_text and result.logs[2].exc_info is None
    assert all(r.process == os.getpid() and r.args is None for r in result.logs)
    back = pickle.loads(pickle.dumps(result.logs))  # they travel from the worker to the parent
    assert [r.getMessage() for r in back] == [g[2] for g in got]
    assert capsys.readouterr().err == ""  # not printed in the worker (logging's last resort would)
    assert root.handlers == handlers and ours.level == level  # the worker's logging is as it was


def test_captured_logs_only_keep_their_own_thread():
    import threading

    with captured_logs() as records:
        t = threading.Thread(target=lambda: logging.getLogger("benchmark.x").warning("from another unit"))
        t.start()
        t.join()
        logging.getLogger("benchmark.x").warning("from this unit")
    assert [r.getMessage() for r in records] == ["from this unit"]


def test_reemitted_records_go_through_the_run_display_each_warning_once(monkeypatch):
    rec = _work(_suite(), None, None, (), "tok", _logging_unit, lambda plugins: None).logs
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in the CLI (pytest adds its own)
    stream = io.StringIO()
    seen: set = set()
    with Progress(stream=stream, tty=False):
        assert reemit_logs(rec, seen) == 3
        assert reemit_logs(rec, seen) == 1  # a second unit: its INFO line again, not its warnings
    lines = stream.getvalue().splitlines()
    assert lines.count("benchmark.models.training: tiny epoch 1/2: loss 0.500") == 2
    assert lines.count("some_plugin: skipping img_003.png: truncated") == 1  # a plugin's warning too
    assert sum("could not read img_004.png" in x for x in lines) == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_workers_log_records_reach_the_driver_once(backend, tmp_path, caplog):
    if backend == "dask":
        pytest.importorskip("distributed")
    caplog.set_level(logging.INFO)
    out = run_suite(_suite(), tmp_path, quiet=True, report=False, backend=backend, workers=2)
    assert len(out.ran) == 2  # two units, each logging the warning on each of its batches
    warned = [r for r in caplog.records if r.getMessage() == logging_fakes.WARNING]
    assert len(warned) == 1 and warned[0].name == "logging_fakes" and warned[0].levelno == logging.WARNING
    assert warned[0].process != os.getpid()  # logged in a worker process, re-emitted here
    infos = [r for r in caplog.records if r.name == "benchmark.fake_logs"]
    assert [r.getMessage() for r in infos] == ["fake_logs: explained 2 image(s)"] * 2  # one per unit
    assert not [r for r in caplog.records if "not forwarded" in r.getMessage()]


def test_the_driver_reemits_worker_records_in_a_run(tmp_path, monkeypatch):
    """The driver's part, without processes: a result carrying a worker's records is re-emitted once."""
    from benchmark.runner import driver

    warning = logging.makeLogRecord(
        {
            "name": "benchmark.data.folder",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "skipping img_009.png: empty file",
        }
    )

    def fake_units(suite, units, **kw):
        for u in units:
            res = _empty(u.key)
            res.info["n_images"] = u.stop - u.start
            res.logs = [warning]
            yield res

    monkeypatch.setattr(driver, "execute_units", fake_units)  # the name the driver calls
    lines: list[str] = []
    run_suite(_suite(), tmp_path, report=False, log=lines.append)
    assert lines.count("benchmark.data.folder: skipping img_009.png: empty file") == 1
    assert sum(" done (" in x for x in lines) == 2
