"""Shared test setup: progress bars off, the ``one_thread`` fixture and the tiny CNNs several files use.

Tests import the builders directly (``from conftest import tiny_cnn``), as they import ``runner_fakes``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before any library (pytorch-grad-cam, torchcam) makes a bar

from benchmark.cpukernels import select as _select_cpu_kernels  # imports no torch

# The CLI's default CPU kernels (docs/reproducibility.md), chosen before torch loads: in-process runs of the
# tests then compute exactly what `run_bench.py` subprocesses compute.
_select_cpu_kernels(os.environ.get("CAMBENCH_CPU_KERNELS", "portable"))

import pytest  # noqa: E402
import torch  # noqa: E402  (after the CPU kernels are chosen)
from torch import nn  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run much faster single-threaded on a shared CPU; restore the setting afterwards.

    Use it per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    """``Conv(3->4) -> ReLU -> AdaptiveAvgPool(2) -> Flatten -> Linear(16, classes)``, seeded, eval mode.

    Target layer ``"1"`` (the ReLU). Weights depend only on ``seed``.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes)
    ).eval()


def tiny_features_cnn(seed: int = 0, batchnorm: bool = False, classes: int = 5) -> nn.Module:
    """``features`` (Conv(3->8) [-> BN] -> ReLU -> Conv(8->8, stride 2) -> ReLU) -> GAP -> ``fc``, seeded.

    Target layer ``"features.3"`` (``"features.4"`` with ``batchnorm``): the last ReLU, 8 channels.
    """
    torch.manual_seed(seed)
    first = [nn.Conv2d(3, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if batchnorm else []) + [nn.ReLU()]
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*first, nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(8, classes))
    return model.eval()
