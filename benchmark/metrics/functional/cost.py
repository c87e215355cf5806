"""Cost metrics: wall-clock latency and peak memory of explaining a batch with one method.

The explain function takes the model: ``explain_fn(model, images, targets, names) -> {name: [B,H,W]}``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ...errors import InputError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - not on the CI machines
        torch.mps.synchronize()


def latency_ms(
    explain_fn: Callable[..., dict],
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    method: str,
    warmup: int = 1,
    repeats: int = 3,
) -> Tensor:
    """Milliseconds per image to explain the batch with ``method`` alone, ``Tensor[B]`` (same value).

    ``warmup`` untimed calls, then the **median** of ``repeats`` timed calls (``time.perf_counter``, with
    device synchronisation before and after on CUDA/MPS), divided by the batch size. It includes the
    forward/backward passes the method needs, as a user would pay them.
    """
    if repeats < 1:
        raise InputError(f"repeats must be >= 1; got {repeats}.")
    b = images.shape[0]
    for _ in range(max(0, int(warmup))):
        explain_fn(model, images, targets, [method])
    times = []
    for _ in range(int(repeats)):
        _sync(images.device)
        t0 = time.perf_counter()
        explain_fn(model, images, targets, [method])
        _sync(images.device)
        times.append(time.perf_counter() - t0)
    return torch.full((b,), statistics.median(times) * 1000.0 / b)


def peak_memory_mb(
    explain_fn: Callable[..., dict],
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    method: str,
) -> Tensor:
    """Peak extra device memory (MiB) of explaining the batch with ``method``, ``Tensor[B]`` (same value).

    CUDA: ``torch.cuda.max_memory_allocated`` after the call minus ``memory_allocated`` before it (peak
    statistics reset first): the memory the explanation needed on top of the model and the batch, for
    the whole batch (memory does not scale linearly with the batch, so it is not divided by B).
    CPU/MPS: NaN. The process RSS high-water mark (``ru_maxrss``) only moves when a call beats every
    earlier one, and the profiler's CPU memory events are incomplete, so no honest per-call figure exists.
    """
    b = images.shape[0]
    dev = images.device
    if dev.type != "cuda":
        return torch.full((b,), float("nan"))
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    explain_fn(model, images, targets, [method])
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    return torch.full((b,), peak / 2**20)
