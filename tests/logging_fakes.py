"""Test-only plugin: a method that logs (a plugin's WARNING and a ``benchmark.*`` INFO) on every call, as a
dataset skipping a file or a model warning would; loaded next to ``runner_fakes.py`` by the worker-log tests."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from benchmark.methods import register_method

WARNING = "fake_logs: this map is made up"


@register_method("fake_logs", family="baseline", needs_gradients=False, override=True)
def fake_logs(ctx) -> Tensor:
    """A valid random map; logs one warning (same text every call) and one INFO line per batch."""
    logging.getLogger("logging_fakes").warning(WARNING)
    logging.getLogger("benchmark.fake_logs").info("fake_logs: explained %d image(s)", ctx.images.shape[0])
    logging.getLogger("logging_fakes").info("fake_logs: a plugin's INFO line (not forwarded)")
    return torch.rand(ctx.images.shape[0], 4, 4, generator=ctx.generator(5)).to(ctx.images.device)
