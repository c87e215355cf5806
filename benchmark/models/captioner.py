"""``shapes_captioner``: a small image-to-text model trained by cambench on ``shapes_captions``.

Architecture (:class:`Captioner`), an MLLM in miniature (LLaVA-style: visual tokens in the language
model's sequence):

* **encoder**: three conv blocks (3x3 conv, BatchNorm, ReLU; strides 2, 2, 2): a 64 px image becomes an
  ``8 x 8`` feature map ``[B, C, 8, 8]`` (module ``encoder``: the layer Grad-CAM and its kin explain);
* **projector**: a 1x1 conv to the model width ``d`` plus a learned position embedding per cell: 64
  **visual tokens**;
* **decoder**: ``layers`` pre-norm transformer blocks over the sequence ``[visual tokens; text tokens]``.
  Visual tokens attend to visual tokens; text token ``t`` attends to every visual token (its
  **cross-attention** on the image) and to text tokens ``<= t`` (causal). A final LayerNorm and a linear
  **LM head** give the next-token logits.

Because the visual tokens pass through the same blocks, final norm and LM head as the text, the LM head
read on a visual token's hidden state is defined: that is step 1 of TAM (Li et al., ICCV 2025).
Every block keeps the attention weights of its last forward (``block.last_attention``, ``[B, heads,
N+T, N+T]``), so attention methods read them without hooks.

Weights ``"default"`` ship in ``benchmark/models/weights`` (SHA-256 checked); ``train-models
shapes_captioner`` retrains them with the shared loop (:func:`benchmark.models.training.fit`, teacher
forcing, cross-entropy on the caption tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..data.captions import (
    BOS_ID,
    CAPTIONS_GENERATOR_VERSION,
    EOS_ID,
    PAD_ID,
    VOCAB,
    ShapesCaptions,
    max_caption_length,
)
from ..types import Batch, ModelHandle
from .base import register_model
from .shipped import resolve_weights, save_shipped, shipped_meta
from .training import config_digest, fit, schedule

TRAINER_VERSION = 1
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
TARGET_LAYER = "captioner.encoder"  # in the token view the handle holds (TokenTargets)
SHIPPED_NAME = "shapes_captioner"


@dataclass(frozen=True)
class CaptionerConfig:
    """Everything that determines the trained captioner (hashed into its shipped record)."""

    name: str = SHIPPED_NAME
    n_train: int = 12000
    image_size: int = 64
    max_objects: int = 3
    widths: tuple[int, ...] = (24, 48, 96)
    width: int = 64  # d, the decoder width
    heads: int = 4
    layers: int = 2
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    data_seed: int = 0

    def digest(self) -> str:
        return config_digest(self, generator_version=CAPTIONS_GENERATOR_VERSION, trainer_version=TRAINER_VERSION)


DEFAULT_CONFIG = CaptionerConfig()


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1) that keeps its weights."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}.")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.last_attention: Tensor | None = None  # [B, heads, L, L] of the last forward

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        self.last_attention = attn
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), allowed)
        return x + self.mlp(self.norm2(x))


def attention_mask(n_visual: int, n_text: int) -> Tensor:
    """``[N+T, N+T]`` bool, True where a query (row) may attend to a key (column): visual tokens see the
    visual tokens; text token ``t`` sees every visual token and the text tokens ``<= t``."""
    n = n_visual + n_text
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:, :n_visual] = True
    allowed[n_visual:, n_visual:] = torch.ones(n_text, n_text, dtype=torch.bool).tril()
    return allowed


@dataclass
class DecoderOutput:
    """One teacher-forced pass: text logits, final hidden states (after the final norm) and features."""

    logits: Tensor  # [B, T, V] next-token logits at the text positions
    hidden: Tensor  # [B, N+T, d] final-normed hidden states (visual tokens first)
    features: Tensor  # [B, C, h, w] encoder output
    n_visual: int


class Captioner(nn.Module):
    """CNN encoder + decoder over ``[visual; text]`` tokens (see the module docstring)."""

    def __init__(self, cfg: CaptionerConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.cfg = cfg
        chans = (3, *cfg.widths)
        layers: list[nn.Module] = []
        for i in range(len(cfg.widths)):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        grid = cfg.image_size // 2 ** len(cfg.widths)
        self.grid = grid
        d = cfg.width
        self.project = nn.Conv2d(cfg.widths[-1], d, 1)
        self.visual_pos = nn.Parameter(0.02 * torch.randn(1, grid * grid, d))
        self.embed = nn.Embedding(len(VOCAB), d)
        self.text_pos = nn.Parameter(0.02 * torch.randn(1, max_caption_length(cfg.max_objects) + 1, d))
        self.blocks = nn.ModuleList([Block(d, cfg.heads) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, len(VOCAB))

    def visual_tokens(self, features: Tensor) -> Tensor:
        """``[B, N, d]`` visual tokens of encoder features ``[B, C, h, w]`` (row-major cells)."""
        return self.project(features).flatten(2).transpose(1, 2) + self.visual_pos

    def decode(self, features: Tensor, inputs: Tensor) -> DecoderOutput:
        """Teacher-forced pass of text ``inputs`` ``[B, T]`` (``<bos>`` first) over encoder ``features``."""
        vis = self.visual_tokens(features)
        t = inputs.shape[1]
        x = torch.cat([vis, self.embed(inputs) + self.text_pos[:, :t]], dim=1)
        allowed = attention_mask(vis.shape[1], t).to(x.device)
        for block in self.blocks:
            x = block(x, allowed)
        hidden = self.norm(x)
        n = vis.shape[1]
        return DecoderOutput(logits=self.head(hidden[:, n:]), hidden=hidden, features=features, n_visual=n)

    def forward(self, images: Tensor, inputs: Tensor) -> Tensor:
        """Next-token logits ``[B, T, V]`` of ``inputs`` (``<bos>`` + caption prefix) given ``images``."""
        return self.decode(self.encoder(images), inputs).logits

    @torch.no_grad()
    def generate(self, images: Tensor, max_len: int | None = None) -> Tensor:
        """Greedy captions ``[B, L]`` (``<eos>`` included, ``<pad>`` after it), ``L <= max_len``."""
        max_len = max_len or max_caption_length(self.cfg.max_objects)
        features = self.encoder(images)
        seq = torch.full((images.shape[0], 1), BOS_ID, dtype=torch.long, device=images.device)
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for _ in range(max_len):
            nxt = self.decode(features, seq).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            done |= nxt == EOS_ID
            if bool(done.all()):
                break
        return seq[:, 1:]


class TokenTargets(nn.Module):
    """The captioner as a classifier over **token targets** (``target = "tokens"``).

    It holds a table of captions ``[C, T]`` (:meth:`set_captions`, the greedy captions of the images of
    the current batch). ``forward(images)`` decodes every image against every caption of the table
    (teacher forcing) and returns the logits ``[N, C * T * V]``: entry ``(c * T + t) * V + v`` is the logit
    of word ``v`` at position ``t`` after the prefix ``captions[c, :t]``. A token target is that flat index
    (:meth:`target_index`), so every class-logit method (Grad-CAM on ``captioner.encoder``, ...) and metric
    (deletion / insertion re-forward perturbed images) explains exactly the token's logit given its
    generated context, whatever the batch layout of their forwards.
    """

    def __init__(self, captioner: Captioner) -> None:
        super().__init__()
        self.captioner = captioner
        self.captions = torch.zeros((0, max_caption_length(captioner.cfg.max_objects)), dtype=torch.long)

    @property
    def length(self) -> int:
        return int(self.captions.shape[1])

    def set_captions(self, captions: Tensor) -> None:
        """Use ``captions`` ``[C, T]`` (token ids, ``<pad>`` after ``<eos>``) as the table."""
        if captions.ndim != 2 or captions.shape[1] != self.length:
            raise ValueError(f"captions must be [C, {self.length}], got {tuple(captions.shape)}.")
        self.captions = captions.long()

    def teacher_inputs(self) -> Tensor:
        """``[C, T]`` decoder inputs of the table (``<bos>`` then the caption shifted right)."""
        return teacher_inputs(self.captions)

    def target_index(self, caption: Tensor, position: Tensor, token: Tensor) -> Tensor:
        """Flat targets of (caption row, position, token id), each ``[B]``."""
        return (caption * self.length + position) * len(VOCAB) + token

    def token_positions(self, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(caption row, position, token id) of flat ``targets`` ``[B]``."""
        v = len(VOCAB)
        return targets // (self.length * v), (targets // v) % self.length, targets % v

    def bind(self, batch: Batch) -> Batch:
        """Set the caption table to the distinct generated captions of a token batch (``extras``:
        ``caption`` ``[B, T]``, ``position`` ``[B]``; targets = token ids) and return the batch with the flat
        targets (``labels`` keep the token ids)."""
        extras = batch.extras or {}
        if "caption" not in extras or "position" not in extras:
            raise ValueError(
                'A token batch needs extras "caption" and "position" (target = "tokens" with shapes_captions); '
                f"got extras {sorted(extras)}."
            )
        table, row = torch.unique(extras["caption"].long().cpu(), dim=0, return_inverse=True)
        self.set_captions(table.to(batch.targets.device))
        flat = self.target_index(row.to(batch.targets.device), extras["position"].long(), batch.targets.long())
        return replace(batch, targets=flat, labels=batch.targets)

    def generate(self, images: Tensor) -> Tensor:
        """Greedy captions ``[B, T]`` of normalised ``images`` (padded to the table length with ``<pad>``)."""
        gen = self.captioner.generate(images, max_len=self.length)
        out = torch.full((images.shape[0], self.length), PAD_ID, dtype=torch.long, device=images.device)
        out[:, : gen.shape[1]] = gen
        return out

    def forward(self, images: Tensor) -> Tensor:
        if self.captions.shape[0] == 0:
            raise ValueError("TokenTargets has no captions: call set_captions() first (target = 'tokens').")
        n, c = images.shape[0], self.captions.shape[0]
        feats = self.captioner.encoder(images).repeat_interleave(c, dim=0)  # [N*C, ...]
        inputs = self.teacher_inputs().to(images.device).repeat(n, 1)  # [N*C, T]
        logits = self.captioner.decode(feats, inputs).logits  # [N*C, T, V]
        return logits.reshape(n, -1)


def normalize(images01: Tensor) -> Tensor:
    mean = torch.tensor(MEAN, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    return (images01 - mean) / std


def teacher_inputs(captions: Tensor) -> Tensor:
    """``[B, T]`` decoder inputs of captions ``[B, T]``: ``<bos>`` then the caption shifted right."""
    bos = torch.full_like(captions[:, :1], BOS_ID)
    return torch.cat([bos, captions[:, :-1]], dim=1)


def _dataset(cfg: CaptionerConfig, split: str, n: int) -> ShapesCaptions:
    return ShapesCaptions(n=n, seed=cfg.data_seed, split=split, image_size=cfg.image_size, max_objects=cfg.max_objects)


def _training_set(cfg: CaptionerConfig) -> tuple[Tensor, Tensor]:
    ds = _dataset(cfg, "train", cfg.n_train)
    xs, cs = [], []
    for start in range(0, cfg.n_train, 500):
        x, c = ds.images_and_captions(range(start, min(cfg.n_train, start + 500)))
        xs.append((x * 255).round_().to(torch.uint8))
        cs.append(c)
    return torch.cat(xs), torch.cat(cs)


class _TeacherForced(nn.Module):
    """Training view for :func:`fit`: ``forward(images)`` returns the encoder features; the loss decodes
    them against the caption (teacher forcing), so the shared loop needs no caption input."""

    def __init__(self, captioner: Captioner) -> None:
        super().__init__()
        self.captioner = captioner

    def forward(self, images: Tensor) -> Tensor:
        return self.captioner.encoder(images)

    def loss(self, features: Tensor, captions: Tensor) -> Tensor:
        logits = self.captioner.decode(features, teacher_inputs(captions)).logits
        return nn.functional.cross_entropy(logits.flatten(0, 1), captions.flatten(), ignore_index=PAD_ID)


def train_captioner(cfg: CaptionerConfig = DEFAULT_CONFIG) -> tuple[Captioner, dict[str, Any]]:
    """Train :class:`Captioner` on ``shapes_captions`` (train split) with the shared loop."""
    holder: dict[str, _TeacherForced] = {}

    def build() -> _TeacherForced:
        holder["m"] = _TeacherForced(Captioner(cfg))
        return holder["m"]

    wrapped, info = fit(
        build,
        lambda: _training_set(cfg),
        name=cfg.name,
        **schedule(cfg),
        inputs=lambda u8: normalize(u8.float().div_(255)),
        loss=lambda feats, caps: holder["m"].loss(feats, caps),
        correct=None,
    )
    return wrapped.captioner.eval(), info


@torch.inference_mode()
def exact_caption_accuracy(model: Captioner, dataset: ShapesCaptions, batch_size: int = 200) -> float:
    """Fraction of images whose greedy caption equals the true caption, token for token (``<eos>`` included)."""
    model.eval()
    right = 0
    for start in range(0, len(dataset), batch_size):
        x, caps = dataset.images_and_captions(range(start, min(len(dataset), start + batch_size)))
        gen = model.generate(normalize(x), max_len=caps.shape[1])
        out = torch.full_like(caps, PAD_ID)
        out[:, : gen.shape[1]] = gen
        right += int((out == caps).all(1).sum())
    return right / max(1, len(dataset))


def train_and_ship(cfg: CaptionerConfig = DEFAULT_CONFIG, n_test: int = 500) -> dict[str, Any]:
    """Train the captioner, measure its held-out exact-caption accuracy and write its shipped weights."""
    model, info = train_captioner(cfg)
    acc = exact_caption_accuracy(model, _dataset(cfg, "test", n_test))
    record = {
        "hash": cfg.digest(),
        "config": asdict(cfg),
        "generator_version": CAPTIONS_GENERATOR_VERSION,
        "trainer_version": TRAINER_VERSION,
        "held_out_exact_caption_accuracy": acc,
        "n_test": n_test,
        **info,
    }
    save_shipped(cfg.name, model.state_dict(), record)
    return shipped_meta(cfg.name)


@register_model(SHIPPED_NAME, dataset="shapes_captions", synthetic=True, input_size=(64, 64), family="captioner")
def shapes_captioner(weights: str = "default", seed: int = 0) -> ModelHandle:
    """The shipped captioner behind its token view :class:`TokenTargets` (``target = "tokens"``); ``weights``:
    "default" = shipped, "train" = train here, "random", or a state_dict path of a :class:`Captioner`."""
    cfg = DEFAULT_CONFIG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Captioner(cfg)
    meta: dict[str, Any] = {"weights": weights, "train_config": asdict(cfg)}
    model, info = resolve_weights(
        model, SHIPPED_NAME, weights, digest=cfg.digest(), train=lambda: train_captioner(cfg), seed=seed
    )
    meta.update(info)
    return ModelHandle(
        name=SHIPPED_NAME,
        model=TokenTargets(model.eval()).eval(),
        target_layer=TARGET_LAYER,
        input_size=(cfg.image_size, cfg.image_size),
        mean=MEAN,
        std=STD,
        class_names=list(VOCAB),
        meta=meta,
    )


__all__ = [
    "Captioner",
    "CaptionerConfig",
    "DEFAULT_CONFIG",
    "DecoderOutput",
    "TokenTargets",
    "attention_mask",
    "exact_caption_accuracy",
    "normalize",
    "shapes_captioner",
    "teacher_inputs",
    "train_and_ship",
    "train_captioner",
]
