"""``--method-timeout`` (issue #24 item 5): a method that runs too long is stopped, its rows are ``error`` naming
the timeout, and the unit's other methods and metrics go on; refused where the signal cannot fire."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from benchmark.errors import CambenchError, MethodTimeout
from benchmark.evaluate import evaluate_batch, method_deadline, timeout_message
from benchmark.plugins import isolated, load_plugins
from benchmark.report.build import write_report
from benchmark.runner import ExecOptions, parse_suite, run_suite
from benchmark.types import Batch

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent
SLEEPY = HERE / "plugins" / "sleepy_method.py"
FAKES = Path(runner_fakes.__file__).resolve()
SUITE = runner_fakes.fake_suite_toml(
    "timeouts", plugins=(SLEEPY,), methods=("gradcam", "sleepy", "spinning", "random"), gallery=0
)


@pytest.fixture(scope="module", autouse=True)
def _plugins():
    with isolated():  # the slow methods leave the registries after this module (no later test meets them)
        load_plugins([str(FAKES), str(SLEEPY)], check=False)
        yield


def _batch() -> Batch:
    ds = runner_fakes.fake_shapes(n=2)
    samples = [ds[i] for i in range(2)]
    return Batch(
        images=torch.stack([s.image for s in samples]),
        targets=torch.tensor([s.target for s in samples]),
        ids=[s.id for s in samples],
        masks=torch.stack([s.mask for s in samples]),
    )


def test_a_method_past_its_deadline_is_stopped_and_the_others_and_the_metrics_go_on():
    handle = runner_fakes.fake_cnn()
    t = time.monotonic()
    out = evaluate_batch(
        handle.model, handle.target_layer, None, _batch(), ["sleepy", "gradcam", "spinning"],
        ["fake_inside", "fake_drop"], seed=0, method_timeout=0.4,
    )  # fmt: skip
    assert time.monotonic() - t < 20  # not the 60 s each slow method asks for
    assert out.method_failures == {"sleepy": timeout_message(0.4), "spinning": timeout_message(0.4)}
    assert timeout_message(0.4) == "timed out after 0.4 s (--method-timeout)"
    assert set(out.maps) == {"gradcam"} and set(out.scores) == {"fake_inside", "fake_drop"}
    assert set(out.scores["fake_inside"]) == {"gradcam"} and torch.isfinite(out.scores["fake_drop"]["gradcam"]).all()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left behind
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # nor the handler


def test_a_method_within_its_deadline_gives_the_same_maps_as_without_one():
    handle = runner_fakes.fake_cnn()
    kw = {"seed": 3}
    a = evaluate_batch(handle.model, handle.target_layer, None, _batch(), ["gradcam"], [], **kw)
    b = evaluate_batch(handle.model, handle.target_layer, None, _batch(), ["gradcam"], [], method_timeout=30, **kw)
    assert torch.equal(a.maps["gradcam"], b.maps["gradcam"]) and not b.method_failures


def test_an_enclosing_timer_keeps_its_deadline_and_no_late_alarm_escapes():
    fired: list[float] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
    try:
        t = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        with method_deadline(5.0):
            time.sleep(0.1)
        assert 0.3 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.5  # the outer timer, minus the time spent
        time.sleep(1.0)
        assert len(fired) == 1 and 0.5 < fired[0] - t < 1.0
        with pytest.raises(MethodTimeout, match=r"timed out after 0\.2 s"):
            with method_deadline(0.2):
                time.sleep(5)
        time.sleep(0.3)
        assert len(fired) == 1  # the inner alarm fired once, as the exception, never after the block
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_the_timeout_is_refused_where_the_signal_cannot_fire():
    from benchmark.runner.parallel import execute_units

    suite = parse_suite(SUITE, default_name="timeouts")
    with pytest.raises(CambenchError, match="dask workers run units on threads; use --backend sequential or loky"):
        next(execute_units(suite, ["u"], unit_fn=print, setup_fn=print, backend="dask",
                           options=ExecOptions(method_timeout_s=5)))  # fmt: skip
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CambenchError, match="--method-timeout must be a positive number of seconds"):
            ExecOptions(method_timeout_s=bad)
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            with method_deadline(1.0):
                pass
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=in_thread, name="worker-1")
    th.start()
    th.join()
    assert len(errors) == 1 and "only the main thread of a process receives" in str(errors[0])
    assert "'worker-1'" in str(errors[0])


def test_cli_refuses_the_timeout_on_dask_before_any_work(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    done = subprocess.run(
        [sys.executable, "run_bench.py", "run", str(suite), "--out", str(tmp_path / "o"), "--backend", "dask",
         "--method-timeout", "5"],
        capture_output=True, text=True, timeout=120, cwd=HERE.parent,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--method-timeout stops a method with SIGALRM" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o" / "parts").exists()


def _rows(backend: str, out: Path) -> tuple[object, object]:
    suite = parse_suite(SUITE, default_name="timeouts")
    opts = ExecOptions(threads=1, method_timeout_s=0.5)
    kw = {"backend": backend, "workers": 2} if backend != "sequential" else {}  # joblib runs 1 job in-process
    res = run_suite(suite, out, quiet=True, options=opts, report=partial(write_report, plots=False, html=False), **kw)
    return res, res.report.scores


def _check(scores) -> None:
    slow = scores[scores["method"].isin(["sleepy", "spinning"])]
    assert len(slow) == 2 * 2 * 4 and set(slow["status"]) == {"error"}  # 2 methods x 2 metrics x 4 images
    assert set(slow["message"]) == {"method failed: timed out after 0.5 s (--method-timeout)"}
    fine = scores[scores["method"].isin(["gradcam", "random"])]
    assert len(fine) == 2 * 2 * 4 and set(fine["status"]) == {"ok"}


def test_a_run_records_the_stopped_methods_rows_as_errors_and_finishes(tmp_path):
    res, scores = _rows("sequential", tmp_path / "seq")
    _check(scores)
    assert len(res.ran) == 2  # both units finished (a batch each, 2 timeouts each)


# Under loky (2 workers: joblib runs a single job in-process) the timeout fires in the workers, whose units run
# on their main thread: tests/test_fault_injection.py::
# test_method_timeout_in_loky_workers_and_sigterm_to_the_parent_ending_them
# (one pool for that check and the SIGTERM one).


def test_a_batch_whose_every_method_timed_out_still_lists_the_rows_it_owes():
    handle = runner_fakes.fake_cnn()
    out = evaluate_batch(
        handle.model, handle.target_layer, None, _batch(), ["sleepy"], ["fake_inside", "fake_drop"], seed=0,
        method_timeout=0.2,
    )  # fmt: skip
    assert not out.maps and out.scored == {"fake_inside": ("sleepy",), "fake_drop": ("sleepy",)}  # -> error rows
