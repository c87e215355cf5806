"""The model registry (timm style): ``@register_model``, ``list_models``, ``create_model``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..registry import Registry
from ..types import ModelHandle

MODELS: Registry[Callable[..., ModelHandle]] = Registry("model")


def register_model(name: str | None = None, **meta: Any) -> Callable:
    """Decorator registering a factory ``fn(weights="default", **kw) -> ModelHandle``."""
    return MODELS.register(name, **meta)


def create_model(name: str, weights: str = "default", device: str | torch.device = "cpu", **kwargs: Any) -> ModelHandle:
    """Build model ``name`` with ``weights`` ("default", "random" or a checkpoint path), in eval mode.

    ``"timm/<any timm name>"`` builds any timm model even when it is not registered here (the zoo registers
    the ``timm/`` prefix on :data:`MODELS`).
    """
    handle = MODELS.get(name)(weights=weights, **kwargs)
    handle.model.eval().to(device)
    return handle


def list_models(pattern: str | None = None, **meta: Any) -> list[str]:
    return MODELS.list(pattern, **meta)
