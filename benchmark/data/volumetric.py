"""``volumes``: CT-like synthetic volumes with exact 3-D ground truth, and ``nifti``: NIfTI volumes with labels.

``volumes``: every item is a ``D x D x D`` volume of smooth, correlated noise (a soft-tissue-like background
with fine scanner noise) holding one bright **lesion** whose class is its shape -- ``sphere``, ``cube``,
``rod`` (a cylinder along one of the three axes) or ``shell`` (a hollow sphere) -- and 0-2 smaller
**distractor** lesions of other classes (the target is always about twice as large: that is what names *the*
lesion). Intensities are drawn independently of the class, so a model has to use shape.

Conventions (as ``shapes``, in 3-D):

* item ``i`` is a pure function of ``(seed, split, i)`` (numpy ``SeedSequence([seed, split, i, 3])``);
* ``Sample.image`` is ``[3,D,H,W]`` float in [0,1] (the grey volume repeated on the three channels, the
  input convention of the video models), ``Sample.mask`` the lesion's exact ``[D,H,W]`` voxels;
* boxes are ``[x1, y1, z1, x2, y2, z2]`` voxel **edges** (``z`` = the depth axis ``D``): voxel
  ``(z, y, x)`` covers ``[x, x+1) x [y, y+1) x [z, z+1)``, the 3-D form of the ``shapes`` boxes.

``nifti``: ``root/images/NAME.nii[.gz]`` volumes with ``root/labels/NAME.nii[.gz]`` label volumes (voxels
``> 0``, or ``== label_value``, are the object) and an optional ``root/classes.csv`` (``name,class``
lines) for the targets; read with nibabel, intensities windowed to [0,1].
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from ..errors import DataError, InputError
from ._common import PREDICTED, subset_indices
from .base import CamDataset, Sample, register_dataset

#: Bump when the drawing changes: it is part of the volumetric model's training hash.
VOLUME_GENERATOR_VERSION = 1

VOLUME_CLASSES: tuple[str, ...] = ("sphere", "cube", "rod", "shell")
SPLITS = {"train": 0, "test": 1}

_TARGET_R = (0.17, 0.22)  # fractions of the side D
_DISTRACTOR_R = (0.08, 0.10)
_MARGIN = 0.1


def lesion_mask(cls: int, z: np.ndarray, y: np.ndarray, x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Boolean mask of lesion class ``cls`` in local coordinates scaled to radius 1."""
    name = VOLUME_CLASSES[cls]
    r2 = z * z + y * y + x * x
    if name == "sphere":
        return r2 <= 1.0
    if name == "cube":
        return np.maximum(np.maximum(np.abs(z), np.abs(y)), np.abs(x)) <= 0.75
    if name == "rod":  # a cylinder of radius 0.4 and half-length 1 along ``axis``
        c = (z, y, x)
        along = c[axis]
        across = sum(c[i] ** 2 for i in range(3) if i != axis)
        return (np.abs(along) <= 1.0) & (across <= 0.4**2)
    if name == "shell":
        return (r2 <= 1.0) & (r2 >= 0.6**2)
    raise InputError(f"Unknown lesion class {cls}.")


def volume_box(mask: Tensor) -> Tensor:
    """Tight ``[1,6]`` ``x1,y1,z1,x2,y2,z2`` voxel-edge box of a ``[D,H,W]`` mask (``[0,6]`` if empty)."""
    if not bool(mask.any()):
        return torch.zeros((0, 6), dtype=torch.float32)
    idx = [torch.nonzero(mask.any(dim=tuple(j for j in range(3) if j != a))).flatten() for a in range(3)]
    (z0, z1), (y0, y1), (x0, x1) = ((int(t[0]), int(t[-1]) + 1) for t in idx)
    return torch.tensor([[x0, y0, z0, x1, y1, z1]], dtype=torch.float32)


def render_volume(
    rng: np.random.Generator, size: int, max_distractors: int
) -> tuple[np.ndarray, int, np.ndarray, list[int]]:
    """One volume: ``(image [D,D,D] float32 in [0,1], class, target mask [D,D,D] bool, distractor classes)``."""
    d = size
    grid = np.arange(d) + 0.5
    zz, yy, xx = np.meshgrid(grid, grid, grid, indexing="ij")
    # correlated background (soft tissue) + fine noise
    base = gaussian_filter(rng.standard_normal((d, d, d)), sigma=2.5)
    base = 0.35 + 0.12 * base / (base.std() + 1e-8)
    cls = int(rng.integers(len(VOLUME_CLASSES)))
    r = float(rng.uniform(*_TARGET_R)) * d
    lo, hi = (_MARGIN * d + r, (1 - _MARGIN) * d - r)
    centre = rng.uniform(lo, hi, size=3)
    axis = int(rng.integers(3))
    target = lesion_mask(cls, (zz - centre[0]) / r, (yy - centre[1]) / r, (xx - centre[2]) / r, axis)
    img = base.copy()
    placed = [(centre, r)]  # bounding spheres (centre, radius) of the lesions drawn so far
    distractors: list[int] = []
    for _ in range(int(rng.integers(0, max_distractors + 1))):
        dc = int(rng.choice([c for c in range(len(VOLUME_CLASSES)) if c != cls]))
        rd = float(rng.uniform(*_DISTRACTOR_R)) * d
        for _try in range(20):  # rejection sampling: bounding spheres at least 2 voxels apart
            c2 = rng.uniform(rd + 1, d - rd - 1, size=3)
            if all(np.linalg.norm(c2 - c) > rc + rd + 2 for c, rc in placed):
                m = lesion_mask(dc, (zz - c2[0]) / rd, (yy - c2[1]) / rd, (xx - c2[2]) / rd, int(rng.integers(3)))
                img = np.where(m, float(rng.uniform(0.65, 0.9)), img)
                placed.append((c2, rd))
                distractors.append(dc)
                break
    lesion = float(rng.uniform(0.65, 0.9)) + 0.04 * rng.standard_normal((d, d, d))
    img = np.where(target, lesion, img)
    img = img + 0.03 * rng.standard_normal((d, d, d))
    return np.clip(img, 0.0, 1.0).astype(np.float32), cls, target, distractors


@register_dataset("volumes")
class VolumesDataset(CamDataset):
    """Deterministic CT-like volumes with one lesion each, whose class is its shape (exact 3-D masks and
    boxes; see the module docstring): the dataset ``volumes``.

    Args:
        n: number of volumes. seed: base seed. split: ``"train"`` or ``"test"`` (disjoint streams).
        size: side ``D`` of the cubic volumes (>= 16). max_distractors: 0..3 smaller lesions of other classes.
        root: ignored (nothing is read from disk).
    """

    has_masks = True
    has_boxes = True
    num_classes = len(VOLUME_CLASSES)
    class_names = list(VOLUME_CLASSES)
    ndim = 3
    synthetic = True
    default_model = "volume_cnn"

    def __init__(
        self,
        n: int = 200,
        seed: int = 0,
        split: Literal["train", "test"] = "test",
        size: int = 32,
        max_distractors: int = 2,
        *,
        root: str | None = None,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise InputError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
        if int(n) < 0:
            raise InputError(f"n must be >= 0, got {n}.")
        if int(size) < 16:
            raise InputError(f"size must be >= 16 voxels, got {size}.")
        if not 0 <= int(max_distractors) <= len(VOLUME_CLASSES) - 1:
            raise InputError(f"max_distractors must be in 0..{len(VOLUME_CLASSES) - 1}, got {max_distractors}.")
        self.n, self.seed, self.split = int(n), int(seed), split
        self.size, self.max_distractors = int(size), int(max_distractors)

    def __len__(self) -> int:
        return self.n

    def render(self, i: int) -> tuple[np.ndarray, int, np.ndarray, list[int]]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} volumes")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], int(i), 3]))
        return render_volume(rng, self.size, self.max_distractors)

    def __getitem__(self, i: int) -> Sample:
        img, cls, mask, _ = self.render(int(i))
        m = torch.from_numpy(mask)
        image = torch.from_numpy(img)[None].expand(3, -1, -1, -1).contiguous()
        return Sample(
            image=image, target=cls, id=f"volumes-{self.split}-{int(i):05d}", mask=m, boxes=volume_box(m), label=cls
        )

    def images_and_labels(self, indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """``([N,3,D,D,D] float in [0,1], [N] long)`` of ``indices`` (default: all)."""
        idx = range(self.n) if indices is None else indices
        imgs, labels = [], []
        for i in idx:
            img, cls, _, _ = self.render(int(i))
            imgs.append(torch.from_numpy(img))
            labels.append(cls)
        if not imgs:
            return torch.zeros((0, 3, self.size, self.size, self.size)), torch.zeros(0, dtype=torch.long)
        return torch.stack(imgs)[:, None].expand(-1, 3, -1, -1, -1).contiguous(), torch.tensor(labels)


# -- NIfTI ---------------------------------------------------------------------------------------------
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def read_nifti(path: str | Path) -> np.ndarray:
    """The voxel array of a NIfTI file, as float32 ``[D,H,W]`` (nibabel's ``[x,y,z]`` axes reversed).

    A missing, truncated or non-NIfTI file raises :class:`DataError` naming it.
    """
    try:
        import nibabel as nib
    except ImportError as exc:  # pragma: no cover - nibabel is a dependency of the volumes extra
        raise DataError("Reading NIfTI volumes needs nibabel: pip install 'cambench[volumes]'.") from exc
    p = Path(path)
    try:
        # nibabel types load() as FileBasedImage; NIfTI images are DataobjImages, which have get_fdata
        arr = np.asarray(nib.load(str(p)).get_fdata(dtype=np.float32))  # type: ignore[attr-defined]
    except FileNotFoundError:
        raise DataError(f"{p}: file not found.") from None
    except Exception as exc:
        raise DataError(f"{p}: not a readable NIfTI volume ({type(exc).__name__}: {exc}). Re-export it.") from exc
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{p}: expected a 3-D volume, got an array of shape {arr.shape}.")
    return np.ascontiguousarray(arr.transpose(2, 1, 0))


def window(arr: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """Intensities mapped linearly from ``[lo, hi]`` (default: the 1st and 99th percentiles) to [0,1]."""
    lo = float(np.percentile(arr, 1)) if lo is None else float(lo)
    hi = float(np.percentile(arr, 99)) if hi is None else float(hi)
    if not hi > lo:
        return np.zeros_like(arr, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# One NIfTI item: image (and optional label volume) paths, the target index and the classes.csv class.
_NiftiRecord = TypedDict(
    "_NiftiRecord", {"id": str, "image": Path, "label": Path | None, "target": int, "class": int | None}
)


@register_dataset("nifti")
class NiftiDataset(CamDataset):
    """NIfTI volumes with label volumes (nibabel; see the module docstring), the dataset ``nifti``; corrupt
    files raise :class:`DataError` when read (the batching pipeline skips them and reports them in
    ``.errors``)."""

    has_masks = True
    has_boxes = True
    ndim = 3

    def __init__(
        self,
        root: str | Path | None = None,
        n: int | None = None,
        seed: int = 0,
        target: str | int = "label",
        label_value: int | None = None,
        window_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if root is None:
            raise DataError("The nifti dataset needs root='/path' holding images/, labels/ and classes.csv.")
        root = Path(root).expanduser()
        images = root / "images"
        if not images.is_dir():
            raise DataError(
                f"NIfTI dataset {root} has no images/ folder. Expected: root/images/NAME.nii[.gz], "
                "root/labels/NAME.nii[.gz] (label volumes), optional root/classes.csv (NAME,class)."
            )
        files = sorted(p for p in images.iterdir() if p.name.endswith(NIFTI_EXTENSIONS))
        if not files:
            raise DataError(f"No .nii or .nii.gz files in {images}.")
        classes: dict[str, int] = {}
        csv_path = root / "classes.csv"
        if csv_path.is_file():
            with open(csv_path, newline="") as fh:
                for row in csv.reader(fh):
                    if len(row) >= 2 and row[0] and not row[0].startswith("#"):
                        try:
                            classes[row[0]] = int(row[1])
                        except ValueError:
                            if row[0] != "name":
                                raise DataError(
                                    f"{csv_path}: class {row[1]!r} of {row[0]!r} is not an integer."
                                ) from None
        if target == "label" and not classes:
            raise DataError(f"target='label' needs {csv_path} (lines NAME,class); or use target='predicted'.")
        self.records: list[_NiftiRecord] = []
        for p in files:
            stem = _stem(p)
            label = next(
                (
                    root / "labels" / f"{stem}{e}"
                    for e in NIFTI_EXTENSIONS
                    if (root / "labels" / f"{stem}{e}").is_file()
                ),
                None,
            )
            cls = classes.get(stem)
            if target == "label":
                tgt = -2 if cls is None else cls  # -2: no class in classes.csv (an error when read)
            elif target == "predicted":
                tgt = PREDICTED
            else:
                tgt = int(target)
            self.records.append({"id": stem, "image": p, "label": label, "target": tgt, "class": cls})
        self.records = [self.records[i] for i in subset_indices(len(self.records), n, seed)]
        self.root, self.label_value, self.window_range = root, label_value, window_range
        self.num_classes = (max(classes.values()) + 1) if classes else 0

    def __len__(self) -> int:
        return len(self.records)

    def item_name(self, i: int) -> str:
        return str(self.records[i]["image"].name)

    def __getitem__(self, i: int) -> Sample:
        rec = self.records[i]
        if rec["target"] == -2:
            raise DataError(f"{rec['image'].name}: no class for {rec['id']!r} in {self.root / 'classes.csv'}.")
        lo, hi = self.window_range if self.window_range is not None else (None, None)
        vol = window(read_nifti(rec["image"]), lo, hi)
        mask = None
        if rec["label"] is not None:
            lab = read_nifti(rec["label"])
            if lab.shape != vol.shape:
                raise DataError(f"{rec['label'].name}: label volume {lab.shape} does not match the image {vol.shape}.")
            mask = torch.from_numpy(lab > 0 if self.label_value is None else lab == self.label_value)
        image = torch.from_numpy(vol)[None].expand(3, -1, -1, -1).contiguous()
        return Sample(
            image=image,
            target=int(rec["target"]),
            id=rec["id"],
            mask=mask,
            boxes=None if mask is None else volume_box(mask),
            label=rec["class"],
        )


__all__ = ["NiftiDataset", "VOLUME_CLASSES", "VolumesDataset", "read_nifti", "render_volume", "volume_box"]
