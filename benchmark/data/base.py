"""The dataset registry and the sample type every loader yields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import Tensor
from torch.utils.data import Dataset

from ..registry import Registry


@dataclass
class Sample:
    """One image with its ground truth. ``image`` is ``[3,H,W]`` float in [0,1], not normalised."""

    image: Tensor
    target: int
    id: str
    mask: Optional[Tensor] = None  # [H,W] bool, region of the target object
    boxes: Optional[Tensor] = None  # [K,4] float xyxy pixels of the target object
    label: Optional[int] = None
    ignore: Optional[Tensor] = None  # [H,W] bool, pixels without ground truth (VOC's void border, 255)
    #: Extra per-image tensors a dataset knows by construction (``[H,W]`` masks, ``[3,H,W]`` images in
    #: [0,1]), e.g. the model-truth region of the ``truth`` metrics; they travel into ``Batch.extras``.
    extras: Optional[dict[str, Tensor]] = None


class CamDataset(Dataset):
    """Base class: a map-style dataset of :class:`Sample` with what the runner needs to know."""

    has_masks: bool = False
    has_boxes: bool = False
    num_classes: int = 0
    class_names: Optional[list[str]] = None

    def __init__(self) -> None:
        self.errors: list[str] = []  # files skipped as corrupt or missing, by name and reason

    def class_samples(self, index: int) -> list[Sample]:
        """Multi-label view of image ``index``: one :class:`Sample` per class present in it (``target =
        "labels"``), each with that class as ``target``/``label``, that class's pixels as ``mask``, the
        image's void pixels as ``ignore`` and the id ``"<image id>#<class name>"``. Datasets with per-class
        ground truth override this."""
        from ..errors import DataError

        raise DataError(
            f"Dataset {type(self).__name__} has no per-class ground truth, so it cannot explain every class "
            "of an image (target = \"labels\"). Use a multi-label dataset (shapes_multilabel, voc, coco) or "
            "target = \"label\"."
        )


DATASETS: Registry[Callable[..., CamDataset]] = Registry("dataset")


def register_dataset(name: str | None = None, **meta: Any) -> Callable:
    """Decorator registering a factory ``fn(root=None, n=None, seed=0, **kw) -> CamDataset``."""
    return DATASETS.register(name, **meta)


def create_dataset(name: str, **kwargs: Any) -> CamDataset:
    return DATASETS.get(name)(**kwargs)


def list_datasets(pattern: str | None = None, **meta: Any) -> list[str]:
    return DATASETS.list(pattern, **meta)
