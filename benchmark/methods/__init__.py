"""CAM methods: a registry of raw-map functions sharing one capture per batch.

>>> from benchmark import methods
>>> maps = methods.get("gradcam")(model, "layer4", images, targets)          # [B,H,W] in [0,1]
>>> many = methods.explain(model, "layer4", images, targets, ["gradcam", "layercam", "scorecam"])
"""

from . import (  # noqa: F401  (registration side effects)
    attention,
    baselines,
    bridges,
    cfcam,
    eigen,
    extra,
    fullgrad,
    gradient,
    legrad,
    msflip,
    score,
    score_variants,
    tam,
    text,
)
from .base import (
    METHODS,
    ExplainContext,
    Explainer,
    MethodOutput,
    explain,
    explain_context,
    get,
    is_applicable,
    list_methods,
    method_params,
    register_method,
    run_method,
)
from .bridges import from_pytorch_grad_cam, from_torchcam
from .capture import (
    capture,
    default_layer,
    default_layer_name,
    resolve_layer,
    swin_reshape,
    vit_reshape,
)
from .msflip import MultiScaleFlip
from .postprocess import finalize

__all__ = [
    "METHODS",
    "MultiScaleFlip",
    "ExplainContext",
    "Explainer",
    "MethodOutput",
    "capture",
    "default_layer",
    "default_layer_name",
    "explain",
    "explain_context",
    "finalize",
    "from_pytorch_grad_cam",
    "from_torchcam",
    "get",
    "is_applicable",
    "list_methods",
    "method_params",
    "register_method",
    "resolve_layer",
    "run_method",
    "swin_reshape",
    "vit_reshape",
]
