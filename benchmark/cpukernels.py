"""Portable CPU kernels: the same float results on every x86-64 CPU with AVX2 (docs/reproducibility.md).

torch picks its CPU code paths by the machine: ATen's vectorised kernels (AVX-512 or AVX2), oneDNN's
convolutions (AVX-512, AMX, AVX2 JIT kernels with different blockings) and MKL's GEMMs. Their results differ
in the last bits, and ranking-based metrics (deletion, insertion, ROAD order pixels by saliency) turn such
bits into visible differences (measured: up to 1.5e-3 on one image's deletion AUC, AVX-512 vs AVX2).
``portable`` caps all three at AVX2, which every x86-64 CPU since 2013 has, so a reference leaderboard
computed on one machine reproduces on another; ``native`` lets torch use the fastest kernels.

This module imports nothing heavy: :func:`select` must run before torch is imported (the environment
variables are read when torch loads its libraries).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

#: The environment that caps torch's CPU kernels at AVX2 (ATen dispatch, oneDNN JIT, MKL's CNR mode).
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
MODES = ("portable", "native")


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " avx2" in line for line in fh)
    except OSError:  # not Linux: let torch decide
        return False


def select(mode: str) -> dict[str, str]:
    """Apply ``mode`` ("portable" or "native") to this process's environment; returns the variables set.

    A variable the user set already is left as it is. Off x86-64, without AVX2, or when torch is already
    imported (too late to take effect), nothing is set (the last case with a warning).
    """
    if mode not in MODES:
        raise ValueError(f"cpu kernels must be one of {MODES}, got {mode!r}.")
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
    applied = {k: v for k, v in PORTABLE_ENV.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


def describe() -> str:
    """What this process runs with, e.g. ``"AVX2 (portable)"`` (imports torch)."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    portable = all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())
    return f"{cap} ({'portable' if portable else 'native'})"


__all__ = ["MODES", "PORTABLE_ENV", "describe", "select"]
