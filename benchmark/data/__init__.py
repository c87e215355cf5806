"""Dataset registry: synthetic ground-truth shapes, skimage photos, ImageNet/VOC/COCO/folder loaders."""

from .base import DATASETS, CamDataset, Sample, create_dataset, list_datasets, register_dataset
from . import coco, folder, imagenet, multilabel, photos, synthetic, voc  # noqa: F401,E402  (registration)
from ._common import PREDICTED  # noqa: E402
from .transforms import BatchIterator, make_batches, resize_sample  # noqa: E402

__all__ = [
    "PREDICTED",
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
