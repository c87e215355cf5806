"""Seeding of the global generators that third-party libraries draw from (a leaf: imports nothing of ours)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's and torch's global generators (pytorch-grad-cam, torchcam, Captum and Quantus draw from
    them) for the block; restore both afterwards, so the caller's random streams are untouched."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        np.random.seed(int(seed) % (2**32))
        torch.manual_seed(int(seed))
        try:
            yield
        finally:
            np.random.set_state(state)
