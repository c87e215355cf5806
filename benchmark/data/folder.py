"""``folder``: every image under a directory (recursively), with no ground truth.

Target: ``"predicted"`` (default; ``Sample.target == PREDICTED``, the model's own top-1 class) or one
class index for every image. Ids are the paths relative to ``root`` (POSIX separators). Only
faithfulness / robustness / sanity / cost metrics apply (no masks, no boxes).

In a suite: ``data = { root = "/path/to/images", target = "predicted" }`` (also ``n``: a seeded subset;
``verify``: open every header up front). Files that cannot be read (empty, not an image, truncated) are
left out and named with their reason in ``errors`` (a file that fails only when fully decoded: by the batch
builder); the runner reports each one once.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from ._common import IMAGE_EXTENSIONS, RecordDataset, resolve_target
from .base import register_dataset


@register_dataset("folder")
class ImageFolder(RecordDataset):
    """Plain images without ground truth, the dataset ``folder`` (explains the predicted class unless
    ``target`` is an int)."""

    #: the expected folder layout (``list datasets``, docs/datasets.md)
    layout = "ROOT/**/*.{jpg,jpeg,png,bmp,webp,...}  (any depth; no ground truth)"

    has_boxes = False
    has_masks = False
    default_model = "resnet50"

    def __init__(
        self,
        root: str | Path | None = None,
        n: int | None = None,
        seed: int = 0,
        target: str | int = "predicted",
        verify: bool = True,
    ) -> None:
        if root is None:
            raise DataError("The folder dataset needs root='/path/to/images'.")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"Image folder {root} does not exist. Expected: a directory holding image files "
                f"({', '.join(IMAGE_EXTENSIONS)}), possibly in sub-folders."
            )
        if target == "label":
            raise DataError("The folder dataset has no labels: use target='predicted' or a class index.")
        tgt = resolve_target(-1, target)
        records = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    p = Path(dirpath) / f
                    rel = p.relative_to(root).as_posix()
                    records.append(
                        {"path": str(p), "id": rel, "label": None, "target": tgt, "boxes": None, "mask": None}
                    )
        records.sort(key=lambda r: str(r["id"]))
        if not records:
            raise DataError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
        super().__init__(records, n, seed, verify=verify)
        self.root = root
