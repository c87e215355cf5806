"""Test-only methods that run too long (``--method-timeout``): ``sleepy`` sleeps, ``spinning`` busy-loops in
Python (a method stuck in its own code, not in one C call); both return Grad-CAM-shaped maps if they finish."""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor

from benchmark.methods import ExplainContext, register_method


def _blank(ctx: ExplainContext) -> Tensor:
    return torch.zeros(ctx.images.shape[0], *ctx.images.shape[-2:])


@register_method("sleepy", family="baseline", needs_gradients=False, override=True, paper="sleeps (tests)")
def sleepy(ctx: ExplainContext, seconds: float = 60.0, pidfile: str = "") -> Tensor:
    if pidfile:  # tests/test_fault_injection.py: which process runs the method
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(seconds)
    return _blank(ctx)


@register_method("spinning", family="baseline", needs_gradients=False, override=True, paper="busy loop (tests)")
def spinning(ctx: ExplainContext, seconds: float = 60.0) -> Tensor:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        try:
            n += 1
        except Exception:  # a method's own catch-all cannot swallow the timeout (a BaseException)
            pass
    return _blank(ctx)
