"""``shapes_vit``: a small Vision Transformer trained by cambench on the ``shapes`` scenes (simple and clutter).

Architecture (:class:`ShapesViT`, Dosovitskiy et al. ICLR 2021, pre-norm blocks): the 64x64 image is cut into
8x8 patches (a stride-8 convolution: an 8x8 grid of 64 patch tokens), a learned class token is prepended and
learned position embeddings added; ``depth`` pre-norm blocks ``x = x + Attn(LN(x)); x = x + MLP(LN(x))``; the
class token's final LayerNorm output goes through one linear layer to the 6 class logits.

What the explanation methods read, without patching the model:

- **attention probabilities**: every block's attention computes ``P = softmax(Q K^T / sqrt(d))``
  ``[B, heads, N, N]`` (``N = 1 + 64`` tokens, the class token first) and passes it through
  ``blocks[i].attn.probs``, an :class:`AttentionProbs` (an identity module): a forward hook on it reads
  ``P``, and one that returns a tensor replaces it (the attention output is ``P V`` of what the hook
  returns). :meth:`ShapesViT.attention_probs_modules` lists them in depth order;
  ``ShapesViT.num_prefix_tokens`` (1, as timm names it) says how many tokens precede the patch tokens.
- **tokens**: ``blocks[i].norm1`` (the input LayerNorm of block ``i``) outputs ``[B, N, D]``; the handle's
  ``reshape`` (:func:`benchmark.methods.capture.vit_reshape`) drops the class token and lays the 64 patch
  tokens on their 8x8 grid ``[B, D, 8, 8]``. The default target layer is the **last block's** ``norm1``:
  the last block's output reaches the head only through the class token, so the gradients of its patch
  tokens are 0 (the choice of pytorch-grad-cam and torchcam for ViTs).
- the class token's final feature: ``model.features(x)`` ``[B, D]``, the head's input.

Weights ``"default"`` are shipped in ``benchmark/models/weights/shapes_vit.pt`` (SHA-256 checked, loaded
with ``weights_only=True``, :mod:`benchmark.models.shipped`); ``python run_bench.py train-models shapes_vit``
retrains them with the shared loop (:func:`benchmark.models.training.fit`, deterministic for a torch build);
``"train"`` trains in this process (not cached); ``"random"`` is a seeded initialisation; any other value
is a checkpoint path.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..data.synthetic import CLUTTER_VERSION, GENERATOR_VERSION, SHAPE_CLASSES, ShapesDataset
from ..methods.capture import vit_reshape
from ..types import ModelHandle
from .base import register_model
from .shipped import resolve_weights, save_shipped
from .training import config_digest, fit, schedule, top1_accuracy

log = logging.getLogger(__name__)

#: Bump when the architecture or the training recipe changes: it is part of the configuration hash.
TRAINER_VERSION = 1
SHIPPED_NAME = "shapes_vit"
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class AttentionProbs(nn.Identity):
    """The post-softmax attention probabilities ``P [B, heads, N, N]`` of one block (rows: queries, columns:
    keys; each row sums to 1). An identity module, so that a forward hook reads ``P`` (or replaces it: the
    block then computes ``P' V``). The explanation methods find these modules through
    :meth:`ShapesViT.attention_probs_modules`."""


class Attention(nn.Module):
    """Multi-head self-attention ``proj(concat_h softmax(Q_h K_h^T / sqrt(d)) V_h)`` (Vaswani et al. 2017)
    with its probabilities passed through ``self.probs`` (:class:`AttentionProbs`).

    Reusable: any ``[B, N, dim]`` token sequence; ``heads`` must divide ``dim``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: heads ({heads}) must divide dim ({dim}).")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = AttentionProbs()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [B,h,N,d]
        p = self.probs((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
        return self.proj((p @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _stem(kind: str, dim: int, patch: int) -> nn.Module:
    """``"patch"``: one ``patch``x``patch`` stride-``patch`` convolution (a linear patch embedding, Dosovitskiy
    et al. 2021). ``"conv"``: stride-2 3x3 conv-BN-ReLU layers down to the same grid, then a 1x1 conv (the
    convolutional stem of Xiao et al. NeurIPS 2021, "Early convolutions help transformers see better")."""
    if kind == "patch":
        return nn.Conv2d(3, dim, patch, stride=patch)
    if kind != "conv" or patch & (patch - 1):
        raise ValueError(f"stem must be 'patch' or 'conv' (with a power-of-two patch), got {kind!r}, patch {patch}.")
    layers: list[nn.Module] = []
    c_in, c_out = 3, max(8, dim // 4)
    for _ in range(patch.bit_length() - 1):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        c_in, c_out = c_out, min(dim, 2 * c_out)
    return nn.Sequential(*layers, nn.Conv2d(c_in, dim, 1))


class ShapesViT(nn.Module):
    """A small ViT: ``patch``x``patch`` patches of an ``image_size`` image, a class token, ``depth`` blocks.

    Attributes read by the explanation methods: ``blocks`` (``nn.ModuleList`` of :class:`Block`), ``norm``
    (final LayerNorm), ``head`` (linear classifier on the class token), ``grid`` (patch grid ``(h, w)``),
    ``num_prefix_tokens`` (1: the class token), :meth:`attention_probs_modules`.
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        num_classes: int = len(SHAPE_CLASSES),
        image_size: int = 64,
        patch: int = 8,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        stem: str = "patch",
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ShapesViT: patch ({patch}) must divide image_size ({image_size}).")
        side = image_size // patch
        self.grid = (side, side)
        self.patch_embed = _stem(stem, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + side * side, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def attention_probs_modules(self) -> list[AttentionProbs]:
        """Each block's :class:`AttentionProbs`, first block first (their outputs: ``[B, heads, N, N]``)."""
        return [cast(Block, blk).attn.probs for blk in self.blocks]

    def tokens(self, x: Tensor) -> Tensor:
        """The last block's output tokens ``[B, 1 + h*w, dim]`` (class token first, before the final norm)."""
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, h*w, dim], row-major patch order
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for blk in self.blocks:
            t = blk(t)
        return t

    def features(self, x: Tensor) -> Tensor:
        """The head's input: the final LayerNorm of the class token ``[B, dim]``."""
        return self.norm(self.tokens(x)[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ViTTrainConfig:
    """Everything that determines the trained ``shapes_vit`` (its hash is recorded with the shipped weights)."""

    n_train: int = 12000
    image_size: int = 64
    scenes: tuple[str, ...] = ("simple", "clutter")
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    data_seed: int = 0
    patch: int = 8
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    #: "conv": a convolutional stem (a pure patch embedding learns too slowly for the CPU training budget)
    stem: str = "conv"
    #: random flips and 90-degree rotations per batch (the scenes' objects are drawn at multiples of 90
    #: degrees, so each of the 8 symmetries of the square keeps every label)
    augment: bool = True

    def digest(self) -> str:
        return config_digest(
            self,
            generator_version=GENERATOR_VERSION,
            clutter_version=CLUTTER_VERSION,
            trainer_version=TRAINER_VERSION,
            model=SHIPPED_NAME,
        )


DEFAULT_CONFIG = ViTTrainConfig()


def build_vit(cfg: ViTTrainConfig = DEFAULT_CONFIG) -> ShapesViT:
    """An untrained :class:`ShapesViT` of ``cfg``'s shape (initialised from the global torch seed)."""
    return ShapesViT(
        len(SHAPE_CLASSES), cfg.image_size, cfg.patch, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.stem
    )


def _normalize(images01: Tensor) -> Tensor:
    return (images01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _training_set(cfg: ViTTrainConfig) -> tuple[Tensor, Tensor]:
    """``n_train`` uint8 images and labels, split evenly over ``cfg.scenes`` (rendered in chunks)."""
    sizes = [cfg.n_train // len(cfg.scenes) + (i < cfg.n_train % len(cfg.scenes)) for i in range(len(cfg.scenes))]
    xs, ys = [], []
    for kind, n in zip(cfg.scenes, sizes, strict=True):
        ds = ShapesDataset(n=n, seed=cfg.data_seed, split="train", image_size=cfg.image_size, scene=kind)  # type: ignore[arg-type]
        for start in range(0, n, 500):
            x, y = ds.images_and_labels(range(start, min(n, start + 500)))
            xs.append((x * 255).round_().to(torch.uint8))
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _augment(images: Tensor) -> Tensor:
    """One random symmetry of the square per batch (transpose or not, then 0-3 quarter turns), drawn from the
    global torch generator (seeded by :func:`fit`: deterministic)."""
    k = int(torch.randint(0, 8, (1,)))
    if k >= 4:
        images = images.transpose(-2, -1)
    return torch.rot90(images, k % 4, dims=(-2, -1))


def train_vit(cfg: ViTTrainConfig = DEFAULT_CONFIG) -> tuple[ShapesViT, dict[str, Any]]:
    """Train :class:`ShapesViT` on the ``train`` split of ``cfg.scenes`` with the shared loop (Adam, one-cycle,
    cross-entropy; :func:`benchmark.models.training.fit`)."""

    def inputs(u8: Tensor) -> Tensor:
        x = _normalize(u8.float().div_(255))
        return _augment(x) if cfg.augment else x

    return fit(
        lambda: build_vit(cfg),
        lambda: _training_set(cfg),
        name=SHIPPED_NAME,
        **schedule(cfg),
        inputs=inputs,
        loss=nn.functional.cross_entropy,
    )


#: Held-out ``test`` images per scene kind on which :func:`train_and_ship` measures the recorded accuracy.
N_HELD_OUT = 400


def held_out_accuracy(model: nn.Module, cfg: ViTTrainConfig = DEFAULT_CONFIG, n: int = N_HELD_OUT) -> dict[str, float]:
    """Top-1 accuracy on the ``test`` split of each scene kind of ``cfg``."""
    return {
        kind: top1_accuracy(
            model,
            ShapesDataset(n=n, seed=cfg.data_seed, split="test", image_size=cfg.image_size, scene=kind),  # type: ignore[arg-type]
            _normalize,
        )
        for kind in cfg.scenes
    }


def train_and_ship(cfg: ViTTrainConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Train, measure on the held-out ``test`` splits and write the shipped weights (run once, by us)."""
    model, info = train_vit(cfg)
    meta = {
        "hash": cfg.digest(),
        "config": asdict(cfg),
        "generator_version": GENERATOR_VERSION,
        "clutter_version": CLUTTER_VERSION,
        "trainer_version": TRAINER_VERSION,
        "held_out_accuracy": held_out_accuracy(model, cfg),
        **info,
    }
    save_shipped(SHIPPED_NAME, model.state_dict(), meta)
    log.info("%s: shipped (held-out accuracy %s)", SHIPPED_NAME, meta["held_out_accuracy"])
    return meta


@register_model(SHIPPED_NAME, dataset="shapes", synthetic=True, input_size=(64, 64), family="vit")
def shapes_vit(weights: str = "default", seed: int = 0) -> ModelHandle:
    """Small ViT on ``shapes`` at 64 px ("default" = shipped, "train" = train here, "random", or a path)."""
    cfg = DEFAULT_CONFIG
    with torch.random.fork_rng(devices=[]):  # seeded init, leaving the caller's random state alone
        torch.manual_seed(seed)
        model = build_vit(cfg)
    meta: dict[str, Any] = {"weights": weights, "train_config": asdict(cfg)}
    model, info = resolve_weights(
        model, SHIPPED_NAME, weights, digest=cfg.digest(), train=lambda: train_vit(cfg), seed=seed
    )
    meta.update(info)
    return ModelHandle(
        name=SHIPPED_NAME,
        model=model.eval(),
        target_layer=f"blocks.{cfg.depth - 1}.norm1",
        input_size=(cfg.image_size, cfg.image_size),
        mean=MEAN,
        std=STD,
        reshape=vit_reshape,
        class_names=list(SHAPE_CLASSES),
        meta=meta,
    )


__all__ = [
    "DEFAULT_CONFIG",
    "Attention",
    "AttentionProbs",
    "Block",
    "ShapesViT",
    "ViTTrainConfig",
    "build_vit",
    "held_out_accuracy",
    "shapes_vit",
    "train_and_ship",
    "train_vit",
]
