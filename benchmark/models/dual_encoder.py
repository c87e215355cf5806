"""``shapes_dual_encoder``: a small CLIP-style dual encoder trained by cambench on ``shapes_captions``.

* **image encoder**: three conv blocks (3x3 conv, BatchNorm, ReLU; strides 2, 2, 2; module ``encoder``,
  the layer Grad-CAM explains) and a 1x1 projection to ``d``: one **patch embedding** per cell of the
  ``8 x 8`` grid (module ``patches``); the image embedding is their mean (global average pooling), L2
  normalised;
* **text encoder**: a query "<colour> <shape>" (:data:`benchmark.data.captions.QUERIES`) is the sum of a
  colour-word and a shape-word embedding through a two-layer MLP, L2 normalised;
* the output is the scaled cosine similarity of the image to every query, ``logits [B, Q]`` (plus a
  learned bias): the model is a classifier over text queries, so ``target = "text"`` explains the
  similarity to one query with every class-logit method, and its ground truth is the queried object's mask.

Training: the sigmoid contrastive loss of SigLIP (Zhai et al., ICCV 2023): every (image, query) pair is a
binary problem, positive when the image shows an object of that colour and shape (an image holds 1-3
positives, so CLIP's one-positive softmax does not apply). Held-out exact-set accuracy is recorded.

``patch_text_similarity`` (method): the ExCEL-style patch-text map, the cosine of each patch embedding with
the query embedding (Yang et al., CVPR 2025, "Exploring CLIP's dense knowledge for weakly supervised
semantic segmentation", the patch-text similarity that their CAMs start from).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data.captions import CAPTIONS_GENERATOR_VERSION, COLOURS, QUERIES, ShapesCaptions
from ..data.synthetic import SHAPE_CLASSES
from ..types import ModelHandle
from .base import register_model
from .shipped import resolve_weights, save_shipped, shipped_meta
from .training import config_digest, exact_match_correct, fit, schedule

TRAINER_VERSION = 1
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
TARGET_LAYER = "encoder"
SHIPPED_NAME = "shapes_dual_encoder"


@dataclass(frozen=True)
class DualEncoderConfig:
    """Everything that determines the trained dual encoder (hashed into its shipped record)."""

    name: str = SHIPPED_NAME
    n_train: int = 8000
    image_size: int = 64
    max_objects: int = 3
    widths: tuple[int, ...] = (24, 48, 96)
    width: int = 64
    epochs: int = 14
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    data_seed: int = 1

    def digest(self) -> str:
        return config_digest(self, generator_version=CAPTIONS_GENERATOR_VERSION, trainer_version=TRAINER_VERSION)


DEFAULT_CONFIG = DualEncoderConfig()


def query_words() -> tuple[Tensor, Tensor]:
    """Colour and shape word indices ``[Q]`` of every query of :data:`QUERIES`."""
    colours = [list(COLOURS).index(q.split()[0]) for q in QUERIES]
    shapes = [SHAPE_CLASSES.index(q.split()[1]) for q in QUERIES]
    return torch.tensor(colours), torch.tensor(shapes)


class DualEncoder(nn.Module):
    """Image encoder (patch embeddings, mean-pooled) and text encoder of the queries (module docstring)."""

    def __init__(self, cfg: DualEncoderConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        chans = (3, *cfg.widths)
        layers: list[nn.Module] = []
        for i in range(len(cfg.widths)):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        self.patches = nn.Conv2d(cfg.widths[-1], cfg.width, 1)
        self.colour = nn.Embedding(len(COLOURS), cfg.width)
        self.shape = nn.Embedding(len(SHAPE_CLASSES), cfg.width)
        self.text = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width))
        self.logit_scale = nn.Parameter(torch.tensor(2.3))  # exp(2.3) = 10
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))
        c, s = query_words()
        self.register_buffer("query_colour", c, persistent=False)
        self.register_buffer("query_shape", s, persistent=False)

    def text_embeddings(self) -> Tensor:
        """``[Q, d]`` L2-normalised embeddings of every query."""
        e = self.text(self.colour(self.query_colour) + self.shape(self.query_shape))
        return nn.functional.normalize(e, dim=-1)

    def patch_embeddings(self, images: Tensor) -> Tensor:
        """``[B, d, h, w]`` patch embeddings (before pooling and normalisation)."""
        return self.patches(self.encoder(images))

    def forward(self, images: Tensor) -> Tensor:
        """Similarity logits ``[B, Q]``: ``exp(scale) * cos(image, query) + bias``."""
        img = nn.functional.normalize(self.patch_embeddings(images).mean(dim=(2, 3)), dim=-1)
        return self.logit_scale.exp() * img @ self.text_embeddings().T + self.logit_bias


def _normalize(images01: Tensor) -> Tensor:
    mean = torch.tensor(MEAN, dtype=images01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images01.dtype).view(1, 3, 1, 1)
    return (images01 - mean) / std


def _dataset(cfg: DualEncoderConfig, split: str, n: int) -> ShapesCaptions:
    return ShapesCaptions(n=n, seed=cfg.data_seed, split=split, image_size=cfg.image_size, max_objects=cfg.max_objects)


def _training_set(cfg: DualEncoderConfig) -> tuple[Tensor, Tensor]:
    ds = _dataset(cfg, "train", cfg.n_train)
    xs, ys = [], []
    for start in range(0, cfg.n_train, 500):
        x, y = ds.images_and_queries(range(start, min(cfg.n_train, start + 500)))
        xs.append((x * 255).round_().to(torch.uint8))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def train_dual_encoder(cfg: DualEncoderConfig = DEFAULT_CONFIG) -> tuple[DualEncoder, dict[str, Any]]:
    """Train :class:`DualEncoder` with the sigmoid contrastive loss and the shared loop."""
    return fit(
        lambda: DualEncoder(cfg),
        lambda: _training_set(cfg),
        name=cfg.name,
        **schedule(cfg),
        inputs=lambda u8: _normalize(u8.float().div_(255)),
        loss=nn.functional.binary_cross_entropy_with_logits,
        correct=exact_match_correct,
        accuracy="exact set",
    )


@torch.inference_mode()
def exact_set_accuracy(model: DualEncoder, dataset: ShapesCaptions, batch_size: int = 200) -> float:
    """Fraction of images whose queries with similarity logit > 0 are exactly the present ones."""
    model.eval()
    right = 0
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.images_and_queries(range(start, min(len(dataset), start + batch_size)))
        right += exact_match_correct(model(_normalize(x)), y)
    return right / max(1, len(dataset))


def train_and_ship(cfg: DualEncoderConfig = DEFAULT_CONFIG, n_test: int = 500) -> dict[str, Any]:
    """Train the dual encoder, measure its held-out exact-set accuracy and write its shipped weights."""
    model, info = train_dual_encoder(cfg)
    record = {
        "hash": cfg.digest(),
        "config": asdict(cfg),
        "generator_version": CAPTIONS_GENERATOR_VERSION,
        "trainer_version": TRAINER_VERSION,
        "held_out_exact_set_accuracy": exact_set_accuracy(model, _dataset(cfg, "test", n_test)),
        "n_test": n_test,
        **info,
    }
    save_shipped(cfg.name, model.state_dict(), record)
    return shipped_meta(cfg.name)


@register_model(SHIPPED_NAME, dataset="shapes_captions", synthetic=True, input_size=(64, 64), family="dual_encoder")
def shapes_dual_encoder(weights: str = "default", seed: int = 0) -> ModelHandle:
    """The shipped dual encoder (``weights``: "default" = shipped, "train" = train here, "random", or a path);
    its logits are the similarities to :data:`~benchmark.data.captions.QUERIES` (``target = "text"``)."""
    cfg = DEFAULT_CONFIG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DualEncoder(cfg)
    meta: dict[str, Any] = {"weights": weights, "train_config": asdict(cfg)}
    model, info = resolve_weights(
        model, SHIPPED_NAME, weights, digest=cfg.digest(), train=lambda: train_dual_encoder(cfg), seed=seed
    )
    meta.update(info)
    return ModelHandle(
        name=SHIPPED_NAME,
        model=model.eval(),
        target_layer=TARGET_LAYER,
        input_size=(cfg.image_size, cfg.image_size),
        mean=MEAN,
        std=STD,
        class_names=list(QUERIES),
        meta=meta,
    )


__all__ = [
    "DEFAULT_CONFIG",
    "DualEncoder",
    "DualEncoderConfig",
    "exact_set_accuracy",
    "query_words",
    "shapes_dual_encoder",
    "train_and_ship",
    "train_dual_encoder",
]
