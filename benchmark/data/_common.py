"""Helpers shared by the real-data loaders: image decoding, mask rasterisation, COCO RLE, subsets.

Nothing here executes or unpickles anything read from a dataset: images go through PIL, annotations
through ``json`` / ``xml.etree`` / ``csv``, and PNG label maps through PIL as integer arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, InputError
from .base import CamDataset, Sample

#: ``Sample.target`` value meaning "explain the model's own top-1 class" (the runner resolves it).
PREDICTED = -1

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
ANNOTATIONS_DIR = Path(__file__).resolve().parent / "annotations"


@cache
def imagenet_classes() -> tuple[list[str], list[str]]:
    """The 1000 ILSVRC-2012 ``(wnids, names)`` in the standard class-index order (sorted wnids)."""
    with open(ANNOTATIONS_DIR / "imagenet_classes.json", encoding="utf-8") as f:
        doc = json.load(f)
    return list(doc["wnids"]), list(doc["names"])


def imagenet_names() -> list[str]:
    return list(imagenet_classes()[1])


def check_image(path: str | os.PathLike) -> str | None:
    """Return None when ``path`` is a readable image file (header decodes), else the reason."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        return f"{p.name}: image file missing ({p})"
    try:
        if p.stat().st_size == 0:
            return f"{p.name}: empty file (0 bytes), not an image ({p})"
    except OSError as e:
        return f"{p.name}: unreadable ({type(e).__name__}: {e})"
    try:
        with Image.open(p) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"{p.name}: corrupt image ({type(e).__name__}: {e})"
    return None


def load_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file to ``[3,H,W]`` float32 in [0,1] (grey and RGBA become RGB).

    Raises :class:`DataError` naming the file if it is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise DataError(f"Image file {p.name} is missing ({p}).") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"Image file {p.name} is corrupt and cannot be decoded ({p}): {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_image_tensor(arr: np.ndarray) -> Tensor:
    """``[H,W]`` / ``[H,W,3|4]`` uint8 or float array -> ``[3,H,W]`` float32 in [0,1]."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    return t.float().div_(255.0) if a.dtype == np.uint8 else t.float().clamp_(0, 1)


def polygon_mask(polygons: Iterable[Sequence[float]], height: int, width: int) -> Tensor:
    """Rasterise polygons (flat ``[x0,y0,x1,y1,...]`` or ``[[x,y],...]``, pixel coordinates) to a
    ``[H,W]`` bool mask (union), with :func:`skimage.draw.polygon` (pixel centres inside)."""
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64)
        if pts.size % 2:
            raise DataError(f"A polygon needs (x, y) pairs; got {pts.size} coordinates.")
        pts = pts.reshape(-1, 2)
        if len(pts) < 3:
            continue
        rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape=(height, width))
        mask[rr, cc] = True
    return torch.from_numpy(mask)


def boxes_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """Union of xyxy pixel boxes as a ``[H,W]`` bool mask (pixel centres inside a box)."""
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) + 0.5
    b = boxes.float().view(-1, 4, 1, 1)
    inside = (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])
    return inside.any(0) if len(boxes) else torch.zeros(height, width, dtype=torch.bool)


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (the LEB128-like 6-bit ASCII code of ``maskApi.c``).

    Each count is written in 5-bit groups, low group first, as ``chr(48 + group | 0x20·more)``; the
    last group's bit 0x10 is the sign. From the fourth count on, a count is stored as the difference
    to the count two places before it.
    """
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise DataError("Truncated compressed RLE string.")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict, height: int | None = None, width: int | None = None) -> Tensor:
    """COCO run-length encoding -> ``[H,W]`` bool mask.

    ``rle = {"size": [h, w], "counts": [...] | "compressed string"}``; runs alternate 0s and 1s,
    starting with 0s, over the mask in column-major (Fortran) order.
    """
    h, w = (int(v) for v in rle.get("size", (height, width)))
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise DataError(f"RLE counts sum to {int(counts.sum())}, expected h*w = {h * w} (or negative run).")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return torch.from_numpy(flat.reshape(w, h).T.copy())


def coco_mask(segments: Iterable[Any], height: int, width: int) -> Tensor:
    """Union ``[H,W]`` bool mask of COCO segments: each one an RLE dict or a flat polygon ``[x0,y0,x1,y1,...]``."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for seg in segments:
        if isinstance(seg, dict):
            m = rle_decode(seg)
            if tuple(m.shape) != (height, width):
                raise DataError(f"RLE mask is {tuple(m.shape)}, image is {(height, width)}.")
            mask |= m
        else:
            mask |= polygon_mask([seg], height, width)
    return mask


def subset_indices(total: int, n: int | None, seed: int) -> list[int]:
    """All indices, or a seeded random subset of ``n`` of them kept in their original order."""
    if n is None or n >= total:
        return list(range(total))
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}.")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(total, generator=g)[:n].tolist())


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path} is not a directory. Expected layout:\n{layout}")
    return path


def first_existing(root: Path, candidates: Sequence[str], kind: str = "dir") -> Path | None:
    """The first ``root/candidate`` that exists as a directory (``kind="dir"``) or a file."""
    for c in candidates:
        p = root / c if c else root
        if (kind == "dir" and p.is_dir()) or (kind == "file" and p.is_file()):
            return p
    return None


def index_images(directory: Path) -> dict[str, Path]:
    """Map file stem -> path for every image under ``directory`` (recursively, sorted, first wins)."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                out.setdefault(os.path.splitext(f)[0], Path(dirpath) / f)
    return out


def largest_class(boxes: Tensor, labels: Sequence[int]) -> int:
    """The label of the largest box (area), first one on ties."""
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return int(labels[int(torch.argmax(areas))])


def resolve_target(
    label: int, target: str | int, class_map: dict | None = None, names: list[str] | None = None
) -> int | None:
    """The class to explain for a sample whose dataset label is ``label``.

    ``target="label"``: the dataset label itself, or ``class_map[label]`` / ``class_map[name]`` when a
    mapping to the model's classes is given (``None`` = unmapped, the sample is dropped).
    ``target="predicted"``: :data:`PREDICTED`, the model's own top-1 class. An int: that class.
    """
    if isinstance(target, int) and not isinstance(target, bool):
        return int(target)
    if target == "predicted":
        return PREDICTED
    if target != "label":
        raise DataError(f"target must be 'label', 'predicted' or a class index, got {target!r}.")
    if class_map is None:
        return int(label)
    if label in class_map:
        return int(class_map[label])
    if names is not None and names[label] in class_map:
        return int(class_map[names[label]])
    return None


# -- annotation parsing -------------------------------------------------------------------------------
def _text(element: Any, tag: str) -> str:
    """The text of child ``tag`` of an XML element; a missing child raises ValueError (malformed XML)."""
    text = element.findtext(tag) if element is not None else None
    if text is None:
        raise InputError(f"missing <{tag}>")
    return text


def parse_pascal_xml(path: Path) -> dict:
    """Parse a PASCAL VOC / ILSVRC annotation XML (``xml.etree``, no entity expansion of DTDs).

    Returns ``{"filename", "width", "height", "objects": [{"name", "box": [x0,y0,x1,y1], "difficult"}]}``;
    raises :class:`DataError` naming the file when it is missing or malformed.
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{Path(path).name}: unreadable annotation XML ({e})") from e
    try:
        size = root.find("size")
        w = int(float(_text(size, "width"))) if size is not None else 0
        h = int(float(_text(size, "height"))) if size is not None else 0
        objects = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            box = [float(_text(bb, k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append(
                {
                    "name": (obj.findtext("name") or "").strip(),
                    "box": box,
                    "difficult": (obj.findtext("difficult") or "0").strip() == "1",
                }
            )
    except (AttributeError, TypeError, ValueError) as e:
        raise DataError(f"{Path(path).name}: malformed annotation XML ({type(e).__name__}: {e})") from e
    return {"filename": root.findtext("filename"), "width": w, "height": h, "objects": objects}


# -- a dataset over pre-parsed records ----------------------------------------------------------------
class RecordDataset(CamDataset):
    """Samples described by records parsed up front; images (and masks) are decoded lazily.

    A record is a dict with ``path`` (image file), ``id``, ``target``, ``label``, ``boxes`` (``[K,4]``
    float tensor or None) and ``mask``: None, ``("boxes",)`` (union of the boxes),
    ``("label_png", path, value)`` (pixels of a PNG label map equal to ``value``) or
    ``("coco", [segmentation, ...])`` (COCO polygons / RLE, union). Records are plain data so the
    dataset pickles to worker processes.

    ``verify=True`` opens every image header at construction: missing, empty or undecodable files are
    dropped and listed in :attr:`errors` (``"id: reason"``; the runner reports them in ``run.json``,
    ``failures.csv`` and the terminal summary). A file that only fails later, when fully decoded, raises
    :class:`DataError` from ``__getitem__`` naming it; the batch builder skips it and records it once
    (named by :meth:`item_name`).
    """

    def __init__(self, records: list[dict], n: int | None, seed: int, verify: bool = True) -> None:
        super().__init__()
        self.records = [records[i] for i in subset_indices(len(records), n, seed)]
        if verify:
            kept = []
            for rec in self.records:
                reason = check_image(rec["path"])
                if reason is None:
                    kept.append(rec)
                else:
                    self.errors.append(f"{rec['id']}: {reason.split(': ', 1)[-1]}")
            self.records = kept

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    def item_name(self, i: int) -> str:
        """How failures name item ``i``: its id (the batch builder records each failure once, by it)."""
        return str(self.records[i]["id"])

    def __getitem__(self, i: int) -> Sample:
        rec = self.records[i]
        image = load_image(rec["path"])
        h, w = image.shape[-2:]
        mask = self._mask(rec, h, w)
        return Sample(
            image=image,
            target=int(rec["target"]),
            id=rec["id"],
            mask=mask,
            boxes=rec.get("boxes"),
            label=rec.get("label"),
        )

    @staticmethod
    def _mask(rec: dict, h: int, w: int) -> Tensor | None:
        spec = rec.get("mask")
        if spec is None:
            return None
        kind = spec[0]
        if kind == "boxes":
            return boxes_mask(rec["boxes"], h, w)
        if kind == "label_png":
            from PIL import Image

            try:
                with Image.open(spec[1]) as im:
                    labels = np.asarray(im)
            except (OSError, ValueError) as e:
                raise DataError(f"{Path(spec[1]).name}: unreadable segmentation PNG ({e})") from e
            if labels.shape[:2] != (h, w):
                raise DataError(f"{Path(spec[1]).name}: segmentation is {labels.shape[:2]}, image is {(h, w)}.")
            return torch.from_numpy(labels == spec[2])
        if kind == "coco":
            return coco_mask(spec[1], h, w)
        raise DataError(f"Unknown mask kind {kind!r}.")
