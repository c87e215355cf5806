"""``volume_cnn``: a small 3-D CNN trained by cambench on the ``volumes`` data, shipped with the package.

Architecture (:class:`VolumeCNN`): three 3-D conv blocks (3x3x3 conv, BatchNorm, ReLU; blocks 1-2 end with a
2x2x2 max-pool), global average pooling and one linear layer, so the original CAM (Zhou et al. 2016, eq. 2)
applies and Grad-CAM equals it up to a positive scale (Selvaraju et al. 2017, section 3.1). At 32^3 the
default target layer ``block3`` outputs an 8^3 map.

Weights ``"default"`` are the shipped file ``benchmark/models/weights/volume_cnn.pt`` (trained once with
:func:`train_volume_model` and saved with :func:`~benchmark.models.shipped.save_shipped`; SHA-256 and the
training-configuration hash are checked when loading). ``"train"`` retrains (about a minute on 2 CPU cores),
``"random"`` is a seeded random init, a path loads a state dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data.volumetric import VOLUME_CLASSES, VOLUME_GENERATOR_VERSION, VolumesDataset
from ..errors import InputError
from ..types import ModelHandle
from .base import register_model
from .shipped import has_shipped, load_shipped, save_shipped
from .synthetic import load_checkpoint
from .training import config_digest, fit, schedule, top1_accuracy

#: Bump when the architecture or the training loop changes: it is part of the training hash.
TRAINER_VERSION = 1

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
TARGET_LAYER = "block3"


class VolumeCNN(nn.Module):
    """``3 -> w1 -> w2 -> w3`` 3-D conv blocks, GAP and a linear classifier (CAM-compatible)."""

    # registered with add_module in __init__ (the names are the state-dict keys); declared for type checkers
    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential

    def __init__(self, num_classes: int = len(VOLUME_CLASSES), widths: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        if len(widths) != 3:
            raise InputError(f"VolumeCNN needs 3 block widths, got {widths}.")
        chans = (3, *widths)
        for i in range(3):
            layers: list[nn.Module] = [
                nn.Conv3d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm3d(chans[i + 1]),
                nn.ReLU(inplace=False),
            ]
            if i < 2:
                layers.append(nn.MaxPool3d(2))
            self.add_module(f"block{i + 1}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class VolumeTrainConfig:
    """Everything that determines the trained ``volume_cnn`` (hashed into its shipped record)."""

    name: str = "volume_cnn"
    n_train: int = 1200
    size: int = 32
    epochs: int = 8
    batch_size: int = 24
    lr: float = 4e-3
    weight_decay: float = 1e-4
    seed: int = 0
    widths: tuple[int, ...] = (8, 16, 32)
    data_seed: int = 0

    def digest(self) -> str:
        return config_digest(self, generator_version=VOLUME_GENERATOR_VERSION, trainer_version=TRAINER_VERSION)


DEFAULT_CONFIG = VolumeTrainConfig()


def normalize(volumes01: Tensor) -> Tensor:
    mean = torch.tensor(MEAN, dtype=volumes01.dtype).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD, dtype=volumes01.dtype).view(1, 3, 1, 1, 1)
    return (volumes01 - mean) / std


def train_volume_model(cfg: VolumeTrainConfig = DEFAULT_CONFIG) -> tuple[VolumeCNN, dict[str, Any]]:
    """Train :class:`VolumeCNN` on the ``train`` split of ``volumes`` (Adam, one-cycle schedule, seeded;
    :func:`benchmark.models.training.fit`)."""

    def data() -> tuple[Tensor, Tensor]:
        vols, labels = VolumesDataset(
            n=cfg.n_train, seed=cfg.data_seed, split="train", size=cfg.size
        ).images_and_labels()
        return (vols[:, :1] * 255).round_().to(torch.uint8), labels  # the three channels are equal: keep one

    return fit(
        lambda: VolumeCNN(len(VOLUME_CLASSES), cfg.widths),
        data,
        name=cfg.name,
        **schedule(cfg),
        inputs=lambda u8: normalize(u8.float().div_(255).expand(-1, 3, -1, -1, -1)),
        loss=nn.functional.cross_entropy,
    )


def evaluate_accuracy(model: nn.Module, dataset: VolumesDataset, batch_size: int = 50) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (labels = the lesion's class)."""
    return top1_accuracy(model, dataset, normalize, batch_size)


def train_and_ship(cfg: VolumeTrainConfig = DEFAULT_CONFIG, n_test: int = 200) -> dict[str, Any]:
    """Train, measure the held-out accuracy on ``n_test`` test volumes, and write the shipped files."""
    model, info = train_volume_model(cfg)
    acc = evaluate_accuracy(model, VolumesDataset(n=n_test, seed=cfg.data_seed, split="test", size=cfg.size))
    meta = {
        "hash": cfg.digest(),
        "config": asdict(cfg),
        "generator_version": VOLUME_GENERATOR_VERSION,
        "trainer_version": TRAINER_VERSION,
        "test_accuracy": acc,
        "n_test": n_test,
        **info,
    }
    save_shipped(cfg.name, model.state_dict(), meta)
    return meta


@register_model("volume_cnn", dataset="volumes", synthetic=True, input_size=(32, 32, 32), ndim=3)
def volume_cnn(weights: str = "default", seed: int = 0, train_config: VolumeTrainConfig | None = None) -> ModelHandle:
    """3-D CNN trained on ``volumes`` (``weights``: "default" = shipped, "train", "random", or a path)."""
    cfg = train_config or DEFAULT_CONFIG
    torch.manual_seed(seed)
    model = VolumeCNN(len(VOLUME_CLASSES), cfg.widths)
    meta: dict[str, Any] = {"weights": weights, "train_config": asdict(cfg)}
    if weights == "default":
        if not has_shipped(cfg.name) and train_config is not None:
            model, info = train_volume_model(cfg)
            meta.update(info)
        else:
            model.load_state_dict(load_shipped(cfg.name, expect_hash=cfg.digest()))
    elif weights == "train":
        model, info = train_volume_model(cfg)
        meta.update(info)
    elif weights == "random":
        meta["seed"] = seed
    else:
        load_checkpoint(model, weights)
    model.eval()
    return ModelHandle(
        name="volume_cnn",
        model=model,
        target_layer=TARGET_LAYER,
        input_size=(cfg.size,) * 3,
        mean=MEAN,
        std=STD,
        class_names=list(VOLUME_CLASSES),
        meta=meta,
    )


__all__ = [
    "DEFAULT_CONFIG",
    "VolumeCNN",
    "VolumeTrainConfig",
    "evaluate_accuracy",
    "train_and_ship",
    "train_volume_model",
    "volume_cnn",
]
