"""One unit of work: :func:`run_unit` turns a :class:`~benchmark.runner.plan.Unit` (experiment x shard of
images, with its resolved :class:`~benchmark.runner.plan.ExperimentPlan`) into a picklable
:class:`~benchmark.schema.UnitResult`.

resources (model, dataset, batches: :mod:`.resources`) -> per batch :func:`benchmark.evaluate.evaluate_batch`
(targets, every method from one shared capture, every metric) -> small collectors (score rows, statistics,
meta-evaluation rows, curves, gallery, map differences) -> :class:`UnitResult`.

Statuses in the score rows: ``ok`` (finite value), ``undefined`` (the metric returned NaN: undefined for
that image, e.g. an empty mask), ``error`` (the method or the metric raised, or the
model output NaN/inf logits on the batch; ``message`` says why).
Metrics whose needs the dataset cannot meet (masks, boxes) produce **no rows**. Maps flagged degenerate
(constant raw map, set to zeros) keep their rows, with ``degenerate = True``.

Determinism: each batch seeds torch and the methods/metrics with ``batch_seed(seed, unit.key, i)``, so a
unit's rows do not depend on which units ran before it (resume, parallel backends).

With the experiment's ``meta_evaluation`` (docs/metrics.md, "Meta-evaluation"), each batch is then
re-evaluated (``evaluate_batch`` again, same targets and seed) under K minor and K disruptive perturbed
copies of the model (:func:`perturb_model`, one set per experiment, seeded by :func:`meta_seed`); those rows
are the unit's ``perturbed`` table (``PERTURBED_COLUMNS``), reduced by :mod:`benchmark.report.meta`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import CambenchError
from ..evaluate import BatchScores, evaluate_batch, nonfinite_message, resolve_targets
from ..forward import PRECISIONS as _FORWARD_DTYPES
from ..forward import cudnn_autotune, forward_compile, forward_precision, tf32
from ..metrics.base import curve_positions
from ..progress import note_unit
from ..schema import CURVE_COLUMNS, PERTURBED_COLUMNS, SCORE_COLUMNS, STATS_COLUMNS, TIMING_COLUMNS, UnitResult
from ..types import Batch, ModelHandle
from .plan import ExperimentPlan, Unit
from .resources import check_pairing, get_dataset, get_model, resolve_device, unit_batches
from .suite import Suite

#: The two kinds of perturbation of the meta-evaluation, in order (docs/metrics.md, "Meta-evaluation").
META_KINDS = ("minor", "disruptive")
#: target kinds with several rows per image whose gallery keeps whole images (a caption's words, an image's queries)
ROWS_BY_IMAGE = ("tokens", "text")

PRECISIONS = tuple(_FORWARD_DTYPES)  # fp32, tf32, bf16, fp16: one list, in benchmark/forward.py


@dataclass(frozen=True)
class ExecOptions:
    """*How* units run (picklable, sent to every worker); only ``precision`` can change scores.

    precision:     ``fp32`` | ``tf32`` | ``bf16`` | ``fp16``: ``bf16``/``fp16`` autocast the extra
                   (perturbation) forwards of Score-/Ablation-CAM and the perturbation metrics; the gradient
                   capture stays fp32. ``fp32`` is IEEE fp32 on every device (TF32 off on CUDA);
                   ``tf32`` lets CUDA use TF32 for all convolutions and matmuls (faster, maps move by ~1e-3;
                   :func:`~benchmark.forward.tf32`). A non-fp32 precision is part of the suite hash
                   (its parts are not mixed with fp32).
    channels_last: convert CNNs and batches to ``torch.channels_last``; ``None`` = for models without a
                   token reshape, on every device (measured faster on CUDA and on CPU: benchmarks/RESULTS.md).
    prefetch:      load/collate/pin the next batches in a background thread; ``None`` = on CUDA.
    threads:       ``torch.set_num_threads`` in the process running the unit (parallel CPU workers).
    compile:       ``torch.compile`` the extra (perturbation) forwards (``reduce-overhead``: CUDA graphs on
                   CUDA) and let cuDNN autotune its convolutions (``cudnn.benchmark``);
                   :func:`~benchmark.forward.forward_compile`. Scores move by float reassociation only.
    unit_timeout_s: ``--backend loky`` only: when no unit finished for this many seconds, the units in flight
                   are stopped (their worker processes killed), named in one line and left unfinished (a rerun
                   retries them), and the run goes on with the others (:func:`benchmark.runner.parallel.execute_units`).
                   A unit cannot be stopped safely inside the process computing it (a thread cannot interrupt
                   torch), so the sequential backend has no hard timeout: its driver reports a stalled unit.
    method_timeout_s: sequential and loky: a method whose explanation of a batch runs longer than this many
                   seconds is stopped (``SIGALRM`` in the process computing the unit,
                   :func:`benchmark.evaluate.method_deadline`) and its rows of the batch are ``error`` ("timed
                   out after S s (--method-timeout)"); the unit's other methods and metrics go on. Refused on
                   dask (its workers run units on threads, which receive no signal).
    heartbeat_s:   a worker process (loky, dask) writes a line to its stderr (the parent's terminal for loky and
                   a local dask cluster) at least this often while it computes a unit: the unit, its images done,
                   the method or metric running and for how long (:func:`benchmark.progress.worker_heartbeat`);
                   ``None``: none (the sequential backend's driver prints these lines itself).
    """

    precision: str = "fp32"
    channels_last: bool | None = None
    prefetch: bool | None = None
    threads: int | None = None
    compile: bool = False
    unit_timeout_s: float | None = None
    method_timeout_s: float | None = None
    heartbeat_s: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise CambenchError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")
        t = self.unit_timeout_s
        if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise CambenchError(f"--unit-timeout must be a positive number of seconds; got {t!r}.")
        m = self.method_timeout_s
        if m is not None and not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
            raise CambenchError(f"--method-timeout must be a positive number of seconds; got {m!r}.")


def batch_seed(seed: int, unit_key: str, batch_index: int) -> int:
    """A 31-bit seed from (suite seed, unit key, batch index): independent of execution order."""
    digest = hashlib.sha256(f"{seed}:{unit_key}:{batch_index}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def meta_seed(seed: int, experiment: int, kind: str, k: int) -> int:
    """The seed of the ``k``-th ``kind`` perturbed model of an experiment: one model for all its units and
    images (the meta-evaluation perturbs the model once per ``k``, as MetaQuantus), whatever ran before."""
    digest = hashlib.sha256(f"{seed}:meta:{experiment}:{kind}:{k}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def perturb_model(model: torch.nn.Module, std: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every parameter multiplied by noise drawn from N(1, ``std``) on the CPU (so a
    seed gives the same model on every device): the model perturbation of MetaQuantus (Hedstrom et al., TMLR
    2023, Sec. 4: multiplicative Gaussian weight noise; small ``std`` = minor, large = disruptive)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in out.parameters():
            noise = 1.0 + std * torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.mul_(noise.to(device=p.device, dtype=p.dtype))
    return out.eval()


@contextlib.contextmanager
def unit_environment(options: ExecOptions | None = None) -> Iterator[list[warnings.WarningMessage]]:
    """The process state every unit is computed in (what :func:`run_unit` enters around its work).

    ``options.threads`` sets ``torch.set_num_threads``; inside the block the extra forwards run in
    ``options.precision`` (:func:`~benchmark.forward.forward_precision`), TF32 is allowed only for
    ``precision="tf32"`` (:func:`~benchmark.forward.tf32`), ``options.compile`` compiles the extra
    forwards and turns on cuDNN autotuning; every flag is restored on exit. Yields the list that collects
    the block's warnings (all of them, ``"always"``).
    """
    opts = options or ExecOptions()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    autotune = cudnn_autotune(True) if opts.compile else contextlib.nullcontext()
    with (
        forward_precision(opts.precision),
        tf32(allow=opts.precision == "tf32"),
        forward_compile(opts.compile),
        autotune,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        yield caught


def run_unit(
    suite: Suite,
    unit: Unit,
    progress: Callable[[int], None] | None = None,
    options: ExecOptions | None = None,
) -> UnitResult:
    """Compute every method and metric on the images of ``unit`` (a pure function of its inputs).

    The unit's :class:`~benchmark.runner.plan.ExperimentPlan` (``unit.plan``, set by ``plan_run``) gives
    everything it computes; of ``suite`` only the ``device`` is read (a worker may be given its own GPU).
    ``progress(n)`` is called after each batch with the number of images done. Method and metric failures
    become ``status="error"`` rows; model/weights/data-root problems raise. ``options``: see
    :class:`ExecOptions`, applied by :func:`unit_environment`.
    """
    if unit.plan is None or unit.plan.spec is None:
        raise CambenchError(f"Unit {unit.key!r} carries no experiment plan; make units with plan_run(suite).")
    opts = options or ExecOptions()
    with unit_environment(opts) as caught:
        result = _run_unit(unit, unit.plan, resolve_device(suite.device), progress, opts)
    # the warnings of methods and metrics (e.g. Ablation-CAM's sign note) travel with the result: the
    # parent logs each distinct one once (nothing under --quiet) and the part's metadata keeps them
    result.info["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return result


def _run_unit(
    unit: Unit,
    plan: ExperimentPlan,
    device: torch.device,
    progress: Callable[[int], None] | None,
    opts: ExecOptions,
) -> UnitResult:
    """resources -> batches -> :func:`evaluate_batch` -> collectors -> :class:`UnitResult`."""
    exp = plan.spec
    assert exp is not None
    t_unit = time.perf_counter()
    timings = Timings()
    handle, channels_last = get_model(exp, device, opts.channels_last)
    dataset = get_dataset(exp, plan.seed)
    check_pairing(exp, handle, dataset)
    n_errors_before = len(getattr(dataset, "errors", []))
    timings.add("load", "model+dataset", time.perf_counter() - t_unit)
    prefetch = device.type == "cuda" if opts.prefetch is None else bool(opts.prefetch)
    rows, stats = ScoreRows(plan.label, plan.dataset), StatsRows(plan.label, plan.dataset)
    curves, gallery = CurveSums(), Gallery(unit.gallery, by_image=exp.target in ROWS_BY_IMAGE)
    meta = MetaRows(plan, handle) if plan.meta is not None else None
    map_diffs: dict[str, float] = {}  # "a|b" -> max |map_a - map_b| over the unit's images
    facts: dict[str, float] = {}
    n_done = 0
    note_unit(unit.key, 0, len(unit.indices))  # read by the progress lines of a long unit (benchmark.progress)
    batches = unit_batches(dataset, handle, unit.indices, plan.batch_size, device, prefetch, channels_last)
    for bi, batch in enumerate(batches):
        seed = batch_seed(plan.seed, unit.key, bi)
        batch = resolve_targets(handle.model, batch, exp.target)
        scores = evaluate_batch(
            handle.model, handle.target_layer, handle.reshape, batch, unit.methods, unit.metrics,
            seed=seed, method_timeout=opts.method_timeout_s, **evaluate_options(plan),
        )  # fmt: skip
        timings.update(scores.seconds)
        if scores.nonfinite:  # one text per experiment: the run shows each distinct warning once
            warnings.warn(nonfinite_warning(plan), RuntimeWarning, stacklevel=1)
        add_score_rows(rows, stats, scores)
        fold_map_diffs(map_diffs, scores.maps)
        fold_capture_facts(facts, scores.capture_facts)
        if meta is not None:
            meta.add(scores, unit.metrics, seed, timings)
        curves.add(scores.curves)
        gallery.add(handle, batch, scores.maps)
        n_done += len(batch.ids)
        note_unit(unit.key, n_done, len(unit.indices))
        if progress is not None:
            progress(len(batch.ids))
    note_unit("")
    # image-level failures (corrupt/missing files skipped by the loader)
    new_errors = list(getattr(dataset, "errors", []))[n_errors_before:]
    for msg in new_errors:
        rows.add("(data)", "(load)", [str(msg).split(":")[0]], np.nan, "error", str(msg)[:500], False)
    timings.add("total", "unit", time.perf_counter() - t_unit)
    return UnitResult(
        key=unit.key,
        scores=rows.frame(),
        curves=curves.frame(plan.label, plan.dataset, plan.metric_params),
        timings=timings.frame(unit.key, plan.label, plan.dataset),
        gallery=gallery.arrays(handle, plan.label, plan.dataset),
        info={"n_images": n_done, "data_errors": new_errors, "map_diffs": map_diffs, "capture": facts},
        stats=stats.frame(),
        perturbed=None if meta is None else meta.frame(),
    )


def nonfinite_warning(plan: ExperimentPlan) -> str:
    """The warning of an experiment whose model outputs non-finite logits (the same text for all its units and
    batches, so that the run shows it once)."""
    return (
        f"{plan.label}/{plan.dataset}: the model outputs non-finite logits (NaN or inf); the rows of the batches "
        "concerned are status 'error', never scored. Check the model's weights and input normalisation."
    )


def evaluate_options(plan: ExperimentPlan) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate_batch` an experiment plan sets."""
    exp = plan.spec
    assert exp is not None
    return {
        "forward_batch_size": plan.forward_batch_size,
        "method_params": plan.method_params,
        "metric_params": plan.metric_params,
        "reexplain_methods": exp.reexplain_methods,
        "ms_flip": exp.ms_flip_config,
    }


# -- collectors ----------------------------------------------------------------------------------------


class Timings:
    """Seconds per (stage, name), summed over batches, in the order first seen."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[str, str], float] = {}

    def add(self, stage: str, name: str, seconds: float) -> None:
        self._seconds[(stage, name)] = self._seconds.get((stage, name), 0.0) + seconds

    def update(self, seconds: dict[tuple[str, str], float]) -> None:
        for (stage, name), sec in seconds.items():
            self.add(stage, name, sec)

    def frame(self, unit: str, model: str, dataset: str) -> pd.DataFrame:
        rows = [(unit, model, dataset, s, n, sec) for (s, n), sec in self._seconds.items()]
        return pd.DataFrame(rows, columns=TIMING_COLUMNS)


def add_score_rows(rows: ScoreRows, stats: StatsRows, scores: BatchScores) -> None:
    """The rows of one batch's :class:`BatchScores`: per metric (in the order they ran), an error row for each
    failed method it would have scored, then its values (or an error row per method if it raised)."""
    ids = list(scores.batch.ids)
    if scores.nonfinite:  # the model's outputs are NaN/inf: every row of the batch is an error naming why
        msg = nonfinite_message(scores)
        for metric, asked in scores.scored.items():
            for name in asked:
                rows.add(name, metric, ids, np.nan, "error", msg, False)
        return
    degenerate = {m: d.cpu().numpy().astype(bool) for m, d in scores.degenerate.items()}
    for metric, asked in scores.scored.items():
        for name in asked:
            if name in scores.method_undefined:
                msg = f"method undefined: {scores.method_failures[name]}"
                rows.add(name, metric, ids, np.nan, "undefined", msg, False)
            elif name in scores.method_failures:
                rows.add(name, metric, ids, np.nan, "error", f"method failed: {scores.method_failures[name]}", False)
        scored = [m for m in asked if m in scores.maps]
        if metric in scores.metric_failures:
            msg = f"metric failed: {scores.metric_failures[metric]}"
            for name in scored:
                rows.add(name, metric, ids, np.nan, "error", msg, degenerate[name])
        elif metric in scores.statistics:
            res = scores.statistics[metric]
            for name in (m for m in scored if m in res):
                st = res[name].detach().cpu().double().numpy()
                if st.ndim != 2 or st.shape[0] != len(ids):
                    msg = f"dataset-level metric returned statistics of shape {tuple(st.shape)}; "
                    rows.add(name, metric, ids, np.nan, "error", msg + f"expected [{len(ids)}, S]", degenerate[name])
                else:
                    stats.add(name, metric, ids, st, degenerate[name])
        else:
            res = scores.scores.get(metric, {})
            for name in (m for m in scored if m in res):
                v = res[name].detach().float().cpu().double().numpy().reshape(-1)
                if v.shape[0] != len(ids):
                    msg = f"metric returned {v.shape[0]} values for {len(ids)} images"
                    rows.add(name, metric, ids, np.nan, "error", msg, degenerate[name])
                else:
                    rows.add(name, metric, ids, v, np.where(np.isfinite(v), "ok", "undefined"), "", degenerate[name])


class ScoreRows:
    """The score rows (``SCORE_COLUMNS``) of one unit, gathered per (method, metric, batch) as numpy chunks
    and built into one DataFrame by :meth:`frame` (no per-row Python objects on the way)."""

    def __init__(self, model: str, dataset: str) -> None:
        self.model, self.dataset = model, dataset
        self._chunks: list[tuple[str, str, str, list, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(
        self, method: str, metric: str, ids: Sequence[str], values: Any, status: Any, message: str, degenerate: Any
    ) -> None:
        """Rows of ``method`` x ``metric`` for images ``ids``: ``values`` (one per image, or a scalar such as
        NaN for all), ``status`` (per image or one for all), one ``message``, ``degenerate`` (per image or one)."""
        n = len(ids)

        def per_image(x: Any, dtype: Any) -> np.ndarray:
            if isinstance(x, (list, tuple, np.ndarray)):
                arr = np.asarray(x, dtype=dtype).reshape(-1)
                if arr.shape[0] != n:
                    raise CambenchError(
                        f"Score rows of {method} x {metric}: {arr.shape[0]} values for {n} images; "
                        f"expected one per image (or one value for all)."
                    )
                return arr
            return np.full(n, x, dtype=dtype)

        self._chunks.append(
            (
                method,
                metric,
                message,
                list(ids),
                per_image(values, np.float64),
                per_image(status, object),
                per_image(degenerate, bool),
            )
        )

    def __len__(self) -> int:
        return sum(len(c[3]) for c in self._chunks)

    def frame(self) -> pd.DataFrame:
        """One DataFrame of every row added, in the order added (``value`` float64, ``degenerate`` bool)."""
        if not self._chunks:
            empty = pd.DataFrame({c: [] for c in SCORE_COLUMNS}, columns=SCORE_COLUMNS)
            return empty.astype({"value": "float64", "degenerate": bool})
        counts = [len(c[3]) for c in self._chunks]
        n = sum(counts)

        def repeated(i: int) -> np.ndarray:
            return np.repeat(np.asarray([c[i] for c in self._chunks], dtype=object), counts)

        cols = {
            "model": np.full(n, self.model, dtype=object),
            "dataset": np.full(n, self.dataset, dtype=object),
            "method": repeated(0),
            "metric": repeated(1),
            "image_id": [i for c in self._chunks for i in c[3]],  # as given (str)
            "value": np.concatenate([c[4] for c in self._chunks]),
            "status": np.concatenate([c[5] for c in self._chunks]),
            "message": repeated(2),
            "degenerate": np.concatenate([c[6] for c in self._chunks]),
        }
        return pd.DataFrame(cols, columns=SCORE_COLUMNS)


class StatsRows:
    """The per-image statistics rows (``STATS_COLUMNS``) of the unit's dataset-level metrics."""

    def __init__(self, model: str, dataset: str) -> None:
        self.model, self.dataset = model, dataset
        self._cols: dict[str, list] = {c: [] for c in STATS_COLUMNS}

    def add(self, method: str, metric: str, ids: Sequence[str], rows: np.ndarray, degenerate: Any) -> None:
        n = len(ids)
        for c, v in (("model", self.model), ("dataset", self.dataset), ("method", method), ("metric", metric)):
            self._cols[c] += [v] * n
        self._cols["image_id"] += list(ids)
        self._cols["stats"] += [np.ascontiguousarray(r, dtype=np.float64) for r in rows]
        self._cols["degenerate"] += list(degenerate) if isinstance(degenerate, (list, np.ndarray)) else [degenerate] * n

    def frame(self) -> pd.DataFrame:
        stats = pd.DataFrame(self._cols, columns=STATS_COLUMNS)
        stats["degenerate"] = stats["degenerate"].astype(bool)
        return stats


class MetaRows:
    """The meta-evaluation of one unit (MetaQuantus' model perturbation test; the report reduces the rows to
    IAC, IEC, NR and AR: benchmark/report/meta.py): each batch re-evaluated by :func:`evaluate_batch` under
    every perturbed model, same targets and seed, image-level metrics only (the test compares per-image
    scores). A method or metric that fails under a perturbed model gives no rows there."""

    def __init__(self, plan: ExperimentPlan, handle: ModelHandle) -> None:
        assert plan.meta is not None
        self.plan, self.handle = plan, handle
        self.models = [
            (kind, k, perturb_model(handle.model, std, meta_seed(plan.seed, plan.index, kind, k)))
            for kind, std in zip(META_KINDS, (plan.meta.minor_std, plan.meta.disruptive_std), strict=True)
            for k in range(plan.meta.perturbations)
        ]
        self._cols: dict[str, list] = {c: [] for c in PERTURBED_COLUMNS}

    def add(self, scores: BatchScores, metrics: Sequence[str], seed: int, timings: Timings) -> None:
        batch, ids = scores.batch, list(scores.batch.ids)
        image_metrics = [m for m in metrics if self.plan.levels.get(m, "image") != "dataset"]
        with torch.inference_mode():
            pred0 = self.handle.model(batch.images).argmax(dim=1)
        for kind, k, mp in self.models:
            t = time.perf_counter()
            with torch.inference_mode():
                same = (mp(batch.images).argmax(dim=1) == pred0).cpu().numpy().astype(bool)
            h = self.handle
            res = evaluate_batch(
                mp, h.target_layer, h.reshape, batch, list(scores.maps), image_metrics,
                seed=seed, **evaluate_options(self.plan),
            )  # fmt: skip
            for metric, per_method in res.scores.items():
                for name, value in per_method.items():
                    v = value.detach().float().cpu().double().numpy().reshape(-1)
                    if v.shape[0] == len(ids):
                        self._rows(name, metric, kind, k, ids, v, same)
            timings.add("meta", f"{kind} model", time.perf_counter() - t)

    def _rows(self, method: str, metric: str, kind: str, k: int, ids: list, v: np.ndarray, same: np.ndarray) -> None:
        n = len(ids)
        for c, x in (
            ("model", self.plan.label),
            ("dataset", self.plan.dataset),
            ("method", method),
            ("metric", metric),
            ("perturbation", kind),
            ("k", k),
        ):
            self._cols[c] += [x] * n
        self._cols["image_id"] += ids
        self._cols["value"] += v.tolist()
        self._cols["pred_same"] += same.tolist()

    def frame(self) -> pd.DataFrame:
        out = pd.DataFrame(self._cols, columns=PERTURBED_COLUMNS)
        return out.astype({"value": "float64", "k": "int64", "pred_same": bool})


class CurveSums:
    """Per (metric, method), the sum of the per-image curves ``[B, steps]`` over the unit and their count."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], tuple[np.ndarray, int]] = {}

    def add(self, curves: dict[str, dict[str, torch.Tensor]]) -> None:
        for metric, per_method in curves.items():
            for name, c in per_method.items():
                arr = c.detach().float().cpu().double().numpy()
                if arr.ndim != 2 or arr.shape[0] == 0:
                    continue
                s, k = self.sums.get((metric, name), (np.zeros(arr.shape[1]), 0))
                if s.shape[0] == arr.shape[1]:
                    self.sums[(metric, name)] = (s + np.nan_to_num(arr).sum(0), k + arr.shape[0])

    def frame(self, model: str, dataset: str, metric_params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        return curves_frame(model, dataset, self.sums, metric_params)


def curves_frame(
    model: str,
    dataset: str,
    curve_sum: dict[tuple[str, str], tuple[np.ndarray, int]],
    metric_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The mean curves (``CURVE_COLUMNS``) of summed curves ``{(metric, method): (sum [steps], n)}``, each
    point at the x its metric measured (:func:`benchmark.metrics.base.curve_positions`: ROAD's fractions)."""
    rows = []
    for (metric, method), (s, k) in sorted(curve_sum.items()):
        steps = s.shape[0]
        xs = curve_positions(metric, (metric_params or {}).get(metric), steps)  # ROAD: the fractions measured
        mean = s / max(k, 1)
        rows += [(model, dataset, method, metric, j, float(xs[j]), float(mean[j]), k) for j in range(steps)]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


class Gallery:
    """The first ``size`` images of the unit with their targets, ground truth and maps (float16).

    With ``by_image`` (targets with several rows per image: ``tokens``, ``text``) every row of the first
    ``size`` images is kept, so that a caption's words (a text query's image) are shown together, and the
    rows' words are stored: ``words`` (the token or the query), ``image_ids`` (the image of each row) and, for
    token rows, ``positions``, ``function_word`` and ``has_truth`` (the word names a drawn object)."""

    def __init__(self, size: int, by_image: bool = False) -> None:
        self.size = size
        self.by_image = by_image
        self.images: list[str] = []  # by_image: the distinct images kept, in order
        self.parts: dict[str, list] = {"images": [], "ids": [], "targets": [], "masks": [], "boxes": [], "maps": []}
        self.rows: dict[str, list] = {"positions": [], "function_word": [], "has_truth": []}

    def _keep(self, ids: list[str]) -> list[int]:
        """The rows of ``ids`` to keep: the first rows up to ``size``, or every row of the first ``size`` images."""
        if not self.by_image:
            return list(range(max(0, min(len(ids), self.size - len(self.parts["ids"])))))
        out = []
        for i, rid in enumerate(ids):
            image = image_of(rid)
            if image not in self.images and len(self.images) < self.size:
                self.images.append(image)
            if image in self.images:
                out.append(i)
        return out

    def add(self, handle: ModelHandle, batch: Batch, maps: dict[str, torch.Tensor]) -> None:
        keep = self._keep(list(batch.ids))
        if not keep:
            return
        gal = self.parts
        idx = torch.as_tensor(keep, dtype=torch.long)
        imgs = handle.denormalize(batch.images[idx.to(batch.images.device)].detach()).clamp(0, 1)
        to_hwc = (0, *range(2, imgs.ndim), 1)  # [B,H,W,3], or [B,T,H,W,3] for volumes and clips
        gal["images"].append((imgs.permute(*to_hwc).cpu().numpy() * 255).round().astype(np.uint8))
        gal["ids"] += [batch.ids[i] for i in keep]
        gal["targets"].append(batch.targets.detach().cpu().numpy()[keep])
        if batch.masks is not None:
            gal["masks"].append(batch.masks.detach().cpu().numpy()[keep])
        if batch.boxes is not None:
            k = 6 if batch.images.ndim == 5 else 4  # 3-D boxes of volumes and clips
            gal["boxes"] += [batch.boxes[i].detach().float().cpu().numpy().reshape(-1, k) for i in keep]
        gal["maps"].append({m: maps[m].detach().cpu().numpy()[keep].astype(np.float16) for m in maps})
        extras = batch.extras or {}
        if self.by_image and "position" in extras:
            for key, extra in (
                ("positions", "position"),
                ("function_word", "function_word"),
                ("has_truth", "has_truth"),
            ):
                self.rows[key].append(extras[extra].detach().cpu().numpy()[keep])

    def arrays(self, handle: ModelHandle, model: str, dataset: str) -> dict[str, np.ndarray] | None:
        """The gallery as arrays (what the store writes), or None when it holds no image or no method has maps
        of every gallery image at the images' size (a method that failed or timed out on one of the gallery's
        batches, or returned maps of another shape, is left out of the gallery, never failing the unit)."""
        gal = self.parts
        images = np.concatenate(gal["images"]) if gal["ids"] else None
        methods = [
            k
            for k in (gal["maps"][0] if gal["maps"] else {})
            if all(k in m and m[k].shape[1:] == images.shape[1:-1] for m in gal["maps"])  # type: ignore[union-attr]
        ]
        if images is None or not methods:
            return None
        out = {
            "experiment": np.asarray([model, dataset], dtype=str),
            "images": images,
            "ids": np.asarray(gal["ids"], dtype=str),
            "targets": np.concatenate(gal["targets"]).astype(np.int64),
            "methods": np.asarray(methods, dtype=str),
            "maps": np.stack([np.concatenate([m[k] for m in gal["maps"]]) for k in methods], axis=1)
            if methods
            else np.zeros((len(gal["ids"]), 0, 1, 1), dtype=np.float16),  # every method failed (e.g. one run alone)
        }
        if gal["masks"]:
            out["masks"] = np.concatenate(gal["masks"]).astype(bool)
        if gal["boxes"]:
            kmax = max(b.shape[0] for b in gal["boxes"])
            pad = np.full((len(gal["boxes"]), max(kmax, 1), gal["boxes"][0].shape[-1]), np.nan, dtype=np.float32)
            for i, b in enumerate(gal["boxes"]):
                pad[i, : b.shape[0]] = b
            out["boxes"] = pad
        if handle.class_names:
            names = handle.class_names
            out["target_names"] = np.asarray(
                [names[t] if 0 <= t < len(names) else str(t) for t in out["targets"]], dtype=str
            )
        if self.by_image:
            out["image_ids"] = np.asarray([image_of(i) for i in gal["ids"]], dtype=str)
            if self.rows["positions"] and len(self.rows["positions"]) == len(gal["maps"]):
                out["positions"] = np.concatenate(self.rows["positions"]).astype(np.int64)
                out["function_word"] = np.concatenate(self.rows["function_word"]).astype(bool)
                out["has_truth"] = np.concatenate(self.rows["has_truth"]).astype(bool)
                # a token row's target is an index into the token view's flat outputs: the word is in its id
                out["words"] = np.asarray([i.rpartition(":")[2] for i in gal["ids"]], dtype=str)
                out["target_names"] = out["words"]
            elif "target_names" in out:
                out["words"] = out["target_names"]
        return out


def image_of(row_id: str) -> str:
    """The image of a row id: ``"<image>#<row>"`` (a token ``#t03:red``, a query ``#red_disk``) -> ``<image>``."""
    return row_id.partition("#")[0]


def fold_map_diffs(acc: dict[str, float], saliency: dict[str, torch.Tensor]) -> None:
    """Pairwise ``max |map_a - map_b|`` of one batch's maps (one batched Chebyshev ``cdist``), folded into
    ``acc`` by max: what ``equivalences.csv`` needs, a few numbers per unit instead of the maps."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for m in sorted(saliency):  # a method whose maps have another shape is compared with none (never aborts)
        groups.setdefault(tuple(saliency[m].shape), []).append(m)
    for names in groups.values():
        if len(names) < 2:
            continue
        with torch.inference_mode():
            flat = torch.stack([torch.nan_to_num(saliency[m].detach().float(), nan=2.0).flatten() for m in names])
            d = torch.cdist(flat[None], flat[None], p=float("inf"))[0].cpu().double().numpy()
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                key = f"{a}|{names[j]}"
                acc[key] = max(acc.get(key, 0.0), float(d[i, j]))


def fold_capture_facts(acc: dict[str, float], facts: dict[str, float]) -> None:
    """One batch's capture facts (:func:`benchmark.evaluate.capture_facts`) folded over batches:
    ``activation_min`` by min, ``grad_spatial_range`` by max."""
    for key, value in facts.items():
        fold = min if key == "activation_min" else max
        acc[key] = fold(acc[key], value) if key in acc else value
