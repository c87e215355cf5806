"""What a process needs to compute units: its device, the models and datasets it built (each once per
process: planning reads each dataset once, a worker builds each model and dataset once) and the batches of
a unit on the device (pinned, copied asynchronously and optionally prefetched on CUDA).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch

from ..data import create_dataset
from ..data.transforms import make_batches
from ..errors import CambenchError, InputError, SuiteError
from ..evaluate import target_kind
from ..models import create_model
from ..types import Batch, ModelHandle
from .parallel import prefetch
from .suite import Experiment

_MODELS: dict[str, tuple[ModelHandle, bool]] = {}
_DATASETS: dict[str, Any] = {}
_DATASET_ERRORS: dict[str, list[str]] = {}  # what each cached dataset could not read when it was built


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


def get_model(exp: Experiment, device: torch.device, channels_last: bool | None = False) -> tuple[ModelHandle, bool]:
    """The experiment's model on ``device`` (built once per process) and whether it is channels_last
    (``channels_last=None``: CNNs are). The experiment's ``layer`` overrides the model's target layer."""
    key = json.dumps(
        [exp.model, exp.weights, exp.model_kwargs, str(device), channels_last], sort_keys=True, default=str
    )
    if key not in _MODELS:
        handle = create_model(exp.model, weights=exp.weights, device=device, **exp.model_kwargs)
        cl = _is_cnn(handle) if channels_last is None else bool(channels_last)
        if cl:
            handle.model.to(memory_format=torch.channels_last)
        _MODELS[key] = (handle, cl)
    handle, cl = _MODELS[key]
    return (handle if exp.layer is None else replace(handle, target_layer=exp.layer)), cl


def _is_cnn(handle: ModelHandle) -> bool:
    return handle.reshape is None and any(isinstance(m, torch.nn.Conv2d) for m in handle.model.modules())


def _dataset_key(exp: Experiment, seed: int) -> tuple[str, dict]:
    kwargs = {"seed": seed, **exp.data}
    return json.dumps([exp.dataset, kwargs], sort_keys=True, default=str), kwargs


def get_dataset(exp: Experiment, seed: int) -> Any:
    """The experiment's dataset (built once per process), as its target kind sees it (``labels``: one sample
    per present class). Raises :class:`SuiteError` when the dataset rejects the suite's ``data`` arguments."""
    key, kwargs = _dataset_key(exp, seed)
    if key not in _DATASETS:
        try:
            _DATASETS[key] = create_dataset(exp.dataset, **kwargs)
        except (InputError, TypeError, ValueError, KeyError) as exc:
            if isinstance(exc, CambenchError) and not isinstance(exc, InputError):
                raise  # already names its fix (missing data root, weights, ...)
            raise SuiteError(
                f"Dataset {exp.dataset!r} rejected the suite's `data` arguments {kwargs}: {type(exc).__name__}: "
                f"{exc}. Fix `data` (see `run_bench.py list datasets` for its arguments)."
            ) from None
        _DATASET_ERRORS[key] = [str(e) for e in getattr(_DATASETS[key], "errors", [])]
    samples = target_kind(exp.target).samples
    return _DATASETS[key] if samples is None else samples(_DATASETS[key])


def check_pairing(exp: Experiment, handle: ModelHandle, dataset: Any) -> None:
    """Refuse a model the experiment's target kind cannot explain on ``dataset`` (e.g. class counts)."""
    check = target_kind(exp.target).check
    if check is not None:
        check(handle, dataset)


def dataset_errors(exp: Experiment, seed: int) -> list[str]:
    """What the experiment's dataset could not read when it was built (``"id: reason"`` each, no duplicates).

    Items that fail later, while a unit loads them, are recorded by that unit (``(data)`` score rows).
    """
    get_dataset(exp, seed)
    return list(dict.fromkeys(_DATASET_ERRORS.get(_dataset_key(exp, seed)[0], [])))


def clear_caches() -> None:
    """Forget the models and datasets built in this process."""
    _MODELS.clear()
    _DATASETS.clear()
    _DATASET_ERRORS.clear()


def pinned(batch: Batch) -> Batch:
    """The batch in page-locked host memory (so that the copy to the GPU can be asynchronous)."""

    def opt(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.pin_memory()

    extras = None if batch.extras is None else {k: v.pin_memory() for k, v in batch.extras.items()}
    return Batch(
        batch.images.pin_memory(),
        batch.targets.pin_memory(),
        list(batch.ids),
        opt(batch.masks),
        None if batch.boxes is None else [b.pin_memory() for b in batch.boxes],
        opt(batch.labels),
        opt(batch.ignore),
        extras,
    )


def device_batches(
    batches: Iterable[Batch], device: torch.device, prefetch_batches: bool, channels_last: bool
) -> Iterator[Batch]:
    """Batches on ``device``: on CUDA pinned and copied with ``non_blocking``; optionally prefetched."""
    cuda = device.type == "cuda"
    if prefetch_batches:
        batches = prefetch(iter(batches), pinned if cuda else (lambda b: b))
    for batch in batches:
        if cuda and not prefetch_batches:
            batch = pinned(batch)
        batch = batch.to(device, non_blocking=cuda)
        if channels_last and batch.images.ndim == 4:
            batch = replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
        yield batch


def unit_batches(
    dataset: Any,
    handle: ModelHandle,
    indices: list[int],
    batch_size: int,
    device: torch.device,
    prefetch_batches: bool,
    channels_last: bool,
) -> Iterator[Batch]:
    """Images ``indices`` of ``dataset`` in batches of ``batch_size``, prepared for ``handle``, on ``device``."""
    host = make_batches(dataset, handle, batch_size, indices=indices)
    return device_batches(host, device, prefetch_batches, channels_last)
