"""Dataset registry: synthetic ground-truth shapes, skimage photos, ImageNet/VOC/COCO/folder loaders."""

from .base import DATASETS, CamDataset, Sample, create_dataset, list_datasets, register_dataset

__all__ = ["DATASETS", "CamDataset", "Sample", "create_dataset", "list_datasets", "register_dataset"]
