"""Model registry: torchvision/timm zoo, efficientnet_lite0 (offline ImageNet) and our synthetic CNNs."""

from . import synthetic  # noqa: F401  (registers shapes_cnn, shapes_shortcut_cnn)
from .base import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
