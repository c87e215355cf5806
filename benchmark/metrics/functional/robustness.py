"""Robustness metrics: how much maps move under small input or gradient perturbations (docs/metrics.md, Robustness).

The explain function here has the model bound: ``explain_fn(images, targets, names, *,
gradient_noise=None) -> {name: Tensor[N,H,W]}`` (e.g. ``functools.partial(ctx.explain, ctx.model)``).
Every method is explained by **one** call per chunk, and all perturbed copies of a batch are stacked along
the batch dimension (``batch_size`` images per call).

Noise is drawn on the CPU from generators seeded by ``(seed, sample index)`` and shared by all images of
the batch, so an image's score does not depend on which other images share its batch (batch results equal
per-image results) nor on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError

ExplainBound = Callable[..., dict]


def _generator(seed: int, salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(salt))
    return g


def uniform_noise(shape: Sequence[int], radius: float, seed: int, sample: int) -> Tensor:
    """Sample ``sample``'s L-infinity noise: i.i.d. uniform in ``[-radius, radius]`` (Quantus
    ``batch_uniform_noise``), float32 on the CPU."""
    return (torch.rand(tuple(shape), generator=_generator(seed, sample)) * 2 - 1) * radius


def gaussian_noise(shape: Sequence[int], std: float, seed: int, sample: int) -> Tensor:
    """Sample ``sample``'s Gaussian noise ``N(0, std^2)`` (Quantus ``batch_gaussian_noise``), on the CPU."""
    return torch.randn(tuple(shape), generator=_generator(seed, sample)) * std


def _norm(x: Tensor, norm: str) -> Tensor:
    if norm in ("fro", "l2"):
        return x.flatten(1).norm(dim=1)
    if norm == "linf":
        return x.flatten(1).abs().max(dim=1).values
    raise InputError(f"norm must be 'fro', 'l2' or 'linf'; got {norm!r}.")


def perturbation_scores(
    explain_fn: ExplainBound,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    noise: Callable[[int], Tensor],
    n_samples: int,
    score: Callable[[Tensor, Tensor, Tensor], Tensor],
    reference: dict[str, Tensor] | None = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Explain ``n_samples`` perturbed copies ``x + noise(s)`` of the batch and score each: ``{m: [S,B]}``.

    ``score(maps_ref [N,H,W], maps_pert [N,H,W], delta [N,C,H,W]) -> [N]``. Copies are stacked and
    explained ``batch_size`` images per call, all methods per call.
    """
    methods = list(methods)
    b = images.shape[0]
    if reference is None:
        reference = explain_fn(images, targets, methods)
    out = {m: torch.full((n_samples * b,), float("nan")) for m in methods}
    total = n_samples * b
    step = max(1, int(batch_size))
    cache: dict[int, Tensor] = {}
    for start in range(0, total, step):
        idx = torch.arange(start, min(start + step, total))
        s_idx, b_idx = idx // b, idx % b
        for s in s_idx.unique().tolist():
            if s not in cache:
                cache[s] = noise(int(s)).to(images.device, images.dtype)
        delta = torch.stack([cache[int(s)] for s in s_idx])
        for s in list(cache):
            if s < int(s_idx.min()):
                del cache[s]
        bi = b_idx.to(images.device)
        maps = explain_fn(images[bi] + delta, targets[bi], methods)
        for m in methods:
            out[m][idx] = score(reference[m][bi].float(), maps[m].detach().float(), delta).cpu().float()
    return {m: v.view(n_samples, b) for m, v in out.items()}


def sensitivity_samples(
    explain_fn: ExplainBound,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    radius: float = 0.2,
    n_samples: int = 8,
    relative: bool = True,
    norm: str = "fro",
    seed: int = 0,
    batch_size: int = 64,
    reference: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Per-sample sensitivities ``{method: [S,B]}`` shared by Max- and Avg-Sensitivity (their reductions)."""
    if n_samples < 1:
        raise InputError(f"n_samples must be >= 1; got {n_samples}.")
    shape = images.shape[1:]

    def score(ref: Tensor, pert: Tensor, delta: Tensor) -> Tensor:
        num = _norm(pert - ref, norm)
        if not relative:
            return num
        den = _norm(ref, norm)
        return torch.where(den > 0, num / den.where(den > 0, torch.ones_like(den)), torch.full_like(num, float("nan")))

    return perturbation_scores(
        explain_fn,
        images,
        targets,
        methods,
        lambda s: uniform_noise(shape, radius, seed, s),
        n_samples,
        score,
        reference,
        batch_size,
    )


def max_sensitivity(
    explain_fn: ExplainBound,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    radius: float = 0.2,
    n_samples: int = 8,
    relative: bool = True,
    norm: str = "fro",
    seed: int = 0,
    batch_size: int = 64,
    reference: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Max-Sensitivity (Yeh et al. 2019; Quantus ``MaxSensitivity``; docs/metrics.md#max_sensitivity): ``{m: [B]}``.

    ``max_s ||Phi(x + delta_s) - Phi(x)|| / ||Phi(x)||`` over ``n_samples`` draws of ``delta`` uniform in
    the L-infinity ball of ``radius`` in model-input space (``relative=False``: the paper's unnormalised
    numerator). Lower is better. Samples whose reference map is all zero are NaN (0/0) and skipped by the
    nan-max; NaN if all are. ``reference`` (the clean maps) is computed when not given.
    """
    vals = sensitivity_samples(
        explain_fn, images, targets, methods, radius, n_samples, relative, norm, seed, batch_size, reference
    )
    return {m: nanreduce(v, np.nanmax) for m, v in vals.items()}


def avg_sensitivity(
    explain_fn: ExplainBound,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    radius: float = 0.2,
    n_samples: int = 8,
    relative: bool = True,
    norm: str = "fro",
    seed: int = 0,
    batch_size: int = 64,
    reference: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Avg-Sensitivity (Yeh et al. 2019; Quantus ``AvgSensitivity``): the nan-mean instead of the max."""
    vals = sensitivity_samples(
        explain_fn, images, targets, methods, radius, n_samples, relative, norm, seed, batch_size, reference
    )
    return {m: nanreduce(v, np.nanmean) for m, v in vals.items()}


def nanreduce(v: Tensor, fn) -> Tensor:
    """Column-wise nan-reduction over samples that returns NaN (without a warning) for all-NaN columns."""
    a = v.numpy()
    out = np.full(a.shape[1], np.nan, dtype=np.float32)
    ok = ~np.isnan(a).all(axis=0)
    if ok.any():
        out[ok] = fn(a[:, ok], axis=0)
    return torch.from_numpy(out)


def local_lipschitz(
    explain_fn: ExplainBound,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    std: float = 0.1,
    n_samples: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    reference: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018; Quantus ``LocalLipschitzEstimate``).

    Specification: docs/metrics.md#local_lipschitz.

    ``max_s ||Phi(x) - Phi(x + delta_s)||_2 / (||delta_s||_2 + 1e-10)`` with Gaussian ``delta ~ N(0, std^2)``
    and maps divided by their max (Quantus ``normalise_by_max``; all-zero maps are left as they are).
    """
    shape = images.shape[1:]

    def by_max(m: Tensor) -> Tensor:
        mx = m.flatten(1).abs().max(dim=1).values.view((-1,) + (1,) * (m.ndim - 1))
        return m / mx.where(mx > 0, torch.ones_like(mx))

    def score(ref: Tensor, pert: Tensor, delta: Tensor) -> Tensor:
        num = (by_max(ref) - by_max(pert)).flatten(1).norm(dim=1)
        return num / (delta.float().flatten(1).norm(dim=1) + 1e-10)

    vals = perturbation_scores(
        explain_fn,
        images,
        targets,
        methods,
        lambda s: gaussian_noise(shape, std, seed, s),
        n_samples,
        score,
        reference,
        batch_size,
    )
    return {m: nanreduce(v, np.nanmax) for m, v in vals.items()}


# ------------------------------------------------------------------------------------------------
# Gradient-noise stability (CF-CAM protocol done right)
# ------------------------------------------------------------------------------------------------
def gradient_noise_fn(sigma: float, seed: int, relative: bool = True) -> Callable[[Tensor], Tensor]:
    """``g -> g + sigma_i * z`` with ``z ~ N(0, 1)`` of shape ``g.shape[1:]`` drawn from ``seed`` (shared by
    the images of the batch), and ``sigma_i = sigma * std(g_i)`` per image (``relative``) or ``sigma``."""

    def add(g: Tensor) -> Tensor:
        z = torch.randn(tuple(g.shape[1:]), generator=_generator(seed, 7919)).to(g.device, g.dtype)
        if relative:
            scale = g.detach().flatten(1).std(dim=1).view(-1, *([1] * (g.ndim - 1))) * sigma
        else:
            scale = torch.full((g.shape[0],) + (1,) * (g.ndim - 1), float(sigma), device=g.device, dtype=g.dtype)
        return g + scale * z

    return add


def _minmax(m: Tensor) -> Tensor:
    flat = m.flatten(1)
    shape = (-1,) + (1,) * (m.ndim - 1)  # [B,H,W] or [B,T,H,W]
    lo = flat.min(dim=1).values.view(shape)
    hi = flat.max(dim=1).values.view(shape)
    span = hi - lo
    return torch.where(span > 0, (m - lo) / span.where(span > 0, torch.ones_like(span)), torch.zeros_like(m))


def ssim(a: Tensor, b: Tensor, win_size: int = 7, data_range: float = 1.0) -> Tensor:
    """Batched SSIM ``[B]`` of ``[B,H,W]`` maps, equal to ``skimage.metrics.structural_similarity(a_i, b_i,
    data_range=data_range, win_size=win_size, gaussian_weights=False)`` (uniform window, sample
    covariance, K1=0.01, K2=0.03, mean over the window positions that fit inside the image).

    ``[B,T,H,W]`` maps of volumes and clips: skimage's N-D SSIM, a ``win_size^3`` cube window; a depth or
    time axis shorter than ``win_size`` uses a window as long as that axis (skimage would refuse it).
    """
    if a.shape[-1] < win_size or a.shape[-2] < win_size:
        raise InputError(f"SSIM needs maps of at least {win_size}x{win_size}; got {tuple(a.shape[-2:])}.")
    x, y = a.double()[:, None], b.double()[:, None]
    if a.ndim == 4:
        win = (min(win_size, int(a.shape[1])), win_size, win_size)
        pool = lambda t: F.avg_pool3d(t, win, stride=1)
        np_ = win[0] * win[1] * win[2]
    else:
        pool = lambda t: F.avg_pool2d(t, win_size, stride=1)
        np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1)
    ux, uy = pool(x), pool(y)
    vx = cov_norm * (pool(x * x) - ux * ux)
    vy = cov_norm * (pool(y * y) - uy * uy)
    vxy = cov_norm * (pool(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).float()


def gradient_noise_stability(
    explain_fn: ExplainBound,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    sigma: float = 1.0,
    relative: bool = True,
    seed: int = 0,
    reference: dict[str, Tensor] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Stability of maps under Gaussian noise on the target-layer gradients (docs/metrics.md#gradient_noise_stability).

    The noise is added to the captured gradients **before** any method computes its weights
    (``explain_fn(..., gradient_noise=...)``), so every gradient method, CF-CAM included, is genuinely
    perturbed. Default ``sigma=1.0`` relative: the noise std equals each image's own gradient std
    (signal-to-noise 1; raw gradients are ~1e-4, so an absolute sigma is meaningless across models). Clean and
    noisy maps, at input resolution, are each min-max normalised and compared with SSIM (win 7, uniform window,
    data_range 1; higher = more stable) and MSE (lower = more stable).
    Returns ``{"ssim": {method: [B]}, "mse": {method: [B]}}``. Methods that read no gradient get SSIM 1, MSE 0.
    """
    methods = list(methods)
    if reference is None:
        reference = explain_fn(images, targets, methods)
    noisy = explain_fn(images, targets, methods, gradient_noise=gradient_noise_fn(sigma, seed, relative))
    out: dict[str, dict[str, Tensor]] = {"ssim": {}, "mse": {}}
    for m in methods:
        a, b = _minmax(reference[m].detach().float()), _minmax(noisy[m].detach().float())
        out["ssim"][m] = ssim(a, b).cpu()
        out["mse"][m] = ((a - b) ** 2).flatten(1).mean(dim=1).cpu()
    return out
