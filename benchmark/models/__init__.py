"""Model registry: torchvision/timm zoo, efficientnet_lite0 (offline ImageNet) and our synthetic CNNs."""

from . import bam, efficientnet, multilabel, synthetic, volumetric, zoo  # noqa: F401  (registration)
from .base import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
