"""``photos``: real photos of ImageNet objects shipped offline by installed packages, hand-annotated.

Only photos bundled inside installed wheels are used, read straight from their folders, so nothing is
ever fetched (no pooch download): scikit-image's ``skimage/data`` (chelsea, coffee, astronaut, rocket,
the two motorcycle views), scikit-learn's ``sklearn/datasets/images`` (china, flower) and matplotlib's
``mpl-data/sample_data`` (grace_hopper). Annotations live in ``benchmark/data/annotations/photos.json``:
one entry per object with its ImageNet class (the acceptable class efficientnet_lite0 ranks highest),
its ``source`` package, polygon mask(s) and box. Objects whose class the model does not rank in its top 5
are listed under ``excluded`` with the reason (the astronaut photo's shuttle model). Masks are our coarse
polygon outlines rasterised with :func:`skimage.draw.polygon`; boxes are the polygons' bounding boxes.
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


def source_dir(source: str) -> Path:
    """The folder of the sample photos shipped by package ``source`` (skimage, sklearn or matplotlib)."""
    if source == "skimage":
        return skimage_data_dir()
    if source == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).resolve().parent / "images"
    if source == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    raise DataError(f"Unknown photo source {source!r} in the annotations; expected skimage, sklearn or matplotlib.")


@register_dataset("photos")
class PhotosDataset(CamDataset):
    """The annotated photos of skimage, sklearn and matplotlib (the dataset ``photos``); ``target`` = the
    annotated ImageNet class (``label`` too). ``root`` is ignored: the photos ship with those packages."""

    has_masks = True
    has_boxes = True
    num_classes = 1000
    default_model = "efficientnet_lite0"
    mask_kind = "polygon"
    offline = True

    def __init__(
        self, n: int | None = None, seed: int = 0, annotations: Path | None = None, *, root: str | None = None
    ) -> None:
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
            src = obj.get("source", "skimage")
            try:
                where = source_dir(src)
            except ImportError as e:
                self.errors.append(f"{obj['file']}: package {src!r} is not installed ({e})")
                continue
            if not (where / obj["file"]).is_file():
                self.errors.append(f"{obj['file']}: not bundled with this {src} ({where})")
                continue
            keep.append({**obj, "_path": str(where / obj["file"])})
        self.objects = [keep[i] for i in subset_indices(len(keep), n, seed)]

    def __len__(self) -> int:
        return len(self.objects)

    def item_name(self, i: int) -> str:
        """How failures name item ``i``: its id."""
        return str(self.objects[i]["id"])

    def __getitem__(self, i: int) -> Sample:
        import skimage.io

        obj = self.objects[i]
        path = Path(obj["_path"])
        try:
            arr = skimage.io.imread(path)
        except Exception as e:  # any decoder failure: a DataError naming the file (the batch builder records it)
            raise DataError(f"Cannot decode the skimage photo {path}: {e}") from e
        image = to_image_tensor(np.asarray(arr))
        h, w = image.shape[-2:]
        mask = polygon_mask(obj["polygons"] if "polygons" in obj else [obj["polygon"]], h, w)
        boxes = torch.tensor([obj["box"]], dtype=torch.float32)
        c = int(obj["class_id"])
        return Sample(image=image, target=c, id=obj["id"], mask=mask, boxes=boxes, label=c)
