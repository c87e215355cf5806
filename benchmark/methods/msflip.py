"""Multi-scale + horizontal-flip aggregation of any method's maps (the CAM protocol of WSSS papers).

WSSS papers (e.g. IRN, Ahn et al. CVPR 2019; SEAM, Wang et al. CVPR 2020) compute the CAM of an image at
several scales (typically 0.5, 1.0, 1.5, 2.0) and on its horizontal mirror, bring every map back to the
input resolution (bilinear upsampling, un-mirroring), **sum** them, then normalise the sum. This module
does that for every registered method: each (scale, flip) variant of the batch gets its own
:class:`~benchmark.methods.base.ExplainContext` (one capture per variant, shared by every method of the
batch through ``ctx.cache``), the method's raw map of each variant goes through the method's ReLU (if
any) and is upsampled to the input size, and the sum is min-max normalised
(:func:`~benchmark.methods.postprocess.finalize`). Images are rescaled with bilinear interpolation
(half-pixel centres). Models that accept only one input size (ViTs with fixed position embeddings)
cannot be evaluated at other scales: the method then fails and is recorded as such.

With ``ms_flip`` unset (the default) nothing here runs and maps are those of the 2-D default pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .postprocess import finalize, upsample

#: Scales of the WSSS papers' protocol (IRN / SEAM).
DEFAULT_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class MultiScaleFlip:
    """Which variants to aggregate: every scale in ``scales``, each also mirrored when ``flip``."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True

    def __post_init__(self) -> None:
        if not self.scales or any(float(s) <= 0 for s in self.scales):
            raise InputError(f"ms_flip scales must be a non-empty list of positive numbers, got {self.scales}.")

    @property
    def variants(self) -> list[tuple[float, bool]]:
        return [(float(s), f) for s in self.scales for f in ((False, True) if self.flip else (False,))]


def _resize(x: Tensor, size: tuple[int, int], nearest: bool = False) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if nearest:
        return F.interpolate(x[:, None].float(), size=size, mode="nearest-exact")[:, 0] > 0.5
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def variant_context(ctx: Any, scale: float, flip: bool) -> Any:
    """The context of ``ctx``'s batch mirrored (``flip``) and rescaled by ``scale`` (memoised in ``ctx.cache``):
    a copy of ``ctx`` (an :class:`~benchmark.methods.base.ExplainContext`) with its own capture and cache."""
    key = ("ms_flip_variant", float(scale), bool(flip))
    if key in ctx.cache:
        return ctx.cache[key]
    h, w = ctx.input_size
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    images = ctx.images.flip(-1) if flip else ctx.images
    images = _resize(images, size)
    masks = ctx.masks
    if masks is not None:
        masks = _resize(masks.flip(-1) if flip else masks, size, nearest=True)
    v = replace(ctx, images=images, masks=masks, _capture=None, cache={})
    ctx.cache[key] = v
    return v


def run_method_ms_flip(
    ctx: Any, method: Callable[[Any], Tensor], relu: bool, config: MultiScaleFlip | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A method's raw map function ``method(ctx) -> Tensor`` aggregated over ``config``'s scales and flips
    (sum at input resolution, then min-max); returns ``(maps, raw, degenerate)`` of a
    :class:`~benchmark.methods.base.MethodOutput` (``raw`` is the sum). ``relu``: the method's ReLU."""
    config = config or MultiScaleFlip()
    size = ctx.input_size
    total: Tensor | None = None
    nonfinite: Tensor | None = None
    for scale, flip in config.variants:
        raw = method(variant_context(ctx, scale, flip)).float()
        bad = ~torch.isfinite(raw).flatten(1).all(dim=1)
        m = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
        if relu:
            m = m.clamp_min(0)
        m = upsample(m, size)
        if flip:
            m = m.flip(-1)
        total = m if total is None else total + m
        nonfinite = bad if nonfinite is None else nonfinite | bad
    assert total is not None and nonfinite is not None
    maps, degenerate = finalize(total, size, relu=False)
    degenerate = degenerate | nonfinite
    maps = torch.where(degenerate.view(-1, 1, 1), torch.zeros_like(maps), maps)
    return maps, total.detach(), degenerate


__all__ = ["DEFAULT_SCALES", "MultiScaleFlip", "run_method_ms_flip", "variant_context"]
