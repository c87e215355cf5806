"""Progress of long loops in any layer: elapsed time and ETA, and whether a loop may draw a tqdm bar.

A leaf module (it imports nothing of cambench), so the models (training) and the runner (units) share it.

* :func:`format_interval` / :func:`eta_seconds`: ``M:SS`` texts and the linear ETA ``elapsed / done * left``.
* :func:`bars` / :func:`bars_enabled`: a loop draws a bar only when this process allows it. By default that
  is when stderr is a terminal; the runner turns bars off under ``--quiet`` and in its worker processes
  (loky, dask), whose stderr is the parent's terminal but whose bars would be drawn into the parent's.
* :class:`EpochProgress`: the progress of a training loop: with a bar, one tqdm bar over all its steps
  (below the runner's bars, removed when done); without one, one ``logging`` INFO line per epoch with the
  elapsed time and the ETA, so that a redirected log shows training advancing.
* :func:`note_unit` / :func:`note_step` / :func:`activity_text`: what this process computes now (the unit,
  its images done, the method or metric running and for how long), set by the unit and by
  :func:`benchmark.evaluate.evaluate_batch`, read by the runner's watchdog thread (sequential backend) and by
  :func:`worker_heartbeat` (a loky or dask worker), so that a long unit shows which method it is in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

#: ``None``: bars where stderr is a terminal; ``True``/``False``: set by :func:`bars` for a block.
_BARS: list[bool | None] = [None]


def format_interval(seconds: float) -> str:
    """``H:MM:SS`` / ``M:SS``."""
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """The linear estimate of the time left, ``elapsed / done * (total - done)``; None before any work."""
    if done <= 0 or elapsed <= 0:
        return None
    return elapsed / done * max(total - done, 0.0)


def eta_text(done: float, total: float, elapsed: float) -> str:
    """:func:`eta_seconds` as ``M:SS``, ``"?"`` when there is no estimate yet."""
    left = eta_seconds(done, total, elapsed)
    return "?" if left is None else format_interval(left)


@contextlib.contextmanager
def bars(allowed: bool | None) -> Iterator[None]:
    """Allow (``True``) or forbid (``False``) progress bars of the loops run inside the block (``None``:
    where stderr is a terminal); the previous setting is restored afterwards."""
    saved = _BARS[0]
    _BARS[0] = allowed
    try:
        yield
    finally:
        _BARS[0] = saved


def bars_enabled(stream: TextIO | None = None) -> bool:
    """Whether a loop may draw a bar now: the setting of :func:`bars`, else whether ``stream`` (default
    stderr) is a terminal."""
    if _BARS[0] is not None:
        return _BARS[0]
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class EpochProgress:
    """Progress of a loop of ``epochs`` epochs of ``steps`` steps each (a context manager).

    :meth:`step` after every step, :meth:`epoch` after every epoch with a short summary (``"loss 0.412"``).
    With a bar (:func:`bars_enabled`), the bar advances per step and shows the last summary; the epoch lines go
    to ``logger`` at DEBUG. Without one, each epoch is one INFO line on ``logger``:
    ``"<desc> epoch 2/6: <summary>; elapsed 0:21, ETA 0:42"``.
    """

    def __init__(
        self, logger: logging.Logger, desc: str, epochs: int, steps: int, stream: TextIO | None = None
    ) -> None:
        self.logger = logger
        self.desc = desc
        self.epochs = int(epochs)
        self.steps = int(steps)
        self.stream = stream if stream is not None else sys.stderr
        self.bar: Any = None
        #: whether the loop drew a visible bar (still true after the block, when the bar is gone)
        self.had_bar = False
        self.t0 = time.perf_counter()

    @property
    def bar_shown(self) -> bool:
        return self.bar is not None and not getattr(self.bar, "disable", True)

    def __enter__(self) -> EpochProgress:
        self.t0 = time.perf_counter()
        if bars_enabled(self.stream):
            from tqdm.auto import tqdm

            # no position: tqdm puts it below the bars already shown (the runner's units and images)
            self.bar = tqdm(
                total=self.epochs * self.steps, desc=f"train {self.desc}", unit="step", leave=False, file=self.stream
            )
            self.had_bar = self.bar_shown
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self) -> None:
        """One more step done."""
        if self.bar is not None:
            self.bar.update(1)

    def epoch(self, done: int, summary: str) -> str:
        """Epoch ``done`` (1-based) finished: show ``summary``; returns the epoch's log line."""
        elapsed = time.perf_counter() - self.t0
        line = (
            f"{self.desc} epoch {done}/{self.epochs}: {summary}; elapsed {format_interval(elapsed)}, "
            f"ETA {eta_text(done, self.epochs, elapsed)}"
        )
        if self.bar_shown:
            self.bar.set_postfix_str(f"epoch {done}/{self.epochs}, {summary}", refresh=True)
            self.logger.debug(line)
        else:
            self.logger.info(line)
        return line


__all__ = ["EpochProgress", "bars", "bars_enabled", "eta_seconds", "eta_text", "format_interval"]


# -- what this process computes now --------------------------------------------------------------------


class _Activity:
    """The unit this process computes, its images done, and the step (method or metric) running since when."""

    unit = ""
    done = 0
    total = 0
    step = ""
    since = 0.0


_ACTIVITY = _Activity()


def note_unit(unit: str, done: int = 0, total: int = 0) -> None:
    """Record that this process computes ``unit`` (``""``: none), ``done`` of its ``total`` images finished."""
    _ACTIVITY.unit, _ACTIVITY.done, _ACTIVITY.total = unit, int(done), int(total)
    if not unit:
        _ACTIVITY.step = ""


def note_step(step: str) -> None:
    """Record the step running now (e.g. ``"explain scorecam"``, ``"metric deletion_auc"``; ``""``: none)."""
    _ACTIVITY.step, _ACTIVITY.since = step, time.perf_counter()


def current_step() -> str:
    """The step :func:`note_step` recorded last (``""``: none)."""
    return _ACTIVITY.step


def activity_text(now: float | None = None) -> str:
    """``"unit K: 3/16 images, explain scorecam for 2:10"`` (what :func:`note_unit` and :func:`note_step` set);
    ``""`` when this process computes no unit."""
    a = _ACTIVITY
    if not a.unit:
        return ""
    now = time.perf_counter() if now is None else now
    text = f"unit {a.unit}: {a.done}/{a.total} images"
    if a.step:
        text += f", {a.step} for {format_interval(now - a.since)}"
    return text


@contextlib.contextmanager
def worker_heartbeat(interval_s: float | None, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, write ``cambench: worker PID: <activity_text()>`` to ``stream`` (stderr: a loky
    or local dask worker's is the parent's) every ``interval_s`` seconds; ``None``: nothing."""
    if interval_s is None or interval_s <= 0:
        yield
        return
    stop = threading.Event()
    out = stream if stream is not None else sys.stderr

    def beat() -> None:
        while not stop.wait(interval_s):
            text = activity_text()
            if text:
                try:
                    print(f"cambench: worker {os.getpid()}: {text}", file=out, flush=True)
                except (OSError, ValueError):  # a closed stream: reporting never ends a unit
                    return

    thread = threading.Thread(target=beat, name="cambench-worker-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
