"""Eigen-CAM and Eigen-Grad-CAM: first principal component of the layer (docs/methods.md#eigencam, #eigengradcam)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .base import ExplainContext, register_method

SIGNS = ("none", "max_abs", "corr")


def first_right_singular_vector(o: Tensor, solver: str = "lapack") -> Tensor:
    """``v_1`` of each ``o[b] = U S V^T`` (``o``: ``[B, n, C]``) -> ``[B, C]``.

    ``"lapack"``: NumPy's LAPACK gesdd, as pytorch-grad-cam calls it (``full_matrices=False`` returns the
    same ``v_1`` and sign as pgc's ``full_matrices=True`` at a fraction of the cost), so default maps are
    pgc's to float precision. ``"gram"``: top eigenvector of the small ``n x n`` Gram matrix in float64
    (``v_1 = O^T u_1 / ||O^T u_1||``), batched torch on any device and much faster; its sign convention
    (largest-magnitude component positive) differs from LAPACK's arbitrary one.
    """
    if solver == "lapack":
        _, _, vt = np.linalg.svd(o.cpu().numpy(), full_matrices=False)
        return torch.from_numpy(np.ascontiguousarray(vt[:, 0, :])).to(o.device, o.dtype)
    if solver == "gram":
        od = o.double()
        _, vecs = torch.linalg.eigh(od @ od.transpose(1, 2))
        v = torch.einsum("bnc,bn->bc", od, vecs[:, :, -1])
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
        idx = v.abs().argmax(dim=1, keepdim=True)
        v = v * torch.sign(v.gather(1, idx)).clamp_min(0).mul(2).sub(1)
        return v.to(o.dtype)
    raise InputError(f"solver must be 'lapack' or 'gram', got {solver!r}.")


def projection_2d(x: Tensor, center: bool = True, sign: str = "none", solver: str = "lapack") -> Tensor:
    """Project ``[B,C,h,w]`` onto its first right singular vector: ``O v_1`` with ``O = [hw x C]``.

    Muhammad & Yeasin 2020 (Eigen-CAM, eq. 3). As pytorch-grad-cam: NaN -> 0, channel columns centred
    (``center``), LAPACK SVD via NumPy, so that the singular vector's arbitrary sign is the one pgc users
    see (``solver="gram"``: a faster eigen-solver, see :func:`first_right_singular_vector`). ``sign``: ``"none"``
    (pgc), ``"max_abs"`` (flip if |min| > |max|,
    Seg-Eigen-CAM) or ``"corr"`` (flip so the map correlates positively with ``sum_k A_k``).
    """
    if sign not in SIGNS:
        raise InputError(f"sign must be one of {SIGNS}, got {sign!r}.")
    b, c = x.shape[:2]
    grid = tuple(x.shape[2:])  # (h, w), or (t, h, w) for volumes and clips: rows are all positions
    o = torch.nan_to_num(x.detach(), nan=0.0).reshape(b, c, -1).transpose(1, 2)  # [B, hw, C]
    if center:
        o = o - o.mean(dim=1, keepdim=True)
    v1 = first_right_singular_vector(o, solver)  # [B, C]
    proj = torch.einsum("bnc,bc->bn", o, v1)
    if sign == "max_abs":
        flip = proj.min(dim=1).values.abs() > proj.max(dim=1).values.abs()
        proj = torch.where(flip[:, None], -proj, proj)
    elif sign == "corr":
        ref = torch.nan_to_num(x.detach(), nan=0.0).sum(dim=1).reshape(b, -1)
        pc, rc = proj - proj.mean(1, keepdim=True), ref - ref.mean(1, keepdim=True)
        flip = (pc * rc).sum(dim=1) < 0
        proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(b, *grid)


@register_method(
    "eigencam",
    family="projection",
    needs_gradients=False,
    paper="Muhammad & Yeasin 2020, eq. 3",
)
def eigencam(ctx: ExplainContext, center: bool = True, sign: str = "none", solver: str = "lapack") -> Tensor:
    """Eigen-CAM: class-agnostic projection of the activations on their first principal component."""
    return projection_2d(ctx.capture.activations, center=center, sign=sign, solver=solver)


@register_method(
    "eigengradcam",
    family="projection",
    paper="pytorch-grad-cam (Eigen-CAM applied to g*A)",
)
def eigengradcam(ctx: ExplainContext, center: bool = True, sign: str = "none", solver: str = "lapack") -> Tensor:
    """Eigen-Grad-CAM (pytorch-grad-cam): the Eigen-CAM projection of ``g * A``; class-discriminative."""
    cap = ctx.capture
    assert cap.gradients is not None
    return projection_2d(cap.gradients * cap.activations, center=center, sign=sign, solver=solver)
