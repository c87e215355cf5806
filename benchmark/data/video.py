"""``clips``: short synthetic videos with a moving object and per-frame masks; ``video_folder``: real videos.

``clips``: every item is ``T`` frames of a static textured background (smooth colour noise, fresh pixel noise
per frame) in which one **object** (a ``disk``, ``square``, ``triangle`` or ``cross`` of the ``shapes``
drawing, colour independent of the class) moves on a straight line. It is visible only in a contiguous run
of frames (it enters late or leaves early), so that *when* it is there is part of the ground truth. One
smaller static **distractor** of another class may sit in every frame. ``Sample.image`` is ``[3,T,H,W]``
in [0,1] and ``Sample.mask`` the object's exact ``[T,H,W]`` pixels (empty in the frames without it); the
box is the ``[1,6]`` space-time box ``x1,y1,t1,x2,y2,t2`` (pixel and frame edges). Item ``i`` is a pure
function of ``(seed, split, i)``.

``video_folder``: ``root/CLASS/CLIP/`` folders of frames (``*.png``/``*.jpg``, sorted by name) or
``root/CLASS/CLIP.mp4`` (or any container PyAV reads) video files, with optional per-frame masks in
``root/CLASS/CLIP.masks/`` (one image per frame, non-zero = object). ``CLASS`` is a class index (a folder
named ``0``, ``1``...) or, with ``classes=[...]``, a class name. ``frames`` frames are sampled evenly over
the clip. A corrupt or unreadable frame or file raises :class:`~benchmark.errors.DataError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from ..errors import DataError, InputError
from ._common import IMAGE_EXTENSIONS, subset_indices
from .base import CamDataset, Sample, register_dataset
from .synthetic import SHAPE_CLASSES, _shape_mask
from .volumetric import volume_box

#: Bump when the drawing changes.
CLIP_GENERATOR_VERSION = 1

CLIP_CLASSES: tuple[str, ...] = ("disk", "square", "triangle", "cross")
_SHAPE_INDEX = tuple(SHAPE_CLASSES.index(c) for c in CLIP_CLASSES)
SPLITS = {"train": 0, "test": 1}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def clip_box(mask: Tensor) -> Tensor:
    """Tight ``[1,6]`` ``x1,y1,t1,x2,y2,t2`` edge box of a ``[T,H,W]`` mask (``[0,6]`` if empty)."""

    return volume_box(mask)


def render_clip(
    rng: np.random.Generator, frames: int, size: int, distractor: bool
) -> tuple[np.ndarray, int, np.ndarray]:
    """One clip: ``(frames [T,3,S,S] float32 in [0,1], class, masks [T,S,S] bool)``."""
    t, s = frames, size
    bg = np.stack([gaussian_filter(rng.standard_normal((s, s)), 3.0) for _ in range(3)])
    bg = 0.5 + 0.15 * bg / (bg.std() + 1e-8)
    base_colour = bg.mean(axis=(1, 2))
    yy, xx = np.meshgrid(np.arange(s) + 0.5, np.arange(s) + 0.5, indexing="ij")

    def colour() -> np.ndarray:
        for _ in range(50):
            c = rng.uniform(0, 1, 3)
            if np.abs(c - base_colour).max() >= 0.35:
                return c
        return 1.0 - base_colour

    def shape(cls: int, cy: float, cx: float, r: float, rot: float) -> np.ndarray:
        u, v = (xx - cx) / r, (cy - yy) / r
        cu, su = np.cos(rot), np.sin(rot)
        return _shape_mask(_SHAPE_INDEX[cls], cu * u + su * v, -su * u + cu * v)

    cls = int(rng.integers(len(CLIP_CLASSES)))
    r = float(rng.uniform(0.16, 0.2)) * s
    rot = float(rng.integers(4)) * np.pi / 2 + float(rng.uniform(-0.15, 0.15))
    lo, hi = r + 1, s - r - 1
    start, end = rng.uniform(lo, hi, 2), rng.uniform(lo, hi, 2)
    length = int(rng.integers((t + 1) // 2, t + 1))  # visible in a run of >= T/2 frames
    first = int(rng.integers(0, t - length + 1))
    img = np.repeat(bg[None], t, axis=0)
    if distractor:
        dc = int(rng.choice([c for c in range(len(CLIP_CLASSES)) if c != cls]))
        rd = float(rng.uniform(0.08, 0.1)) * s
        dpos = rng.uniform(rd + 1, s - rd - 1, 2)
        dm = shape(dc, dpos[0], dpos[1], rd, float(rng.integers(4)) * np.pi / 2)
        img = np.where(dm[None, None], colour()[None, :, None, None], img)
    masks = np.zeros((t, s, s), dtype=bool)
    col = colour()
    for f in range(first, first + length):
        a = (f - first) / max(1, length - 1)
        cy, cx = start + a * (end - start)
        masks[f] = shape(cls, cy, cx, r, rot)
        img[f] = np.where(masks[f][None], col[:, None, None], img[f])
    img = img + 0.03 * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), cls, masks


@register_dataset("clips")
class ClipsDataset(CamDataset):
    """Deterministic short videos with a moving object and per-frame masks (see the module docstring); the
    dataset ``clips`` (``root`` is ignored: nothing is read from disk)."""

    has_masks = True
    has_boxes = True
    num_classes = len(CLIP_CLASSES)
    class_names = list(CLIP_CLASSES)
    ndim = 3
    synthetic = True
    default_model = "r3d_18"

    def __init__(
        self,
        n: int = 100,
        seed: int = 0,
        split: Literal["train", "test"] = "test",
        frames: int = 8,
        size: int = 32,
        distractor: bool = True,
        *,
        root: str | None = None,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise InputError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
        if int(n) < 0 or int(frames) < 2 or int(size) < 16:
            raise InputError(f"need n >= 0, frames >= 2 and size >= 16; got n={n}, frames={frames}, size={size}.")
        self.n, self.seed, self.split = int(n), int(seed), split
        self.frames, self.size, self.distractor = int(frames), int(size), bool(distractor)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= int(i) < self.n:
            raise IndexError(f"index {i} out of range for {self.n} clips")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], int(i), 5]))
        img, cls, masks = render_clip(rng, self.frames, self.size, self.distractor)
        m = torch.from_numpy(masks)
        return Sample(
            image=torch.from_numpy(img).permute(1, 0, 2, 3).contiguous(),
            target=cls,
            id=f"clips-{self.split}-{int(i):05d}",
            mask=m,
            boxes=clip_box(m),
            label=cls,
        )


# -- real videos ---------------------------------------------------------------------------------------
def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: frame not found.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: corrupt or unreadable frame ({type(exc).__name__}: {exc}).") from exc


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L")) > 0
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: corrupt or unreadable mask frame ({type(exc).__name__}: {exc}).") from exc


def read_video_file(path: str | Path) -> np.ndarray:
    """All frames of a video file as ``[T,H,W,3]`` uint8 (PyAV, through ``torchvision.io`` when it has it).

    A missing, corrupt or empty file raises :class:`DataError` naming it.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: video file not found.")
    try:
        import av
    except ImportError as exc:  # pragma: no cover - PyAV ships with the volumes extra
        raise DataError(f"{p}: reading video files needs PyAV (pip install 'cambench[volumes]').") from exc
    try:
        with av.open(str(p)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except Exception as exc:
        raise DataError(f"{p}: corrupt or unreadable video ({type(exc).__name__}: {exc}).") from exc
    if not frames:
        raise DataError(f"{p}: the video has no frames.")
    return np.stack(frames)


def _pick(total: int, frames: int) -> np.ndarray:
    """``frames`` indices spread evenly over ``total`` frames (repeating frames of shorter clips)."""
    return np.floor((np.arange(frames) + 0.5) * total / frames).astype(np.int64).clip(0, total - 1)


@register_dataset("video_folder")
class VideoFolder(CamDataset):
    """Videos in class folders (the dataset ``video_folder``): frame folders or video files (PyAV), optional
    per-frame masks (``has_masks``: whether any clip has them)."""

    has_masks = True  # masks may be given; an instance says whether they are
    has_boxes = True
    ndim = 3

    def __init__(
        self,
        root: str | Path | None = None,
        n: int | None = None,
        seed: int = 0,
        frames: int = 8,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if root is None:
            raise DataError("The video_folder dataset needs root='/path/to/videos'.")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"Video folder {root} does not exist. Expected root/CLASS/CLIP/ (frames) or root/CLASS/CLIP.mp4, "
                "with optional root/CLASS/CLIP.masks/ per-frame masks."
            )
        names = list(classes) if classes is not None else None
        self.records: list[dict] = []
        for cdir in sorted(p for p in root.iterdir() if p.is_dir()):
            if names is not None:
                if cdir.name not in names:
                    raise DataError(f"{cdir}: class folder {cdir.name!r} is not in classes={names}.")
                cls = names.index(cdir.name)
            else:
                try:
                    cls = int(cdir.name)
                except ValueError:
                    raise DataError(
                        f"{cdir}: class folders must be class indices (0, 1, ...), or pass classes=[names]."
                    ) from None
            for item in sorted(cdir.iterdir()):
                if item.name.endswith(".masks"):
                    continue
                if item.is_dir() or item.suffix.lower() in VIDEO_EXTENSIONS:
                    stem = item.name if item.is_dir() else item.stem
                    mdir = cdir / f"{stem}.masks"
                    self.records.append(
                        {
                            "id": f"{cdir.name}/{stem}",
                            "path": item,
                            "target": cls,
                            "masks": mdir if mdir.is_dir() else None,
                        }
                    )
        if not self.records:
            raise DataError(f"No clips under {root} (frame folders or {', '.join(VIDEO_EXTENSIONS)} files).")
        self.records = [self.records[i] for i in subset_indices(len(self.records), n, seed)]
        self.frames = int(frames)
        self.has_masks = any(r["masks"] is not None for r in self.records)
        self.class_names = names
        self.num_classes = len(names) if names else 1 + max(r["target"] for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def item_name(self, i: int) -> str:
        return str(self.records[i]["path"].name)

    def __getitem__(self, i: int) -> Sample:
        rec = self.records[i]
        path: Path = rec["path"]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError(f"{path}: no frames ({', '.join(IMAGE_EXTENSIONS)}).")
            idx = _pick(len(files), self.frames)
            video = np.stack([_read_image(files[j]) for j in idx])
            total = len(files)
        else:
            full = read_video_file(path)
            total = full.shape[0]
            idx = _pick(total, self.frames)
            video = full[idx]
        if len({f.shape for f in video}) != 1:
            raise DataError(f"{path}: frames differ in size.")
        mask = None
        if rec["masks"] is not None:
            mfiles = sorted(p for p in rec["masks"].iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if len(mfiles) != total:
                raise DataError(f"{rec['masks']}: {len(mfiles)} mask frames for {total} video frames.")
            mask = torch.from_numpy(np.stack([_read_mask(mfiles[j]) for j in idx]))
            if tuple(mask.shape[1:]) != tuple(video.shape[1:3]):
                raise DataError(f"{rec['masks']}: masks {tuple(mask.shape[1:])} differ from frames {video.shape[1:3]}.")
        image = torch.from_numpy(video).float().div_(255).permute(3, 0, 1, 2).contiguous()  # [3,T,H,W]
        return Sample(
            image=image,
            target=int(rec["target"]),
            id=rec["id"],
            mask=mask,
            boxes=None if mask is None else clip_box(mask),
            label=int(rec["target"]),
        )


__all__ = ["CLIP_CLASSES", "ClipsDataset", "VideoFolder", "read_video_file", "render_clip"]
