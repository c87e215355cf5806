"""``shapes``: a procedurally generated benchmark whose ground truth is exact by construction.

Every image shows textured clutter (smooth colour noise or stripes), one **target** object of one of six
shape classes, and 0-2 smaller **distractor** objects of *other* classes (the target is always about twice
as large as any distractor: that is what tells the model which object the label refers to). Colours are drawn
independently of the class, so a model has to use shape. Because the distractors belong to other classes, a
class-discriminative map (e.g. Grad-CAM for the target class) can be told apart from a class-agnostic saliency map.

``shapes_shortcut`` adds a small class-coded **mark** (a square of a class-specific colour at a
class-specific place on the image border, far from the objects). A model trained on it with ``shortcut="aligned"``
learns to read the mark;
``shortcut="shuffled"`` (mark class drawn independently of the object) and ``shortcut="absent"`` prove
it. Its ground truth is the mark (``gt="mark"``, what the model really uses) or the object (``gt="object"``).

Conventions:

* image ``i`` is a pure function of ``(seed, split, i)`` (numpy ``SeedSequence([seed, split, i])``), so
  any shard can be generated on its own, in any order, in any process;
* ``split="train"`` and ``split="test"`` use disjoint seed streams;
* the mark is drawn from its own stream ``(seed, split, i, 1)``: ``shapes_shortcut`` with
  ``shortcut="absent"`` gives exactly the ``shapes`` image;
* boxes are ``[x1, y1, x2, y2]`` float pixel **edges**: pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``,
  so the tight box of a mask whose columns span ``c0..c1`` is ``x1=c0, x2=c1+1``. A pixel belongs to a
  box when its centre lies inside it. This convention is exact under resizing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from .base import CamDataset, Sample, register_dataset

#: Bump when the drawing changes: it is part of the synthetic models' training hash.
GENERATOR_VERSION = 1

SHAPE_CLASSES: tuple[str, ...] = ("disk", "square", "triangle", "ring", "cross", "bar")
SPLITS = {"train": 0, "test": 1}

# Geometry, as fractions of the image side S.
_BORDER = 0.15  # objects stay inside [BORDER*S, (1-BORDER)*S]; the border band holds the marks
# Object radii (circumscribed): the target is always clearly larger than every distractor, which is
# what makes it *the* object of the image (otherwise its class could not be told from a distractor's).
_TARGET_R = (0.13, 0.17)
_DISTRACTOR_R = (0.06, 0.085)
_MARK_SIZE = 0.06  # side of the shortcut mark
_MARK_OFFSET = 0.02  # distance of the mark from the image edge
_MIN_CONTRAST = 0.35  # L_inf distance between an object's colour and the background base colour
_PIXEL_NOISE = 0.03
# Objects are rotated by a multiple of 90 degrees plus a small jitter (radians): full rotation invariance
# would need far more training than the 2-minute CPU budget of the synthetic models allows.
_JITTER = 0.15

# Mark places for the 6 classes (x, y of the mark's top-left corner, in units of the free border span).
_MARK_PLACES = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.0), (0.5, 1.0))
# Mark colours per class (saturated primaries; object colours are uniform in the RGB cube). The class is
# coded twice, by place and colour: with global average pooling the colour is what a CNN reads easily.
_MARK_COLOURS = (
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0)
)


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of shape class ``cls`` in local coordinates (``u`` right, ``v`` up, radius 1)."""
    name = SHAPE_CLASSES[cls]
    if name == "disk":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if name == "triangle":  # equilateral, circumradius 1, inradius 0.5
        s = float(np.sqrt(3.0) / 2.0)
        return (v >= -0.5) & (s * u + 0.5 * v <= 0.5) & (-s * u + 0.5 * v <= 0.5)
    if name == "ring":
        d2 = u * u + v * v
        return (d2 <= 1.0) & (d2 >= 0.55**2)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.27) & (av <= 0.95)) | ((av <= 0.27) & (au <= 0.95))
    if name == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)
    raise ValueError(f"Unknown shape class {cls}.")


def mask_to_box(mask: Tensor) -> Tensor:
    """Tight ``[1,4]`` xyxy pixel-edge box of a boolean ``[H,W]`` mask (``[0,4]`` if the mask is empty)."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.tensor(
        [[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32
    )


@dataclass
class Scene:
    """Everything drawn into one image (what :class:`Sample` exposes, plus distractors and mark)."""

    image: Tensor  # [3,S,S] float in [0,1]
    label: int
    object_mask: Tensor  # [S,S] bool, exactly the target's visible pixels
    object_box: Tensor  # [1,4]
    distractor_classes: list[int] = field(default_factory=list)
    distractor_masks: list[Tensor] = field(default_factory=list)
    mark_class: Optional[int] = None
    mark_mask: Optional[Tensor] = None
    mark_box: Optional[Tensor] = None


class ShapesDataset(CamDataset):
    """Deterministic synthetic shapes with exact masks and boxes (see the module docstring).

    Args:
        n: number of images.
        seed: base seed; image ``i`` depends only on ``(seed, split, i)``.
        split: ``"train"`` or ``"test"`` (disjoint seed streams).
        image_size: side ``S`` of the square images (geometry scales with it).
        max_distractors: distractors per image are drawn uniformly from ``0..max_distractors``.
        shortcut: ``None`` (plain ``shapes``), ``"aligned"`` (mark of the object's class),
            ``"shuffled"`` (mark of a class drawn uniformly, independently of the object) or ``"absent"``.
        gt: which region ``Sample.mask``/``boxes`` hold: ``"object"`` or ``"mark"`` (only with a mark).
    """

    has_masks = True
    has_boxes = True
    num_classes = len(SHAPE_CLASSES)
    class_names = list(SHAPE_CLASSES)

    def __init__(
        self,
        n: int = 1000,
        seed: int = 0,
        split: Literal["train", "test"] = "test",
        image_size: int = 128,
        max_distractors: int = 2,
        shortcut: Optional[Literal["aligned", "shuffled", "absent"]] = None,
        gt: Literal["object", "mark"] = "object",
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}.")
        if int(image_size) < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {image_size}.")
        if not 0 <= int(max_distractors) <= len(SHAPE_CLASSES) - 1:
            raise ValueError(f"max_distractors must be in 0..{len(SHAPE_CLASSES) - 1}, got {max_distractors}.")
        if shortcut not in (None, "aligned", "shuffled", "absent"):
            raise ValueError(
                f"shortcut must be None, 'aligned', 'shuffled' or 'absent', got {shortcut!r}."
            )
        if gt not in ("object", "mark"):
            raise ValueError(f"gt must be 'object' or 'mark', got {gt!r}.")
        if gt == "mark" and shortcut in (None, "absent"):
            raise ValueError(
                f"gt='mark' needs a drawn mark, but shortcut={shortcut!r}. "
                "Use shortcut='aligned' or 'shuffled', or gt='object'."
            )
        self.n, self.seed, self.split = int(n), int(seed), split
        self.image_size, self.max_distractors = int(image_size), int(max_distractors)
        self.shortcut, self.gt = shortcut, gt
        s = self.image_size
        c = np.arange(s, dtype=np.float32) + 0.5  # pixel centres
        self._yy, self._xx = np.meshgrid(c, c, indexing="ij")
        self._weights: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def sample_id(self, index: int) -> str:
        return f"{self.split}-s{self.seed}-{index:06d}"

    # -- drawing ----------------------------------------------------------------------------------
    def _rng(self, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], index, stream]))

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.image_size
        base = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
        if rng.random() < 0.5:  # smooth colour noise: a coarse random grid, Gaussian-interpolated
            g = int(rng.integers(3, 9))
            coarse = rng.normal(0.0, 0.16, size=(3, g, g)).astype(np.float32)
            w = self._smooth_weights(g)  # [S,g]
            tex = np.einsum("yi,cij,xj->cyx", w, coarse, w, optimize=True)
        else:  # stripes of random period, orientation, phase and per-channel amplitude
            theta = float(rng.uniform(0, np.pi))
            period = float(rng.uniform(0.06, 0.25)) * s
            phase = float(rng.uniform(0, 2 * np.pi))
            amp = rng.uniform(0.04, 0.15, size=(3, 1, 1)).astype(np.float32)
            proj = self._xx * np.cos(theta) + self._yy * np.sin(theta)
            tex = amp * np.sin(2 * np.pi * proj / period + phase)[None]
        return base[:, None, None] + tex, base

    def _smooth_weights(self, g: int) -> np.ndarray:
        """Row-normalised Gaussian weights ``[S,g]`` from ``g`` knots to the ``S`` pixel centres."""
        if g not in self._weights:
            s = self.image_size
            knots = (np.arange(g) + 0.5) / g * s
            w = np.exp(-0.5 * ((self._xx[0][:, None] - knots[None]) / (0.6 * s / g)) ** 2)
            self._weights[g] = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
        return self._weights[g]

    def _object_colour(self, rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
        cand = rng.uniform(0.0, 1.0, size=(16, 3)).astype(np.float32)
        ok = np.abs(cand - base).max(axis=1) >= _MIN_CONTRAST
        if ok.any():
            return cand[int(np.argmax(ok))]
        return np.where(base > 0.5, base - 0.45, base + 0.45)  # guaranteed contrast

    def _place(self, rng: np.random.Generator, radii: list[float]) -> list[tuple[float, float]]:
        """Centres for non-overlapping discs of ``radii`` inside the central region (first = target).

        Candidates are drawn 64 at a time; an object that cannot be placed is dropped (never the target:
        it is placed first on an empty canvas).
        """
        s = self.image_size
        lo, hi = _BORDER * s, (1 - _BORDER) * s
        gap = 0.03 * s
        centres: list[tuple[float, float]] = []
        for r in radii:
            cand = rng.uniform(lo + r, hi - r, size=(64, 2))
            ok = np.ones(64, dtype=bool)
            for (cx, cy), r2 in zip(centres, radii, strict=False):  # the objects placed so far
                ok &= np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) >= r + r2 + gap
            if not ok.any():
                break
            centres.append(tuple(cand[int(np.argmax(ok))]))
        return centres

    def _draw_object(self, rng: np.random.Generator, cls: int, cx: float, cy: float, r: float) -> np.ndarray:
        theta = float(rng.integers(4)) * (np.pi / 2) + float(rng.uniform(-_JITTER, _JITTER))
        cx, cy, r = float(cx), float(cy), float(r)
        c, sn = np.cos(theta), np.sin(theta)
        dx, dy = (self._xx - cx) / r, (cy - self._yy) / r  # v points up
        u = dx * float(c) + dy * float(sn)
        v = -dx * float(sn) + dy * float(c)
        return _shape_mask(cls, u, v)

    def _mark_mask(self, cls: int) -> np.ndarray:
        s = self.image_size
        side = max(2, int(round(_MARK_SIZE * s)))
        off = int(round(_MARK_OFFSET * s))
        span = s - 2 * off - side
        px, py = _MARK_PLACES[cls]
        x0, y0 = off + int(round(px * span)), off + int(round(py * span))
        m = np.zeros((s, s), dtype=bool)
        m[y0 : y0 + side, x0 : x0 + side] = True
        return m

    def scene(self, index: int) -> Scene:
        """Draw image ``index`` with all its parts (target, distractors, mark)."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} images.")
        rng = self._rng(index)
        k = len(SHAPE_CLASSES)
        label = int(rng.integers(k))
        n_dis = int(rng.integers(self.max_distractors + 1))
        others = [c for c in range(k) if c != label]
        dis = [int(c) for c in rng.permutation(others)[:n_dis]]
        s = self.image_size
        radii = [float(rng.uniform(*_TARGET_R)) * s] + [float(r) * s for r in rng.uniform(*_DISTRACTOR_R, size=n_dis)]
        centres = self._place(rng, radii)
        img, base = self._background(rng)
        masks = []
        for cls, (cx, cy), r in zip([label] + dis, centres, radii, strict=False):  # unplaced ones dropped
            m = self._draw_object(rng, cls, cx, cy, r)
            img = np.where(m[None], self._object_colour(rng, base)[:, None, None], img)
            masks.append(m)
        img = img + rng.normal(0.0, _PIXEL_NOISE, size=img.shape).astype(np.float32)

        mark_cls = mark_mask = None
        if self.shortcut in ("aligned", "shuffled"):
            mrng = self._rng(index, stream=1)
            mark_cls = label if self.shortcut == "aligned" else int(mrng.integers(k))
            mark_mask = self._mark_mask(mark_cls)
            img = np.where(mark_mask[None], np.asarray(_MARK_COLOURS[mark_cls], dtype=np.float32)[:, None, None], img)

        obj = torch.from_numpy(masks[0])
        mm = None if mark_mask is None else torch.from_numpy(mark_mask)
        return Scene(
            image=torch.from_numpy(np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)),
            label=label,
            object_mask=obj,
            object_box=mask_to_box(obj),
            distractor_classes=dis[: len(centres) - 1],
            distractor_masks=[torch.from_numpy(m) for m in masks[1:]],
            mark_class=mark_cls,
            mark_mask=mm,
            mark_box=None if mm is None else mask_to_box(mm),
        )

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if index < 0:
            index += self.n
        sc = self.scene(index)
        if self.gt == "mark":
            mask, boxes = sc.mark_mask, sc.mark_box
        else:
            mask, boxes = sc.object_mask, sc.object_box
        return Sample(
            image=sc.image, target=sc.label, id=self.sample_id(index), mask=mask, boxes=boxes,
            label=sc.label,
        )

    def images_and_labels(self, indices: Optional[range | list[int]] = None) -> tuple[Tensor, Tensor]:
        """Stacked ``[N,3,S,S]`` images in [0,1] and ``[N]`` labels (training and quick evaluation)."""
        idx = range(self.n) if indices is None else indices
        scenes = [self.scene(int(i)) for i in idx]
        if not scenes:
            s = self.image_size
            return torch.zeros((0, 3, s, s)), torch.zeros((0,), dtype=torch.long)
        return torch.stack([s.image for s in scenes]), torch.tensor([s.label for s in scenes])


@register_dataset(
    "shapes", has_masks=True, has_boxes=True, default_model="shapes_cnn", num_classes=6, synthetic=True
)
def shapes(
    root: Optional[str] = None, n: Optional[int] = None, seed: int = 0, split: str = "test", **kw
) -> ShapesDataset:
    """Synthetic shapes in clutter with distractors (``root`` is ignored: nothing is read from disk)."""
    return ShapesDataset(n=1000 if n is None else n, seed=seed, split=split, **kw)  # type: ignore[arg-type]


@register_dataset(
    "shapes_shortcut",
    has_masks=True,
    has_boxes=True,
    default_model="shapes_shortcut_cnn",
    num_classes=6,
    synthetic=True,
)
def shapes_shortcut(
    root: Optional[str] = None,
    n: Optional[int] = None,
    seed: int = 0,
    split: str = "test",
    shortcut: str = "aligned",
    gt: Optional[str] = None,
    **kw,
) -> ShapesDataset:
    """Shapes plus a class-coded border mark; ground truth = the mark unless ``gt="object"``.

    ``gt`` defaults to ``"mark"`` when a mark is drawn and to ``"object"`` when ``shortcut="absent"``.
    """
    if gt is None:
        gt = "object" if shortcut == "absent" else "mark"
    return ShapesDataset(
        n=1000 if n is None else n, seed=seed, split=split, shortcut=shortcut, gt=gt, **kw  # type: ignore[arg-type]
    )
