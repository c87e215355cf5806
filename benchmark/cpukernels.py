"""Portable CPU kernels: the same float results on every x86-64 CPU with AVX2 (docs/reproducibility.md).

torch picks its CPU code paths by the machine: oneDNN's convolutions (AVX-512, AMX, AVX2 JIT kernels with
different blockings), MKL's GEMMs and ATen's vectorised kernels (e.g. ``exp`` in SiLU and softmax). Their
results differ in the last bits, and ranking-based metrics (deletion, insertion, ROAD order pixels by
saliency) turn such bits into visible differences (measured: up to 1.5e-3 on one image's deletion AUC,
AVX-512 vs AVX2). ``portable`` caps all three at AVX2, which every x86-64 CPU since 2013 has, so a reference
leaderboard computed on one machine reproduces on another; ``native`` lets torch use the fastest kernels.

This module imports nothing heavy: :func:`select` must run before torch is imported (the environment
variables are read when torch loads its libraries).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

from .errors import InputError

#: The environment that caps torch's CPU kernels at AVX2: ATen's vectorised kernels (dispatch), oneDNN's JIT
#: kernels (convolutions) and MKL (GEMMs, its conditional numerical reproducibility mode).
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
#: Left out for runs that ``torch.compile`` (``--compile``): with torch 2.14 inductor's CPU code returns NaN
#: under the ATen cap (tests/test_compile.py), and compiled kernels are not bit-reproducible across CPUs anyway.
COMPILE_UNSAFE = ("ATEN_CPU_CAPABILITY",)
MODES = ("portable", "native")


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " avx2" in line for line in fh)
    except OSError:  # not Linux: let torch decide
        return False


def select(mode: str, compile: bool = False) -> dict[str, str]:
    """Apply ``mode`` ("portable" or "native") to this process's environment; returns the variables set.

    A variable the user set already is left as it is. Off x86-64, without AVX2, or when torch is already
    imported (too late to take effect), nothing is set (the last case with a warning). ``compile`` (the run
    uses ``torch.compile``): ATen is left uncapped (:data:`COMPILE_UNSAFE`).
    """
    if mode not in MODES:
        raise InputError(f"cpu kernels must be one of {MODES}, got {mode!r}.")
    if mode == "native" or not _has_avx2():
        return {}
    if "torch" in sys.modules:
        warnings.warn(
            "cpu kernels 'portable' requested after torch was imported: it has no effect in this "
            "process; select it before importing torch (run_bench.py does).",
            RuntimeWarning,
            stacklevel=2,
        )
        return {}
    applied = {k: v for k, v in PORTABLE_ENV.items() if k not in os.environ and not (compile and k in COMPILE_UNSAFE)}
    os.environ.update(applied)
    return applied


def describe() -> str:
    """What this process runs with, e.g. ``"AVX2 (portable)"`` (imports torch)."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    portable = all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items() if k not in COMPILE_UNSAFE)
    return f"{cap} ({'portable' if portable else 'native'})"


__all__ = ["COMPILE_UNSAFE", "MODES", "PORTABLE_ENV", "describe", "select"]
