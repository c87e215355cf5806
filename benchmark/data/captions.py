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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from ..types import Batch
from .base import Sample, register_dataset
from .synthetic import _PIXEL_NOISE, SHAPE_CLASSES, ShapesDataset, mask_to_box, place_centres, quantize8

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


#: The text queries of the dual encoder (``target = "text"``): every "<colour> <shape>" pair, query id = index.
QUERIES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPE_CLASSES)


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
        centres = place_centres(rng, radii, s, margin=_MARGIN, gap=0.03, candidates=128, min_dx=_MIN_DX)
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

    def query_samples(self, index: int) -> list[Sample]:
        """Text-query view of image ``index`` (``target = "text"``): one sample per query present in it
        (:data:`QUERIES`, in query order), target = the query id, mask = the union of the objects it
        names, id ``"<image id>#<colour>_<shape>"``."""
        index = int(index) + (self.n if int(index) < 0 else 0)
        sc = self.caption_scene(index)
        iid = self.sample_id(index)
        found: dict[int, Tensor] = {}
        for colour, shape, m in zip(sc.colours, sc.shapes, sc.masks, strict=True):
            q = QUERIES.index(f"{colour} {shape}")
            found[q] = found[q] | m if q in found else m
        return [
            Sample(
                image=sc.image,
                target=q,
                id=f"{iid}#{QUERIES[q].replace(' ', '_')}",
                mask=found[q],
                boxes=mask_to_box(found[q]),
                label=q,
            )
            for q in sorted(found)
        ]

    def images_and_queries(self, indices: range | list[int] | None = None) -> tuple[Tensor, Tensor]:
        """Stacked ``[N,3,S,S]`` images in [0,1] and ``[N, len(QUERIES)]`` multi-hot present queries."""
        idx = range(self.n) if indices is None else indices
        scenes = [self.caption_scene(int(i)) for i in idx]
        y = torch.zeros(len(scenes), len(QUERIES))
        for i, sc in enumerate(scenes):
            for colour, shape in zip(sc.colours, sc.shapes, strict=True):
                y[i, QUERIES.index(f"{colour} {shape}")] = 1.0
        if not scenes:
            s = self.image_size
            return torch.zeros((0, 3, s, s)), y
        return torch.stack([sc.image for sc in scenes]), y

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


#: ``[V]`` bool: which token ids name an object (colour and shape words).
OBJECT_WORD = torch.tensor([w in COLOURS or w in SHAPE_CLASSES for w in VOCAB])


class CaptionTruth(Dataset):
    """Per-image view of :class:`ShapesCaptions` for ``target = "tokens"``: each sample carries in
    ``extras`` the true caption (``true_caption`` ``[T]``, ``<pad>`` after ``<eos>``) and the instance masks
    in reading order (``object_masks`` ``[max_objects, H, W]``, empty past the last object), from which
    :func:`expand_token_batch` builds one row per generated token. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "caption_scene"):
            raise DataError(
                f'target = "tokens" needs a dataset with captions (shapes_captions), got {type(dataset).__name__}.'
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        ds: Any = self.dataset
        index = int(index) + (len(ds) if int(index) < 0 else 0)
        sc = ds.caption_scene(index)
        t, s = max_caption_length(ds.max_objects), ds.image_size
        caption = torch.full((t,), PAD_ID, dtype=torch.long)
        caption[: sc.tokens.numel()] = sc.tokens
        masks = torch.zeros((ds.max_objects, s, s), dtype=torch.bool)
        if sc.masks:
            masks[: len(sc.masks)] = torch.stack(sc.masks)
        return Sample(
            image=sc.image,
            target=int(sc.tokens[0]),
            id=ds.sample_id(index),
            extras={"true_caption": caption, "object_masks": masks},
        )

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def caption_truth(dataset: Dataset) -> CaptionTruth:
    """``dataset`` as a :class:`CaptionTruth` view (idempotent)."""
    return dataset if isinstance(dataset, CaptionTruth) else CaptionTruth(dataset)


def expand_token_batch(batch: Batch, generated: Tensor) -> Batch:
    """One row per generated token of each image of ``batch`` (a :class:`CaptionTruth` batch).

    ``generated`` ``[B, T]``: the model's greedy captions (``<pad>`` after ``<eos>``). Row ``(b, t)`` for every
    position up to and including ``<eos>``: id ``"<image id>#t<t>:<word>"``, target the token id, mask the
    named object's instance mask when the token is an object word equal to the true caption's word at
    that position (else empty: a function word names nothing, and a wrong object word names no drawn
    object), its box (``[0, 4]`` without truth), and extras ``caption`` (the generated caption),
    ``position``, ``function_word`` (not a colour or shape word: ``a``, ``and``, ``<eos>``), ``has_truth``,
    ``token`` (the token id) and ``image`` (the row's image in ``batch``).
    """
    extras = batch.extras or {}
    if "true_caption" not in extras or "object_masks" not in extras:
        raise DataError(
            'target = "tokens" needs batches of CaptionTruth samples (extras "true_caption" and "object_masks"); '
            f"got extras {sorted(extras)}. Use the dataset shapes_captions."
        )
    true, objects = extras["true_caption"].long(), extras["object_masks"].bool()
    t_len = true.shape[1]
    gen = torch.full_like(true, PAD_ID)
    n = min(t_len, generated.shape[1])
    gen[:, :n] = generated[:, :n].to(true.device)
    pos = torch.arange(t_len, device=true.device)
    eos = torch.where(gen == EOS_ID, pos, torch.full_like(gen, t_len - 1)).min(dim=1).values  # last kept position
    valid = pos[None] <= eos[:, None]
    object_word = OBJECT_WORD.to(true.device)[gen]
    truth = object_word & (gen == true) & valid
    rows, cols = torch.nonzero(valid, as_tuple=True)
    obj = ((cols - 1) // 4).clamp(0, objects.shape[1] - 1)
    masks = objects[rows, obj] & truth[rows, cols][:, None, None]
    ids = [f"{batch.ids[int(r)]}#t{int(c):02d}:{VOCAB[int(gen[r, c])]}" for r, c in zip(rows, cols, strict=True)]
    return Batch(
        images=batch.images[rows],
        targets=gen[rows, cols],
        ids=ids,
        masks=masks,
        boxes=[mask_to_box(m.cpu()).to(masks.device) for m in masks],  # [1, 4], or [0, 4] without truth
        labels=gen[rows, cols],
        extras={
            "caption": gen[rows],
            "position": cols,
            "function_word": ~object_word[rows, cols],
            "has_truth": truth[rows, cols],
            "token": gen[rows, cols],
            "image": rows,
        },
    )


class PerQueryTargets(Dataset):
    """Text-query view of :class:`ShapesCaptions` (``target = "text"``): item ``i`` is the list of
    :meth:`ShapesCaptions.query_samples` of image ``i``. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "query_samples"):
            raise DataError(
                f'target = "text" needs a dataset with text queries (shapes_captions), got {type(dataset).__name__}.'
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> list[Sample]:
        ds: Any = self.dataset
        return list(ds.query_samples(index))

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


__all__ = [
    "PerQueryTargets",
    "CaptionTruth",
    "OBJECT_WORD",
    "QUERIES",
    "caption_truth",
    "expand_token_batch",
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
