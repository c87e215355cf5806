"""Model registry: torchvision/timm zoo, efficientnet_lite0 (offline ImageNet) and our synthetic CNNs."""

from .base import MODELS, create_model, list_models, register_model
from . import efficientnet, multilabel, synthetic, zoo  # noqa: F401,E402  (registration)

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
