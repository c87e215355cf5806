"""``coco``: MS-COCO instances (boxes + polygon / RLE masks), without pycocotools.

One sample per image. Target object = the category of the largest non-crowd instance (by ``area``);
``boxes`` = every non-crowd box of that category (``[x,y,w,h]`` -> xyxy); ``mask`` = the union of
their segmentations: polygons rasterised with :func:`skimage.draw.polygon`, RLE (uncompressed
``counts`` lists and compressed strings) decoded by :func:`rle_decode`. Crowd regions are ignored.
Labels are contiguous 0..K-1 in sorted category-id order.

Multi-label view (``target = "labels"``, WSSS on COCO 2014: ``split="train2014"``, 80 classes + background):
:meth:`COCODataset.class_samples` turns the instances into a semantic mask (union per category; crowd
regions outside the instances and pixels claimed by two categories are void = ignored) and yields one
sample per category present.

Class mapping: as for VOC (see :mod:`benchmark.data.voc`): ``target="label"`` with an optional
``class_map`` (COCO names or contiguous indices -> model classes; unmapped images are skipped and
counted), or ``target="predicted"`` (the model's own top-1 class; the COCO label stays in ``label``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError, InputError
from ._common import RecordDataset, coco_mask, first_existing, load_image, resolve_target
from .base import Sample, register_dataset
from .voc import VOID, semantic_samples

LAYOUT = """\
  ROOT/annotations/instances_<split>.json   (e.g. instances_val2017.json)
  ROOT/<split>/<file_name>                  (or ROOT/images/<split>/, e.g. val2017/000000000139.jpg)"""


@register_dataset("coco")
class COCODataset(RecordDataset):
    """MS-COCO instances, the dataset ``coco`` (see the module docstring for targets and the class-mapping
    problem)."""

    has_boxes = True
    has_masks = True
    num_classes = 80  # the instance categories; an instance counts those of its annotation file
    default_model = "resnet50"
    mask_kind = "instance"

    def __init__(
        self,
        root: str | Path | None = None,
        n: int | None = None,
        seed: int = 0,
        split: str = "val2017",
        annotation_file: str | Path | None = None,
        images_dir: str | Path | None = None,
        target: str | int = "label",
        class_map: dict | None = None,
        verify: bool = True,
    ) -> None:
        if root is None:
            raise DataError(f"The coco dataset needs root=... Expected layout:\n{LAYOUT}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"COCO root {root} does not exist. Expected layout:\n{LAYOUT}")
        ann_path = Path(annotation_file) if annotation_file else root / "annotations" / f"instances_{split}.json"
        if not ann_path.is_file():
            raise DataError(f"COCO annotation file {ann_path} is missing. Expected layout:\n{LAYOUT}")
        img_dir = Path(images_dir) if images_dir else first_existing(root, (split, f"images/{split}", "images"))
        if img_dir is None or not img_dir.is_dir():
            raise DataError(f"COCO image folder for {split!r} not found under {root}. Expected layout:\n{LAYOUT}")
        try:
            with open(ann_path, encoding="utf-8") as f:
                doc = json.load(f)
            images = {int(im["id"]): im for im in doc["images"]}
            cats = sorted(doc["categories"], key=lambda c: int(c["id"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{ann_path.name}: not a COCO instances file ({type(e).__name__}: {e})") from e
        cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
        names = [str(c["name"]) for c in cats]
        errors: list[str] = []
        self.skipped: dict[str, int] = {"no_instances": 0, "unmapped": 0}
        per_image: dict[int, list[dict]] = defaultdict(list)
        crowd: dict[int, list] = defaultdict(list)
        for k, a in enumerate(doc.get("annotations", [])):
            try:
                if a.get("iscrowd", 0):
                    if isinstance(a.get("segmentation"), (dict, list)):
                        crowd[int(a["image_id"])].append(a["segmentation"])  # void in the semantic masks
                    continue
                x, y, w, h = (float(v) for v in a["bbox"])
                seg = a["segmentation"]
                if isinstance(seg, dict):
                    segs = [seg]  # RLE
                elif isinstance(seg, list) and all(isinstance(p, list) for p in seg):
                    segs = seg  # polygons, each a flat [x0, y0, x1, y1, ...]
                else:
                    raise InputError("segmentation must be a list of polygons or an RLE dict")
                per_image[int(a["image_id"])].append(
                    {
                        "label": cat_index[int(a["category_id"])],
                        "box": [x, y, x + w, y + h],
                        "area": float(a.get("area", w * h)),
                        "segs": segs,
                    }
                )
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                ann_id = a.get("id", k) if isinstance(a, dict) else k
                errors.append(f"{ann_path.name}: annotation {ann_id} malformed ({type(e).__name__}: {e})")
        records = []
        for image_id in sorted(images):
            im = images[image_id]
            anns = per_image.get(image_id, [])
            if not anns:
                self.skipped["no_instances"] += 1
                continue
            best = max(range(len(anns)), key=lambda j: (anns[j]["area"], -j))
            label = anns[best]["label"]
            tgt = resolve_target(label, target, class_map, names)
            if tgt is None:
                self.skipped["unmapped"] += 1
                continue
            chosen = [a for a in anns if a["label"] == label]
            segs = [s for a in chosen for s in a["segs"]]
            records.append(
                {
                    "path": str(img_dir / im.get("file_name", f"{image_id:012d}.jpg")),
                    "id": str(image_id),
                    "label": label,
                    "target": tgt,
                    "boxes": torch.tensor([a["box"] for a in chosen], dtype=torch.float32),
                    "mask": ("coco", segs),
                    "semantic": [(a["label"], a["segs"]) for a in anns],
                    "crowd": crowd.get(image_id, []),
                }
            )
        super().__init__(records, n, seed, verify=verify)
        self.errors[:0] = errors
        self.class_names = names
        self.num_classes = len(names)
        self.root = root

    def semantic_map(self, i: int) -> tuple[Tensor, Tensor]:
        """Image ``i`` and its semantic ``[H,W]`` map (0 background, k+1 class k, 255 void).

        The instances (polygons / RLE) of each class are unioned; pixels covered by instances of two
        different classes, and crowd regions outside every instance, are void (no single ground-truth class).
        """

        rec = self.records[i]
        image = load_image(rec["path"])
        h, w = image.shape[-2:]
        k = len(self.class_names or [])
        per_class = torch.zeros(k + 1, h, w, dtype=torch.bool)
        for label, segs in rec["semantic"]:
            per_class[label + 1] |= coco_mask(segs, h, w)
        n_cls = per_class.sum(0)
        labels = per_class.long().argmax(0)
        labels[n_cls > 1] = VOID
        for seg in rec["crowd"]:  # crowd regions not covered by a single instance: void
            crowd = coco_mask(seg if isinstance(seg, list) else [seg], h, w)
            labels[crowd & (n_cls == 0)] = VOID
        return image, labels

    def class_samples(self, i: int) -> list[Sample]:
        """One sample per category present (COCO instances turned into semantic masks), in class order."""

        image, labels = self.semantic_map(i)
        return semantic_samples(image, labels, self.records[i]["id"], list(self.class_names or []), VOID)
