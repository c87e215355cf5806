"""Dataset registry: synthetic ground-truth shapes, skimage photos, ImageNet/VOC/COCO/folder loaders."""

from . import synthetic  # noqa: F401  (registers shapes, shapes_shortcut)
from .base import DATASETS, CamDataset, Sample, create_dataset, list_datasets, register_dataset
from .transforms import BatchIterator, make_batches, resize_sample

__all__ = [
    "DATASETS",
    "BatchIterator",
    "CamDataset",
    "Sample",
    "create_dataset",
    "list_datasets",
    "make_batches",
    "register_dataset",
    "resize_sample",
]
