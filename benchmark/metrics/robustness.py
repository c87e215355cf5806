"""Registry entries of the robustness metrics (functional forms in ``functional/robustness.py``).

Baseline methods (registry family ``baseline``: random, center, oracle) read only the seed, the image
size and the ground truth, never the pixels nor the gradients: they are not re-explained, and get the value
an input-independent map has by definition (sensitivity 0, SSIM 1, MSE 0). Methods that read no gradient
(Score-CAM, Ablation-CAM, CAM, Eigen-CAM) are likewise unaffected by gradient noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .base import MetricContext, register_metric
from .functional import robustness as F


def _bound(ctx: MetricContext) -> Callable[..., dict]:
    fn = ctx.explain
    assert fn is not None  # these metrics need="explainer"

    def explain(images, targets, names, **kw):
        return fn(ctx.model, images, targets, names, **kw)

    return explain


def _perturbed(ctx: MetricContext, fn, constant: float, **params) -> dict[str, Tensor]:
    live = [m for m in ctx.saliency if not ctx.is_baseline(m)]
    b = ctx.batch.images.shape[0]
    out = {m: torch.full((b,), constant) for m in ctx.saliency if m not in live}
    if live:
        ref = {m: ctx.saliency[m] for m in live}
        res = fn(
            _bound(ctx),
            ctx.batch.images,
            ctx.batch.targets,
            live,
            seed=ctx.seed,
            batch_size=ctx.forward_batch_size,
            reference=ref,
            **params,
        )
        out.update(res)
    return {m: out[m] for m in ctx.saliency}


def _sensitivity(
    ctx: MetricContext, reduce, radius: float, n_samples: int, relative: bool, norm: str
) -> dict[str, Tensor]:
    """Max and Avg-Sensitivity draw the same perturbations: explain them once per batch (ctx.cache)."""
    live = [m for m in ctx.saliency if not ctx.is_baseline(m)]
    b = ctx.batch.images.shape[0]
    out = {m: torch.zeros(b) for m in ctx.saliency if m not in live}
    if live:
        key = ("sensitivity", radius, n_samples, relative, norm, tuple(live))
        if key not in ctx.cache:
            ctx.cache[key] = F.sensitivity_samples(
                _bound(ctx),
                ctx.batch.images,
                ctx.batch.targets,
                live,
                radius,
                n_samples,
                relative,
                norm,
                ctx.seed,
                ctx.forward_batch_size,
                {m: ctx.saliency[m] for m in live},
            )
        out.update({m: F.nanreduce(v, reduce) for m, v in ctx.cache[key].items()})
    return {m: out[m] for m in ctx.saliency}


@register_metric(
    "max_sensitivity",
    family="robustness",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="Yeh et al. 2019 (Quantus MaxSensitivity defaults, n_samples chosen by the suite)",
)
def max_sensitivity(
    ctx: MetricContext, radius: float = 0.2, n_samples: int = 8, relative: bool = True, norm: str = "fro"
) -> dict[str, Tensor]:
    """Max-sensitivity (Yeh et al. 2019): the largest change of the map over ``n_samples`` perturbations."""
    return _sensitivity(ctx, np.nanmax, radius=radius, n_samples=n_samples, relative=relative, norm=norm)


@register_metric(
    "avg_sensitivity",
    family="robustness",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="Yeh et al. 2019 (Quantus AvgSensitivity defaults, n_samples chosen by the suite)",
)
def avg_sensitivity(
    ctx: MetricContext, radius: float = 0.2, n_samples: int = 8, relative: bool = True, norm: str = "fro"
) -> dict[str, Tensor]:
    """Mean over the same perturbations as :func:`max_sensitivity` (shared through ``ctx.cache``)."""
    return _sensitivity(ctx, np.nanmean, radius=radius, n_samples=n_samples, relative=relative, norm=norm)


@register_metric(
    "local_lipschitz",
    family="robustness",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="Alvarez-Melis & Jaakkola 2018 (Quantus defaults)",
)
def local_lipschitz(ctx: MetricContext, std: float = 0.1, n_samples: int = 8) -> dict[str, Tensor]:
    """Local Lipschitz estimate over ``n_samples`` Gaussian perturbations of std ``std``."""
    return _perturbed(ctx, F.local_lipschitz, 0.0, std=std, n_samples=n_samples)


def _gradient_noise(ctx: MetricContext, key: str, sigma: float, relative: bool) -> dict[str, Tensor]:
    live = [m for m in ctx.saliency if ctx.method_info(m, "needs_gradients", True)]
    b = ctx.batch.images.shape[0]
    const = 1.0 if key == "ssim" else 0.0
    out = {m: torch.full((b,), const) for m in ctx.saliency if m not in live}
    if live:
        ck = ("gradient_noise", sigma, relative, tuple(live))  # SSIM and MSE share one re-explanation
        if ck not in ctx.cache:
            ctx.cache[ck] = F.gradient_noise_stability(
                _bound(ctx),
                ctx.batch.images,
                ctx.batch.targets,
                live,
                sigma=sigma,
                relative=relative,
                seed=ctx.seed,
                reference={m: ctx.saliency[m] for m in live},
            )
        res = ctx.cache[ck]
        out.update(res[key])
    return {m: out[m] for m in ctx.saliency}


@register_metric(
    "gradient_noise_stability",
    family="robustness",
    higher_is_better=True,
    needs=("saliency", "explainer"),
    paper="CF-CAM (He et al. 2025) noise stability, noise injected before any weight (SSIM)",
)
def gradient_noise_stability(ctx: MetricContext, sigma: float = 1.0, relative: bool = True) -> dict[str, Tensor]:
    return _gradient_noise(ctx, "ssim", sigma, relative)


@register_metric(
    "gradient_noise_mse",
    family="robustness",
    higher_is_better=False,
    needs=("saliency", "explainer"),
    paper="CF-CAM (He et al. 2025) noise stability, noise injected before any weight (MSE)",
)
def gradient_noise_mse(ctx: MetricContext, sigma: float = 1.0, relative: bool = True) -> dict[str, Tensor]:
    return _gradient_noise(ctx, "mse", sigma, relative)
