"""``shapes_multilabel``: synthetic images holding several shape classes, with exact per-class masks.

Each image shows the textured clutter of :mod:`benchmark.data.synthetic` and 1 to ``max_objects``
objects of **distinct** shape classes and comparable sizes (no object is "the" object: every class
present is a label of the image, as in PASCAL VOC's image-level labels). Object colours are independent
of the class. A class's mask is exactly its visible pixels; there is no void.

* ``target = "labels"`` (the multi-label view, :meth:`ShapesMultiLabel.class_samples`): one sample per
  class present, id ``"<image id>#<class name>"``;
* ``target = "label"``: one sample per image, the largest object's class and mask.

Image ``i`` is a pure function of ``(seed, split, i)``; ``train`` and ``test`` streams are disjoint from
each other and from those of ``shapes`` (another stream offset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .base import Sample, register_dataset
from .synthetic import _PIXEL_NOISE, SHAPE_CLASSES, ShapesDataset, mask_to_box, place_centres, quantize8

#: Bump when the drawing changes: it is part of the multi-label model's training hash.
MULTILABEL_GENERATOR_VERSION = 2
_STREAM = 7  # keeps the random streams apart from those of ``shapes``
_RADIUS = (0.13, 0.18)  # object circumradius, fraction of the side (all objects alike)
_MARGIN = 0.04


@dataclass
class MultiScene:
    image: Tensor  # [3,S,S] float in [0,1]
    classes: list[int]  # distinct classes present, in drawing order (largest first)
    masks: list[Tensor]  # [S,S] bool per class


@register_dataset("shapes_multilabel")
class ShapesMultiLabel(ShapesDataset):
    """Several distinct shape classes per image with exact per-class masks (see the module docstring); the
    dataset ``shapes_multilabel`` (``n=None``: 1000; ``root`` is ignored: nothing is read from disk)."""

    has_masks = True
    has_boxes = True
    multilabel = True
    default_model = "shapes_multilabel_cnn"

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
        if not 1 <= int(min_objects) <= int(max_objects) <= len(SHAPE_CLASSES):
            raise DataError(
                f"shapes_multilabel needs 1 <= min_objects <= max_objects <= {len(SHAPE_CLASSES)}; got "
                f"min_objects={min_objects}, max_objects={max_objects}."
            )
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)

    def sample_id(self, index: int) -> str:
        return f"ml-{self.split}-s{self.seed}-{index:06d}"

    def multi_scene(self, index: int) -> MultiScene:
        """Draw image ``index``: background, then the objects (largest first), then pixel noise."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} images.")
        rng = self._rng(index, stream=_STREAM)
        k = len(SHAPE_CLASSES)
        n_obj = int(rng.integers(self.min_objects, self.max_objects + 1))
        classes = [int(c) for c in rng.permutation(k)[:n_obj]]
        s = self.image_size
        radii = sorted((float(r) * s for r in rng.uniform(*_RADIUS, size=n_obj)), reverse=True)
        centres = place_centres(rng, radii, s, margin=_MARGIN, gap=0.02, candidates=64)
        img, base = self._background(rng)
        masks = []
        for cls, (cx, cy), r in zip(classes, centres, radii, strict=False):  # centres may stop early
            m = self._draw_object(rng, cls, cx, cy, r)
            img = np.where(m[None], self._object_colour(rng, base)[:, None, None], img)
            masks.append(torch.from_numpy(m))
        img = img + rng.normal(0.0, _PIXEL_NOISE, size=img.shape).astype(np.float32)
        image = torch.from_numpy(quantize8(img))
        return MultiScene(image=image, classes=classes[: len(centres)], masks=masks)

    def class_samples(self, index: int) -> list[Sample]:
        index = int(index) + (self.n if int(index) < 0 else 0)
        sc = self.multi_scene(index)
        iid = self.sample_id(index)
        order = sorted(range(len(sc.classes)), key=lambda j: sc.classes[j])  # class order, as VOC / COCO
        return [
            Sample(
                image=sc.image,
                target=sc.classes[j],
                id=f"{iid}#{SHAPE_CLASSES[sc.classes[j]]}",
                mask=sc.masks[j],
                boxes=mask_to_box(sc.masks[j]),
                label=sc.classes[j],
            )
            for j in order
        ]

    def __getitem__(self, index: int) -> Sample:
        index = int(index) + (self.n if int(index) < 0 else 0)
        sc = self.multi_scene(index)
        areas = [int(m.sum()) for m in sc.masks]
        j = int(np.argmax(areas))
        return Sample(
            image=sc.image,
            target=sc.classes[j],
            id=self.sample_id(index),
            mask=sc.masks[j],
            boxes=mask_to_box(sc.masks[j]),
            label=sc.classes[j],
        )

    def multi_hot(self, index: int) -> Tensor:
        """``[K]`` float 0/1 image-level labels of image ``index``."""
        y = torch.zeros(len(SHAPE_CLASSES))
        y[self.multi_scene(int(index)).classes] = 1.0
        return y

    def images_and_targets(self, indices: range | list[int] | None = None) -> tuple[Tensor, Tensor]:
        """Stacked ``[N,3,S,S]`` images in [0,1] and ``[N,K]`` multi-hot labels (training)."""
        idx = range(self.n) if indices is None else indices
        scenes = [self.multi_scene(int(i)) for i in idx]
        k, s = len(SHAPE_CLASSES), self.image_size
        if not scenes:
            return torch.zeros((0, 3, s, s)), torch.zeros((0, k))
        y = torch.zeros(len(scenes), k)
        for i, sc in enumerate(scenes):
            y[i, sc.classes] = 1.0
        return torch.stack([sc.image for sc in scenes]), y


__all__ = ["MULTILABEL_GENERATOR_VERSION", "MultiScene", "ShapesMultiLabel"]
