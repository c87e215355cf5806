"""``composites``: real objects pasted onto real backgrounds, with exact masks (after BAM, Yang & Kim 2019).

Yang & Kim, "Benchmarking Attribution Methods with Relative Feature Importance" (BAM, arXiv:1907.09701),
paste object cut-outs onto scene photos so that the object's pixels are known exactly and two models can be
trained on the same images to use different features (the object, or the scene). Here, all offline:

* **objects**: the hand-annotated objects of the shipped photos (``annotations/photos.json``, the dataset
  ``photos``), cut out of their photo along their polygon mask;
* **backgrounds**: the texture and scene photos shipped by scikit-image and scikit-learn, and object-free
  parts of the annotated photos (``annotations/composites.json``); a seeded square crop of one, at 224 px;
* every image pastes one object (``objects=2``: two of different classes, the target drawn last and
  larger) at a seeded position, size (longer side 100-180 px of 224) and horizontal flip. ``Sample.mask``
  is the target's visible pixels, ``Sample.boxes`` its tight box; :meth:`CompositesDataset.scene` gives
  every pasted instance's mask, box and class;
* ``Sample.extras``: ``contrast_target`` (the background's index: the class of the scene head, the contrast
  model of BAM's metrics, ``metrics/truth.py``) and ``background_image`` (the same image without the
  objects, for BAM's input dependence rate).

**Keep only what the model sees** (``keep="model"``, the default for ``split="test"``): a candidate image enters
the set only if efficientnet_lite0 ranks the target object's ImageNet class in its top :data:`KEEP_TOP_K`.
Which candidates pass is precomputed and shipped (``annotations/composites_kept.json``, written by
``python run_bench.py train-models composites_heads``, see ``models/bam.py``) for seed 0, one or two
objects, all objects and backgrounds; other settings need ``keep="all"``. ``label="imagenet"`` (default)
makes the target the object's ImageNet class (for ImageNet models), ``label="object"`` its index among the
object classes (for the object head, ``models/bam.py``).

Determinism: image ``i`` is a pure function of ``(seed, split, i)`` (numpy ``SeedSequence``; only integer
draws); the photos are decoded to uint8 and every resize is integer fixed-point arithmetic (block means and
8-bit bilinear weights), so an image is the same bytes on every CPU (``tests/test_cross_cpu.py``) and is
already quantised to 8 bits. Boxes follow the ``shapes`` convention (pixel edges, ``x2 = last column + 1``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ._common import ANNOTATIONS_DIR, imagenet_names, polygon_mask
from .base import CamDataset, Sample, register_dataset
from .photos import source_dir

#: Bump when the drawing changes: it is part of the heads' training hash and of the kept lists' key.
GENERATOR_VERSION = 1
SIZE = 224
SPLITS = {"train": 0, "test": 1}
#: efficientnet_lite0 must rank the pasted object's class among its top KEEP_TOP_K (``keep="model"``).
KEEP_TOP_K = 5
OBJECT_SIDE = (100, 180)  # longer side of the target object, pixels (inclusive range)
SECOND_SIDE = (64, 100)  # longer side of the second object (objects=2): always smaller than the target
CROP_FRACTION = (60, 100)  # side of the background crop, percent of the region's shorter side
KEPT_FILE = ANNOTATIONS_DIR / "composites_kept.json"


# -- integer image operations (the same bytes on every CPU) ------------------------------------------------
def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``i0, i1`` and 8-bit weights ``w1`` (of ``i1``, out of 256) of a bilinear resize with
    pixel centres aligned (``align_corners=False``): ``src = (o + 1/2) n_in / n_out - 1/2``, in integers."""
    o = np.arange(n_out, dtype=np.int64)
    num = (2 * o + 1) * n_in - n_out  # src = num / (2 n_out)
    den = 2 * n_out
    i0 = np.floor_divide(num, den)
    frac = num - i0 * den  # in [0, den)
    w1 = (frac * 256 + den // 2) // den
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    i0 = np.clip(i0, 0, n_in - 1)
    return i0, i1, w1


def _block_mean(a: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Integer mean (rounded half up) over ``fy x fx`` blocks of a ``[H,W,C]`` uint8 array (edge rows cut)."""
    h, w = (a.shape[0] // fy) * fy, (a.shape[1] // fx) * fx
    s = a[:h, :w].astype(np.int64).reshape(h // fy, fy, w // fx, fx, -1).sum(axis=(1, 3))
    return ((s + (fy * fx) // 2) // (fy * fx)).astype(np.uint8)


def resize_u8(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize a ``[H,W,C]`` uint8 image with integer arithmetic only: a block mean by the integer part of
    the shrink factor (anti-aliasing), then bilinear interpolation with 8-bit weights, rounded."""
    fy, fx = max(1, a.shape[0] // (2 * out_h)), max(1, a.shape[1] // (2 * out_w))
    if fy > 1 or fx > 1:
        a = _block_mean(a, fy, fx)
    y0, y1, wy = _axis_weights(a.shape[0], out_h)
    x0, x1, wx = _axis_weights(a.shape[1], out_w)
    v = a.astype(np.int64)
    rows = v[y0] * (256 - wy)[:, None, None] + v[y1] * wy[:, None, None]  # [out_h, W, C], scale 256
    out = rows[:, x0] * (256 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]  # scale 65536
    return ((out + 32768) >> 16).astype(np.uint8)


def resize_mask(m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest-neighbour resize of a ``[H,W]`` bool mask (source pixel holding each output centre)."""
    ys = ((2 * np.arange(out_h, dtype=np.int64) + 1) * m.shape[0]) // (2 * out_h)
    xs = ((2 * np.arange(out_w, dtype=np.int64) + 1) * m.shape[1]) // (2 * out_w)
    return m[ys][:, xs]


def tight_box(mask: np.ndarray) -> list[float]:
    """``[x1, y1, x2, y2]`` pixel edges of a non-empty ``[H,W]`` bool mask (``x2`` = last column + 1)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# -- assets ----------------------------------------------------------------------------------------------
@cache
def _read_rgb(source: str, file: str) -> np.ndarray:
    """A shipped photo as ``[H,W,3]`` uint8 (grey replicated), decoded once per process."""
    import skimage.io

    path = source_dir(source) / file
    try:
        a = np.asarray(skimage.io.imread(path))
    except Exception as e:  # any decoder failure: a DataError naming the file
        raise DataError(f"Cannot decode the shipped photo {path} ({source}): {e}") from e
    if a.dtype != np.uint8:
        raise DataError(f"The shipped photo {path} is {a.dtype}, expected 8-bit.")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


@dataclass(frozen=True)
class Cutout:
    """One annotated object cut out of its photo: ``rgb [h,w,3]`` uint8 of its box and ``mask [h,w]``."""

    id: str
    class_id: int
    rgb: np.ndarray
    mask: np.ndarray


@cache
def _annotations() -> tuple[list[dict], list[dict]]:
    with open(ANNOTATIONS_DIR / "photos.json", encoding="utf-8") as f:
        objects = json.load(f)["objects"]
    with open(ANNOTATIONS_DIR / "composites.json", encoding="utf-8") as f:
        backgrounds = json.load(f)["backgrounds"]
    return objects, backgrounds


def object_ids() -> list[str]:
    """The ids of every annotated object (``photos.json``), in file order."""
    return [o["id"] for o in _annotations()[0]]


def background_ids() -> list[str]:
    """The ids of every background (``composites.json``), in file order: the scene classes."""
    return [b["id"] for b in _annotations()[1]]


@cache
def _cutout(object_id: str) -> Cutout:
    obj = next(o for o in _annotations()[0] if o["id"] == object_id)
    img = _read_rgb(obj.get("source", "skimage"), obj["file"])
    h, w = img.shape[:2]
    mask = polygon_mask(obj["polygons"] if "polygons" in obj else [obj["polygon"]], h, w).numpy()
    x0, y0, x1, y1 = (int(v) for v in obj["box"])
    x1, y1 = min(x1, w), min(y1, h)
    return Cutout(object_id, int(obj["class_id"]), img[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy())


def _select(kind: str, value: str | Sequence[str], known: list[str]) -> list[str]:
    if isinstance(value, str):
        if value == "all":
            return list(known)
        value = [value]
    chosen = list(value)
    bad = [v for v in chosen if v not in known]
    if bad or not chosen:
        raise DataError(f"Unknown {kind} {bad or chosen} for the composites dataset; choose from {known} (or 'all').")
    return chosen


@dataclass
class CompositeScene:
    """Everything known about one composite: the image, the background alone, and every pasted instance."""

    image: np.ndarray  # [S,S,3] uint8
    background: np.ndarray  # [S,S,3] uint8: the same crop without objects
    background_index: int  # index into background_ids(): the scene class
    masks: list[np.ndarray]  # per instance, visible pixels [S,S] bool; the target first
    boxes: list[list[float]]  # per instance, tight xyxy box of the visible pixels
    objects: list[str]  # per instance, the object id
    class_ids: list[int]  # per instance, the ImageNet class


def _kept_key(seed: int, split: str, objects: int) -> str:
    return f"v{GENERATOR_VERSION}/seed{seed}/{split}/objects{objects}"


def shipped_kept(seed: int, split: str, objects: int) -> list[int] | None:
    """The shipped indices of the candidates efficientnet_lite0 sees (top-k), or None for another setting."""
    if not KEPT_FILE.is_file():
        return None
    with open(KEPT_FILE, encoding="utf-8") as f:
        doc = json.load(f)
    entry = doc.get("kept", {}).get(_kept_key(seed, split, objects))
    return None if entry is None else [int(i) for i in entry["indices"]]


@register_dataset("composites")
class CompositesDataset(CamDataset):
    """Object cut-outs of the annotated photos pasted onto shipped background photos (module docstring).

    n:           number of images (default: all kept ones with ``keep="model"``, 64 with ``keep="all"``).
    seed:        generator seed (image ``i`` is a function of ``(seed, split, i)``).
    objects:     objects pasted per image, 1 or 2 (the target is the larger one, drawn last).
    backgrounds: ``"all"`` or a list of background ids (``annotations/composites.json``).
    classes:     ``"all"`` or a list of object ids (``annotations/photos.json``) to paste.
    split:       ``"test"`` or ``"train"`` (disjoint seed streams; the heads train on ``train``).
    label:       ``"imagenet"`` (the object's ImageNet class) or ``"object"`` (its index among ``classes``).
    keep:        ``"model"``: only the candidates whose object efficientnet_lite0 ranks in its top 5 (shipped
                 list; seed 0, all objects and backgrounds); ``"all"``: every candidate.
    """

    has_masks = True
    has_boxes = True
    default_model = "efficientnet_lite0"
    mask_kind = "instance"
    synthetic = True
    offline = True

    def __init__(
        self,
        n: int | None = None,
        seed: int = 0,
        objects: int = 1,
        backgrounds: str | Sequence[str] = "all",
        classes: str | Sequence[str] = "all",
        split: str = "test",
        label: str = "imagenet",
        keep: str | None = None,
        *,
        root: str | None = None,
    ) -> None:
        super().__init__()
        if objects not in (1, 2):
            raise DataError(f"objects must be 1 or 2 (objects pasted per image); got {objects!r}.")
        if split not in SPLITS:
            raise DataError(f"split must be one of {list(SPLITS)}; got {split!r}.")
        if label not in ("imagenet", "object"):
            raise DataError(f"label must be 'imagenet' or 'object'; got {label!r}.")
        keep = keep if keep is not None else ("model" if split == "test" else "all")
        if keep not in ("model", "all"):
            raise DataError(f"keep must be 'model' or 'all'; got {keep!r}.")
        self.seed, self.split, self.n_objects, self.label, self.keep = int(seed), split, int(objects), label, keep
        self.object_names = _select("object", classes, object_ids())
        self.background_names = _select("background", backgrounds, background_ids())
        all_bg = background_ids()
        self.background_index = [all_bg.index(b) for b in self.background_names]
        classes_ok = self.object_names == object_ids() and self.background_names == all_bg
        if keep == "model":
            kept = shipped_kept(self.seed, split, self.n_objects) if classes_ok else None
            if kept is None:
                raise DataError(
                    f"No shipped list of the composites efficientnet_lite0 recognises for seed={seed}, "
                    f"split={split!r}, objects={objects}, classes={classes!r}, backgrounds={backgrounds!r} "
                    "(shipped: seed 0, every object and background). Pass keep='all' to use every candidate, "
                    "or compute the list with benchmark.models.bam.compute_kept."
                )
            if n is not None and n > len(kept):
                raise DataError(
                    f"n={n} exceeds the {len(kept)} shipped composites the model recognises; use n <= {len(kept)}."
                )
            self.indices = kept[: len(kept) if n is None else n]
        else:
            if n is not None and n < 0:
                raise DataError(f"n must be >= 0, got {n}.")
            self.indices = list(range(64 if n is None else n))
        # object classes: distinct ImageNet classes of the chosen objects (moped appears twice)
        self.imagenet_classes = sorted({_cutout(o).class_id for o in self.object_names})
        names = imagenet_names()
        if label == "imagenet":
            self.class_names = names
            self.num_classes = 1000
        else:
            self.class_names = [names[c] for c in self.imagenet_classes]
            self.num_classes = len(self.class_names)
        self.scene_names = list(all_bg)

    def __len__(self) -> int:
        return len(self.indices)

    def sample_id(self, i: int) -> str:
        return f"composite_{self.split}_{self.indices[i]:05d}"

    def item_name(self, i: int) -> str:
        """How failures name item ``i``: its id."""
        return self.sample_id(i)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], index]))

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        j = int(rng.integers(len(self.background_names)))
        bg = next(b for b in _annotations()[1] if b["id"] == self.background_names[j])
        img = _read_rgb(bg["source"], bg["file"])
        x0, y0, x1, y1 = (int(v) for v in bg["region"])
        x1, y1 = min(x1, img.shape[1]), min(y1, img.shape[0])
        short = min(x1 - x0, y1 - y0)
        side = int(rng.integers(short * CROP_FRACTION[0] // 100, short * CROP_FRACTION[1] // 100 + 1))
        left = x0 + int(rng.integers(0, x1 - x0 - side + 1))
        top = y0 + int(rng.integers(0, y1 - y0 - side + 1))
        crop = img[top : top + side, left : left + side]
        if int(rng.integers(2)):
            crop = crop[:, ::-1]
        return resize_u8(np.ascontiguousarray(crop), SIZE, SIZE), self.background_index[j]

    @staticmethod
    def _scaled(cut: Cutout, side: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        h, w = cut.mask.shape
        big = max(h, w)
        oh, ow = max(1, (h * side + big // 2) // big), max(1, (w * side + big // 2) // big)
        rgb, mask = resize_u8(cut.rgb, oh, ow), resize_mask(cut.mask, oh, ow)
        if flip:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        return rgb, mask

    def scene(self, index: int) -> CompositeScene:
        """The composite of candidate ``index`` (not the dataset position: see :attr:`indices`)."""
        rng = self._rng(index)
        background, bg_class = self._background(rng)
        first = self.object_names[int(rng.integers(len(self.object_names)))]
        ids = [first]
        if self.n_objects == 2:
            first_class = _cutout(first).class_id
            others = [o for o in self.object_names if _cutout(o).class_id != first_class]
            if not others:
                raise DataError("objects=2 needs objects of at least two classes; widen `classes`.")
            ids.append(others[int(rng.integers(len(others)))])
        sides = [int(rng.integers(OBJECT_SIDE[0], OBJECT_SIDE[1] + 1))]
        if self.n_objects == 2:
            sides.append(int(rng.integers(SECOND_SIDE[0], SECOND_SIDE[1] + 1)))
        pasted = []
        for oid, side in zip(ids, sides, strict=True):
            rgb, mask = self._scaled(_cutout(oid), side, bool(rng.integers(2)))
            pasted.append((rgb, mask))
        # positions: the target anywhere; the second object where its box misses the target's (20 tries)
        placed: list[tuple[int, int]] = []
        for k, (_, mask) in enumerate(pasted):
            h, w = mask.shape
            for _ in range(20):
                y, x = int(rng.integers(0, SIZE - h + 1)), int(rng.integers(0, SIZE - w + 1))
                if k == 0:
                    break
                ty, tx = placed[0]
                th, tw = pasted[0][1].shape
                if x + w <= tx or tx + tw <= x or y + h <= ty or ty + th <= y:
                    break
            placed.append((y, x))
        image = background.copy()
        full_masks = []
        for (_, mask), (y, x) in zip(pasted, placed, strict=True):
            m = np.zeros((SIZE, SIZE), dtype=bool)
            m[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
            full_masks.append(m)
        # draw the others first, the target last (on top): each mask is its visible pixels
        order = list(range(1, len(pasted))) + [0]
        for k in order:
            rgb, mask = pasted[k]
            y, x = placed[k]
            region = image[y : y + mask.shape[0], x : x + mask.shape[1]]
            region[mask] = rgb[mask]
        visible = [full_masks[0]] + [m & ~full_masks[0] for m in full_masks[1:]]
        return CompositeScene(
            image=image,
            background=background,
            background_index=bg_class,
            masks=visible,
            boxes=[tight_box(m) if m.any() else [0.0, 0.0, 0.0, 0.0] for m in visible],
            objects=ids,
            class_ids=[_cutout(o).class_id for o in ids],
        )

    def target_of(self, class_id: int) -> int:
        """The target index of ImageNet class ``class_id`` under this dataset's ``label``."""
        return class_id if self.label == "imagenet" else self.imagenet_classes.index(class_id)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"composites index {i} out of range for {len(self)} images")
        sc = self.scene(self.indices[i])
        t = self.target_of(sc.class_ids[0])

        def img(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div_(255.0)

        return Sample(
            image=img(sc.image),
            target=t,
            id=self.sample_id(i),
            mask=torch.from_numpy(sc.masks[0]),
            boxes=torch.tensor([sc.boxes[0]], dtype=torch.float32),
            label=t,
            extras={
                "contrast_target": torch.tensor(sc.background_index, dtype=torch.long),
                "background_image": img(sc.background),
            },
        )

    def images_and_labels(self, indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``[N,3,S,S]`` images in [0,1], target labels ``[N]`` and scene labels ``[N]`` (training the heads)."""
        idx = range(len(self)) if indices is None else indices
        scenes = [self.scene(self.indices[i]) for i in idx]
        x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.tensor([self.target_of(s.class_ids[0]) for s in scenes], dtype=torch.long)
        z = torch.tensor([s.background_index for s in scenes], dtype=torch.long)
        return x, y, z


__all__ = [
    "GENERATOR_VERSION",
    "KEEP_TOP_K",
    "CompositeScene",
    "CompositesDataset",
    "background_ids",
    "object_ids",
    "resize_mask",
    "resize_u8",
    "shipped_kept",
    "tight_box",
]
