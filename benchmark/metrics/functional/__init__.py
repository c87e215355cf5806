"""Pure tensor implementations of every metric (no registry, no state)."""

from .cost import latency_ms, peak_memory_mb  # noqa: F401
from .faithfulness import (  # noqa: F401
    average_drop,
    deletion_auc,
    increase_in_confidence,
    insertion_auc,
    noisy_linear_impute,
    rise_blur,
    road,
)
from .localization import (  # noqa: F401
    box_best_ious,
    box_iou,
    energy_pointing_game,
    mask_iou,
    max_box_acc_v2,
    pointing_game,
    pxap,
)
from .quantus_bridge import quantus_metric  # noqa: F401
from .robustness import (  # noqa: F401
    avg_sensitivity,
    gradient_noise_stability,
    local_lipschitz,
    max_sensitivity,
)
from .sanity import model_randomization  # noqa: F401
from .seeds import (  # noqa: F401
    miou_from_confusion,
    seed_labels,
    seed_statistics,
    segmentation_confusion,
    statistics_from_confusion,
)
