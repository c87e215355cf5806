"""CF-CAM: cluster filter class activation mapping (He, Pan, Yao, arXiv 2504.00060, 2025) — docs/methods.md#cfcam.

Follows the authors' code (jerryp-hfut/CF-CAM ``cfcam.py``), batched over images:
1. channel norms ``n_k = ||A_k||_2``; important channels ``I = {n_k >= P75(n)}`` get Grad-CAM weights;
2. the rest are clustered by DBSCAN (scikit-learn) on their flattened maps, ``eps = max(P25(pairwise
   distances), 1e-5)``, ``min_samples = max(2, floor(0.05 |R|))``; noise channels are discarded;
3. each cluster's mean gradient is filtered (:func:`cluster_filter`) and its spatial mean is the weight
   of every channel in the cluster;
4. ``M = ReLU(sum_{k in V} softmax(w_V)_k A_k)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from torch import Tensor

from ..errors import InputError
from .base import ExplainContext, register_method


def cluster_filter(g: Tensor, sigma_spatial: float = 5.0, sigma_range: float = 0.1) -> Tensor:
    """The authors' ``_bilateral_filter`` of an ``[h,w]`` mean gradient (docs/methods.md#cfcam, the filter).

    Kernel ``K(i,j) = exp(-((i-h/2)^2+(j-w/2)^2)/(2 s^2)) * exp(-(g(i,j)-mean g)^2/(2 r^2))``, normalised
    by ``sum K + 1e-6``, applied as a zero-padded 'same' cross-correlation. ``sigma_spatial <= 0`` means
    no filtering (identity), the documented base case.
    """
    if sigma_spatial <= 0:
        return g
    if g.ndim == 3:  # volumes and clips: the same kernel over (t, h, w)
        return _cluster_filter_3d(g, sigma_spatial, sigma_range)
    h, w = g.shape
    i = torch.arange(h, device=g.device, dtype=g.dtype)[:, None]
    j = torch.arange(w, device=g.device, dtype=g.dtype)[None, :]
    spatial = torch.exp(-((i - h / 2) ** 2 + (j - w / 2) ** 2) / (2 * sigma_spatial**2))
    rng = torch.exp(-((g - g.mean()) ** 2) / (2 * sigma_range**2)) if sigma_range > 0 else 1.0
    k = spatial * rng
    k = k / (k.sum() + 1e-6)
    # 'same' zero padding as torch's padding="same" lays it out (left = total // 2, right = the rest).
    pad = (((w - 1) // 2), (w - 1) - (w - 1) // 2, (h - 1) // 2, (h - 1) - (h - 1) // 2)
    return F.conv2d(F.pad(g[None, None], pad), k[None, None])[0, 0]


def _cluster_filter_3d(g: Tensor, sigma_spatial: float, sigma_range: float) -> Tensor:
    """:func:`cluster_filter` of a ``[t,h,w]`` mean gradient: the spatial Gaussian runs over the three axes
    (distance to the centre ``(t/2, h/2, w/2)``), the range term and the 'same' zero padding as in 2-D."""
    t, h, w = g.shape
    axes = [torch.arange(n, device=g.device, dtype=g.dtype) - n / 2 for n in (t, h, w)]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    spatial = torch.exp(-d2 / (2 * sigma_spatial**2))
    rng = torch.exp(-((g - g.mean()) ** 2) / (2 * sigma_range**2)) if sigma_range > 0 else 1.0
    k = spatial * rng
    k = k / (k.sum() + 1e-6)
    pad: tuple[int, ...] = ()
    for n in (w, h, t):
        pad += ((n - 1) // 2, (n - 1) - (n - 1) // 2)
    return F.conv3d(F.pad(g[None, None], pad), k[None, None])[0, 0]


def cluster_channels(
    feats: np.ndarray,
    norm_percentile: float = 75.0,
    eps_percentile: float = 25.0,
    eps_floor: float = 1e-5,
    min_samples_frac: float = 0.05,
    min_samples_floor: int = 2,
    cluster: bool = True,
) -> np.ndarray:
    """Labels per channel of ``feats [K, hw]``: -2 important, -1 DBSCAN noise, 0.. cluster id."""
    k = feats.shape[0]
    norms = np.linalg.norm(feats, axis=1)
    labels = np.full(k, -1, dtype=np.int64)
    if not cluster:
        labels[:] = -2
        return labels
    important = norms >= np.percentile(norms, norm_percentile)
    labels[important] = -2
    rest = np.flatnonzero(~important)
    if rest.size == 0:
        return labels
    fr = feats[rest].astype(np.float64)
    sq = (fr**2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * fr @ fr.T, 0.0))
    off = d[~np.eye(rest.size, dtype=bool)]  # both triangles, diagonal excluded (the authors' +inf)
    eps = max(float(np.percentile(off, eps_percentile)) if off.size else 0.0, eps_floor)
    min_samples = max(int(min_samples_floor), int(math.floor(min_samples_frac * rest.size)))
    # The same Euclidean neighbourhoods as DBSCAN(metric="euclidean"), from the matrix already built.
    np.fill_diagonal(d, 0.0)
    labels[rest] = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(d).labels_
    return labels


@register_method("cfcam", family="gradient", paper="He et al. 2025, arXiv 2504.00060")
def cfcam(
    ctx: ExplainContext,
    norm_percentile: float = 75.0,
    eps_percentile: float = 25.0,
    eps_floor: float = 1e-5,
    min_samples_frac: float = 0.05,
    min_samples_floor: int = 2,
    sigma_spatial: float = 5.0,
    sigma_range: float = 0.1,
    weight_norm: str = "softmax",
    cluster: bool = True,
) -> Tensor:
    """CF-CAM as the authors coded it; ``cluster=False, sigma_spatial=0`` and ``weight_norm="none"``
    reduce it to Grad-CAM, with ``weight_norm="softmax"`` to softmax-weighted Grad-CAM."""
    if weight_norm not in ("softmax", "none"):
        raise InputError(f"weight_norm must be 'softmax' or 'none', got {weight_norm!r}.")
    cap = ctx.capture
    a, g = cap.activations, cap.gradients
    assert g is not None
    b, c = a.shape[:2]
    axes = tuple(range(-(a.ndim - 2), 0))  # (h, w), or (t, h, w) for volumes and clips
    out = []
    feats_all = a.detach().reshape(b, c, -1).cpu().numpy()
    for i in range(b):
        labels = cluster_channels(
            feats_all[i],
            norm_percentile,
            eps_percentile,
            eps_floor,
            min_samples_frac,
            min_samples_floor,
            cluster,
        )
        lab = torch.from_numpy(labels).to(a.device)
        weights = g[i].mean(dim=axes).clone()
        for cid in np.unique(labels[labels >= 0]):
            members = lab == int(cid)
            filtered = cluster_filter(g[i][members].mean(0), sigma_spatial, sigma_range)
            weights[members] = filtered.mean()
        valid = lab != -1
        wv = weights[valid]
        if weight_norm == "softmax":
            wv = wv.softmax(0)
        eq = "k,kthw->thw" if a.ndim == 5 else "k,khw->hw"
        out.append(torch.einsum(eq, wv.to(a.dtype), a[i][valid]))
    return torch.stack(out)
