"""``photos``: scikit-image sample photos of ImageNet objects, hand-annotated (boxes + polygon masks).

Only photos bundled inside the scikit-image wheel (``skimage/data/*``) are used, read straight from that
folder, so nothing is ever fetched (no pooch download). Annotations live in
``benchmark/data/annotations/photos.json``: one entry per object, so an image with two objects
(``astronaut.png``: the shuttle model and the helmet) gives two samples. Masks are our coarse polygon
outlines rasterised with :func:`skimage.draw.polygon`; boxes are the polygons' bounding boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ._common import ANNOTATIONS_DIR, imagenet_names, polygon_mask, subset_indices, to_image_tensor
from .base import CamDataset, Sample, register_dataset


def skimage_data_dir() -> Path:
    """The folder of sample images shipped inside the scikit-image wheel."""
    import skimage.data

    return Path(skimage.data.__file__).resolve().parent


class PhotosDataset(CamDataset):
    """Annotated skimage photos; ``target`` = the annotated ImageNet class (``label`` too)."""

    has_masks = True
    has_boxes = True
    num_classes = 1000

    def __init__(self, n: int | None = None, seed: int = 0, annotations: Path | None = None) -> None:
        super().__init__()
        path = Path(annotations) if annotations is not None else ANNOTATIONS_DIR / "photos.json"
        try:
            with open(path, encoding="utf-8") as f:
                objects = json.load(f)["objects"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"Cannot read the photo annotations {path}: {e}") from e
        self.class_names = imagenet_names()
        self.root = skimage_data_dir()
        keep = []
        for obj in objects:
            if not (self.root / obj["file"]).is_file():
                self.errors.append(f"{obj['file']}: not bundled with this scikit-image ({self.root})")
                continue
            keep.append(obj)
        self.objects = [keep[i] for i in subset_indices(len(keep), n, seed)]

    def __len__(self) -> int:
        return len(self.objects)

    def item_name(self, i: int) -> str:
        """How failures name item ``i``: its id."""
        return str(self.objects[i]["id"])

    def __getitem__(self, i: int) -> Sample:
        import skimage.io

        obj = self.objects[i]
        path = self.root / obj["file"]
        try:
            arr = skimage.io.imread(path)
        except Exception as e:  # any decoder failure: a DataError naming the file (the batch builder records it)
            raise DataError(f"Cannot decode the skimage photo {path}: {e}") from e
        image = to_image_tensor(np.asarray(arr))
        h, w = image.shape[-2:]
        mask = polygon_mask([obj["polygon"]], h, w)
        boxes = torch.tensor([obj["box"]], dtype=torch.float32)
        c = int(obj["class_id"])
        return Sample(image=image, target=c, id=obj["id"], mask=mask, boxes=boxes, label=c)


@register_dataset(
    "photos",
    has_masks=True,
    has_boxes=True,
    default_model="efficientnet_lite0",
    num_classes=1000,
    mask_kind="polygon",
    offline=True,
)
def photos(root: str | None = None, n: int | None = None, seed: int = 0, **kw) -> PhotosDataset:
    """The 7 annotated skimage photos (``root`` is ignored: they ship with scikit-image)."""
    return PhotosDataset(n=n, seed=seed, **kw)
