"""``shapes_captions``: clutter scenes described by a caption whose object words have exact masks.

Each image (64 px by default) shows the textured clutter of :mod:`benchmark.data.synthetic` (two textures
and thin random strokes, desaturated so that the object colours stay nameable) and 1 to ``max_objects``
non-overlapping objects. An object has a **named colour** (:data:`COLOURS`) and a **shape**
(:data:`benchmark.data.synthetic.SHAPE_CLASSES`), both drawn independently (repeats allowed).

The caption names the objects in **reading order, left to right** by the centre of their circumscribed
circle (centres at least ``_MIN_DX`` of the side apart horizontally, so the order is never ambiguous):
``"a red disk and a blue ring and a green cross"``. Token ids are :data:`VOCAB` indices; a caption ends with
``<eos>`` and decoding starts from ``<bos>``. Ground truth per caption position (:class:`CaptionScene`):

* a **colour** or **shape** word names one object: its truth is that object's instance mask (visible pixels);
* a **function word** (``a``, ``and``, ``<eos>``) names no object: it has no mask (``object_index = -1``).

Image ``i`` is a pure function of ``(seed, split, i)`` (a stream of its own, apart from ``shapes`` and
``shapes_multilabel``); ``train`` and ``test`` are disjoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .base import Sample, register_dataset
from .synthetic import _PIXEL_NOISE, SHAPE_CLASSES, ShapesDataset, mask_to_box, quantize8

#: Bump when the drawing or the captions change: part of the captioner's training hash.
CAPTIONS_GENERATOR_VERSION = 1
_STREAM = 11  # keeps the random streams apart from those of shapes (0-2) and shapes_multilabel (7)

#: Named object colours (RGB in [0,1]); each drawn colour is jittered by up to ``_COLOUR_JITTER`` per channel.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.75, 0.15),
    "blue": (0.1, 0.2, 0.95),
    "yellow": (0.95, 0.9, 0.1),
}
_COLOUR_JITTER = 0.06
_RADIUS = (0.12, 0.17)  # circumradius, fraction of the side
_MARGIN = 0.03
_MIN_DX = 0.06  # horizontal distance between object centres (fraction of the side): an unambiguous order
_DESATURATE = 0.75  # background pulled this far towards its grey level: the named colours stay apart

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
FUNCTION_WORDS: tuple[str, ...] = ("a", "and")
#: The vocabulary: special tokens, function words, colour words, shape words (token id = index).
VOCAB: tuple[str, ...] = (PAD, BOS, EOS, *FUNCTION_WORDS, *COLOURS, *SHAPE_CLASSES)
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}
PAD_ID, BOS_ID, EOS_ID = TOKEN_ID[PAD], TOKEN_ID[BOS], TOKEN_ID[EOS]


def caption_words(objects: list[tuple[str, str]]) -> list[str]:
    """The caption of ``[(colour, shape), ...]`` (already in reading order), ``<eos>`` included."""
    words: list[str] = []
    for j, (colour, shape) in enumerate(objects):
        words += (["and"] if j else []) + ["a", colour, shape]
    return [*words, EOS]


def max_caption_length(max_objects: int) -> int:
    """Tokens of the longest caption (``<eos>`` included): ``4 k`` for ``k`` objects."""
    return 4 * max_objects


def encode(words: list[str]) -> Tensor:
    """Token ids ``[T]`` (long) of ``words``."""
    try:
        return torch.tensor([TOKEN_ID[w] for w in words], dtype=torch.long)
    except KeyError as exc:
        raise DataError(f"Word {exc.args[0]!r} is not in the caption vocabulary {VOCAB}.") from None


def decode(ids: Tensor | list[int]) -> list[str]:
    """Words of token ids, up to and including the first ``<eos>``."""
    out = []
    for i in [int(v) for v in ids]:
        out.append(VOCAB[i])
        if i == EOS_ID:
            break
    return out


def is_object_word(token: int) -> bool:
    """Whether token id ``token`` names an object (a colour or a shape word)."""
    return VOCAB[int(token)] in COLOURS or VOCAB[int(token)] in SHAPE_CLASSES


@dataclass
class CaptionScene:
    """One drawn scene: image, objects in reading order, caption and per-token truth."""

    image: Tensor  # [3,S,S] float in [0,1]
    colours: list[str]  # per object, reading order
    shapes: list[str]
    masks: list[Tensor]  # [S,S] bool per object, reading order
    tokens: Tensor  # [T] long, the caption (``<eos>`` last)
    object_index: Tensor  # [T] long: the object a token names, -1 for a function word

    def token_mask(self, position: int) -> Tensor | None:
        """The ground-truth mask of caption position ``position`` (None for a function word)."""
        j = int(self.object_index[position])
        return None if j < 0 else self.masks[j]


@register_dataset("shapes_captions")
class ShapesCaptions(ShapesDataset):
    """Clutter scenes with a caption naming each object (see the module docstring); the dataset
    ``shapes_captions``. ``Sample.target`` is the first object's shape class and ``Sample.mask`` its mask
    (the per-token view is :meth:`token_samples`)."""

    has_masks = True
    has_boxes = True
    default_model = "shapes_captioner"

    def __init__(
        self,
        n: int | None = 1000,
        seed: int = 0,
        split: str = "test",
        image_size: int = 64,
        max_objects: int = 3,
        min_objects: int = 1,
        *,
        root: str | None = None,
    ) -> None:
        super().__init__(n=n, seed=seed, split=split, image_size=image_size)  # type: ignore[arg-type]
        if not 1 <= int(min_objects) <= int(max_objects) <= 4:
            raise DataError(
                f"shapes_captions needs 1 <= min_objects <= max_objects <= 4; got min_objects={min_objects}, "
                f"max_objects={max_objects}."
            )
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)

    def sample_id(self, index: int) -> str:
        return f"cap-{self.split}-s{self.seed}-{index:06d}"

    def _centres(self, rng: np.random.Generator, radii: list[float]) -> list[tuple[float, float]]:
        s = self.image_size
        lo, hi, gap = _MARGIN * s, (1 - _MARGIN) * s, 0.03 * s
        out: list[tuple[float, float]] = []
        for r in radii:
            cand = rng.uniform(lo + r, hi - r, size=(128, 2))
            ok = np.ones(128, dtype=bool)
            for (cx, cy), r2 in zip(out, radii, strict=False):
                ok &= np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) >= r + r2 + gap
                ok &= np.abs(cand[:, 0] - cx) >= _MIN_DX * s
            if not ok.any():
                break
            out.append(tuple(cand[int(np.argmax(ok))]))
        return out

    def caption_scene(self, index: int) -> CaptionScene:
        """Draw image ``index``: desaturated clutter, the objects, pixel noise; caption left to right."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} images.")
        rng = self._rng(index, stream=_STREAM)
        n_obj = int(rng.integers(self.min_objects, self.max_objects + 1))
        names = list(COLOURS)
        colours = [names[int(c)] for c in rng.integers(len(names), size=n_obj)]
        shapes = [int(c) for c in rng.integers(len(SHAPE_CLASSES), size=n_obj)]
        s = self.image_size
        radii = [float(r) * s for r in rng.uniform(*_RADIUS, size=n_obj)]
        centres = self._centres(rng, radii)
        img, base = self._background(rng)
        img2, base2 = self._background(rng)
        img = img + 0.5 * (img2 - base2[:, None, None])
        img = self._strokes(rng, img)
        grey = img.mean(axis=0, keepdims=True)
        img = _DESATURATE * grey + (1 - _DESATURATE) * img
        masks: list[Tensor] = []
        for colour, cls, (cx, cy), r in zip(colours, shapes, centres, radii, strict=False):
            m = self._draw_object(rng, cls, cx, cy, r)
            rgb = np.asarray(COLOURS[colour], dtype=np.float32) + rng.uniform(
                -_COLOUR_JITTER, _COLOUR_JITTER, size=3
            ).astype(np.float32)
            img = np.where(m[None], rgb[:, None, None], img)
            masks.append(torch.from_numpy(m))
        img = img + rng.normal(0.0, _PIXEL_NOISE, size=img.shape).astype(np.float32)
        k = len(centres)
        order = sorted(range(k), key=lambda j: centres[j][0])
        objs = [(colours[j], SHAPE_CLASSES[shapes[j]]) for j in order]
        words = caption_words(objs)
        obj_index = []
        for w_i, w in enumerate(words):
            obj_index.append((w_i - 1) // 4 if w in COLOURS or w in SHAPE_CLASSES else -1)
        return CaptionScene(
            image=torch.from_numpy(quantize8(img)),
            colours=[c for c, _ in objs],
            shapes=[sh for _, sh in objs],
            masks=[masks[j] for j in order],
            tokens=encode(words),
            object_index=torch.tensor(obj_index, dtype=torch.long),
        )

    def __getitem__(self, index: int) -> Sample:
        index = int(index) + (self.n if int(index) < 0 else 0)
        sc = self.caption_scene(index)
        label = SHAPE_CLASSES.index(sc.shapes[0])
        return Sample(
            image=sc.image,
            target=label,
            id=self.sample_id(index),
            mask=sc.masks[0],
            boxes=mask_to_box(sc.masks[0]),
            label=label,
        )

    def images_and_captions(self, indices: range | list[int] | None = None) -> tuple[Tensor, Tensor]:
        """Stacked ``[N,3,S,S]`` images in [0,1] and ``[N,T]`` captions padded with ``<pad>`` (training)."""
        idx = range(self.n) if indices is None else indices
        scenes = [self.caption_scene(int(i)) for i in idx]
        t, s = max_caption_length(self.max_objects), self.image_size
        caps = torch.full((len(scenes), t), PAD_ID, dtype=torch.long)
        for i, sc in enumerate(scenes):
            caps[i, : sc.tokens.numel()] = sc.tokens
        if not scenes:
            return torch.zeros((0, 3, s, s)), caps
        return torch.stack([sc.image for sc in scenes]), caps


def token_samples(scene: CaptionScene, generated: Tensor, image_id: str, length: int) -> list[Sample]:
    """One :class:`Sample` per generated token (``target = "tokens"``), up to and including ``<eos>``.

    ``generated``: the model's greedy caption (token ids). Sample ``t``: id ``"<image id>#t<t>:<word>"``,
    ``target``/``label`` the token id, ``mask`` the named object's instance mask when the token is an
    object word that matches the true caption at that position (else None: a function word, or an object
    word the model got wrong, which names no drawn object), and ``extras``: ``caption`` (``[length]``, the
    generated caption padded with ``<pad>``), ``position``, ``function_word`` and ``has_truth`` (0-d).
    """
    gen = [int(v) for v in generated]
    if EOS_ID in gen:
        gen = gen[: gen.index(EOS_ID) + 1]
    gen = gen[:length]
    padded = torch.full((length,), PAD_ID, dtype=torch.long)
    padded[: len(gen)] = torch.tensor(gen, dtype=torch.long)
    true = [int(v) for v in scene.tokens]
    out = []
    for t, tok in enumerate(gen):
        obj = is_object_word(tok)
        right = obj and t < len(true) and true[t] == tok
        mask = scene.masks[int(scene.object_index[t])] if right else None
        out.append(
            Sample(
                image=scene.image,
                target=tok,
                id=f"{image_id}#t{t:02d}:{VOCAB[tok]}",
                mask=mask,
                boxes=None if mask is None else mask_to_box(mask),
                label=tok,
                extras={
                    "caption": padded,
                    "position": torch.tensor(t, dtype=torch.long),
                    "function_word": torch.tensor(not obj),
                    "has_truth": torch.tensor(mask is not None),
                },
            )
        )
    return out


class PerTokenTargets(Dataset):
    """Token view of :class:`ShapesCaptions` (``target = "tokens"``): item ``i`` is the list of
    :func:`token_samples` of image ``i`` for the caption ``generate(image)`` (the model's greedy caption,
    a callable the evaluation passes in: the data layer never holds the model). Other attributes are the
    wrapped dataset's."""

    def __init__(self, dataset: Dataset, generate: Callable[[Tensor], Tensor]) -> None:
        if not hasattr(dataset, "caption_scene"):
            raise DataError(
                f'target = "tokens" needs a dataset with captions (shapes_captions), got {type(dataset).__name__}.'
            )
        self.dataset, self.generate = dataset, generate

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> list[Sample]:
        ds: Any = self.dataset
        index = int(index) + (len(ds) if int(index) < 0 else 0)
        sc = ds.caption_scene(index)
        return token_samples(sc, self.generate(sc.image), ds.sample_id(index), max_caption_length(ds.max_objects))

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


__all__ = [
    "PerTokenTargets",
    "token_samples",
    "BOS_ID",
    "CAPTIONS_GENERATOR_VERSION",
    "COLOURS",
    "CaptionScene",
    "EOS_ID",
    "FUNCTION_WORDS",
    "PAD_ID",
    "ShapesCaptions",
    "TOKEN_ID",
    "VOCAB",
    "caption_words",
    "decode",
    "encode",
    "is_object_word",
    "max_caption_length",
]
