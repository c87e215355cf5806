"""Dataset registry: synthetic ground-truth shapes, skimage photos, ImageNet/VOC/COCO/folder loaders."""

from . import captions, coco, composites, folder, imagenet, multilabel, photos, synthetic, video, voc, volumetric  # noqa: F401  (registration)
from ._common import PREDICTED
from .base import DATASETS, CamDataset, Sample, create_dataset, list_datasets, register_dataset
from .transforms import BatchIterator, make_batches, resize_sample

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
