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
from torch import Tensor

from ..errors import DataError
from ._common import RecordDataset, largest_class, load_image, parse_pascal_xml, resolve_target
from .base import Sample, register_dataset
from .synthetic import mask_to_box

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip

LAYOUT = """\
  ROOT = VOCdevkit/VOC2012 (or VOCdevkit, or the folder holding VOCdevkit), containing
    Annotations/<id>.xml   JPEGImages/<id>.jpg   SegmentationClass/<id>.png   SegmentationObject/<id>.png
    ImageSets/Segmentation/<split>.txt (segmentation=True; split = train | val | trainval | train_aug)
    ImageSets/Main/<split>.txt (segmentation=False)
    SegmentationClassAug/<id>.png + ImageSets/Segmentation/train_aug.txt (split="train_aug": the SBD
      augmented training set of Hariharan et al. 2011, 10582 images, as WSSS papers use it)"""

#: Folder of the class-index PNGs per segmentation split (train_aug: SBD's masks converted to PNG).
MASK_DIRS = {"train_aug": "SegmentationClassAug"}
VOID = 255


def find_voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "Annotations").is_dir() and (cand / "JPEGImages").is_dir():
            return cand
    raise DataError(f"No PASCAL VOC dataset under {root} (no Annotations/ and JPEGImages/). Expected layout:\n{LAYOUT}")


@register_dataset("voc")
class VOCDataset(RecordDataset):
    """PASCAL VOC 2012, the dataset ``voc`` (see the module docstring for targets and the ImageNet
    class-mapping problem)."""

    has_boxes = True
    has_masks = True
    num_classes = len(VOC_CLASSES)
    default_model = "resnet50"
    mask_kind = "segmentation"

    def __init__(
        self,
        root: str | Path | None = None,
        n: int | None = None,
        seed: int = 0,
        split: str = "val",
        segmentation: bool = True,
        target: str | int = "label",
        class_map: dict | None = None,
        verify: bool = True,
    ) -> None:
        if root is None:
            raise DataError(f"The voc dataset needs root=... Expected layout:\n{LAYOUT}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"VOC root {root} does not exist. Expected layout:\n{LAYOUT}")
        voc = find_voc_root(root)
        list_file = voc / "ImageSets" / ("Segmentation" if segmentation else "Main") / f"{split}.txt"
        if not list_file.is_file():
            have = sorted(p.stem for p in list_file.parent.glob("*.txt")) if list_file.parent.is_dir() else []
            hint = (
                " train_aug needs the SBD augmentation (SegmentationClassAug/ and its train_aug.txt list)."
                if split == "train_aug"
                else ""
            )
            raise DataError(
                f"VOC split {split!r} is missing: {list_file} does not exist (splits found: "
                f"{', '.join(have) or 'none'}).{hint} Pass split=... one of those. Expected layout:\n{LAYOUT}"
            )
        mask_dir = voc / MASK_DIRS.get(split, "SegmentationClass")
        if segmentation and not mask_dir.is_dir():
            raise DataError(
                f"VOC split {split!r} needs its masks in {mask_dir}/, which does not exist. Expected layout:\n{LAYOUT}"
            )
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
                png = mask_dir / f"{image_id}.png"
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
        self.segmentation = segmentation

    def _label_map(self, i: int) -> tuple[Tensor, Tensor]:
        """Image ``i`` and its ``[H,W]`` class-index map (0 background, k+1 class k, 255 void)."""
        rec = self.records[i]
        if not self.segmentation or rec["mask"][0] != "label_png":
            raise DataError(
                'target = "labels" on voc needs segmentation=True (the class masks of '
                "SegmentationClass/ or SegmentationClassAug/)."
            )
        image = load_image(rec["path"])
        labels = read_label_png(Path(rec["mask"][1]))
        if tuple(labels.shape) != tuple(image.shape[-2:]):
            raise DataError(
                f"{Path(rec['mask'][1]).name}: segmentation is {tuple(labels.shape)}, image is "
                f"{tuple(image.shape[-2:])}."
            )
        return image, labels

    def class_samples(self, i: int) -> list[Sample]:
        """One sample per class present in the class-index PNG (void 255 = ``ignore``), in class order."""
        rec = self.records[i]
        image, labels = self._label_map(i)
        bad = sorted(set(torch.unique(labels).tolist()) - set(range(len(VOC_CLASSES) + 1)) - {VOID})
        if bad:
            raise DataError(f"{Path(rec['mask'][1]).name}: class indices {bad} outside 0..20 and 255.")
        return semantic_samples(image, labels, rec["id"], VOC_CLASSES, VOID)

    def instance_masks(self, i: int) -> list[tuple[int, Tensor]]:
        """``(class, [H,W] bool)`` per object of ``SegmentationObject/<id>.png`` (instance ``j`` = the
        ``j``-th object of the XML, 255 = void), the class read from ``SegmentationClass`` under it."""
        rec = self.records[i]
        obj_png = self.root / "SegmentationObject" / f"{rec['id']}.png"
        if not obj_png.is_file():
            raise DataError(f"{obj_png.name}: instance masks missing ({obj_png}). Expected layout:\n{LAYOUT}")
        _, labels = self._label_map(i)
        inst = read_label_png(obj_png)
        out = []
        for j in sorted(set(torch.unique(inst).tolist()) - {0, VOID}):
            m = inst == j
            cls = torch.mode(labels[m]).values
            out.append((int(cls) - 1, m))
        return out


def read_label_png(path: Path) -> Tensor:
    """A palette / greyscale label PNG as a ``[H,W]`` long tensor of indices (PIL, no colour conversion)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as e:
        raise DataError(f"{path.name}: unreadable segmentation PNG ({e})") from e
    if arr.ndim != 2:
        raise DataError(f"{path.name}: a label PNG must be single-channel (palette indices), got shape {arr.shape}.")
    return torch.from_numpy(arr.astype("int64"))


def semantic_samples(image: Tensor, labels: Tensor, image_id: str, names: list[str], void: int = VOID) -> list[Sample]:
    """The multi-label samples of a semantic map (0 background, k+1 class k, ``void`` ignored)."""

    ignore = labels == void
    present = sorted(c for c in torch.unique(labels).tolist() if 0 < c <= len(names))
    out = []
    for c in present:
        m = labels == c
        out.append(
            Sample(
                image=image,
                target=c - 1,
                id=f"{image_id}#{names[c - 1]}",
                mask=m,
                boxes=mask_to_box(m),
                label=c - 1,
                ignore=ignore,
            )
        )
    return out
