"""Preprocessing in one place: geometry-consistent resizing of samples and the batching pipeline.

* :func:`resize_sample` transforms a :class:`Sample`'s image (bilinear, antialiased), mask (nearest,
  pixel-centre aligned) and boxes (scaled, shifted, clipped) with one geometry, so ground truth stays on
  the object.
* :func:`make_batches` turns a dataset into model-ready :class:`~benchmark.types.Batch` es with a torch
  ``DataLoader`` (optional worker processes), skipping corrupt items and reporting them in ``.errors``.

Boxes are ``[x1, y1, x2, y2]`` float pixel *edges* (pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``), the
convention under which resizing is an exact affine map of the coordinates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, InputError
from ..types import Batch, ModelHandle
from .base import CamDataset, Sample

ResizeMode = Literal["resize", "resize_center_crop"]

#: Centre-crop fraction of the usual ImageNet evaluation (resize to 256, crop 224).
DEFAULT_CROP_FRACTION = 0.875


def _as_hw(size: int | Sequence[int]) -> tuple[int, ...]:
    """``(H, W)``; a 3-sequence ``(T, H, W)`` (volume and video models) is kept as it is."""
    if isinstance(size, int):
        return size, size
    if len(size) == 3:
        return tuple(int(v) for v in size)
    h, w = (int(v) for v in size)
    return h, w


def resize_volume_sample(sample: Sample, size: Sequence[int]) -> Sample:
    """Resize a volume or clip ``[C,T,H,W]`` to ``size = (T, H, W)``: the image trilinearly (half-voxel
    centres), the ``[T,H,W]`` mask by ``nearest-exact`` sampling, ``[K,6]`` edge boxes
    ``x1,y1,t1,x2,y2,t2`` by the exact per-axis ratios (boxes left with no volume are dropped)."""
    out = tuple(int(v) for v in size)
    img = sample.image
    shape = tuple(int(v) for v in img.shape[1:])
    if len(out) != 3:
        raise DataError(f"{sample.id}: a [C,T,H,W] item needs a (T, H, W) model input size, got {out}.")
    if sample.mask is not None and tuple(sample.mask.shape) != shape:
        raise DataError(f"{sample.id}: mask shape {tuple(sample.mask.shape)} does not match the volume {shape}.")
    if shape == out:
        return sample
    img = F.interpolate(img[None].float(), size=out, mode="trilinear", align_corners=False)[0].clamp_(0.0, 1.0)
    mask = sample.mask
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=out, mode="nearest-exact")[0, 0] > 0.5
    boxes = sample.boxes
    if boxes is not None:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 6)
        (t, h, w), (ot, oh, ow) = shape, out
        factor = torch.tensor([ow / w, oh / h, ot / t] * 2)
        boxes = torch.minimum((boxes * factor).clamp(min=0.0), torch.tensor([ow, oh, ot] * 2, dtype=torch.float32))
        boxes = boxes[(boxes[:, 3:] > boxes[:, :3]).all(dim=1)]
    return dataclasses.replace(sample, image=img.contiguous(), mask=mask, boxes=boxes)


def resize_sample(
    sample: Sample,
    size: int | Sequence[int],
    mode: ResizeMode = "resize",
    crop_fraction: float = DEFAULT_CROP_FRACTION,
) -> Sample:
    """Resize ``sample`` to ``size`` (H, W), transforming image, mask and boxes consistently.

    ``mode="resize"`` stretches to ``size``. ``mode="resize_center_crop"`` scales (keeping the aspect
    ratio) so that the image covers ``size / crop_fraction``, then crops the centre ``size`` (torchvision's
    ``Resize(int(s / 0.875))`` + ``CenterCrop(s)`` for a square ``s``). Boxes are scaled by the exact
    per-axis ratios, shifted by the crop offset and clipped to the image; boxes left with no area are
    dropped. The mask uses ``nearest-exact`` sampling (pixel centres), the image bilinear with antialias.
    """
    if sample.image.ndim == 4:  # a volume or clip [C,T,H,W]
        if mode != "resize":
            raise InputError(f"Volumes and clips are resized with mode='resize' only, got {mode!r}.")
        return resize_volume_sample(sample, _as_hw(size))
    out_h, out_w = _as_hw(size)
    img = sample.image
    if img.ndim != 3:
        raise DataError(f"{sample.id}: image must be [C,H,W], got shape {tuple(img.shape)}.")
    h, w = int(img.shape[-2]), int(img.shape[-1])
    if sample.mask is not None and tuple(sample.mask.shape) != (h, w):
        raise DataError(f"{sample.id}: mask shape {tuple(sample.mask.shape)} does not match the image ({h}, {w}).")
    if mode == "resize":
        new_h, new_w, top, left = out_h, out_w, 0, 0
    elif mode == "resize_center_crop":
        if not 0 < crop_fraction <= 1:
            raise InputError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
        scale = max(out_h / h, out_w / w) / crop_fraction
        new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
        top, left = int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))
    else:
        raise InputError(f"mode must be 'resize' or 'resize_center_crop', got {mode!r}.")

    if (new_h, new_w) != (h, w):
        img = F.interpolate(
            img[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0.0, 1.0)
    img = img[:, top : top + out_h, left : left + out_w]

    def resize_mask(mask: Tensor | None, what: str) -> Tensor | None:
        if mask is None:
            return None
        if tuple(mask.shape) != (h, w):
            raise DataError(f"{sample.id}: {what} shape {tuple(mask.shape)} does not match the image ({h}, {w}).")
        if (new_h, new_w) != (h, w):
            mask = F.interpolate(mask[None, None].float(), size=(new_h, new_w), mode="nearest-exact")[0, 0] > 0.5
        return mask[top : top + out_h, left : left + out_w].bool()

    mask = resize_mask(sample.mask, "mask")
    ignore = resize_mask(sample.ignore, "ignore mask")

    boxes = sample.boxes
    if boxes is not None:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        factor = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h])
        shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        boxes = boxes * factor - shift
        limit = torch.tensor([out_w, out_h, out_w, out_h], dtype=torch.float32)
        boxes = torch.minimum(boxes.clamp(min=0.0), limit)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes = boxes[keep]
    extras = sample.extras
    if extras and (new_h, new_w, out_h, out_w) != (h, w, h, w):  # masks nearest-exact, images bilinear

        def fit(t: Tensor) -> Tensor:
            if t.ndim < 2:  # per-image scalars (e.g. the contrast model's target) do not resize
                return t
            x = t[None, None].float() if t.ndim == 2 else t[None].float()
            mode = "nearest-exact" if t.dtype == torch.bool else "bilinear"
            kw = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=(new_h, new_w), mode=mode, **kw)[0][..., top : top + out_h, left : left + out_w]
            return (x[0] > 0.5) if t.dtype == torch.bool else x.contiguous()

        extras = {k: fit(v) for k, v in extras.items()}
    if ignore is None:  # (keeps the default path identical to what it was before ``ignore`` existed)
        return dataclasses.replace(sample, image=img.contiguous(), mask=mask, boxes=boxes, extras=extras)
    return dataclasses.replace(sample, image=img.contiguous(), mask=mask, boxes=boxes, ignore=ignore, extras=extras)


@dataclass
class _Failed:
    """Placeholder for an item the dataset could not produce (travels through the loader)."""

    index: int
    message: str


def item_name(dataset: Dataset, index: int) -> str:
    """How error messages name item ``index``: ``dataset.item_name(index)`` (a file name) if defined."""
    fn = getattr(dataset, "item_name", None)
    if callable(fn):
        try:
            return str(fn(index))
        except Exception:
            pass
    return f"item {index}"


class _Prepared(Dataset):
    """``dataset[indices[j]]`` resized for the model; corrupt items become :class:`_Failed`."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], size: tuple[int, ...], mode: ResizeMode):
        self.dataset, self.indices, self.size, self.mode = dataset, list(indices), size, mode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Sample | list[Sample] | _Failed:
        i = self.indices[j]
        try:
            item = self.dataset[i]
            if isinstance(item, list):  # a multi-label view: one sample per present class, kept together
                return [resize_sample(s, self.size, self.mode) for s in item]
            return resize_sample(item, self.size, self.mode)
        except (DataError, OSError) as exc:  # OSError: unreadable/missing files (PIL raises subclasses)
            return _Failed(i, f"{item_name(self.dataset, i)}: {type(exc).__name__}: {exc}")


class _Collate:
    """Stack prepared samples into a normalised :class:`Batch`; returns ``(batch | None, errors)``."""

    def __init__(self, handle: ModelHandle) -> None:
        # Keep only what normalisation needs: workers must not receive a copy of the model.
        self.handle = dataclasses.replace(handle, model=nn.Identity())

    def __call__(self, items: list[Sample | list[Sample] | _Failed]) -> tuple[Batch | None, list[str]]:
        errors = [it.message for it in items if isinstance(it, _Failed)]
        good = [s for it in items for s in (it if isinstance(it, list) else [it]) if isinstance(s, Sample)]
        if not good:
            return None, errors
        grid = tuple(good[0].image.shape[1:])  # (H, W), or (T, H, W) for volumes and clips
        images = torch.stack([s.image.float() for s in good])
        if any(s.mask is not None for s in good):  # a missing mask is empty (metrics give NaN for it)
            masks: Tensor | None = torch.stack(
                [s.mask if s.mask is not None else torch.zeros(grid, dtype=torch.bool) for s in good]
            )
        else:
            masks = None
        if any(s.boxes is not None for s in good):
            boxes: list[Tensor] | None = [
                s.boxes if s.boxes is not None else torch.zeros((0, 2 * len(grid))) for s in good
            ]
        else:
            boxes = None
        labels = (
            torch.tensor([int(s.label) for s in good if s.label is not None], dtype=torch.long)
            if all(s.label is not None for s in good)
            else None
        )
        ignore = (
            torch.stack([s.ignore if s.ignore is not None else torch.zeros(grid, dtype=torch.bool) for s in good])
            if any(s.ignore is not None for s in good)
            else None
        )
        keys = set(good[0].extras or {})
        extras = (
            {k: torch.stack([s.extras[k] for s in good]) for k in sorted(keys)}  # type: ignore[index]
            if keys and all(set(s.extras or {}) == keys for s in good)
            else None
        )
        if extras:  # extra images ("*_image") are normalised like the batch's images
            extras = {k: self.handle.normalize(v.float()) if k.endswith("_image") else v for k, v in extras.items()}
        batch = Batch(
            extras=extras,
            images=self.handle.normalize(images),
            targets=torch.tensor([int(s.target) for s in good], dtype=torch.long),
            ids=[str(s.id) for s in good],
            masks=masks,
            boxes=boxes,
            labels=labels,
            ignore=ignore,
        )
        return batch, errors


def _seed_worker(seed: int) -> Callable[[int], None]:
    def init(worker_id: int) -> None:
        import random

        import numpy as np

        s = seed * 1000 + worker_id
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)

    return init


class BatchIterator:
    """Iterable of :class:`Batch`; ``.errors`` lists the items skipped so far (``"name: reason"``).

    Messages are also appended to ``dataset.errors`` when the dataset has that list. Iterating again
    reloads the data (and appends new messages).
    """

    def __init__(
        self,
        dataset: Dataset,
        handle: ModelHandle,
        batch_size: int,
        indices: Sequence[int] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        mode: ResizeMode = "resize",
    ) -> None:
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        if int(num_workers) < 0:
            raise InputError(f"num_workers must be >= 0, got {num_workers}.")
        self.dataset, self.handle = dataset, handle
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]  # type: ignore[arg-type]
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.mode = mode
        self.errors: list[str] = []

    def __len__(self) -> int:
        """Number of batches before skipping (an upper bound on what iteration yields)."""
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(
            _Prepared(self.dataset, self.indices, _as_hw(self.handle.input_size), self.mode),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_Collate(self.handle),
            pin_memory=self.pin_memory,
            worker_init_fn=_seed_worker(self.seed) if self.num_workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed),
        )
        sink = getattr(self.dataset, "errors", None)
        for batch, errors in loader:
            if errors:
                self.errors.extend(errors)
                if isinstance(sink, list):
                    sink.extend(errors)
            if batch is not None:
                yield batch


#: Separator of image id and class name in the ids of a multi-label view (``"img_0003#cat"``).
CLASS_SEP = "#"


def image_key(item_id: str) -> str:
    """The image part of a score-row id (``"img_0003#cat" -> "img_0003"``; plain ids are returned as is)."""
    return str(item_id).split(CLASS_SEP, 1)[0]


class PerClassTargets(Dataset):
    """Multi-label view of a dataset (``target = "labels"``): item ``i`` is the list of the
    :meth:`~benchmark.data.base.CamDataset.class_samples` of image ``i``, one sample per present class.

    :func:`make_batches` keeps the samples of one image together, in one batch, so that a metric can
    group an image's present-class maps by :func:`image_key`. Every other attribute (``has_masks``,
    ``num_classes``, ``class_names``, ``errors`` ...) is the wrapped dataset's.
    """

    def __init__(self, dataset: Dataset) -> None:

        fn = getattr(type(dataset), "class_samples", None)
        if not callable(fn) or fn is CamDataset.class_samples:
            raise DataError(
                f"Dataset {type(dataset).__name__} has no class_samples(index), so it cannot explain every "
                'class of an image (target = "labels"). Use shapes_multilabel, voc or coco, or target = "label".'
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> list[Sample]:
        return list(self.dataset.class_samples(index))  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def per_class(dataset: Dataset) -> PerClassTargets:
    """``dataset`` as a multi-label view (idempotent); raises :class:`DataError` when it has none."""
    return dataset if isinstance(dataset, PerClassTargets) else PerClassTargets(dataset)


def check_class_count(handle: ModelHandle, dataset: Dataset) -> None:
    """Raise :class:`DataError` when a multi-label experiment pairs a model and a dataset whose class
    counts differ (a seed of class k would explain another class's logit)."""
    n_model = handle.meta.get("num_classes") or (len(handle.class_names) if handle.class_names else 0)
    n_data = int(getattr(dataset, "num_classes", 0) or 0)
    if n_model and n_data and int(n_model) != n_data:
        raise DataError(
            f"Class-count mismatch: model {handle.name!r} has {n_model} classes, dataset "
            f'{type(getattr(dataset, "dataset", dataset)).__name__} has {n_data}. target = "labels" explains '
            "the dataset's classes with the model's logits of the same index: use a model trained on this "
            "dataset's classes (e.g. a multi-label checkpoint with a matching head)."
        )


def make_batches(
    dataset: Dataset,
    handle: ModelHandle,
    batch_size: int,
    indices: Sequence[int] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
    mode: ResizeMode = "resize",
) -> BatchIterator:
    """Model-ready batches of ``dataset[indices]`` (default: all), in order.

    Each sample is resized to ``handle.input_size`` with :func:`resize_sample` (``mode``), images are
    stacked and normalised with ``handle.normalize``; ids, targets, labels, masks and boxes are kept.
    Items whose loading raises :class:`~benchmark.errors.DataError` (or ``OSError``) are skipped and
    reported in the returned iterator's ``.errors``; the run goes on.
    """
    return BatchIterator(dataset, handle, batch_size, indices, num_workers, pin_memory, seed, mode)


__all__ = [
    "BatchIterator",
    "CLASS_SEP",
    "check_class_count",
    "DEFAULT_CROP_FRACTION",
    "PerClassTargets",
    "image_key",
    "make_batches",
    "per_class",
    "resize_sample",
]
