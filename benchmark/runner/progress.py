"""Progress and messages of a run, with or without a terminal.

* On a terminal: two tqdm bars (units, images); every message, ``logging`` INFO record of
  ``benchmark.*`` (e.g. the epochs of a first-time model training) and Python warning is printed *above*
  the bars (``tqdm.write``), never into them.
* Without a terminal (a redirected log, CI): no bars, but one line per finished unit with the elapsed
  time and an ETA, so that a log file shows the run advancing.
* ``quiet``: nothing (only the CLI's summary), unless the caller passes its own ``log``.
* A model trained for the run draws its own bar below these (:mod:`benchmark.progress`) only where the run
  shows bars (a terminal, not ``quiet``), else logs a line per epoch with elapsed time and ETA.

Each distinct warning (a Python warning, a ``logging`` WARNING, one forwarded from a worker process) is
shown once per run.

A watchdog thread (:meth:`Progress.check`, every few seconds while units run) keeps a long unit visible:
without bars, a line at least every :data:`HEARTBEAT_S` seconds with the images done, the elapsed time and
the time since the last batch (a unit's batches on the sequential backend, whole units on loky/dask), and on
the sequential backend what the unit computes now (its images done, the method or metric running and for how
long: :func:`benchmark.progress.activity_text`; with bars, the images bar shows it); a loky/dask worker writes
its own such line (:func:`benchmark.progress.worker_heartbeat`, ``ExecOptions.heartbeat_s``); and,
bars or not, one warning naming the unit(s) in flight when nothing finished for :data:`STALL_S` seconds
(again after the next stall, if any). It only reports: stopping a unit is ``--unit-timeout``'s (loky).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ..progress import activity_text, bars, eta_text, format_interval

#: Without bars, a progress line at least this often (seconds) while units run.
HEARTBEAT_S = 60.0
#: A warning naming the unit(s) in flight when no batch (or unit) finished for this long (seconds).
STALL_S = 600.0


class _Handler(logging.Handler):
    """Sends log records through :meth:`Progress.log` (above the bars): those of ``benchmark.*`` from INFO,
    and (when no other handler is configured) any logger's from WARNING; each distinct warning once."""

    def __init__(self, progress: Progress, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.progress = progress
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:  # a warning once per run, however many units log it
                self.progress.warn_once(text)
            else:
                self.progress.log(text)
        except Exception:
            self.handleError(record)


class Progress:
    """The progress display and the message sink of one run (a context manager)."""

    def __init__(
        self,
        quiet: bool = False,
        log: Callable[[str], None] | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stall_s: float = STALL_S,
        warn_minutes: float | None = None,
    ) -> None:
        self.quiet = quiet
        #: the run's cost estimate before its first unit warns above this many minutes; None: no estimate
        self.warn_minutes = warn_minutes
        self.heartbeat_s, self.stall_s = heartbeat_s, stall_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self._user_log = log
        self._seen: set[str] = set()
        self._bars: list[Any] = []
        self._units_bar: Any = None
        self._images_bar: Any = None
        self._handler: _Handler | None = None
        self._root_handler: _Handler | None = None
        self._logger_state: tuple[int, bool] = (logging.NOTSET, True)
        self._warnings: Any = None
        self._bars_policy: Any = None
        self.n_units = self.n_images = 0
        self.units_done = self.images_done = 0
        self.t0 = time.perf_counter()
        self.pending: list[str] = []  # the units not finished, in the order they were submitted
        self.in_flight = 1
        self._batch_images = 0  # images of the unfinished units already scored (per-batch progress)
        self._last_event = self._last_line = self.t0
        self._stalled = False
        self._stop_watch = threading.Event()
        self._watch: threading.Thread | None = None

    # -- messages ----------------------------------------------------------------------------------
    @property
    def bars_shown(self) -> bool:
        return any(not getattr(b, "disable", True) for b in self._bars)

    def log(self, msg: str) -> None:
        """Print one message (above the bars when they are shown); nothing under ``quiet``."""
        if self._user_log is not None:
            self._user_log(msg)
            return
        if self.quiet:
            return
        if self.bars_shown or self.tty:  # on a terminal a training bar (benchmark.progress) may be shown
            from tqdm.auto import tqdm

            tqdm.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def notice(self, msg: str) -> None:
        """Print one message even under ``quiet`` (the cost estimate's one line), to the caller's ``log`` if any."""
        if self.quiet and self._user_log is None:
            print(msg, file=self.stream, flush=True)
        else:
            self.log(msg)

    def warn_once(self, key: str, msg: str | None = None) -> None:
        """Log ``msg`` (default ``key``) unless a message with this ``key`` was logged in this run."""
        if key in self._seen:
            return
        self._seen.add(key)
        self.log(msg if msg is not None else key)

    def _showwarning(
        self, message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        text = f"{category.__name__}: {message}"
        self.warn_once(text, f"cambench: warning: {text} ({filename}:{lineno})")

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self.t0 = time.perf_counter()
        logger = logging.getLogger("benchmark")
        if not self.quiet and not logger.handlers:
            # INFO of benchmark.* (training epochs, downloads) reaches the terminal, above the bars; not also
            # through the root logger's handlers (that would print it twice, into the bars)
            self._handler = _Handler(self)
            logger.addHandler(self._handler)
            self._logger_state = (logger.level, logger.propagate)
            logger.propagate = False
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        root = logging.getLogger()
        if not self.quiet and not root.handlers:
            # another library's or a plugin's WARNING: above the bars too (logging's last resort would print
            # it into them)
            self._root_handler = _Handler(self, logging.WARNING)
            root.addHandler(self._root_handler)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # the loops below (a first-time model training) draw their own bar only where this run shows bars
        self._bars_policy = bars(not self.quiet and self.tty)
        self._bars_policy.__enter__()
        warnings.showwarning = self._showwarning
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._bars_policy is not None:
            self._bars_policy.__exit__(*exc)
            self._bars_policy = None
        if self._warnings is not None:
            self._warnings.__exit__(*exc)
            self._warnings = None
        if self._handler is not None:
            logger = logging.getLogger("benchmark")
            logger.removeHandler(self._handler)
            logger.setLevel(self._logger_state[0])
            logger.propagate = self._logger_state[1]
            self._handler = None
        if self._root_handler is not None:
            logging.getLogger().removeHandler(self._root_handler)
            self._root_handler = None

    def start(self, n_units: int, n_images: int, keys: Sequence[str] = (), in_flight: int = 1) -> None:
        """Begin the bars (on a terminal) for ``n_units`` units of ``n_images`` images in all, and the watchdog
        (:meth:`check`); ``keys``: the units in submission order, ``in_flight``: how many run at once."""
        self.n_units, self.n_images = n_units, n_images
        self.units_done = self.images_done = self._batch_images = 0
        self.t0 = self._last_event = self._last_line = time.perf_counter()
        self.pending, self.in_flight, self._stalled = list(keys), max(1, int(in_flight)), False
        if n_units and not (self.quiet and self._user_log is None):
            self._stop_watch.clear()
            poll = max(0.01, min(5.0, self.heartbeat_s / 4, self.stall_s / 4))
            self._watch = threading.Thread(target=self._watchdog, args=(poll,), name="cambench-watchdog", daemon=True)
            self._watch.start()
        show = not self.quiet and self.tty
        if show:
            from tqdm.auto import tqdm

            self._units_bar = tqdm(total=n_units, desc="units", unit="unit", position=0, file=self.stream)
            self._images_bar = tqdm(total=n_images, desc="images", unit="img", position=1, file=self.stream)
            self._bars = [self._units_bar, self._images_bar]

    def images(self, n: int) -> None:
        """``n`` more images scored (called by the units as they go)."""
        self._batch_images += n
        self._event()
        if self._images_bar is not None:
            self._images_bar.update(n)

    def unit_done(self, key: str, n_images: int) -> None:
        """One unit finished: advance the bar, or (no terminal) log a line with elapsed time and ETA."""
        self.units_done += 1
        self.images_done += n_images
        self._batch_images = max(0, self._batch_images - n_images)
        if key in self.pending:
            self.pending.remove(key)
        self._event()
        if self._units_bar is not None:
            self._units_bar.set_postfix_str(key, refresh=False)
            self._units_bar.update(1)
        if self.bars_shown or self.quiet:
            return
        elapsed = time.perf_counter() - self.t0
        eta = eta_text(self.images_done, self.n_images, elapsed)
        self.log(
            f"cambench: unit {self.units_done}/{self.n_units} done ({key}, {n_images} images; "
            f"{self.images_done}/{self.n_images} images): elapsed {format_interval(elapsed)}, ETA {eta}"
        )
        self._last_line = time.perf_counter()

    # -- the watchdog ------------------------------------------------------------------------------
    def _event(self) -> None:
        self._last_event = time.perf_counter()
        self._stalled = False

    def check(self, now: float | None = None) -> None:
        """What the watchdog does at time ``now`` (``time.perf_counter``): the heartbeat line (no bars, none
        for :attr:`heartbeat_s`) and the stall warning (nothing finished for :attr:`stall_s`, once a stall)."""
        now = time.perf_counter() if now is None else now
        running = ", ".join(self.pending[: self.in_flight]) or "?"
        idle = now - self._last_event
        if idle >= self.stall_s and not self._stalled:
            self._stalled = True
            self.log(
                f"cambench: warning: nothing finished for {format_interval(idle)} (unit(s) in flight: {running}); "
                "the run goes on. A unit that hangs can be stopped with --backend loky --unit-timeout SECONDS."
            )
            self._last_line = now
        inside = activity_text(now)  # the sequential backend: the unit's images and the method running now
        if self._images_bar is not None and inside:
            self._images_bar.set_postfix_str(inside.split(": ", 1)[-1], refresh=True)
        if not self.bars_shown and now - self._last_line >= self.heartbeat_s:
            done = self.images_done + self._batch_images
            where = f"{inside}; in all" if inside else running
            self.log(
                f"cambench: running {where}: {done}/{self.n_images} images, {self.units_done}/{self.n_units} "
                f"units; elapsed {format_interval(now - self.t0)}, last progress {format_interval(idle)} ago"
            )
            self._last_line = now

    def _watchdog(self, poll: float) -> None:
        while not self._stop_watch.wait(poll):
            try:
                self.check()
            except Exception:  # pragma: no cover  (a closed stream: reporting must never end a run)
                return

    def stop(self) -> None:
        self._stop_watch.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
            self._watch = None
        for b in self._bars:
            b.close()
        self._bars = []
        self._units_bar = self._images_bar = None
