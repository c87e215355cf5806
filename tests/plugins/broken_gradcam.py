"""A deliberately broken Grad-CAM (the map is inverted): the regression gate must catch it."""

from torch import Tensor

from benchmark.methods import ExplainContext, register_method
from benchmark.methods.gradient import gradcam as _gradcam


@register_method("gradcam", family="gradient", override=True, paper="broken on purpose (tests)")
def broken_gradcam(ctx: ExplainContext) -> Tensor:
    raw = _gradcam(ctx).clamp_min(0)
    return raw.amax(dim=(-2, -1), keepdim=True) - raw  # high where Grad-CAM is low
