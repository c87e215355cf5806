"""Run units of work in parallel: ``sequential`` (in-process), ``loky`` (joblib process pool) or ``dask``
(a ``dask.distributed`` cluster).

Every backend calls the same pure unit function on each unit (the caller passes it: ``unit_fn``, the
runner's :func:`benchmark.runner.execute.run_unit`; this module does not import the unit code) and
hands each :class:`UnitResult` back to the **parent**, which writes it through the store as soon as it
arrives (:func:`execute_units` yields results in completion order). So

* results are identical whatever the backend (each unit seeds itself from ``(suite seed, unit key,
  batch)``; it does not depend on which process ran it or in which order), apart from the ``cost``
  family (timings) and float differences between devices or thread counts;
* resume works across backends (the store only sees finished parts), and an interrupted parallel run
  loses only the units still in flight.

Devices: a worker asked for ``cuda`` (or ``auto`` with CUDA) on a machine with several GPUs claims a
*slot* (an exclusive ``flock`` on a file in the temporary folder, released when the process dies) and
uses ``cuda:<slot mod #GPUs>``: one worker per GPU, each pinned to its own device. CPU workers get
``torch.set_num_threads(cores // workers)``. On dask, units that need a GPU are submitted with
``resources={"GPU": 1}`` when the cluster's workers declare a ``GPU`` resource
(``dask worker tcp://... --resources GPU=1``).

Messages: a worker draws no progress bar (its stderr is the parent's terminal) and keeps the ``logging``
records of its unit (:func:`captured_logs`: INFO and above of ``benchmark.*``, WARNING and above of any
logger, e.g. a model trained in the worker, a dataset skipping a file, a plugin's warning); they travel back in
:attr:`UnitResult.logs` and the parent re-emits them (:func:`reemit_logs`), each distinct warning once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from functools import partial
from multiprocessing import TimeoutError as PoolTimeout
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..cpukernels import PORTABLE_ENV, describe
from ..errors import CambenchError
from ..progress import bars, worker_heartbeat
from ..schema import UnitResult
from .suite import Suite

BACKENDS = ("sequential", "loky", "dask")
#: Why ``--method-timeout`` is refused on dask (the CLI says it before any work).
METHOD_TIMEOUT_ON_DASK = (
    "--method-timeout stops a method with SIGALRM, which only a process's main thread receives, and dask workers run "
    "units on threads; use --backend sequential or loky, or drop --method-timeout."
)
_log = logging.getLogger("benchmark.runner")

#: ``unit_fn(suite, unit, progress=None, options=None) -> UnitResult``: computes one unit (the runner's
#: :func:`benchmark.runner.execute.run_unit`). A module-level function, so loky and dask can pickle it.
UnitFn = Callable[..., UnitResult]
#: ``setup_fn(plugins)``: fills the registries (and imports ``plugins``) in a worker process (the runner's
#: :func:`benchmark.runner.execute.load_registries`).
SetupFn = Callable[[Sequence[str]], None]

T = TypeVar("T")


# -- devices and threads of a worker ---------------------------------------------------------------


def cpu_count() -> int:
    """Cores this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover  (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def default_workers(device: str) -> int:
    """One worker per visible GPU for CUDA devices, else one per group of 4 cores (at least 1)."""
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    if device.startswith("cuda:"):
        return 1
    return max(1, cpu_count() // 4)


def worker_device(requested: str, n_gpus: int, slot: int | None) -> str:
    """The device a worker in ``slot`` uses: ``cuda:<slot mod n_gpus>`` for ``cuda``/``auto`` with GPUs.

    An explicit ``cuda:N``, ``cpu`` or ``mps`` is kept; so is anything when there is at most one GPU
    or no slot.
    """
    if requested in ("cuda", "auto") and n_gpus > 1 and slot is not None:
        return f"cuda:{slot % n_gpus}"
    return requested


def claim_slot(folder: str | os.PathLike, limit: int = 4096) -> tuple[int, int | None]:
    """Claim the lowest free slot in ``folder``: ``(slot, fd)``; the slot is held while ``fd`` is open.

    Uses an exclusive non-blocking ``flock`` on ``folder/<slot>`` (released by the OS when the process
    exits, so a restarted worker frees its slot). Without ``fcntl`` (Windows) the slot is the process id
    and ``fd`` is None.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return os.getpid(), None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(limit):
        fd = os.open(folder / str(slot), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return slot, fd
    raise CambenchError(f"No free worker slot among {limit} in {folder}.")  # pragma: no cover


_SLOT: dict[str, Any] = {}  # this process's claim: {"token": ..., "slot": int, "fd": int | None}


def _my_slot(token: str) -> int:
    if _SLOT.get("token") != token:
        if _SLOT.get("fd") is not None:
            os.close(_SLOT["fd"])
        folder = Path(tempfile.gettempdir()) / f"cambench-slots-{token}"
        slot, fd = claim_slot(folder)
        _SLOT.update(token=token, slot=slot, fd=fd)
    return int(_SLOT["slot"])


# -- log records of a worker ----------------------------------------------------------------------

#: Attributes of a ``LogRecord`` that travel to the parent (all picklable once the message is formatted).
_RECORD_FIELDS = (
    "name",
    "levelno",
    "levelname",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "process",
    "processName",
    "threadName",
)


class _Collect(logging.Handler):
    """Keeps the records of one thread: INFO and above of ``benchmark.*``, WARNING and above of any logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:  # another unit in a threaded dask worker
            return
        if record.levelno < logging.WARNING and not (
            record.name == "benchmark" or record.name.startswith("benchmark.")
        ):
            return
        try:
            fields = {k: getattr(record, k, None) for k in _RECORD_FIELDS}
            fields.update(
                msg=record.getMessage(),
                args=None,
                exc_info=None,
                stack_info=record.stack_info,
                exc_text=record.exc_text
                or (logging.Formatter().formatException(record.exc_info) if record.exc_info else None),
            )
            self.records.append(logging.makeLogRecord(fields))
        except Exception:  # a message that cannot be formatted: say so, as logging itself would
            self.handleError(record)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect the ``logging`` records of this thread during the block (the list it yields, filled as they
    come); ``benchmark.*`` INFO is enabled meanwhile, and the records are not printed here."""
    handler = _Collect()
    root, ours = logging.getLogger(), logging.getLogger("benchmark")
    saved = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    root.addHandler(handler)
    if not ours.propagate:  # records of benchmark.* would not reach the root logger
        ours.addHandler(handler)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        ours.removeHandler(handler)
        ours.setLevel(saved)


def reemit_logs(records: Sequence[logging.LogRecord], seen: set[tuple[str, int, str]]) -> int:
    """Hand ``records`` (from a worker's :attr:`UnitResult.logs`) to this process's loggers, as if logged
    here; a WARNING or above whose ``(logger, level, message)`` is in ``seen`` is skipped (and each new
    one added), so a warning that every unit logs is shown once per run. Returns the number re-emitted."""
    n = 0
    for rec in records:
        if rec.levelno >= logging.WARNING:
            key = (rec.name, rec.levelno, rec.getMessage())
            if key in seen:
                continue
            seen.add(key)
        logger = logging.getLogger(rec.name)
        if logger.isEnabledFor(rec.levelno):
            logger.handle(rec)
            n += 1
    return n


def _work(
    suite: Suite, unit: Any, options: Any, plugins: tuple[str, ...], token: str, unit_fn: UnitFn, setup_fn: SetupFn
) -> UnitResult:
    """What a worker runs for one unit: registries (``setup_fn``), its device, then ``unit_fn``, without
    progress bars and with its log records kept in the result (:func:`captured_logs`)."""
    with bars(False), captured_logs() as records, worker_heartbeat(getattr(options, "heartbeat_s", None)):
        setup_fn((*suite.plugins, *plugins))
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if suite.device in ("cuda", "auto") and n_gpus > 1:
            device = worker_device(suite.device, n_gpus, _my_slot(token))
            if device != suite.device:
                suite = replace(suite, device=device)
                torch.cuda.set_device(torch.device(device))
        result = unit_fn(suite, unit, options=options)
    result.logs = list(records)
    return result


# -- backends --------------------------------------------------------------------------------------


def execute_units(
    suite: Suite,
    units: Sequence[Any],
    *,
    unit_fn: UnitFn,
    setup_fn: SetupFn,
    options: Any,
    backend: str = "sequential",
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    plugins: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> Generator[UnitResult, None, None]:
    """Run ``unit_fn`` on each of ``units`` on ``backend`` and yield each :class:`UnitResult` as soon as
    it is finished.

    ``unit_fn(suite, unit, progress=None, options=None)`` computes one unit and ``setup_fn(plugins)``
    fills the registries of a worker (see :data:`UnitFn`, :data:`SetupFn`); ``options`` (the runner's
    ``ExecOptions``) is passed to ``unit_fn`` (with ``threads`` set per worker on CPU when it is None).

    ``options.unit_timeout_s`` (loky only): see :func:`_loky`. ``workers``: processes (default
    :func:`default_workers`); ``scheduler``: a dask scheduler address
    (``tcp://host:8786``; without it a ``LocalCluster`` of ``workers`` processes is started and closed);
    ``client``: an existing ``distributed.Client`` to use instead. ``plugins``: extra plugin modules
    (beyond ``suite.plugins``) each worker imports. ``progress(n)`` is called with each unit's image
    count (after every batch on ``sequential``). Closing the generator early cancels the units not started.
    """
    if backend not in BACKENDS:
        raise CambenchError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if getattr(options, "unit_timeout_s", None) is not None and backend != "loky":
        raise CambenchError(
            f"--unit-timeout stops a unit by killing its worker process, which needs --backend loky (got --backend "
            f"{backend}); add --backend loky, or drop --unit-timeout (the run reports a stalled unit anyway)."
        )
    if getattr(options, "method_timeout_s", None) is not None and backend == "dask":
        raise CambenchError(METHOD_TIMEOUT_ON_DASK)
    if workers is not None and workers < 1:
        raise CambenchError(f"--workers must be >= 1, got {workers}.")
    if scheduler is not None and backend != "dask":
        raise CambenchError(f"--scheduler is a dask option; add --backend dask (got --backend {backend}).")
    if scheduler is not None and not _SCHEDULER_ADDRESS.match(str(scheduler)):
        raise CambenchError(
            f"--scheduler {scheduler!r} is not a dask scheduler address; pass one such as tcp://10.0.0.5:8786 or "
            "localhost:8786 (printed by `dask scheduler`)."
        )
    units = list(units)
    if not units:
        return
    plugins = tuple(plugins)
    if backend == "sequential":
        if plugins:
            setup_fn(plugins)
        for unit in units:
            yield unit_fn(suite, unit, progress=progress, options=options)
        return
    token = uuid.uuid4().hex[:12]
    n = workers or default_workers(suite.device)
    if backend == "loky":
        yield from _loky(suite, units, min(n, len(units)), options, plugins, token, progress, (unit_fn, setup_fn))
    else:
        yield from _dask(suite, units, n, scheduler, client, options, plugins, token, progress, (unit_fn, setup_fn))


def _cpu_threads(suite: Suite, options: Any, workers: int) -> Any:
    if options.threads is None and not suite.device.startswith("cuda"):
        return replace(options, threads=max(1, cpu_count() // workers))
    return options


def _end_loky_workers() -> None:
    """Kill the processes of loky's reusable pool (joblib keeps them for the next call), if there is one."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        with contextlib.suppress(Exception):
            executor.shutdown(wait=False, kill_workers=True)


#: How many times the units in flight are resubmitted after a worker process died (killed, out of memory).
WORKER_RETRIES = 2


def _timed_out(left: list, workers: int, timeout: float) -> list:
    """After loky's timeout (no unit finished for ``timeout`` s): log the units in flight in one line and
    return the others. With ``pre_dispatch = n_jobs`` the units in flight are the first ``workers`` of
    ``left`` (dispatched in order, one more each time one finishes)."""
    _end_loky_workers()
    stopped, rest = left[:workers], left[workers:]
    _log.warning(
        "cambench: no unit finished within --unit-timeout %g s: stopped %s (worker killed; left unfinished, a "
        "rerun retries it; raise --unit-timeout if it is only slow); going on with %d other unit(s).",
        timeout,
        ", ".join(u.key for u in stopped),
        len(rest),
    )
    return rest


def _loky(suite, units, workers, options, plugins, token, progress, fns) -> Iterator[UnitResult]:
    """Units on a loky pool; a dead worker (``TerminatedWorkerError``) restarts the pool on the units not
    yet finished, at most :data:`WORKER_RETRIES` times, then the run stops with one line (finished units
    are already committed by the driver). With ``options.unit_timeout_s``, when no unit finished for that
    long, the units in flight are stopped and named (:func:`_timed_out`) and the pool restarts on the others
    (joblib's ``timeout``: its workers are killed, nothing runs on in the background)."""
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    options = _cpu_threads(suite, options, workers)
    timeout = getattr(options, "unit_timeout_s", None)
    left = list(units)
    deaths = 0
    # as first sized; 1 runs the units in this process, where nothing can stop one: 2 under a timeout
    n_jobs = max(workers, 2) if timeout else workers
    while left:
        par = Parallel(
            n_jobs=n_jobs,
            backend="loky",
            return_as="generator_unordered",
            batch_size=1,
            pre_dispatch="n_jobs",
            timeout=timeout,
        )
        gen = par(delayed(_work)(suite, u, options, plugins, token, *fns) for u in left)
        try:
            for result in gen:
                if progress is not None:
                    progress(int(result.info.get("n_images", 0)))
                left = [u for u in left if u.key != result.key]
                yield result
        except (KeyboardInterrupt, GeneratorExit, CambenchError):
            _end_loky_workers()  # an interrupted or failed run leaves no worker behind
            raise
        except PoolTimeout:
            left = _timed_out(left, n_jobs, float(timeout or 0))
        except TerminatedWorkerError:
            deaths += 1
            if deaths > WORKER_RETRIES:
                raise CambenchError(_died_message(deaths, left)) from None
            _log.warning(
                "cambench: a worker process died (killed, or out of memory); resubmitting %d unit(s) (%d of %d).",
                len(left),
                deaths,
                WORKER_RETRIES,
            )
        finally:
            gen.close()  # an early exit aborts the units not started


@contextlib.contextmanager
def kept_environ() -> Iterator[None]:
    """Restore ``os.environ`` after the block: dask's ``LocalCluster`` leaves ``OMP_NUM_THREADS=1`` (and
    ``MALLOC_TRIM_THRESHOLD_``) in the parent process, which every later subprocess would inherit."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


#: A dask scheduler address: ``protocol://host[:port]`` or ``host:port``.
_SCHEDULER_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://[^\s/]+|[A-Za-z0-9._-]+:\d{1,5})$")


def _worker_kernels() -> str:
    return describe()


def check_worker_kernels(client: Any) -> None:
    """Probe every dask worker's CPU-kernel mode (:func:`benchmark.cpukernels.describe`) and refuse, in one
    line, workers that compute with other kernels than this process (whose mode ``run.json`` records): an
    external ``dask worker`` started without the portable environment would change the numbers silently."""
    want = describe()
    got = client.run(_worker_kernels)
    bad = {w: k for w, k in sorted(got.items()) if k != want}
    if bad:
        worker, kernels = next(iter(bad.items()))
        env = " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
        raise CambenchError(
            f"{len(bad)} dask worker(s), e.g. {worker}, compute with {kernels} CPU kernels but this run uses {want}; "
            f"start them with the run's mode (`env {env} dask worker ADDRESS` for portable kernels) or run with "
            f"--cpu-kernels native."
        )


#: Seconds a dask run waits while its cluster has no worker alive (all killed, none restarted) before it stops.
NO_WORKER_S = 120.0


def _submit_unit(client: Any, args: tuple, prefix: str, resources: Any, unit: Any, attempt: int) -> Any:
    """Submit :func:`_work` for ``unit`` (``attempt`` > 0: a resubmission after its worker died)."""
    key = f"{prefix}-{unit.key}" + (f"-retry{attempt}" if attempt else "")
    return client.submit(_work, args[0], unit, *args[1:], key=key, resources=resources, pure=False)


def _dask_results(client: Any, submit: Callable[[Any, int], Any], units: Sequence[Any], progress: Any) -> Iterator:
    """The results of ``units`` on dask as they finish. A unit whose workers kept dying (dask's
    ``KilledWorker``, after its own ``allowed-failures``) is resubmitted, at most :data:`WORKER_RETRIES` times
    in all, then the run stops with one line; so does a cluster with no worker alive for :data:`NO_WORKER_S`
    seconds (instead of waiting for ever). Finished units are already committed by the driver."""
    from distributed import KilledWorker, wait

    unit_of = {submit(u, 0): u for u in units}
    deaths, alone_since = 0, None
    try:
        while unit_of:
            try:
                done = wait(list(unit_of), timeout=min(5.0, NO_WORKER_S), return_when="FIRST_COMPLETED").done
            except TimeoutError:
                done = set()
            alone_since = None if client.nthreads() else (alone_since or time.monotonic())
            if alone_since is not None and time.monotonic() - alone_since >= NO_WORKER_S and not done:
                raise CambenchError(_no_worker_message(list(unit_of.values())))
            for fut in done:
                unit = unit_of.pop(fut)
                try:
                    result = fut.result()
                except KilledWorker:
                    deaths += 1
                    if deaths > WORKER_RETRIES:
                        raise CambenchError(_died_message(deaths, [unit, *unit_of.values()])) from None
                    _log.warning(
                        "cambench: a dask worker died (killed, or out of memory) running %s; resubmitting it "
                        "(%d of %d).", unit.key, deaths, WORKER_RETRIES,
                    )  # fmt: skip
                    unit_of[submit(unit, deaths)] = unit
                    continue
                fut.release()
                if progress is not None:
                    progress(int(result.info.get("n_images", 0)))
                yield result
    finally:
        client.cancel([f for f in unit_of if not f.done()])


def _died_message(deaths: int, left: Sequence[Any]) -> str:
    return (
        f"a worker process died {deaths} times (killed, or out of memory) with {len(left)} unit(s) left, e.g. "
        f"{left[0].key}; finished units are kept: rerun with fewer --workers (or --backend sequential) to resume."
    )


def _no_worker_message(left: Sequence[Any]) -> str:
    return (
        f"the dask cluster has had no worker for {NO_WORKER_S:g} s (all killed or stopped) with {len(left)} unit(s) "
        f"left, e.g. {left[0].key}; finished units are kept: start workers (`dask worker ADDRESS`) and rerun to resume."
    )


def _dask(suite, units, workers, scheduler, client, options, plugins, token, progress, fns) -> Iterator[UnitResult]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover
        raise CambenchError(f"--backend dask needs `pip install distributed` ({exc}).") from None

    own: list[Any] = []
    if client is None:
        if scheduler:
            try:
                client = Client(scheduler, timeout="30s")
            except (OSError, ValueError, TypeError) as exc:
                raise CambenchError(
                    f"Cannot reach the dask scheduler at {scheduler!r} ({exc}). Start one with "
                    "`dask scheduler` and workers with `dask worker ADDRESS`, or drop --scheduler."
                ) from None
            own.append(client)
        else:
            with kept_environ():
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            own += [client, cluster]
            options = _cpu_threads(suite, options, workers)
    try:
        check_worker_kernels(client)
        info = client.scheduler_info(n_workers=-1)
        has_gpu = any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())
        wants_gpu = suite.device.startswith("cuda") or suite.device == "auto"
        resources = {"GPU": 1} if has_gpu and wants_gpu else None
        submit = partial(_submit_unit, client, (suite, options, plugins, token, *fns), f"cambench-{token}", resources)
        yield from _dask_results(client, submit, units, progress)
    finally:
        for obj in own:
            obj.close()


# -- prefetching batches (CUDA) --------------------------------------------------------------------

_END = object()


def prefetch(iterator: Iterator[T], transform: Callable[[T], T] = lambda x: x, depth: int = 2) -> Iterator[T]:
    """Yield ``transform(item)`` for each item of ``iterator``, produced ``depth`` items ahead in a thread.

    Used on CUDA to load, collate and pin the next batches while the GPU works on the current one.
    The order is kept; an exception in the producer is re-raised here; closing the generator stops the
    producer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put((transform(item), None)):
                    return
        except BaseException as exc:
            put((None, exc))
            return
        put((_END, None))

    thread = threading.Thread(target=produce, name="cambench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
