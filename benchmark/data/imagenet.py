"""``imagenet``: ILSVRC-2012 validation images with their localisation boxes.

Ground truth comes from either
- ``LOC_val_solution.csv`` (Kaggle "ImageNet Object Localization Challenge": ``ImageId,PredictionString``
  with ``"wnid x0 y0 x1 y1 wnid x0 y0 x1 y1 ..."``), or
- the per-image ILSVRC XML files (``ILSVRC2012_bbox_val_v3.tgz`` / ``Annotations/CLS-LOC/val``).

Class index = position of the wnid in the standard sorted synset order (shipped in
``annotations/imagenet_classes.json``, from timm's ``imagenet_synsets.txt``; torchvision's ``meta.bin``
needs the devkit). Target = the image's class (val images carry one class; with several, the class of
the largest box); boxes = all boxes of that class; mask = their union (box masks: ``mask_kind="box"``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..errors import DataError, InputError
from ._common import (
    RecordDataset,
    first_existing,
    imagenet_classes,
    index_images,
    largest_class,
    parse_pascal_xml,
    resolve_target,
)
from .base import register_dataset

LAYOUT = """\
  annotations: ROOT/LOC_val_solution.csv (Kaggle CSV), or ILSVRC XML files in one of
               ROOT/ILSVRC/Annotations/CLS-LOC/val/, ROOT/Annotations/CLS-LOC/val/, ROOT/val_xml/
  images:      ROOT/ILSVRC/Data/CLS-LOC/val/*.JPEG, or ROOT/Data/CLS-LOC/val/, ROOT/val/, ROOT/images/
               (flat or in per-class folders)"""

CSV_CANDIDATES = ("LOC_val_solution.csv", "ILSVRC/LOC_val_solution.csv")
XML_CANDIDATES = (
    "ILSVRC/Annotations/CLS-LOC/val",
    "Annotations/CLS-LOC/val",
    "val_xml",
    "bbox/val",
    "Annotations",
    "annotations",
)
IMAGE_CANDIDATES = ("ILSVRC/Data/CLS-LOC/val", "Data/CLS-LOC/val", "val", "images", "")


def _parse_csv(path: Path, errors: list[str]) -> dict[str, list[tuple[str, list[float]]]]:
    out: dict[str, list[tuple[str, list[float]]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path.name}: expected the header 'ImageId,PredictionString', got {header!r}.")
        for line, row in enumerate(reader, start=2):
            try:
                image_id, pred = row[0].strip(), row[1].split()
                if not image_id or not pred or len(pred) % 5:
                    raise InputError("PredictionString must hold groups of 'wnid x0 y0 x1 y1'")
                out[image_id] = [(pred[i], [float(v) for v in pred[i + 1 : i + 5]]) for i in range(0, len(pred), 5)]
            except (IndexError, ValueError) as e:
                errors.append(f"{path.name} line {line}: malformed row ({e})")
    return out


def _parse_xml_dir(directory: Path, errors: list[str]) -> dict[str, list[tuple[str, list[float]]]]:
    out: dict[str, list[tuple[str, list[float]]]] = {}
    for xml in sorted(directory.rglob("*.xml")):
        try:
            ann = parse_pascal_xml(xml)
        except DataError as e:
            errors.append(str(e))
            continue
        if not ann["objects"]:
            errors.append(f"{xml.name}: no <object> in the annotation")
            continue
        out[xml.stem] = [(o["name"], o["box"]) for o in ann["objects"]]
    return out


@register_dataset("imagenet")
class ImageNetVal(RecordDataset):
    """ILSVRC-2012 val with boxes, the dataset ``imagenet`` (``target="label"``: the true class;
    ``"predicted"``: model's top-1)."""

    has_masks = True
    has_boxes = True
    num_classes = 1000
    default_model = "resnet50"
    mask_kind = "box"

    def __init__(
        self,
        root: str | Path | None = None,
        n: int | None = None,
        seed: int = 0,
        target: str | int = "label",
        verify: bool = True,
    ) -> None:
        if root is None:
            raise DataError(f"The imagenet dataset needs root=... (the ILSVRC val folder). Expected layout:\n{LAYOUT}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"ImageNet root {root} does not exist. Expected layout:\n{LAYOUT}")
        errors: list[str] = []
        csv_path = first_existing(root, CSV_CANDIDATES, kind="file")
        if csv_path is not None:
            ann = _parse_csv(csv_path, errors)
        else:
            xml_dir = first_existing(root, XML_CANDIDATES)
            if xml_dir is None or not any(xml_dir.rglob("*.xml")):
                raise DataError(
                    f"No ImageNet validation annotations under {root}: neither LOC_val_solution.csv nor a "
                    f"folder of ILSVRC XML files was found. Expected layout:\n{LAYOUT}"
                )
            ann = _parse_xml_dir(xml_dir, errors)
        image_dir = first_existing(root, IMAGE_CANDIDATES)
        images = index_images(image_dir) if image_dir is not None else {}
        wnids, names = imagenet_classes()
        index = {w: i for i, w in enumerate(wnids)}
        records = []
        for image_id in sorted(ann):
            objs = ann[image_id]
            bad = [w for w, _ in objs if w not in index]
            if bad:
                errors.append(f"{image_id}: unknown ImageNet synset(s) {sorted(set(bad))}")
                continue
            if image_id not in images:
                errors.append(f"{image_id}: image file missing (looked under {image_dir})")
                continue
            boxes = torch.tensor([b for _, b in objs], dtype=torch.float32)
            labels = [index[w] for w, _ in objs]
            label = largest_class(boxes, labels)
            keep = torch.tensor([lab == label for lab in labels])
            records.append(
                {
                    "path": str(images[image_id]),
                    "id": image_id,
                    "label": label,
                    "target": resolve_target(label, target),
                    "boxes": boxes[keep],
                    "mask": ("boxes",),
                }
            )
        super().__init__(records, n, seed, verify=verify)
        self.errors[:0] = errors
        self.class_names = names
        self.root = root
