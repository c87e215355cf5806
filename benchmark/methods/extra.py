"""More gradient and projection CAMs shipped by the peer libraries (pytorch-grad-cam 1.5.7, torchcam 0.5.0).

- ``gradcamelementwise``: ``M = sum_k ReLU(g_k * A_k)`` (pgc ``GradCAMElementWise``), a pure function of
  the shared capture.
- ``kpcacam``: first kernel principal component of the activations (pgc ``KPCA_CAM``; Karmani et al. 2024).
- ``finercam``: the base CAM of a *contrastive* objective ``y_c`` minus the most similar classes' scores
  (Zhang et al., Finer-CAM, CVPR 2025; pgc ``FinerCAM`` and tc ``FinerCAM`` differ, see :func:`finer_objective`).
- ``shapleycam``: Grad-CAM weights corrected by a Hessian-vector product, ``mean_ij(g - H A / 2)``
  (Cai et al. 2025, arXiv 2501.06261; pgc ``ShapleyCAM``).

``finercam`` and ``shapleycam`` differentiate a scalar other than the target logit (several logits; or a
second-order term), so they cannot reuse ``ctx.capture``: each makes exactly **one** forward pass of its
own through :func:`objective_gradients`, which differentiates any per-sample objective of the logits with
respect to a leaf substituted for the target layer's output (the same trick as the shared capture).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import CaptureError, InputError
from .base import ExplainContext, register_method
from .capture import _check_called, check_activations, hooked
from .gradient import gradcampp_weights, spatial, weighted_sum

Objective = Callable[[Tensor], Tensor]  # logits [B,K] -> per-sample scalar [B]


# -- shared helper: one forward, gradients of an arbitrary per-sample objective -------------------------
def objective_gradients(
    ctx: ExplainContext, objective: Objective, *, hvp: bool = False
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """One forward (and backward) pass differentiating ``objective(logits)`` w.r.t. the target layer.

    Returns ``(A, dO/dA, H A or None, logits)`` with ``A`` and the gradients reshaped by ``ctx.reshape``.
    ``objective`` maps the logits ``[B,K]`` to one scalar per sample ``[B]``; the backward differentiates
    their sum (samples are independent in eval mode). With ``hvp=True`` the first backward keeps its graph
    and a second one returns the Hessian-vector product ``(d^2 O / dA^2) A`` (needed by ShapleyCAM).
    ``ctx.gradient_noise`` (robustness protocol) perturbs the first-order gradients, as for the capture.
    Hooks are removed in ``finally``.
    """
    store: dict[str, Tensor] = {}

    def grab(out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_(True)
        store["leaf"] = leaf
        return leaf.clone()  # downstream in-place ops must not touch the leaf

    with torch.enable_grad(), hooked(ctx.layer, grab, model=ctx.model) as calls:
        logits = ctx.model(ctx.images)
        _check_called(calls, ctx.layer)
        if logits.ndim != 2:
            raise CaptureError(f"The model must return logits [B,K]; got shape {tuple(logits.shape)}.")
        leaf = store["leaf"]
        score = objective(logits)
        if score.shape != (logits.shape[0],):
            raise CaptureError(f"The objective must give one scalar per sample; got {tuple(score.shape)}.")
        (grads,) = torch.autograd.grad(score.sum(), leaf, create_graph=hvp, allow_unused=True)
        if grads is None:
            grads = torch.zeros_like(leaf)
        second = None
        if hvp:
            if grads.requires_grad:
                try:
                    (second,) = torch.autograd.grad(grads, leaf, grad_outputs=leaf.detach(), allow_unused=True)
                except RuntimeError as exc:  # e.g. hardsigmoid (MobileNet-V3) has no double backward
                    raise CaptureError(
                        f"This method needs second derivatives, but the model uses an operation without "
                        f"a double backward ({exc}). Pick a target layer after that operation, or "
                        "another method."
                    ) from exc
            if second is None:  # the objective is linear in A (e.g. GAP -> Linear head)
                second = torch.zeros_like(leaf)
    acts, grads = leaf.detach(), grads.detach()
    if ctx.reshape is not None:
        acts, grads = ctx.reshape(acts), ctx.reshape(grads)
        second = None if second is None else ctx.reshape(second.detach())
    check_activations(acts, ctx.images)
    if ctx.gradient_noise is not None:
        grads = ctx.gradient_noise(grads)
    return acts, grads, (None if second is None else second.detach()), logits.detach()


def target_logit(targets: Tensor) -> Objective:
    """The usual objective: the pre-softmax logit of each sample's target class."""
    return lambda logits: logits.gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)


def rest_objective(targets: Tensor) -> Objective:
    """ReST (residual softmax target, Cai et al. 2025): ``y_c - CE(y, c) = y_c + log softmax(y)_c``."""

    def f(logits: Tensor) -> Tensor:
        t = targets.view(-1, 1).to(logits.device)
        return (logits.gather(1, t) + logits.log_softmax(dim=1).gather(1, t)).squeeze(1)

    return f


# -- Grad-CAM element-wise ----------------------------------------------------------------------------
@register_method("gradcamelementwise", family="gradient", paper="pytorch-grad-cam GradCAMElementWise")
def gradcamelementwise(ctx: ExplainContext) -> Tensor:
    """Element-wise Grad-CAM (pgc): ``M = sum_k ReLU(g_k * A_k)``; the ReLU acts before the channel sum."""
    cap = ctx.capture
    assert cap.gradients is not None
    return (cap.gradients * cap.activations).clamp_min(0).sum(dim=1)


# -- KPCA-CAM -------------------------------------------------------------------------------------------
KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def kernel_projection(x: Tensor, kernel: str = "sigmoid", gamma: float | None = None, seed: int = 0) -> Tensor:
    """First kernel principal component of each image's positions: ``[B,C,h,w] -> [B,h,w]``.

    As pytorch-grad-cam ``get_2d_projection_kernel``: NaN -> 0, rows = the ``h*w`` positions, columns = the
    channels centred over positions, ``sklearn.decomposition.KernelPCA(n_components=1, kernel, gamma)``
    (gamma None = 1/C; scikit-learn fixes the eigenvector sign). ``seed`` seeds ARPACK's start vector
    (used by scikit-learn for more than 200 positions) so the map is reproducible.
    """
    from sklearn.decomposition import KernelPCA

    if kernel not in KERNELS:
        raise InputError(f"kpcacam kernel must be one of {KERNELS}, got {kernel!r}.")
    b, c = x.shape[:2]
    grid = tuple(x.shape[2:])  # (h, w), or (t, h, w) for volumes and clips
    n = int(np.prod(grid))
    pos = torch.nan_to_num(x.detach(), nan=0.0).reshape(b, c, n).transpose(1, 2)
    o = (pos - pos.mean(dim=1, keepdim=True)).cpu().numpy()
    out = np.empty((b, n), dtype=np.float64)
    for i in range(b):  # one small eigen-problem per image (scikit-learn has no batched KernelPCA)
        kpca = KernelPCA(n_components=1, kernel=kernel, gamma=gamma, random_state=seed)
        out[i] = kpca.fit_transform(o[i])[:, 0]
    return torch.from_numpy(out).to(x.device, x.dtype).reshape(b, *grid)


@register_method(
    "kpcacam",
    family="projection",
    needs_gradients=False,
    paper="Karmani et al. 2024 (KPCA-CAM), pytorch-grad-cam KPCA_CAM",
)
def kpcacam(ctx: ExplainContext, kernel: str = "sigmoid", gamma: float | None = None) -> Tensor:
    """KPCA-CAM: Eigen-CAM with kernel PCA (class-agnostic, no gradients); pgc defaults sigmoid kernel."""
    return kernel_projection(ctx.capture.activations, kernel=kernel, gamma=gamma, seed=ctx.seed)


# -- Finer-CAM ------------------------------------------------------------------------------------------
def comparison_classes(logits: Tensor, targets: Tensor, n: int) -> Tensor:
    """``[B, min(n, K-1)]`` classes whose logits are closest to the target's, nearest first (target excluded).

    Both pgc (``argsort(|y - y_c|)[1:n+1]``) and tc (``topk`` of the same distances) pick these; ties are
    broken by the lower class index (stable sort).
    """
    k = min(int(n), logits.shape[1] - 1)
    if k < 1:
        raise InputError("finercam needs at least two classes (one comparison class).")
    y = logits.detach()
    t = targets.view(-1, 1).to(y.device)
    dist = (y - y.gather(1, t)).abs().scatter(1, t, float("inf"))
    return dist.sort(dim=1, stable=True).indices[:, :k]


def finer_objective(targets: Tensor, n_comparisons: int, alpha: float, weighting: str) -> Objective:
    """Finer-CAM's contrastive score of the target ``c`` against its comparison classes ``d_1..d_n``.

    ``weighting="softmax"`` (pgc ``FinerWeightedTarget``, default): ``sum_j p_j (y_c - alpha y_dj) / sum_j p_j``
    with ``p = softmax(y)``, differentiated through ``p`` as pgc does. ``weighting="mean"`` (tc, and the
    paper's plain form): ``y_c - alpha mean_j y_dj`` (tc's ``gamma``, default 0.6 there).
    """
    if weighting not in ("softmax", "mean"):
        raise InputError(f"finercam weighting must be 'softmax' (pgc) or 'mean' (torchcam), got {weighting!r}.")

    def f(logits: Tensor) -> Tensor:
        t = targets.view(-1, 1).to(logits.device)
        ref = comparison_classes(logits, targets, n_comparisons)
        yc, yd = logits.gather(1, t), logits.gather(1, ref)
        if weighting == "mean":
            return (yc - alpha * yd.mean(dim=1, keepdim=True)).squeeze(1)
        p = logits.softmax(dim=1).gather(1, ref)
        return (p * (yc - alpha * yd)).sum(dim=1) / (p.sum(dim=1) + 1e-9)

    return f


BASES = ("gradcam", "gradcampp", "layercam")


def _base_map(base: str, a: Tensor, g: Tensor) -> Tensor:
    if base == "gradcam":
        return weighted_sum(g.mean(dim=spatial(a)), a)
    if base == "gradcampp":
        return weighted_sum(gradcampp_weights(a, g, g**2, g**3), a)
    if base == "layercam":
        return (g.clamp_min(0) * a).sum(dim=1)
    raise InputError(f"finercam base must be one of {BASES}, got {base!r}.")


@register_method(
    "finercam",
    family="gradient",
    paper="Zhang et al. 2025 (Finer-CAM), eq. 3",
)
def finercam(
    ctx: ExplainContext, n_comparisons: int = 3, alpha: float = 1.0, weighting: str = "softmax", base: str = "gradcam"
) -> Tensor:
    """Finer-CAM: the ``base`` CAM of the contrastive objective :func:`finer_objective` (one forward).

    Defaults are pytorch-grad-cam's (softmax weighting, alpha=1, 3 comparisons, Grad-CAM base);
    ``weighting="mean", alpha=0.6`` gives torchcam's.
    """
    obj = finer_objective(ctx.targets, n_comparisons, alpha, weighting)
    a, g, _, _ = objective_gradients(ctx, obj)
    return _base_map(base, a, g)


# -- ShapleyCAM -----------------------------------------------------------------------------------------
@register_method(
    "shapleycam",
    family="gradient",
    paper="Cai et al. 2025 (ShapleyCAM), arXiv 2501.06261, eq. 12",
)
def shapleycam(ctx: ExplainContext, objective: str = "logit") -> Tensor:
    """ShapleyCAM: ``w_k = mean_ij (g - 1/2 H A)_k``, ``M = sum_k w_k A_k`` (pgc ``ShapleyCAM``).

    ``H A`` is the Hessian-vector product of the objective w.r.t. the layer in the direction of its own
    activations (second-order Taylor term of the Shapley value). One forward, one backward with
    ``create_graph`` and one more for the HVP. ``objective="logit"`` differentiates the target logit (pgc
    with ``ClassifierOutputTarget``); ``"rest"`` uses the paper's ReST ``y_c + log softmax(y)_c``
    (pgc ``ClassifierOutputReST``). For piecewise-linear networks (ReLU, max-pool, eval BN) after a
    GAP->Linear head ``H A = 0`` and ShapleyCAM equals Grad-CAM.
    """
    if objective not in ("logit", "rest"):
        raise InputError(f"shapleycam objective must be 'logit' or 'rest', got {objective!r}.")
    obj = target_logit(ctx.targets) if objective == "logit" else rest_objective(ctx.targets)
    a, g, h, _ = objective_gradients(ctx, obj, hvp=True)
    assert h is not None
    return weighted_sum((g - 0.5 * h).mean(dim=spatial(a)), a)
