"""``voc``: PASCAL VOC 2012 with boxes (``Annotations/*.xml``) and class masks (``SegmentationClass``).

One sample per image. Target object = the class of the largest non-difficult box (objects marked
``difficult`` are ignored, as in the pointing-game protocol); ``boxes`` = every non-difficult box of that
class; ``mask`` = the pixels of that class in ``SegmentationClass/<id>.png`` (palette index = class
index + 1; 255 = void border, excluded) when ``segmentation=True`` (the images of
``ImageSets/Segmentation/<split>.txt``), else the union of the boxes (``ImageSets/Main/<split>.txt``).

The class mapping problem: the explained models are ImageNet classifiers, which have no "person",
"pottedplant" or "diningtable" class, and VOC's "dog" covers 120 ImageNet breeds. So:
``target="label"`` explains the VOC label (0..19) - only meaningful for a VOC-trained model - unless
``class_map`` maps VOC names or indices to the model's classes (e.g. ``{"cat": 281, "aeroplane": 404}``;
unmapped images are skipped and counted in ``skipped``); ``target="predicted"`` explains the model's own
top-1 class (``Sample.target == PREDICTED``), keeping the VOC label in ``Sample.label``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError
from ._common import RecordDataset, largest_class, parse_pascal_xml, resolve_target
from .base import register_dataset

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip

LAYOUT = """\
  ROOT = VOCdevkit/VOC2012 (or VOCdevkit, or the folder holding VOCdevkit), containing
    Annotations/<id>.xml   JPEGImages/<id>.jpg   SegmentationClass/<id>.png
    ImageSets/Segmentation/<split>.txt (segmentation=True)
    ImageSets/Main/<split>.txt (segmentation=False)"""


def find_voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "Annotations").is_dir() and (cand / "JPEGImages").is_dir():
            return cand
    raise DataError(
        f"No PASCAL VOC dataset under {root} (no Annotations/ and JPEGImages/). Expected layout:\n{LAYOUT}"
    )


class VOCDataset(RecordDataset):
    has_boxes = True
    has_masks = True
    num_classes = len(VOC_CLASSES)

    def __init__(
        self,
        root: str | Path,
        n: int | None = None,
        seed: int = 0,
        split: str = "val",
        segmentation: bool = True,
        target: str | int = "label",
        class_map: dict | None = None,
        verify: bool = True,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"VOC root {root} does not exist. Expected layout:\n{LAYOUT}")
        voc = find_voc_root(root)
        list_file = voc / "ImageSets" / ("Segmentation" if segmentation else "Main") / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"VOC image list {list_file} is missing. Expected layout:\n{LAYOUT}")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        errors: list[str] = []
        self.skipped: dict[str, int] = {"only_difficult": 0, "unmapped": 0}
        index = {c: i for i, c in enumerate(VOC_CLASSES)}
        records = []
        for image_id in ids:
            xml = voc / "Annotations" / f"{image_id}.xml"
            try:
                ann = parse_pascal_xml(xml)
            except DataError as e:
                errors.append(str(e) if xml.is_file() else f"{xml.name}: annotation file missing")
                continue
            objs = [o for o in ann["objects"] if not o["difficult"]]
            unknown = sorted({o["name"] for o in objs if o["name"] not in index})
            if unknown:
                errors.append(f"{xml.name}: unknown VOC class(es) {unknown}")
                continue
            if not objs:
                self.skipped["only_difficult"] += 1
                continue
            boxes = torch.tensor([o["box"] for o in objs], dtype=torch.float32)
            labels = [index[o["name"]] for o in objs]
            label = largest_class(boxes, labels)
            tgt = resolve_target(label, target, class_map, VOC_CLASSES)
            if tgt is None:
                self.skipped["unmapped"] += 1
                continue
            mask: tuple = ("boxes",)
            if segmentation:
                png = voc / "SegmentationClass" / f"{image_id}.png"
                if not png.is_file():
                    errors.append(f"{png.name}: segmentation file missing")
                    continue
                mask = ("label_png", str(png), label + 1)
            keep = torch.tensor([lab == label for lab in labels])
            records.append(
                {
                    "path": str(voc / "JPEGImages" / f"{image_id}.jpg"),
                    "id": image_id,
                    "label": label,
                    "target": tgt,
                    "boxes": boxes[keep],
                    "mask": mask,
                }
            )
        super().__init__(records, n, seed, verify=verify)
        self.errors[:0] = errors
        self.class_names = list(VOC_CLASSES)
        self.root = voc


@register_dataset(
    "voc", has_masks=True, has_boxes=True, default_model="resnet50", num_classes=20, mask_kind="segmentation"
)
def voc(
    root: str | None = None,
    n: int | None = None,
    seed: int = 0,
    split: str = "val",
    segmentation: bool = True,
    target: str | int = "label",
    class_map: dict | None = None,
    verify: bool = True,
) -> VOCDataset:
    """PASCAL VOC 2012 (see the module docstring for targets and the ImageNet class-mapping problem)."""
    if root is None:
        raise DataError(f"The voc dataset needs root=... Expected layout:\n{LAYOUT}")
    return VOCDataset(root, n, seed, split, segmentation, target, class_map, verify)
