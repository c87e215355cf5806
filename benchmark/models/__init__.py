"""Model registry: torchvision/timm zoo, efficientnet_lite0 (offline ImageNet), our synthetic CNNs and ViT."""

from . import (  # noqa: F401  (registration)
    bam,
    captioner,
    dual_encoder,
    efficientnet,
    multilabel,
    synthetic,
    vit,
    volumetric,
    zoo,
)
from .base import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
