"""One unit of work: :func:`run_unit` is a pure function of ``(suite, unit)`` returning a picklable
:class:`~benchmark.schema.UnitResult` (batches, targets, every method from one shared capture, every
metric on one :class:`~benchmark.metrics.MetricContext`, the meta-evaluation's perturbed models, curves,
gallery). See :mod:`benchmark.runner.execute` for the statuses and the determinism of the rows.
Re-exported by :mod:`benchmark.runner.execute`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ..errors import CambenchError, MethodUndefinedError
from ..schema import (  # re-exported
    CURVE_COLUMNS,
    PERTURBED_COLUMNS,
    SCORE_COLUMNS,
    STATS_COLUMNS,
    TIMING_COLUMNS,
    UnitResult,
)
from ..types import Batch, ModelHandle
from .plan import (
    Unit,
    _device_batches,
    _get_dataset,
    _get_model,
    _make_batches,
)
from .suite import Experiment, Suite

if TYPE_CHECKING:
    from ..metrics import MetricContext as MetricContextT

#: The two kinds of perturbation of the meta-evaluation, in order (docs/metrics.md, "Meta-evaluation").
META_KINDS = ("minor", "disruptive")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` if available, else ``mps`` if available, else ``cpu``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CambenchError(f"Device {device!r} was requested but CUDA is not available; use --device cpu.")
    return torch.device(device)


def _method_meta(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The registry metadata of methods ``names`` for :attr:`benchmark.metrics.MetricContext.method_meta`."""
    from ..methods import METHODS

    return {n: dict(METHODS.entry(n).meta) for n in names if n in METHODS}


from ..methods.base import PRECISIONS as _FORWARD_DTYPES  # noqa: E402

PRECISIONS = tuple(_FORWARD_DTYPES)  # fp32, tf32, bf16, fp16: one list, in methods.base


@dataclass(frozen=True)
class ExecOptions:
    """*How* units run (picklable, sent to every worker); only ``precision`` can change scores.

    precision:     ``fp32`` | ``tf32`` | ``bf16`` | ``fp16``: ``bf16``/``fp16`` autocast the extra
                   (perturbation) forwards of Score-/Ablation-CAM and the perturbation metrics; the gradient
                   capture stays fp32. ``fp32`` is IEEE fp32 on every device (TF32 off on CUDA);
                   ``tf32`` lets CUDA use TF32 for all convolutions and matmuls (faster, maps move by ~1e-3;
                   :func:`~benchmark.methods.base.tf32`). A non-fp32 precision is part of the suite hash
                   (its parts are not mixed with fp32).
    channels_last: convert CNNs and batches to ``torch.channels_last``; ``None`` = for models without a
                   token reshape, on every device (measured faster on CUDA and on CPU: benchmarks/RESULTS.md).
    prefetch:      load/collate/pin the next batches in a background thread; ``None`` = on CUDA.
    threads:       ``torch.set_num_threads`` in the process running the unit (parallel CPU workers).
    compile:       ``torch.compile`` the extra (perturbation) forwards (``reduce-overhead``: CUDA graphs on
                   CUDA) and let cuDNN autotune its convolutions (``cudnn.benchmark``);
                   :func:`~benchmark.methods.base.forward_compile`. Scores move by float reassociation only.
    """

    precision: str = "fp32"
    channels_last: bool | None = None
    prefetch: bool | None = None
    threads: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise CambenchError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")


# -- one unit --------------------------------------------------------------------------------------


def _metric_contexts(
    model: torch.nn.Module,
    batch: Batch,
    saliency: dict[str, torch.Tensor],
    explain: Callable,
    seed: int,
    batch_size: int,
    reexplain_methods: tuple[str, ...] | str,
) -> tuple[MetricContextT, MetricContextT]:
    """The batch's metric context, and its twin for the metrics that re-explain (robustness, sanity, cost):
    that one sees only the suite's ``reexplain_methods``; both share one cache and one curve store, so paired
    metrics still share their re-explanations."""
    from ..metrics import MetricContext

    mctx = MetricContext(
        model=model,
        batch=batch,
        saliency=saliency,
        explain=explain,
        seed=seed,
        batch_size=batch_size,
        method_meta=_method_meta(saliency),
    )
    re_sal = {m: v for m, v in saliency.items() if _reexplained(m, reexplain_methods)}
    return mctx, dataclasses.replace(mctx, saliency=re_sal, cache=mctx.cache, curves=mctx.curves)


def _reexplained(method: str, selection: tuple[str, ...] | str) -> bool:
    """Whether ``method`` is in a suite's ``reexplain_methods`` (names and/or method families)."""
    if selection == "all":
        return True
    from ..methods import METHODS

    family = METHODS.entry(method).meta.get("family") if method in METHODS else None
    return method in selection or family in selection


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


def _err(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}"
    return msg if len(msg) <= 500 else msg[:497] + "..."


@contextlib.contextmanager
def unit_environment(options: ExecOptions | None = None) -> Iterator[list[warnings.WarningMessage]]:
    """The process state every unit is computed in (what :func:`run_unit` enters around its work).

    ``options.threads`` sets ``torch.set_num_threads``; inside the block the extra forwards run in
    ``options.precision`` (:func:`~benchmark.methods.base.forward_precision`), TF32 is allowed only for
    ``precision="tf32"`` (:func:`~benchmark.methods.base.tf32`), ``options.compile`` compiles the extra
    forwards and turns on cuDNN autotuning; every flag is restored on exit. Yields the list that collects
    the block's warnings (all of them, ``"always"``).
    """
    from ..methods.base import cudnn_autotune, forward_compile, forward_precision, tf32

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

    ``progress(n)`` is called after each batch with the number of images done. Method and metric
    failures become ``status="error"`` rows; model/weights/data-root problems raise. ``options``: see
    :class:`ExecOptions` (precision, channels_last, prefetch, threads, compile), applied by
    :func:`unit_environment`.
    """
    opts = options or ExecOptions()
    with unit_environment(opts) as caught:
        result = _run_unit(suite, unit, progress, opts)
    # the warnings of methods and metrics (e.g. Ablation-CAM's sign note) travel with the result: the
    # parent logs each distinct one once (nothing under --quiet) and the part's metadata keeps them
    result.info["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return result


def _run_unit(suite: Suite, unit: Unit, progress: Callable[[int], None] | None, opts: ExecOptions) -> UnitResult:
    from .. import methods as M
    from ..metrics import METRICS, compute_metrics, missing_needs

    t_unit = time.perf_counter()
    exp = suite.experiments[unit.experiment]
    device = resolve_device(suite.device)
    timings: list[tuple[str, str, float]] = []

    t = time.perf_counter()
    handle, channels_last = _get_model(exp, device, opts.channels_last)
    if exp.layer is not None:
        handle = dataclasses.replace(handle, target_layer=exp.layer)
    prefetch = device.type == "cuda" if opts.prefetch is None else bool(opts.prefetch)
    dataset = _get_dataset(exp, suite.seed)
    if exp.target == "labels":
        from ..data.transforms import check_class_count

        check_class_count(handle, dataset)
    n_errors_before = len(getattr(dataset, "errors", []))
    timings.append(("load", "model+dataset", time.perf_counter() - t))
    model = handle.model
    fbs = suite.forward_batch_size
    method_params = exp.method_params

    score_rows = ScoreRows(exp.label, exp.dataset)
    add = score_rows.add

    scols: dict[str, list] = {c: [] for c in STATS_COLUMNS}

    def add_stats(method: str, metric: str, ids: Sequence[str], rows: np.ndarray, degenerate: Any) -> None:
        n = len(ids)
        for c, v in (("model", exp.label), ("dataset", exp.dataset), ("method", method), ("metric", metric)):
            scols[c] += [v] * n
        scols["image_id"] += list(ids)
        scols["stats"] += [np.ascontiguousarray(r, dtype=np.float64) for r in rows]
        scols["degenerate"] += list(degenerate) if isinstance(degenerate, (list, np.ndarray)) else [degenerate] * n

    map_diffs: dict[str, float] = {}  # "a|b" -> max |map_a - map_b| over the unit's images
    capture_facts: dict[str, float] = {}
    curve_sum: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
    gal: dict[str, list] = {"images": [], "ids": [], "targets": [], "masks": [], "boxes": [], "maps": []}
    n_done = 0
    pcols: dict[str, list] | None = {c: [] for c in PERTURBED_COLUMNS} if exp.meta_evaluation else None
    perturbed_models: list[tuple[str, int, torch.nn.Module]] = []

    host = _make_batches(dataset, handle, suite.batch_size, unit.indices)
    batches = _device_batches(host, device, prefetch, channels_last)
    for bi, batch in enumerate(batches):
        seed = batch_seed(suite.seed, unit.key, bi)
        torch.manual_seed(seed)
        ids = list(batch.ids)
        unknown = batch.targets < 0  # a loader's "explain the prediction" sentinel (e.g. data target="predicted")
        if exp.target == "predicted" or bool(unknown.any()):
            with torch.inference_mode():
                pred = model(batch.images).argmax(dim=1)
            pred = pred.clone()  # a normal tensor (inference tensors cannot enter autograd)
            if exp.target != "predicted":
                pred = torch.where(unknown, pred, batch.targets)
            labels = batch.labels if batch.labels is not None else batch.targets
            batch = replace(batch, targets=pred, labels=labels)

        # 1. every method from one shared capture
        layer = M.resolve_layer(model, handle.target_layer)
        ectx = M.ExplainContext(
            model=model,
            layer=layer,
            images=batch.images,
            targets=batch.targets,
            reshape=handle.reshape,
            batch_size=fbs,
            seed=seed,
            masks=batch.masks,
        )
        outputs: dict[str, Any] = {}
        failed: dict[str, str] = {}
        undefined: set[str] = set()
        for name in unit.methods:
            t = time.perf_counter()
            try:
                outputs[name] = M.run_method(ectx, name, method_params.get(name), ms_flip=exp.ms_flip_config)
            except Exception as exc:
                failed[name] = _err(exc)
                if isinstance(exc, MethodUndefinedError):  # not defined for this model/layer: "undefined" rows
                    undefined.add(name)
            timings.append(("explain", name, time.perf_counter() - t))
        saliency = {m: o.maps for m, o in outputs.items()}
        degenerate = {m: o.degenerate.detach().cpu().numpy().astype(bool) for m, o in outputs.items()}
        _accumulate_map_diffs(map_diffs, saliency)
        _accumulate_capture_facts(capture_facts, ectx)

        def explain_fn(model_, images, targets, names, *, gradient_noise=None, _seed=seed, _masks=batch.masks):
            masks = _masks if _masks is not None and images.shape[0] == _masks.shape[0] else None
            return M.explain(
                model_,
                handle.target_layer,
                images,
                targets,
                names,
                reshape=handle.reshape,
                params={n: method_params[n] for n in names if n in method_params},
                batch_size=fbs,
                seed=_seed,
                masks=masks,
                gradient_noise=gradient_noise,
                ms_flip=exp.ms_flip_config,
            )

        # 2. every metric (each scores all methods of the batch at once)
        mctx, mctx_re = _metric_contexts(model, batch, saliency, explain_fn, seed, fbs, exp.reexplain_methods)
        for metric in unit.metrics:
            if missing_needs(metric, mctx):
                continue
            reexplains = "explainer" in METRICS.entry(metric).meta.get("needs", ())
            ctx_m = mctx_re if reexplains else mctx
            if not ctx_m.saliency:
                continue
            for name, msg in failed.items():
                if not reexplains or _reexplained(name, exp.reexplain_methods):
                    if name in undefined:
                        add(name, metric, ids, np.nan, "undefined", f"method undefined: {msg}", False)
                    else:
                        add(name, metric, ids, np.nan, "error", f"method failed: {msg}", False)
            t = time.perf_counter()
            try:
                res = compute_metrics(ctx_m, [metric], exp.metric_params).get(metric, {})
            except Exception as exc:
                msg = f"metric failed: {_err(exc)}"
                for name in ctx_m.saliency:
                    add(name, metric, ids, np.nan, "error", msg, degenerate[name])
            else:
                dataset_level = METRICS.entry(metric).meta.get("level", "image") == "dataset"
                for name in ctx_m.saliency:
                    if name not in res:
                        continue
                    if dataset_level:  # per-image sufficient statistics [B, S], reduced by the leaderboard
                        st = res[name].detach().cpu().double().numpy()
                        if st.ndim != 2 or st.shape[0] != len(ids):
                            add(
                                name,
                                metric,
                                ids,
                                np.nan,
                                "error",
                                f"dataset-level metric returned statistics of shape {tuple(st.shape)}; "
                                f"expected [{len(ids)}, S]",
                                degenerate[name],
                            )
                            continue
                        add_stats(name, metric, ids, st, degenerate[name])
                        continue
                    v = res[name].detach().float().cpu().double().numpy().reshape(-1)
                    if v.shape[0] != len(ids):
                        add(
                            name,
                            metric,
                            ids,
                            np.nan,
                            "error",
                            f"metric returned {v.shape[0]} values for {len(ids)} images",
                            degenerate[name],
                        )
                        continue
                    status = np.where(np.isfinite(v), "ok", "undefined")
                    add(name, metric, ids, v, status, "", degenerate[name])
            timings.append(("metric", metric, time.perf_counter() - t))

        if pcols is not None:  # 2b. the meta-evaluation: the same metrics under perturbed models
            if not perturbed_models:
                perturbed_models = [
                    (kind, k, perturb_model(model, std, meta_seed(suite.seed, unit.experiment, kind, k)))
                    for kind, std in zip(META_KINDS, (suite.meta_minor_std, suite.meta_disruptive_std), strict=True)
                    for k in range(suite.meta_perturbations)
                ]
            _meta_batch(
                pcols, perturbed_models, model, handle, exp, unit, batch, outputs, explain_fn, seed, fbs, timings
            )

        # 3. curves (mean per unit) and the gallery sample
        for metric, per_method in mctx.curves.items():
            for name, c in per_method.items():
                arr = c.detach().float().cpu().double().numpy()
                if arr.ndim != 2 or arr.shape[0] == 0:
                    continue
                s, k = curve_sum.get((metric, name), (np.zeros(arr.shape[1]), 0))
                if s.shape[0] == arr.shape[1]:
                    curve_sum[(metric, name)] = (s + np.nan_to_num(arr).sum(0), k + arr.shape[0])
        keep = max(0, min(len(ids), unit.gallery - n_done))
        if keep:
            imgs = handle.denormalize(batch.images[:keep].detach()).clamp(0, 1)
            to_hwc = (0, *range(2, imgs.ndim), 1)  # [B,H,W,3], or [B,T,H,W,3] for volumes and clips
            gal["images"].append((imgs.permute(*to_hwc).cpu().numpy() * 255).round().astype(np.uint8))
            gal["ids"] += ids[:keep]
            gal["targets"].append(batch.targets[:keep].cpu().numpy())
            if batch.masks is not None:
                gal["masks"].append(batch.masks[:keep].cpu().numpy())
            if batch.boxes is not None:
                k = 6 if batch.images.ndim == 5 else 4  # 3-D boxes of volumes and clips
                gal["boxes"] += [b.detach().float().cpu().numpy().reshape(-1, k) for b in batch.boxes[:keep]]
            gal["maps"].append({m: saliency[m][:keep].detach().cpu().numpy().astype(np.float16) for m in saliency})
        n_done += len(ids)
        if progress is not None:
            progress(len(ids))

    # image-level failures (corrupt/missing files skipped by the loader)
    new_errors = list(getattr(dataset, "errors", []))[n_errors_before:]
    for msg in new_errors:
        add("(data)", "(load)", [str(msg).split(":")[0]], np.nan, "error", str(msg)[:500], False)

    scores = score_rows.frame()
    stats = pd.DataFrame(scols, columns=STATS_COLUMNS)
    stats["degenerate"] = stats["degenerate"].astype(bool)
    curves = _curves_frame(exp, curve_sum)
    perturbed = None
    if pcols is not None:
        perturbed = pd.DataFrame(pcols, columns=PERTURBED_COLUMNS)
        perturbed["value"] = perturbed["value"].astype("float64")
        perturbed["k"] = perturbed["k"].astype("int64")
        perturbed["pred_same"] = perturbed["pred_same"].astype(bool)
    timings.append(("total", "unit", time.perf_counter() - t_unit))
    tdf = pd.DataFrame([(unit.key, exp.label, exp.dataset, s, n, sec) for s, n, sec in timings], columns=TIMING_COLUMNS)
    tdf = tdf.groupby(["unit", "model", "dataset", "stage", "name"], sort=False, as_index=False)["seconds"].sum()
    return UnitResult(
        key=unit.key,
        scores=scores,
        curves=curves,
        timings=tdf,
        gallery=_gallery_arrays(gal, handle, exp) if gal["ids"] else None,
        info={"n_images": n_done, "data_errors": new_errors, "map_diffs": map_diffs, "capture": capture_facts},
        stats=stats,
        perturbed=perturbed,
    )


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


def _meta_batch(
    pcols: dict[str, list],
    perturbed_models: Sequence[tuple[str, int, torch.nn.Module]],
    model: torch.nn.Module,
    handle: ModelHandle,
    exp: Experiment,
    unit: Unit,
    batch: Batch,
    outputs: dict[str, Any],
    explain_fn: Callable,
    seed: int,
    fbs: int,
    timings: list[tuple[str, str, float]],
) -> None:
    """Re-explain the batch with every perturbed model and re-score its image-level metrics (MetaQuantus'
    model perturbation test; the report reduces the rows to IAC, IEC, NR and AR: benchmark/report/meta.py).

    Targets and seeds are those of the unperturbed scoring, so only the model differs. Dataset-level
    metrics are left out (the test compares per-image scores); a method or metric that fails under a
    perturbed model gives no rows there (the report uses the images both scorings have)."""
    from .. import methods as M
    from ..metrics import METRICS, compute_metrics, missing_needs

    ids = list(batch.ids)
    with torch.inference_mode():
        pred0 = model(batch.images).argmax(dim=1)
    for kind, k, mp in perturbed_models:
        t = time.perf_counter()
        with torch.inference_mode():
            same = (mp(batch.images).argmax(dim=1) == pred0).cpu().numpy().astype(bool)
        torch.manual_seed(seed)
        ectx = M.ExplainContext(
            model=mp,
            layer=M.resolve_layer(mp, handle.target_layer),
            images=batch.images,
            targets=batch.targets,
            reshape=handle.reshape,
            batch_size=fbs,
            seed=seed,
            masks=batch.masks,
        )
        sal: dict[str, torch.Tensor] = {}
        for name in outputs:
            try:
                sal[name] = M.run_method(ectx, name, exp.method_params.get(name)).maps
            except Exception:
                continue
        mctx, mctx_re = _metric_contexts(mp, batch, sal, explain_fn, seed, fbs, exp.reexplain_methods)
        for metric in unit.metrics:
            meta = METRICS.entry(metric).meta
            if meta.get("level", "image") == "dataset" or missing_needs(metric, mctx):
                continue
            ctx_m = mctx_re if "explainer" in meta.get("needs", ()) else mctx
            if not ctx_m.saliency:
                continue
            torch.manual_seed(seed)
            try:
                res = compute_metrics(ctx_m, [metric], exp.metric_params).get(metric, {})
            except Exception:
                continue
            for name, value in res.items():
                v = value.detach().float().cpu().double().numpy().reshape(-1)
                if v.shape[0] != len(ids):
                    continue
                n = len(ids)
                for c, x in (
                    ("model", exp.label),
                    ("dataset", exp.dataset),
                    ("method", name),
                    ("metric", metric),
                    ("perturbation", kind),
                    ("k", k),
                ):
                    pcols[c] += [x] * n
                pcols["image_id"] += ids
                pcols["value"] += v.tolist()
                pcols["pred_same"] += same.tolist()
        timings.append(("meta", f"{kind} model", time.perf_counter() - t))


def _accumulate_map_diffs(acc: dict[str, float], saliency: dict[str, torch.Tensor]) -> None:
    """Pairwise ``max |map_a - map_b|`` of one batch's maps (one batched Chebyshev ``cdist``), folded into
    ``acc`` by max: what ``equivalences.csv`` needs, a few numbers per unit instead of the maps."""
    names = sorted(saliency)
    if len(names) < 2:
        return
    with torch.inference_mode():
        flat = torch.stack([torch.nan_to_num(saliency[m].detach().float(), nan=2.0).flatten() for m in names])
        d = torch.cdist(flat[None], flat[None], p=float("inf"))[0].cpu().double().numpy()
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            key = f"{a}|{names[j]}"
            acc[key] = max(acc.get(key, 0.0), float(d[i, j]))


def _accumulate_capture_facts(acc: dict[str, float], ectx: Any) -> None:
    """Facts of the shared capture that prove map identities (``equivalences.csv``'s reasons), folded over
    batches: ``grad_spatial_range`` = max over images and channels of the spatial range of the gradient at
    the target layer relative to its largest magnitude (0: gradients constant over space);
    ``activation_min`` = the smallest activation (>= 0: non-negative activations). Only read when a method
    made the capture (no extra forward)."""
    cap = getattr(ectx, "_capture", None)
    if cap is None:
        return
    with torch.inference_mode():
        a = cap.activations.detach().float()
        acc["activation_min"] = min(acc.get("activation_min", float("inf")), float(a.min()))
        if cap.gradients is not None and cap.gradients.ndim == 4:
            g = cap.gradients.detach().float().flatten(2)
            rng = (g.max(dim=2).values - g.min(dim=2).values).max()
            rel = float(rng / g.abs().max().clamp_min(1e-30))
            acc["grad_spatial_range"] = max(acc.get("grad_spatial_range", 0.0), rel)


def _curves_frame(exp: Experiment, curve_sum: dict[tuple[str, str], tuple[np.ndarray, int]]) -> pd.DataFrame:
    rows = []
    for (metric, method), (s, k) in sorted(curve_sum.items()):
        steps = s.shape[0]
        xs = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
        mean = s / max(k, 1)
        rows += [(exp.label, exp.dataset, method, metric, j, float(xs[j]), float(mean[j]), k) for j in range(steps)]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _gallery_arrays(gal: dict[str, list], handle: ModelHandle, exp: Experiment) -> dict[str, np.ndarray]:
    methods = list(gal["maps"][0])
    out = {
        "experiment": np.asarray([exp.label, exp.dataset], dtype=str),
        "images": np.concatenate(gal["images"]),
        "ids": np.asarray(gal["ids"], dtype=str),
        "targets": np.concatenate(gal["targets"]).astype(np.int64),
        "methods": np.asarray(methods, dtype=str),
        "maps": np.stack([np.concatenate([m[k] for m in gal["maps"]]) for k in methods], axis=1),
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
    return out
