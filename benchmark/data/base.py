"""The dataset registry and the sample type every loader yields."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from ..errors import CambenchError, DataError
from ..registry import Registry


@dataclass
class Sample:
    """One image with its ground truth. ``image`` is ``[3,H,W]`` float in [0,1], not normalised."""

    image: Tensor
    target: int
    id: str
    mask: Tensor | None = None  # [H,W] bool, region of the target object
    boxes: Tensor | None = None  # [K,4] float xyxy pixels of the target object
    label: int | None = None
    ignore: Tensor | None = None  # [H,W] bool, pixels without ground truth (VOC's void border, 255)
    #: Extra per-image tensors a dataset knows by construction (``[H,W]`` masks, ``[3,H,W]`` images in
    #: [0,1], 0-d per-image scalars such as ``contrast_target``), e.g. the model-truth region of the ``truth``
    #: metrics; they travel into ``Batch.extras``.
    extras: dict[str, Tensor] | None = None


class CamDataset(Dataset):
    """Base class: a map-style dataset of :class:`Sample` with what the runner needs to know.

    A subclass registered with ``@register_dataset("name")`` is its own factory: its ``__init__`` arguments
    are what a suite's ``data`` table sets, and its class attributes named in :data:`DATASET_META` are the
    registry metadata (``list datasets`` shows them). An instance may refine them (e.g. ``has_masks`` of a
    folder whose clips may lack masks, ``num_classes`` read from an annotation file).
    """

    has_masks: bool = False
    has_boxes: bool = False
    num_classes: int = 0  # 0: known only once built (from the files)
    class_names: list[str] | None = None
    #: the model a suite uses with this dataset when it names none (e.g. ``shapes`` -> ``shapes_cnn``)
    default_model: str | None = None
    #: what the masks are: ``"box"`` (box unions), ``"polygon"``, ``"segmentation"``, ``"instance"``
    mask_kind: str | None = None

    def __init__(self) -> None:
        self.errors: list[str] = []  # files skipped as corrupt or missing, by name and reason

    def class_samples(self, index: int) -> list[Sample]:
        """Multi-label view of image ``index``: one :class:`Sample` per class present in it (``target =
        "labels"``), each with that class as ``target``/``label``, that class's pixels as ``mask``, the
        image's void pixels as ``ignore`` and the id ``"<image id>#<class name>"``. Datasets with per-class
        ground truth override this."""

        raise DataError(
            f"Dataset {type(self).__name__} has no per-class ground truth, so it cannot explain every class "
            'of an image (target = "labels"). Use a multi-label dataset (shapes_multilabel, voc, coco) or '
            'target = "label".'
        )


DATASETS: Registry[Callable[..., CamDataset]] = Registry("dataset")

#: Class attributes of a registered :class:`CamDataset` subclass copied into its registry metadata (when set:
#: not None, and ``num_classes`` not 0). ``synthetic``, ``multilabel``, ``ndim``, ``offline`` and ``layout`` are
#: optional class attributes (generated data; several classes per image; 3 = volumes or clips; needs no download;
#: the folder layout a loader of real data expects under ``root``).
DATASET_META = (
    "has_masks",
    "has_boxes",
    "num_classes",
    "default_model",
    "mask_kind",
    "synthetic",
    "multilabel",
    "ndim",
    "offline",
    "layout",
)


def dataset_meta(cls: type) -> dict[str, Any]:
    """The registry metadata a :class:`CamDataset` subclass declares by its class attributes (:data:`DATASET_META`)."""
    out = {}
    for key in DATASET_META:
        value = getattr(cls, key, None)
        if value is None or (key == "num_classes" and value == 0):
            continue
        out[key] = value
    return out


def register_dataset(name: str | None = None, **meta: Any) -> Callable:
    """Decorator registering a dataset under ``name``: a :class:`CamDataset` subclass or a factory function.

    A class is its own factory: a suite's ``data`` table is its ``__init__`` arguments (what ``run_bench.py
    list datasets`` shows; give it ``root=None``, ``n`` and ``seed`` keywords, as the runner passes ``seed``
    and ``--data-root`` passes ``root``), and the metadata is :func:`dataset_meta` of its class attributes,
    updated by ``meta``. A function ``fn(root=None, n=None, seed=0, **kw) -> CamDataset`` is accepted as well
    (plugins; a built-in keeps one only where the factory does real work), with ``meta`` as its metadata.
    """
    override = bool(meta.pop("override", False))

    def deco(obj: Any) -> Any:
        if inspect.isclass(obj):
            if not issubclass(obj, CamDataset):
                raise CambenchError(
                    f"register_dataset({name!r}) decorates {obj.__name__}, which is not a CamDataset subclass. "
                    "Subclass benchmark.data.CamDataset, or register a factory function returning one."
                )
            info = {**dataset_meta(obj), **meta}
        elif callable(obj):
            info = dict(meta)
        else:
            raise CambenchError(f"register_dataset({name!r}) needs a CamDataset subclass or a function; got {obj!r}.")
        DATASETS.add(name or str(getattr(obj, "__name__", "")), obj, override=override, **info)
        return obj

    return deco


def create_dataset(name: str, **kwargs: Any) -> CamDataset:
    return DATASETS.get(name)(**kwargs)


def list_datasets(pattern: str | None = None, **meta: Any) -> list[str]:
    return DATASETS.list(pattern, **meta)
