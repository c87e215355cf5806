"""Pure tensor implementations of every metric (no registry, no state)."""

from .faithfulness import (  # noqa: F401
    average_drop,
    deletion_auc,
    increase_in_confidence,
    insertion_auc,
    noisy_linear_impute,
    rise_blur,
    road,
)
