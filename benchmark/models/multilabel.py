"""Multi-label classifiers (a sigmoid per class) for weakly-supervised segmentation seeds.

* ``shapes_multilabel_cnn``: a small CNN trained by cambench on ``shapes_multilabel`` with a binary
  cross-entropy per class (the image-level-label training of WSSS classifiers), shipped in
  ``benchmark/models/weights`` (:mod:`benchmark.models.shipped`). Four 3x3 conv blocks (BatchNorm, ReLU,
  2x2 max-pool after blocks 1-3), global average pooling and a linear layer, so CAM (Zhou et al. 2016,
  eq. 2) applies; at 64x64 the target layer ``block4`` is 8x8. ``weights="default"`` loads the shipped
  file, ``"train"`` retrains (deterministic), ``"random"`` or a checkpoint path.
* ``voc_multilabel_resnet50``: torchvision's ResNet-50 with a 20-class head, for a user's VOC
  multi-label checkpoint (``weights = "/path/to/state_dict.pth"``; the ``wsss-voc`` suite).

The logits are the per-class scores the methods explain (the sigmoid is monotone, as the softmax is for
single-label models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data.multilabel import MULTILABEL_GENERATOR_VERSION, ShapesMultiLabel
from ..data.synthetic import SHAPE_CLASSES
from ..data.voc import VOC_CLASSES
from ..errors import InputError, WeightsError
from ..types import ModelHandle
from .base import register_model
from .shipped import has_shipped, load_shipped, save_shipped
from .training import config_digest, exact_match_correct, fit, schedule
from .zoo import IMAGENET_MEAN, IMAGENET_STD, read_state_dict, seeded_init

TRAINER_VERSION = 1
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
TARGET_LAYER = "block4"
SHIPPED_NAME = "shapes_multilabel_cnn"


class MultiLabelCNN(nn.Module):
    """``3 -> w1 -> w2 -> w3 -> w4`` conv blocks, GAP and a linear layer with one logit per class."""

    # registered with add_module in __init__ (the names are the state-dict keys); declared for type checkers
    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential

    def __init__(self, num_classes: int = len(SHAPE_CLASSES), widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        if len(widths) != 4:
            raise InputError(f"MultiLabelCNN needs 4 block widths, got {widths}.")
        chans = (3, *widths)
        for i in range(4):
            layers: list[nn.Module] = [
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=False),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"block{i + 1}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class MultiLabelTrainConfig:
    """Everything that determines the trained model (its hash is recorded with the shipped weights)."""

    n_train: int = 2000
    image_size: int = 64
    epochs: int = 12
    batch_size: int = 32
    lr: float = 4e-3
    weight_decay: float = 1e-4
    seed: int = 0
    widths: tuple[int, ...] = (16, 32, 64, 128)
    data_seed: int = 0

    def digest(self) -> str:
        return config_digest(
            self, generator_version=MULTILABEL_GENERATOR_VERSION, trainer_version=TRAINER_VERSION, model=SHIPPED_NAME
        )


DEFAULT_CONFIG = MultiLabelTrainConfig()


def _normalize(images01: Tensor) -> Tensor:
    return (images01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train_multilabel_model(cfg: MultiLabelTrainConfig = DEFAULT_CONFIG) -> tuple[MultiLabelCNN, dict[str, Any]]:
    """Train :class:`MultiLabelCNN` on ``shapes_multilabel`` ``train`` with per-class BCE (Adam, one-cycle;
    :func:`benchmark.models.training.fit`)."""

    def data() -> tuple[Tensor, Tensor]:
        ds = ShapesMultiLabel(n=cfg.n_train, seed=cfg.data_seed, split="train", image_size=cfg.image_size)
        images, targets = ds.images_and_targets()
        return (images * 255).round_().to(torch.uint8), targets

    return fit(
        lambda: MultiLabelCNN(len(SHAPE_CLASSES), cfg.widths),
        data,
        name=SHIPPED_NAME,
        **schedule(cfg),
        inputs=lambda u8: _normalize(u8.float().div_(255)),
        loss=nn.functional.binary_cross_entropy_with_logits,
        correct=exact_match_correct,
        accuracy="train exact match",
    )


@torch.inference_mode()
def evaluate_multilabel(model: nn.Module, dataset: ShapesMultiLabel, batch_size: int = 200) -> dict[str, float]:
    """Exact-match accuracy (every class right at logit 0, i.e. sigmoid 0.5) and per-label accuracy."""
    model.eval()
    exact = per_label = 0.0
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.images_and_targets(range(start, min(len(dataset), start + batch_size)))
        pred = (model(_normalize(x)) > 0).float()
        exact += float((pred == y).all(1).sum())
        per_label += float((pred == y).float().mean(1).sum())
    n = max(1, len(dataset))
    return {"exact_match": exact / n, "label_accuracy": per_label / n}


def train_and_ship(cfg: MultiLabelTrainConfig = DEFAULT_CONFIG, n_test: int = 500) -> dict[str, Any]:
    """Train, measure on the held-out ``test`` split and write the shipped weights (run once, by us)."""
    model, info = train_multilabel_model(cfg)
    test = ShapesMultiLabel(n=n_test, seed=cfg.data_seed, split="test", image_size=cfg.image_size)
    meta = {"hash": cfg.digest(), "config": asdict(cfg), "test_n": n_test, **evaluate_multilabel(model, test), **info}
    save_shipped(SHIPPED_NAME, model.state_dict(), meta)
    return meta


def _load_user_checkpoint(model: nn.Module, path: str, name: str, num_classes: int) -> None:

    state = read_state_dict(path)
    for key in ("fc.weight", "classifier.weight", "head.weight"):
        if key in state and int(state[key].shape[0]) != num_classes:
            raise WeightsError(
                f"Checkpoint {path} has {int(state[key].shape[0])} classes ({key}), but {name} explains "
                f"{num_classes}. Use a checkpoint trained on this dataset's {num_classes} classes, or pass "
                f"model_kwargs = {{ num_classes = {int(state[key].shape[0])} }} with matching data."
            )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"Checkpoint {path} does not fit model {name}: {str(exc)[:600]}") from exc


@register_model(
    "shapes_multilabel_cnn", dataset="shapes_multilabel", synthetic=True, input_size=(64, 64), multilabel=True
)
def shapes_multilabel_cnn(weights: str = "default", seed: int = 0) -> ModelHandle:
    """Multi-label CNN on ``shapes_multilabel`` ("default" = shipped, "train", "random" or a path)."""
    cfg = DEFAULT_CONFIG
    torch.manual_seed(seed)
    model = MultiLabelCNN(len(SHAPE_CLASSES), cfg.widths)
    meta: dict[str, Any] = {"weights": weights, "num_classes": len(SHAPE_CLASSES), "multilabel": True}
    if weights == "default":
        if not has_shipped(SHIPPED_NAME):
            raise WeightsError(
                f"The shipped weights of {SHIPPED_NAME} are missing; reinstall cambench or pass "
                'weights = "train" to retrain them (a few minutes on a CPU).'
            )
        model.load_state_dict(load_shipped(SHIPPED_NAME, expect_hash=cfg.digest()))
    elif weights == "train":
        model, info = train_multilabel_model(cfg)
        meta.update(info)
    elif weights != "random":
        _load_user_checkpoint(model, weights, SHIPPED_NAME, len(SHAPE_CLASSES))
    return ModelHandle(
        name=SHIPPED_NAME,
        model=model.eval(),
        target_layer=TARGET_LAYER,
        input_size=(cfg.image_size, cfg.image_size),
        mean=MEAN,
        std=STD,
        class_names=list(SHAPE_CLASSES),
        meta=meta,
    )


@register_model("voc_multilabel_resnet50", dataset="voc", family="cnn", multilabel=True, input_size=(448, 448))
def voc_multilabel_resnet50(
    weights: str = "random",
    seed: int = 0,
    num_classes: int = len(VOC_CLASSES),
    input_size: int = 448,
    target_layer: str = "layer4",
) -> ModelHandle:
    """ResNet-50 with a ``num_classes`` multi-label head, loading a user's checkpoint (``weights`` = path)."""
    import torchvision.models as tvm

    if weights == "default":
        raise WeightsError(
            "voc_multilabel_resnet50 has no shipped weights: pass the path of your multi-label VOC checkpoint "
            '(a state_dict of torchvision\'s resnet50 with a 20-class fc), e.g. weights = "${WSSS_CHECKPOINT}".'
        )
    with seeded_init(seed):
        model = tvm.resnet50(weights=None, num_classes=int(num_classes))
    if weights != "random":
        _load_user_checkpoint(model, weights, "voc_multilabel_resnet50", int(num_classes))
    names = list(VOC_CLASSES) if int(num_classes) == len(VOC_CLASSES) else None
    return ModelHandle(
        name="voc_multilabel_resnet50",
        model=model.eval(),
        target_layer=target_layer,
        input_size=(int(input_size), int(input_size)),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=names,
        meta={"weights": weights, "num_classes": int(num_classes), "multilabel": True},
    )


__all__ = [
    "DEFAULT_CONFIG",
    "MultiLabelCNN",
    "MultiLabelTrainConfig",
    "evaluate_multilabel",
    "shapes_multilabel_cnn",
    "train_and_ship",
    "train_multilabel_model",
    "voc_multilabel_resnet50",
]
