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

``scene="clutter"`` (harder scenes, opt-in; ``scene="simple"``, the default, is the generator above,
unchanged and reproducible) draws 1-3 **instances** of the target class of varied size (radius 0.09-0.15 of
the side) anywhere in the image (off-centre: the image centre is no better a guess than any other place),
1-3 distractors of other classes (each smaller than the smallest target instance, so the target class is
the class with the most area: what a CNN with global average pooling reads), on denser clutter (colour
noise *and* stripes, plus thin random strokes). Ground truth is per instance:
``Sample.mask`` is the union of the target instances, ``Sample.boxes`` one box per instance, and
:meth:`ShapesDataset.scene` exposes every instance's and distractor's mask.

Model truth (``Sample.extras``, used by the ``truth`` metric family): with a mark drawn, ``truth_mask`` is
the mark (what a model trained with ``shortcut="aligned"`` provably reads), ``moved_image`` the same image
with the first distractor moved elsewhere (NaN-filled when the image has no distractor) and
``moved_region`` the union of that distractor's old and new pixels.

Conventions:

* image ``i`` is a pure function of ``(seed, split, i)`` (numpy ``SeedSequence([seed, split, i])``), so
  any shard can be generated on its own, in any order, in any process;
* every image is the same on every machine: textures are computed in float64 (numpy's float32 ``sin``/``exp``
  kernels and BLAS give CPU-dependent last bits) and cast to float32 once, and the finished image is
  quantised to 8 bits (``k/255``), as a stored photo is;
* ``split="train"`` and ``split="test"`` use disjoint seed streams;
* the mark is drawn from its own stream ``(seed, split, i, 1)``: ``shapes_shortcut`` with
  ``shortcut="absent"`` gives exactly the ``shapes`` image;
* boxes are ``[x1, y1, x2, y2]`` float pixel **edges**: pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``,
  so the tight box of a mask whose columns span ``c0..c1`` is ``x1=c0, x2=c1+1``. A pixel belongs to a
  box when its centre lies inside it. This convention is exact under resizing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .base import CamDataset, Sample, register_dataset

#: Bump when the drawing changes: it is part of the synthetic models' training hash.
GENERATOR_VERSION = 2
#: Version of the ``scene="clutter"`` drawing (part of the training hash of models trained on it).
CLUTTER_VERSION = 2
SCENES = ("simple", "clutter")

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
# scene="clutter": target instances, distractors relative to the smallest instance, strokes, margins.
_CL_TARGET_R = (0.09, 0.15)
_CL_N_TARGETS = (1, 2, 3)
_CL_P_TARGETS = (0.4, 0.35, 0.25)
_CL_DISTRACTOR_SCALE = (0.45, 0.6)
_CL_MAX_DISTRACTORS = 3
_CL_STROKES = (4, 12)

# Mark places for the 6 classes (x, y of the mark's top-left corner, in units of the free border span).
_MARK_PLACES = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.0), (0.5, 1.0))
# Mark colours per class (saturated primaries; object colours are uniform in the RGB cube). The class is
# coded twice, by place and colour: with global average pooling the colour is what a CNN reads easily.
_MARK_COLOURS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0))


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
    raise InputError(f"Unknown shape class {cls}.")


def quantize8(img: np.ndarray) -> np.ndarray:
    """``img`` clipped to [0,1] and rounded to 8 bits (float32 ``k/255``), as a photo would be stored."""
    return np.ascontiguousarray(np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0, dtype=np.float32)


def place_centres(
    rng: np.random.Generator,
    radii: list[float],
    size: int,
    *,
    margin: float,
    gap: float,
    candidates: int,
    min_dx: float = 0.0,
) -> list[tuple[float, float]]:
    """Centres of non-overlapping circles of ``radii`` (pixels) inside a ``size``-px square, by rejection:
    per circle ``candidates`` uniform draws inside ``[margin*size + r, (1-margin)*size - r]``, the first that
    keeps ``gap*size`` px from every placed circle and ``min_dx*size`` px horizontally from its centre;
    stops (fewer centres) at the first circle with no such candidate. One ``rng.uniform`` call of shape
    ``[candidates, 2]`` per circle tried, so the random stream depends only on the arguments."""
    lo, hi, sep, dx = margin * size, (1 - margin) * size, gap * size, min_dx * size
    out: list[tuple[float, float]] = []
    for r in radii:
        cand = rng.uniform(lo + r, hi - r, size=(candidates, 2))
        ok = np.ones(candidates, dtype=bool)
        for (cx, cy), r2 in zip(out, radii, strict=False):  # out: the centres of radii[:len(out)]
            ok &= np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) >= r + r2 + sep
            if dx > 0:
                ok &= np.abs(cand[:, 0] - cx) >= dx
        if not ok.any():
            break
        out.append(tuple(cand[int(np.argmax(ok))]))
    return out


def mask_to_box(mask: Tensor) -> Tensor:
    """Tight ``[1,4]`` xyxy pixel-edge box of a boolean ``[H,W]`` mask (``[0,4]`` if the mask is empty)."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32)


@dataclass
class Scene:
    """Everything drawn into one image (what :class:`Sample` exposes, plus distractors and mark)."""

    image: Tensor  # [3,S,S] float in [0,1]
    label: int
    object_mask: Tensor  # [S,S] bool, exactly the target's visible pixels
    object_box: Tensor  # [1,4]
    distractor_classes: list[int] = field(default_factory=list)
    distractor_masks: list[Tensor] = field(default_factory=list)
    mark_class: int | None = None
    mark_mask: Tensor | None = None
    mark_box: Tensor | None = None
    instance_masks: list[Tensor] = field(default_factory=list)  # every target instance (first = object_mask's)
    instance_boxes: Tensor | None = None  # [K,4], one box per target instance


@register_dataset("shapes")
class ShapesDataset(CamDataset):
    """Deterministic synthetic shapes with exact masks and boxes (see the module docstring); the dataset
    ``shapes``.

    Args:
        n: number of images (None: 1000).
        seed: base seed; image ``i`` depends only on ``(seed, split, i)``.
        split: ``"train"`` or ``"test"`` (disjoint seed streams).
        image_size: side ``S`` of the square images (geometry scales with it).
        max_distractors: distractors per image are drawn uniformly from ``0..max_distractors``.
        shortcut: ``None`` (plain ``shapes``), ``"aligned"`` (mark of the object's class),
            ``"shuffled"`` (mark of a class drawn uniformly, independently of the object) or ``"absent"``.
        gt: which region ``Sample.mask``/``boxes`` hold: ``"object"`` or ``"mark"`` (only with a mark).
        scene: ``"simple"`` (one target, the reproducible default) or ``"clutter"`` (several target
            instances, distractors, off-centre, denser clutter; see the module docstring).
        root: ignored (nothing is read from disk; accepted so that ``--data-root`` applies to every suite).
    """

    has_masks = True
    has_boxes = True
    num_classes = len(SHAPE_CLASSES)
    class_names = list(SHAPE_CLASSES)
    default_model = "shapes_cnn"
    synthetic = True

    def __init__(
        self,
        n: int | None = 1000,
        seed: int = 0,
        split: Literal["train", "test"] = "test",
        image_size: int = 128,
        max_distractors: int = 2,
        shortcut: Literal["aligned", "shuffled", "absent"] | None = None,
        gt: Literal["object", "mark"] = "object",
        scene: Literal["simple", "clutter"] = "simple",
        *,
        root: str | None = None,
    ) -> None:
        super().__init__()
        n = 1000 if n is None else n
        if scene not in SCENES:
            raise InputError(f"scene must be one of {SCENES}, got {scene!r}. 'simple' is the default generator.")
        if scene == "clutter" and shortcut is not None:
            raise InputError(
                f"scene='clutter' has no shortcut marks (got shortcut={shortcut!r}); use scene='simple' for "
                "shapes_shortcut."
            )
        if split not in SPLITS:
            raise InputError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
        if int(n) < 0:
            raise InputError(f"n must be >= 0, got {n}.")
        if int(image_size) < 32:
            raise InputError(f"image_size must be >= 32 pixels, got {image_size}.")
        if not 0 <= int(max_distractors) <= len(SHAPE_CLASSES) - 1:
            raise InputError(f"max_distractors must be in 0..{len(SHAPE_CLASSES) - 1}, got {max_distractors}.")
        if shortcut not in (None, "aligned", "shuffled", "absent"):
            raise InputError(f"shortcut must be None, 'aligned', 'shuffled' or 'absent', got {shortcut!r}.")
        if gt not in ("object", "mark"):
            raise InputError(f"gt must be 'object' or 'mark', got {gt!r}.")
        if gt == "mark" and shortcut in (None, "absent"):
            raise InputError(
                f"gt='mark' needs a drawn mark, but shortcut={shortcut!r}. "
                "Use shortcut='aligned' or 'shuffled', or gt='object'."
            )
        self.n, self.seed, self.split = int(n), int(seed), split
        self.image_size, self.max_distractors = int(image_size), int(max_distractors)
        self.shortcut, self.gt, self.scene_kind = shortcut, gt, scene
        s = self.image_size
        c = np.arange(s, dtype=np.float32) + 0.5  # pixel centres
        self._yy, self._xx = np.meshgrid(c, c, indexing="ij")
        self._weights: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def sample_id(self, index: int) -> str:
        prefix = "" if self.scene_kind == "simple" else "clutter-"
        return f"{prefix}{self.split}-s{self.seed}-{index:06d}"

    # -- drawing ----------------------------------------------------------------------------------
    def _rng(self, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], index, stream]))

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Textured background ``[3,S,S]`` float32 and its base colour.

        The texture is computed in float64 (numpy's float32 ``sin``/``exp`` kernels and BLAS differ by an
        ULP between CPUs) and cast to float32 once, so it is the same on every machine.
        """
        s = self.image_size
        base = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
        if rng.random() < 0.5:  # smooth colour noise: a coarse random grid, Gaussian-interpolated
            g = int(rng.integers(3, 9))
            coarse = rng.normal(0.0, 0.16, size=(3, g, g)).astype(np.float32).astype(np.float64)
            w = self._smooth_weights(g)  # [S,g] float64
            tex = np.einsum("yi,cij,xj->cyx", w, coarse, w, optimize=False)  # no BLAS: a fixed summation order
        else:  # stripes of random period, orientation, phase and per-channel amplitude
            theta = float(rng.uniform(0, np.pi))
            period = float(rng.uniform(0.06, 0.25)) * s
            phase = float(rng.uniform(0, 2 * np.pi))
            amp = rng.uniform(0.04, 0.15, size=(3, 1, 1)).astype(np.float32).astype(np.float64)
            c = np.arange(s, dtype=np.float64) + 0.5
            proj = c[None, :] * np.cos(theta) + c[:, None] * np.sin(theta)
            tex = amp * np.sin(2 * np.pi * proj / period + phase)[None]
        return base[:, None, None] + tex.astype(np.float32), base

    def _smooth_weights(self, g: int) -> np.ndarray:
        """Row-normalised Gaussian weights ``[S,g]`` (float64) from ``g`` knots to the ``S`` pixel centres."""
        if g not in self._weights:
            s = self.image_size
            knots = (np.arange(g) + 0.5) / g * s
            c = np.arange(s, dtype=np.float64) + 0.5
            w = np.exp(-0.5 * ((c[:, None] - knots[None]) / (0.6 * s / g)) ** 2)
            self._weights[g] = w / w.sum(axis=1, keepdims=True)
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

    def scene(self, index: int, move_distractor: bool = False, draw_mark: bool = True) -> Scene:
        """Draw image ``index`` with all its parts (target, distractors, mark).

        ``move_distractor``: the same image with the first distractor at another free place (drawn from
        stream 2; everything else, pixel noise included, unchanged). ``draw_mark=False``: the same image
        without the mark.
        """
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} images.")
        if self.scene_kind == "clutter":
            return self._clutter_scene(index, move_distractor)
        rng = self._rng(index)
        k = len(SHAPE_CLASSES)
        label = int(rng.integers(k))
        n_dis = int(rng.integers(self.max_distractors + 1))
        others = [c for c in range(k) if c != label]
        dis = [int(c) for c in rng.permutation(others)[:n_dis]]
        s = self.image_size
        radii = [float(rng.uniform(*_TARGET_R)) * s] + [float(r) * s for r in rng.uniform(*_DISTRACTOR_R, size=n_dis)]
        centres = self._place(rng, radii)
        if move_distractor and len(centres) > 1:
            centres[1] = self._move(self._rng(index, stream=2), centres, radii, 1)
        img, base = self._background(rng)
        masks = []
        for cls, (cx, cy), r in zip([label] + dis, centres, radii, strict=False):  # unplaced ones dropped
            m = self._draw_object(rng, cls, cx, cy, r)
            img = np.where(m[None], self._object_colour(rng, base)[:, None, None], img)
            masks.append(m)
        img = img + rng.normal(0.0, _PIXEL_NOISE, size=img.shape).astype(np.float32)

        mark_cls = mark_mask = None
        if self.shortcut in ("aligned", "shuffled") and draw_mark:
            mrng = self._rng(index, stream=1)
            mark_cls = label if self.shortcut == "aligned" else int(mrng.integers(k))
            mark_mask = self._mark_mask(mark_cls)
            img = np.where(mark_mask[None], np.asarray(_MARK_COLOURS[mark_cls], dtype=np.float32)[:, None, None], img)

        obj = torch.from_numpy(masks[0])
        mm = None if mark_mask is None else torch.from_numpy(mark_mask)
        return Scene(
            image=torch.from_numpy(quantize8(img)),
            label=label,
            object_mask=obj,
            object_box=mask_to_box(obj),
            distractor_classes=dis[: len(centres) - 1],
            distractor_masks=[torch.from_numpy(m) for m in masks[1:]],
            mark_class=mark_cls,
            mark_mask=mm,
            mark_box=None if mm is None else mask_to_box(mm),
            instance_masks=[obj],
            instance_boxes=mask_to_box(obj),
        )

    def _move(
        self,
        rng: np.random.Generator,
        centres: list[tuple[float, float]],
        radii: list[float],
        j: int,
        lo: float | None = None,
        hi: float | None = None,
    ) -> tuple[float, float]:
        """A new centre for object ``j``, clear of the others and at least two radii from where it was."""
        s = self.image_size
        lo = _BORDER * s if lo is None else lo
        hi = (1 - _BORDER) * s if hi is None else hi
        r = radii[j]
        cand = rng.uniform(lo + r, hi - r, size=(256, 2))
        ok = np.hypot(cand[:, 0] - centres[j][0], cand[:, 1] - centres[j][1]) >= 2 * r
        for k, ((cx, cy), r2) in enumerate(zip(centres, radii, strict=False)):
            if k != j:
                ok &= np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) >= r + r2 + 0.03 * s
        return tuple(cand[int(np.argmax(ok))]) if ok.any() else centres[j]

    # -- scene="clutter" ----------------------------------------------------------------------------
    def _strokes(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        """Thin random line segments (1-1.5 px wide, 0.05-0.2 of the side long) of random colours."""
        s = self.image_size
        for _ in range(int(rng.integers(*_CL_STROKES))):
            x0, y0 = rng.uniform(0, s, size=2)
            ang = float(rng.uniform(0, np.pi))
            length = float(rng.uniform(0.05, 0.2)) * s
            half_w = float(rng.uniform(0.5, 0.75))
            dx, dy = np.cos(ang), np.sin(ang)
            t = (self._xx - x0) * dx + (self._yy - y0) * dy
            d = np.abs(-(self._xx - x0) * dy + (self._yy - y0) * dx)
            m = (d <= half_w) & (np.abs(t) <= length / 2)
            img = np.where(m[None], rng.uniform(0, 1, size=3).astype(np.float32)[:, None, None], img)
        return img

    def _clutter_scene(self, index: int, move_distractor: bool = False) -> Scene:
        rng = self._rng(index)
        s, k = self.image_size, len(SHAPE_CLASSES)
        label = int(rng.integers(k))
        n_t = int(rng.choice(_CL_N_TARGETS, p=_CL_P_TARGETS))
        n_dis = int(rng.integers(1, _CL_MAX_DISTRACTORS + 1))
        dis = [int(c) for c in rng.permutation([c for c in range(k) if c != label])[:n_dis]]
        rt = [float(r) * s for r in rng.uniform(*_CL_TARGET_R, size=n_t)]
        rd = [float(r) * min(rt) for r in rng.uniform(*_CL_DISTRACTOR_SCALE, size=n_dis)]
        radii = rt + rd
        margin = 0.02 * s
        centres: list[tuple[float, float]] = []
        for r in radii:  # anywhere in the image (no border band), disjoint with a gap
            cand = rng.uniform(margin + r, s - margin - r, size=(64, 2))
            ok = np.ones(64, dtype=bool)
            for (cx, cy), r2 in zip(centres, radii, strict=False):
                ok &= np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) >= r + r2 + 0.03 * s
            centres.append(tuple(cand[int(np.argmax(ok))]) if ok.any() else (np.nan, np.nan))
        placed = [i for i, c in enumerate(centres) if not np.isnan(c[0])]
        if move_distractor and n_t in placed and n_t < len(centres):
            centres[n_t] = self._move(self._rng(index, stream=2), centres, radii, n_t, 0.0, float(s))
        img, base = self._background(rng)
        img2, base2 = self._background(rng)  # a second texture on top of the first
        img = img + (img2 - base2[:, None, None])
        img = self._strokes(rng, img)
        classes = [label] * n_t + dis
        masks: list[np.ndarray | None] = []
        for i, (cls, (cx, cy), r) in enumerate(zip(classes, centres, radii, strict=False)):
            colour = self._object_colour(rng, base)
            if i not in placed:
                masks.append(None)
                continue
            m = self._draw_object(rng, cls, cx, cy, r)
            img = np.where(m[None], colour[:, None, None], img)
            masks.append(m)
        img = img + rng.normal(0.0, _PIXEL_NOISE, size=img.shape).astype(np.float32)
        inst = [torch.from_numpy(m) for m in masks[:n_t] if m is not None]
        union = torch.stack(inst).any(dim=0)
        boxes = torch.cat([mask_to_box(m) for m in inst])
        dmasks = [(c, torch.from_numpy(m)) for c, m in zip(dis, masks[n_t:], strict=False) if m is not None]
        return Scene(
            image=torch.from_numpy(quantize8(img)),
            label=label,
            object_mask=union,
            object_box=boxes,
            distractor_classes=[c for c, _ in dmasks],
            distractor_masks=[m for _, m in dmasks],
            instance_masks=inst,
            instance_boxes=boxes,
        )

    def extras(self, index: int, sc: Scene | None = None) -> dict[str, Tensor]:
        """Model-truth tensors of image ``index`` (see the module docstring); empty without a mark."""
        if self.shortcut not in ("aligned", "shuffled"):
            return {}
        sc = sc if sc is not None else self.scene(index)
        moved = self.scene(index, move_distractor=True)
        s = self.image_size
        if sc.distractor_masks:
            moved_image = moved.image
            region = sc.distractor_masks[0] | moved.distractor_masks[0]
        else:
            moved_image = torch.full((3, s, s), float("nan"))
            region = torch.zeros((s, s), dtype=torch.bool)
        assert sc.mark_mask is not None  # shortcut scenes always draw the mark
        return {
            "truth_mask": sc.mark_mask,
            "unmarked_image": self.scene(index, draw_mark=False).image,
            "moved_image": moved_image,
            "moved_region": region,
        }

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
            image=sc.image,
            target=sc.label,
            id=self.sample_id(index),
            mask=mask,
            boxes=boxes,
            label=sc.label,
            extras=self.extras(index, sc),
        )

    def images_and_labels(self, indices: range | list[int] | None = None) -> tuple[Tensor, Tensor]:
        """Stacked ``[N,3,S,S]`` images in [0,1] and ``[N]`` labels (training and quick evaluation)."""
        idx = range(self.n) if indices is None else indices
        scenes = [self.scene(int(i)) for i in idx]
        if not scenes:
            s = self.image_size
            return torch.zeros((0, 3, s, s)), torch.zeros((0,), dtype=torch.long)
        return torch.stack([s.image for s in scenes]), torch.tensor([s.label for s in scenes])


@register_dataset("shapes_shortcut")
class ShapesShortcut(ShapesDataset):
    """``shapes`` plus a class-coded border mark (the dataset ``shapes_shortcut``); ground truth = the mark
    unless ``gt="object"``.

    ``gt`` defaults to ``"mark"`` when a mark is drawn and to ``"object"`` when ``shortcut="absent"``; the
    other arguments are :class:`ShapesDataset`'s.
    """

    default_model = "shapes_shortcut_cnn"

    def __init__(
        self,
        n: int | None = 1000,
        seed: int = 0,
        split: Literal["train", "test"] = "test",
        shortcut: Literal["aligned", "shuffled", "absent"] | None = "aligned",
        gt: Literal["object", "mark"] | None = None,
        image_size: int = 128,
        max_distractors: int = 2,
        scene: Literal["simple", "clutter"] = "simple",
        *,
        root: str | None = None,
    ) -> None:
        if gt is None:
            gt = "object" if shortcut == "absent" else "mark"
        super().__init__(
            n=n,
            seed=seed,
            split=split,
            image_size=image_size,
            max_distractors=max_distractors,
            shortcut=shortcut,
            gt=gt,
            scene=scene,
        )
