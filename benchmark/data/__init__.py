"""Dataset registry: synthetic ground-truth shapes, skimage photos, ImageNet/VOC/COCO/folder loaders."""

from .base import DATASETS, CamDataset, Sample, create_dataset, list_datasets, register_dataset
from . import coco, folder, imagenet, photos, voc  # noqa: F401,E402  (register the real-data loaders)
from ._common import PREDICTED  # noqa: E402

__all__ = [
    "PREDICTED", "DATASETS", "CamDataset", "Sample", "create_dataset", "list_datasets", "register_dataset",
]  # fmt: skip
