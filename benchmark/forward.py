"""How every extra (no-gradient) forward pass runs: precision, ``torch.compile``, TF32, cuDNN autotuning
and CPU chunking (the base layer: methods, metrics and the runner import these from here).

The runner enters :func:`forward_precision`, :func:`tf32`, :func:`forward_compile` and
:func:`cudnn_autotune` around each unit (``runner/unit.py:unit_environment``); the forwards themselves go
through :func:`perturbation_forward` under :func:`forward_autocast`, in chunks of :func:`forward_chunk`
(``ExplainContext.forward_scores`` and the perturbation engine ``metrics/perturbation.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError

#: Precisions of the extra (perturbation) forwards: ``--precision`` of the runner.
#: ``tf32`` autocasts nothing: it lets CUDA run fp32 convolutions and matmuls in TF32 (see :func:`tf32`).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "tf32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
_FORWARD_DTYPE: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar(
    "cambench_forward_dtype", default=None
)


@contextlib.contextmanager
def forward_precision(precision: str = "fp32") -> Iterator[None]:
    """Run the *extra* forwards (Score-/Ablation-CAM scores, perturbation metrics) in ``precision``.

    ``"bf16"``/``"fp16"`` make :func:`forward_autocast` (entered by :meth:`ExplainContext.forward_scores`
    and the perturbation engine) an autocast region; the gradient capture stays fp32. ``"fp32"`` (default)
    changes nothing. Scoped by a context variable, so it never leaks to other threads or callers.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    token = _FORWARD_DTYPE.set(PRECISIONS[precision])
    try:
        yield
    finally:
        _FORWARD_DTYPE.reset(token)


@contextlib.contextmanager
def tf32(allow: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 for cuDNN convolutions and CUDA matmuls inside the block (restored after).

    PyTorch lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) on Ampere and later GPUs by default,
    which moves CAMs by ~1e-3 and can flip ranks near ties. The runner computes every unit under
    ``tf32(allow=False)`` unless the precision is ``tf32``, so that ``fp32`` means IEEE fp32 on every device
    and CUDA scores equal CPU ones up to summation order (``benchmarks/gpu_check.py``). Process-wide flags:
    not thread-safe.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(allow)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


_FORWARD_COMPILE: contextvars.ContextVar[bool] = contextvars.ContextVar("cambench_forward_compile", default=False)
#: per model: {(mode, dynamic): compiled callable, or None after a failed compile (eager from then on)}
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def forward_compile(enabled: bool = True) -> Iterator[None]:
    """Run the extra (perturbation) forwards through ``torch.compile`` inside the block (``--compile``).

    :func:`perturbation_forward` then calls a compiled copy of the model (shared weights): mode
    ``"reduce-overhead"`` on CUDA (inductor kernels replayed as CUDA graphs; the forward chunks have static
    shapes, so each chunk size records one graph), ``"default"`` elsewhere. Scores change only by float
    reassociation. Where ``torch.compile`` is unavailable or fails on a model, one warning says so and the
    forwards run eagerly. Scoped by a context variable, like :func:`forward_precision`.
    """
    token = _FORWARD_COMPILE.set(bool(enabled))
    try:
        yield
    finally:
        _FORWARD_COMPILE.reset(token)


def _compile_warning(model: nn.Module, why: str) -> None:
    warnings.warn(
        f"--compile: torch.compile is not usable for {type(model).__name__} here ({why}); the perturbation "
        "forwards run eagerly (same scores, no compile speed-up). Drop --compile to silence this, or install "
        "a working compiler toolchain (inductor needs a C++ compiler on CPU, Triton on CUDA).",
        RuntimeWarning,
        stacklevel=3,
    )


def perturbation_forward(model: nn.Module, inputs: Tensor) -> Tensor:
    """``model(inputs)`` for an extra forward: eager, or compiled under :func:`forward_compile`."""
    if not _FORWARD_COMPILE.get():
        return model(inputs)
    mode = "reduce-overhead" if inputs.device.type == "cuda" else "default"
    cache = _COMPILED.setdefault(model, {})
    if mode not in cache:
        compile_fn = getattr(torch, "compile", None)
        capped = os.environ.get("ATEN_CPU_CAPABILITY", "").lower() not in ("", "default")
        if compile_fn is None:
            cache[mode] = None
            _compile_warning(model, "this torch has no torch.compile")
        elif inputs.device.type == "cpu" and capped:  # inductor's CPU kernels return NaN under the cap
            cache[mode] = None
            _compile_warning(
                model,
                f"ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']} (the portable CPU kernels) makes "
                "inductor's CPU code return NaN with this torch; run_bench.py ... --compile leaves ATen "
                "uncapped, or use --cpu-kernels native",
            )
        else:
            try:
                cache[mode] = compile_fn(model, mode=mode, dynamic=False)
            except Exception as err:
                cache[mode] = None
                _compile_warning(model, f"{type(err).__name__}: {err}")
    fn = cache[mode]
    if fn is None:
        return model(inputs)
    try:
        out = fn(inputs)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise  # the engine halves the chunk and retries
    except Exception as err:
        cache[mode] = None
        _compile_warning(model, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return model(inputs)
    return out.clone() if mode == "reduce-overhead" else out  # CUDA-graph outputs are reused by the next call


@contextlib.contextmanager
def cudnn_autotune(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` inside the block (restored after): cuDNN times its convolution
    algorithms once per input shape and keeps the fastest (the runner's ``--compile`` turns it on on CUDA).
    Process-wide flag: not thread-safe."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def forward_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type when :func:`forward_precision` asked for one, else a no-op."""
    dtype = _FORWARD_DTYPE.get()
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


#: CPU forwards hold at most this many input pixels (chunk x H x W). Measured on the 2-core development
#: machine (benchmarks/RESULTS.md, section 4): per image, resnet50 at 224x224 runs 1.4-2x slower in a 64-image
#: batch than in a 4-image one (the activations of a large batch spill out of the CPU caches), while at 64x64 a
#: 64-image batch is the fastest; 2**18 pixels gives 5 images at 224x224 and 64 at 64x64.
CPU_CHUNK_PIXELS = 1 << 18


def forward_chunk(batch_size: int, example: Tensor) -> int:
    """Inputs per extra (no-gradient) forward: ``batch_size``, capped on CPU at
    :data:`CPU_CHUNK_PIXELS` ``// (H*W)`` of ``example`` (one input or a batch ``[..., H, W]``)."""
    if example.device.type != "cpu" or example.ndim < 3:
        return int(batch_size)
    hw = int(example.shape[-1]) * int(example.shape[-2])
    if example.ndim >= 5:  # a batch of volumes or clips [N,C,T,H,W]: count voxels
        hw *= int(example.shape[-3])
    return max(1, min(int(batch_size), CPU_CHUNK_PIXELS // max(1, hw)))
