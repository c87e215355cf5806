"""Core data types shared by every stage: Batch, Capture and ModelHandle (see docs/interfaces.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import InputError

Reshape = Callable[[Tensor], Tensor]


@dataclass
class Batch:
    """A batch of model-ready images with what is known about them.

    images:  ``[B,3,H,W]`` float, already normalised for the model (volumes and clips: ``[B,3,T,H,W]``).
    targets: ``[B]`` long, the class to explain.
    masks:   ``[B,H,W]`` bool ground-truth region of the target object (``[B,T,H,W]``), or None.
    boxes:   list of ``[K,4]`` float xyxy pixel boxes of the target object (one tensor per image; volumes
             and clips: ``[K,6]`` ``x0,y0,t0,x1,y1,t1``), or None.
    ids:     stable string per image, the key of every score row.
    """

    images: Tensor
    targets: Tensor
    ids: list[str]
    masks: Tensor | None = None
    boxes: list[Tensor] | None = None
    labels: Tensor | None = None  # true class when it differs from the explained target
    ignore: Tensor | None = None  # [B,H,W] bool: pixels without ground truth (e.g. VOC void), or None
    #: ``{name: [B,...]}`` per-image tensors a dataset knows by construction (``Sample.extras``, stacked;
    #: images, keys ending in ``_image``, normalised like ``images``), e.g. ``truth_mask`` (``truth`` metrics).
    extras: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        b = self.images.shape[0]
        if self.images.ndim not in (4, 5):
            raise InputError(
                f"Batch.images must be [B,C,H,W] (or [B,C,T,H,W] for volumes and clips), got shape "
                f"{tuple(self.images.shape)}."
            )
        if self.targets.shape != (b,):
            raise InputError(f"Batch.targets must be [B]={b}, got shape {tuple(self.targets.shape)}.")
        if len(self.ids) != b:
            raise InputError(f"Batch.ids must hold {b} ids, got {len(self.ids)}.")
        if self.masks is not None and self.masks.shape != (b, *self.images.shape[2:]):
            raise InputError(
                f"Batch.masks must be [B,H,W]={(b, *self.images.shape[2:])} (the images' spatial size), "
                f"got {tuple(self.masks.shape)}."
            )
        if self.ignore is not None and self.ignore.shape != (b, *self.images.shape[-2:]):
            raise InputError(
                f"Batch.ignore must be [B,H,W]={(b, *self.images.shape[-2:])}, got {tuple(self.ignore.shape)}."
            )
        if self.boxes is not None and len(self.boxes) != b:
            raise InputError(f"Batch.boxes must hold {b} box tensors, got {len(self.boxes)}.")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def mv(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        def opt(t: Tensor | None) -> Tensor | None:
            return None if t is None else mv(t)

        return Batch(
            images=mv(self.images),
            targets=mv(self.targets),
            ids=list(self.ids),
            masks=opt(self.masks),
            boxes=None if self.boxes is None else [mv(b) for b in self.boxes],
            labels=opt(self.labels),
            ignore=opt(self.ignore),
            extras=None if self.extras is None else {k: mv(v) for k, v in self.extras.items()},
        )

    def select(self, index: Sequence[int]) -> Batch:
        idx = list(index)
        it = torch.as_tensor(idx, dtype=torch.long, device=self.images.device)
        return Batch(
            images=self.images[it],
            targets=self.targets[it],
            ids=[self.ids[i] for i in idx],
            masks=None if self.masks is None else self.masks[it],
            boxes=None if self.boxes is None else [self.boxes[i] for i in idx],
            labels=None if self.labels is None else self.labels[it],
            ignore=None if self.ignore is None else self.ignore[it],
            extras=None if self.extras is None else {k: v[it] for k, v in self.extras.items()},
        )


@dataclass
class Capture:
    """What one forward+backward pass through the target layer yields (made once per batch).

    activations: ``A [B,C,h,w]`` of the target layer (token outputs already reshaped).
    gradients:   ``G [B,C,h,w]`` of the target logits ``y^c`` w.r.t. ``A`` (None for forward-only capture).
    logits:      ``[B,K]`` model outputs (pre-softmax).
    targets:     ``[B]`` classes whose logits were differentiated.
    """

    activations: Tensor
    gradients: Tensor | None
    logits: Tensor
    targets: Tensor

    @property
    def spatial_size(self) -> tuple[int, int]:
        return int(self.activations.shape[-2]), int(self.activations.shape[-1])


@dataclass
class ModelHandle:
    """A model ready to be explained, with everything a benchmark needs to know about it."""

    name: str
    model: nn.Module
    target_layer: str
    input_size: tuple[int, ...] = (224, 224)  # (T, H, W) for volume and video models
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    reshape: Reshape | None = None
    class_names: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def normalize(self, images01: Tensor) -> Tensor:
        """Map ``[B,3,H,W]`` images in [0,1] to the model's input space."""
        shape = (1, -1) + (1,) * (images01.ndim - 2)  # [B,3,H,W], or [B,3,T,H,W] volumes and clips
        mean = torch.tensor(self.mean, dtype=images01.dtype, device=images01.device).view(shape)
        std = torch.tensor(self.std, dtype=images01.dtype, device=images01.device).view(shape)
        return (images01 - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (images.ndim - 2)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(shape)
        return images * std + mean
