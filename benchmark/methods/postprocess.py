"""Map post-processing shared by every method (docs/methods.md#common): ReLU, per-map min-max, upsampling.

Maps are ``[B,h,w]`` for images and ``[B,t,h,w]`` for volumes and clips (``t`` = depth or time); 3-D maps
are upsampled trilinearly (half-voxel centres), 2-D ones bilinearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

REL_TOL = 1e-6  # a map whose range is below this fraction of its magnitude counts as constant


def minmax(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation of ``[B,h,w]`` to exactly [0,1]; a constant map becomes zeros.

    pytorch-grad-cam divides by ``max - min + 1e-7``; an absolute epsilon squashes maps of tiny magnitude
    (random-init networks give activations ~1e-5), so the range itself is used (scale-free, same ranking).
    """
    flat = maps.flatten(1)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    lo = flat.min(dim=1).values.view(shape)
    span = flat.max(dim=1).values.view(shape) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (maps - lo) / safe, torch.zeros_like(maps))


def upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize ``[B,h,w] -> [B,H,W]`` with half-pixel centres (cv2.resize / align_corners=False);
    trilinear ``[B,t,h,w] -> [B,T,H,W]`` for a 3-tuple ``size``."""
    size = tuple(int(v) for v in size)
    if tuple(maps.shape[1:]) == size or (len(size) == 2 and tuple(maps.shape[-2:]) == size):
        return maps
    mode = "trilinear" if len(size) == 3 else "bilinear"
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def degenerate_maps(raw: Tensor, relu: bool = True, rel_tol: float = REL_TOL) -> Tensor:
    """``[B]`` bool: maps that are non-finite anywhere, or constant after the (optional) ReLU.

    Constant = range <= ``rel_tol`` x the largest magnitude (all-zero maps included), so float rounding
    on a map that is constant in exact arithmetic does not turn into amplified noise.
    """
    finite = torch.isfinite(raw).flatten(1).all(dim=1)
    m = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    if relu:
        m = m.clamp_min(0)
    flat = m.flatten(1)
    span = flat.max(dim=1).values - flat.min(dim=1).values
    scale = flat.abs().max(dim=1).values
    return (~finite) | (span <= rel_tol * scale)


def finalize(raw: Tensor, size: tuple[int, ...], relu: bool = True) -> tuple[Tensor, Tensor]:
    """Turn raw ``[B,h,w]`` maps into ``[B,H,W]`` float32 maps in [0,1] and a ``[B]`` degenerate flag
    (``[B,t,h,w]`` into ``[B,T,H,W]`` for volumes and clips, ``size = (T,H,W)``).

    Pipeline (pgc ``base_cam`` + ``scale_cam_image``): optional ReLU, min-max at low resolution, bilinear
    upsampling to the input size. A map that is non-finite anywhere or constant becomes all zeros and is
    flagged (never NaN).
    """
    if raw.ndim != len(size) + 1 or raw.ndim not in (3, 4):
        raise InputError(
            f"A raw CAM must be [B,h,w] (images) or [B,t,h,w] (volumes, clips) for an input of size "
            f"{tuple(size)}; got shape {tuple(raw.shape)}."
        )
    raw = raw.float()
    bad = degenerate_maps(raw, relu=relu)
    m = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    if relu:
        m = m.clamp_min(0)
    m = minmax(m)
    m = torch.where(bad.view((-1,) + (1,) * (m.ndim - 1)), torch.zeros_like(m), m)
    out = upsample(m, size).clamp_(0.0, 1.0)
    return out.contiguous(), bad
