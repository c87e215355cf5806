"""Faithfulness metrics as pure functions over tensors (no registry, no state).

* Deletion / Insertion AUC -- Petsiuk, Das & Saenko, "RISE", BMVC 2018 (``evaluation.py`` CausalMetric).
* Average Drop / Increase in Confidence -- Chattopadhyay et al., "Grad-CAM++", WACV 2018, section 5.1.
* ROAD (Remove And Debias) with noisy linear imputation -- Rong et al., ICML 2022.

All of them run their forwards through the shared engine in ``benchmark.metrics.perturbation``.
Exact definitions and reference-library differences: ``docs/metrics.md`` (Faithfulness).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.ndimage import gaussian_filter
from scipy.sparse.linalg import splu
from torch import Tensor, nn

from ...errors import DimensionError, InputError
from ..perturbation import (
    OOM_ERRORS,
    batched_scores,
    image_scores,
    order_to_rank,
    perturbation_curves,
    pixel_order,
    step_counts,
    trapezoid_auc,
)
from .imputation import solve_masked_laplace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

Substrate = str | Tensor


# --------------------------------------------------------------------------------------------------
# helpers


def _check_inputs(images: Tensor, targets: Tensor, saliency: Tensor) -> None:
    if images.ndim not in (4, 5):
        raise InputError(
            f"images must be [B,3,H,W] (normalised; [B,3,T,H,W] for volumes and clips); got shape "
            f"{tuple(images.shape)}."
        )
    b = images.shape[0]
    if targets.shape != (b,):
        raise InputError(f"targets must be [B]={b}; got shape {tuple(targets.shape)}.")
    if saliency.shape != (b, *images.shape[2:]):
        raise InputError(
            f"saliency must be [B,H,W]={(b, *images.shape[2:])} (maps at input resolution); "
            f"got {tuple(saliency.shape)}. Upsample the maps to the input size first."
        )


def gkern(klen: int = 11, nsig: float = 5.0) -> Tensor:
    """RISE's blur kernel: a centred dirac on a ``klen x klen`` grid smoothed by
    ``scipy.ndimage.gaussian_filter(sigma=nsig)`` (``[klen, klen]`` float32, sums to 1)."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    return torch.from_numpy(gaussian_filter(inp, nsig).astype(np.float32))


def gkern3d(klen: int = 11, nsig: float = 5.0) -> Tensor:
    """:func:`gkern` in 3-D: a centred dirac on a ``klen^3`` grid smoothed by ``gaussian_filter(sigma=nsig)``
    (``[klen, klen, klen]`` float32, sums to 1)."""
    inp = np.zeros((klen, klen, klen))
    inp[klen // 2, klen // 2, klen // 2] = 1
    return torch.from_numpy(gaussian_filter(inp, nsig).astype(np.float32))


def rise_blur(images: Tensor, klen: int = 11, sigma: float = 5.0) -> Tensor:
    """Per-channel blur with ``gkern(klen, sigma)`` and zero padding ``klen // 2`` (RISE insertion start).

    Volumes and clips ``[B,3,T,H,W]``: the 3-D substrate, a per-channel blur with :func:`gkern3d` over the
    three axes (isotropic in voxels) and the same zero padding.
    """
    c = images.shape[1]
    if images.ndim == 5:
        k3 = gkern3d(klen, sigma).to(images.device, images.dtype)
        weight3 = k3.expand(c, 1, klen, klen, klen).contiguous()
        with torch.inference_mode():
            return torch.nn.functional.conv3d(images, weight3, padding=klen // 2, groups=c)
    k = gkern(klen, sigma).to(images.device, images.dtype)
    weight = k.expand(c, 1, klen, klen).contiguous()
    with torch.inference_mode():
        return torch.nn.functional.conv2d(images, weight, padding=klen // 2, groups=c)


def _substrate(kind: Substrate, images: Tensor, blur_klen: int, blur_sigma: float) -> Tensor:
    if isinstance(kind, Tensor):
        return kind.to(images.device, images.dtype)
    if kind == "zeros":
        return torch.zeros_like(images[:1])
    if kind == "blur":
        return rise_blur(images, blur_klen, blur_sigma)
    raise InputError(f"substrate must be 'zeros', 'blur' or a [B,3,H,W] tensor; got {kind!r}.")


def _resolve_steps(hw: int, step: int | None, n_steps: int | None) -> Tensor:
    if step is not None and n_steps is not None:
        raise InputError("Give either `step` (pixels per step) or `n_steps`, not both.")
    if step is None and n_steps is None:
        step = 224  # RISE default
    return step_counts(hw, step=step, n_steps=n_steps)


def causal_curves(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    mode: str,
    step: int | None = None,
    n_steps: int | None = None,
    substrate: Substrate = "zeros",
    score: str = "prob",
    blur_klen: int = 11,
    blur_sigma: float = 5.0,
    rise_ties: bool = False,
    image_index: Tensor | None = None,
    batch_size: int = 64,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> Tensor:
    """Deletion (``mode="deletion"``) or insertion curves ``[N, S]`` (RISE), S = n_steps + 1.

    Deletion starts at the image and replaces the most salient pixels by ``substrate``; insertion starts
    at ``substrate`` and puts back the image's most salient pixels. ``image_index`` maps ``N`` saliency
    rows to ``B`` images (stacked methods share the images without copies).
    """
    if mode not in ("deletion", "insertion"):
        raise InputError(f"mode must be 'deletion' or 'insertion', got {mode!r}.")
    n = saliency.shape[0]
    hw = int(np.prod(images.shape[2:]))  # pixels, or voxels of volumes and clips
    if saliency.shape[1:] != images.shape[2:]:
        raise InputError(
            f"saliency maps {tuple(saliency.shape[1:])} must match the image size "
            f"{tuple(images.shape[2:])}; upsample them first."
        )
    if targets.shape != (n,):
        raise InputError(f"targets must be [N]={n}; got shape {tuple(targets.shape)}.")
    ks = _resolve_steps(hw, step, n_steps)
    orders = pixel_order(saliency.to(images.device), rise_ties=rise_ties)
    other = _substrate(substrate, images, blur_klen, blur_sigma)
    if mode == "deletion":
        start, finish = images, other
    else:
        start, finish = other.expand_as(images), images
    return perturbation_curves(
        model,
        start,
        orders,
        finish,
        ks,
        targets,
        image_index=image_index,
        batch_size=batch_size,
        score=score,
        oom_errors=oom_errors,
    )


# --------------------------------------------------------------------------------------------------
# deletion / insertion (RISE)


def deletion_auc(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    step: int | None = None,
    *,
    n_steps: int | None = None,
    substrate: Substrate = "zeros",
    score: str = "prob",
    return_curve: bool = False,
    batch_size: int = 64,
    rise_ties: bool = False,
    blur_klen: int = 11,
    blur_sigma: float = 5.0,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> Tensor | tuple[Tensor, Tensor]:
    """Deletion AUC (RISE, Petsiuk et al. 2018, section 4.1); lower is better.

    Remove ``step`` pixels per iteration (default 224, RISE at 224x224; or give ``n_steps``) in
    descending saliency order, replacing all channels by ``substrate`` ("zeros" in normalised space =
    the dataset mean colour, "blur", or a tensor). Scores the target's softmax probability
    (``score="logit"`` for logits) on the ``n_steps + 1`` images including the start and returns
    ``AUC = (sum s_i - s_0/2 - s_N/2) / N`` per image, ``Tensor[B]`` (and the curve ``[B, S]``).
    """
    _check_inputs(images, targets, saliency)
    curve = causal_curves(
        model,
        images,
        targets,
        saliency,
        mode="deletion",
        step=step,
        n_steps=n_steps,
        substrate=substrate,
        score=score,
        blur_klen=blur_klen,
        blur_sigma=blur_sigma,
        rise_ties=rise_ties,
        batch_size=batch_size,
        oom_errors=oom_errors,
    )
    auc = trapezoid_auc(curve)
    return (auc, curve) if return_curve else auc


def insertion_auc(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    step: int | None = None,
    *,
    n_steps: int | None = None,
    substrate: Substrate = "blur",
    score: str = "prob",
    return_curve: bool = False,
    batch_size: int = 64,
    rise_ties: bool = False,
    blur_klen: int = 11,
    blur_sigma: float = 5.0,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> Tensor | tuple[Tensor, Tensor]:
    """Insertion AUC (RISE, Petsiuk et al. 2018, section 4.1); higher is better.

    Start from ``substrate`` (default RISE blur: ``gkern(klen=11, nsig=5)`` per channel, padding 5;
    "zeros" for the CF-CAM variant) and insert the image's pixels in descending saliency order, ``step``
    per iteration. Same scores and AUC as ``deletion_auc``.
    """
    _check_inputs(images, targets, saliency)
    curve = causal_curves(
        model,
        images,
        targets,
        saliency,
        mode="insertion",
        step=step,
        n_steps=n_steps,
        substrate=substrate,
        score=score,
        blur_klen=blur_klen,
        blur_sigma=blur_sigma,
        rise_ties=rise_ties,
        batch_size=batch_size,
        oom_errors=oom_errors,
    )
    auc = trapezoid_auc(curve)
    return (auc, curve) if return_curve else auc


# --------------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence (Grad-CAM++)

VARIANTS = ("paper", "cfcam")


def explanation_images(
    images: Tensor,
    saliency: Tensor,
    *,
    variant: str = "paper",
    threshold: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """The "explanation map" E of Grad-CAM++ section 5.1.

    ``variant="paper"``: ``E = x * L`` on the normalised tensor (as pytorch-grad-cam does).
    ``variant="cfcam"``: the CF-CAM repository's binary mask ``L > threshold`` applied to the raw RGB image,
    then re-normalised: masked-out pixels become ``(0 - mean) / std``.
    """
    if variant == "paper":
        return images * saliency.unsqueeze(1).to(images.dtype)
    if variant == "cfcam":
        shape = (1, -1) + (1,) * (images.ndim - 2)
        m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
        s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
        keep = (saliency > threshold).unsqueeze(1)
        return torch.where(keep, images, (-m / s).expand_as(images))
    raise InputError(f"variant must be one of {VARIANTS}, got {variant!r}.")


def confidence_scores(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    score: str = "prob",
    variant: str = "paper",
    threshold: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_index: Tensor | None = None,
    batch_size: int = 64,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> tuple[Tensor, Tensor]:
    """``(Y [N], O [N])``: target scores on the images and on their explanation maps ``E``.

    With ``image_index`` (``[N]``), ``N`` saliency rows share ``B`` images: ``Y`` is computed once per image.
    """
    n = saliency.shape[0]
    if image_index is None:
        image_index = torch.arange(n, device=images.device)
    image_index = image_index.to(images.device).long()
    targets = targets.to(images.device).long()
    # target of each image (rows that share an image must share its target)
    img_targets = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
    img_targets[image_index] = targets
    y = image_scores(model, images, img_targets, batch_size=batch_size, score=score, oom_errors=oom_errors)
    sal = saliency.to(images.device)

    def build(items: Tensor) -> Tensor:
        return explanation_images(
            images[image_index[items]], sal[items], variant=variant, threshold=threshold, mean=mean, std=std
        )

    o = batched_scores(model, build, targets, batch_size=batch_size, score=score, oom_errors=oom_errors)
    return y[image_index], o


def drop_in_confidence(y: Tensor, o: Tensor, *, relative: bool = True, clamp: bool = True) -> Tensor:
    """Per-image drop ``max(0, Y - O) / Y`` (Grad-CAM++ eq. for Average Drop, as a fraction, not %).

    ``relative=False``: ``max(0, Y - O)`` (pytorch-grad-cam ``DropInConfidence``); ``clamp=False``: no
    ``max(0, .)`` (CF-CAM repository).
    """
    d = y - o
    if clamp:
        d = d.clamp_min(0)
    return d / y if relative else d


def average_drop(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    score: str = "prob",
    relative: bool = True,
    variant: str = "paper",
    threshold: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 64,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> Tensor:
    """Per-image drop in confidence (Grad-CAM++, section 5.1); its mean over images x 100 = Average Drop %.

    Default: ``max(0, Y - O) / Y`` with softmax probabilities and ``E = x * L`` on the normalised tensor.
    pytorch-grad-cam's ``DropInConfidence``: ``score="logit", relative=False``. CF-CAM repository:
    ``variant="cfcam"`` (binary mask ``L > 0.5`` on raw RGB, drop not clamped at 0). Lower is better.
    """
    _check_inputs(images, targets, saliency)
    y, o = confidence_scores(
        model,
        images,
        targets,
        saliency,
        score=score,
        variant=variant,
        threshold=threshold,
        mean=mean,
        std=std,
        batch_size=batch_size,
        oom_errors=oom_errors,
    )
    return drop_in_confidence(y, o, relative=relative, clamp=variant != "cfcam")


def increase_in_confidence(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    score: str = "prob",
    variant: str = "paper",
    threshold: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 64,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> Tensor:
    """Per-image indicator ``1[Y < O]`` (Grad-CAM++, section 5.1; mean x 100 = Increase in Confidence %).

    Same as pytorch-grad-cam's ``IncreaseInConfidence`` (``score(E) - score(x) > 0``). Higher is better.
    """
    _check_inputs(images, targets, saliency)
    y, o = confidence_scores(
        model,
        images,
        targets,
        saliency,
        score=score,
        variant=variant,
        threshold=threshold,
        mean=mean,
        std=std,
        batch_size=batch_size,
        oom_errors=oom_errors,
    )
    return (y < o).float()


# --------------------------------------------------------------------------------------------------
# ROAD (Rong et al. 2022)

# (dy, dx, weight): edge neighbours 1/6, diagonal neighbours 1/12 (ROAD, section 4 / Appendix)
_NEIGHBOURS = (
    (0, 1, 1 / 6),
    (0, -1, 1 / 6),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
    (1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (-1, -1, 1 / 12),
)


def linear_imputation_system(removed: np.ndarray, image: np.ndarray) -> tuple[sparse.csc_matrix, np.ndarray]:
    """The sparse system ``A v = b`` of ROAD's linear imputation (vectorised over pixels).

    removed: ``[H, W]`` bool (pixels to impute). image: ``[C, H, W]``.
    Row ``i`` (removed pixel ``p_i``): ``sum_j w_j (v_j - v_i) = 0`` over the in-image 8-neighbours ``j``
    (1/6 edge, 1/12 diagonal) -- the pixel equals the weighted mean of its neighbours; known neighbours
    go to the right-hand side. Returns ``A [n, n]`` (csc) and ``b [n, C]`` (float64).
    """
    h, w = removed.shape
    c = image.shape[0]
    flat_removed = removed.reshape(-1)
    unknown = np.flatnonzero(flat_removed)
    n = unknown.size
    var_of = np.full(h * w, -1, dtype=np.int64)
    var_of[unknown] = np.arange(n)
    ys, xs = np.divmod(unknown, w)
    img = image.reshape(c, -1).astype(np.float64)
    diag = np.zeros(n)
    b = np.zeros((n, c))
    rows, cols, vals = [], [], []
    for dy, dx, wt in _NEIGHBOURS:  # 8 offsets, vectorised over all removed pixels
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        src = np.flatnonzero(inside)
        nb = ny[inside] * w + nx[inside]
        diag[src] -= wt
        is_var = flat_removed[nb]
        rows.append(src[is_var])
        cols.append(var_of[nb[is_var]])
        vals.append(np.full(int(is_var.sum()), wt))
        known = ~is_var
        b[src[known]] -= wt * img[:, nb[known]].T  # one neighbour per offset: the rows are distinct
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    a = sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    return a, b


def exact_solve(a: sparse.csc_matrix, b: np.ndarray) -> np.ndarray:
    """``A^-1 b`` for ``linear_imputation_system``'s ``A`` by one sparse LU factorisation, all columns of ``b``.

    ``A`` is symmetric and negative definite (one kept pixel suffices), so SuperLU runs in symmetric mode: a
    minimum-degree ordering of ``A + A^T`` and no pivoting, about half the time and fill of ``spsolve``'s
    default column ordering at 224 x 224, the same solution to rounding (~1e-13 on ROAD's systems).
    """
    lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    return np.asarray(lu.solve(np.ascontiguousarray(b)))


IMPUTERS = ("cg", "exact", "auto")


def _check_imputer(imputer: str) -> None:
    if imputer not in IMPUTERS:
        raise InputError(
            f"imputer must be one of {IMPUTERS} ('cg': batched conjugate gradient on the tensor's device, "
            f"'exact': scipy sparse direct solve per image, 'auto': exact on CPU, cg elsewhere); got {imputer!r}."
        )


def resolve_imputer(imputer: str, device: torch.device) -> str:
    """``"auto"`` -> ``"exact"`` on CPU (the CPU reference numbers stay those of the direct solve; at the quick
    suite's 128 x 128 both cost the same there, at 224 x 224 cg is ~2.4x faster: benchmarks/RESULTS.md,
    section 6.1), ``"cg"`` on accelerators; other names unchanged. The two agree to ~1e-5 per pixel."""
    _check_imputer(imputer)
    if imputer == "auto":
        return "exact" if torch.device(device).type == "cpu" else "cg"
    return imputer


def noisy_linear_impute(
    image: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    imputer: str = "exact",
) -> Tensor:
    """ROAD's noisy linear imputation of the ``removed`` pixels of ``image`` ``[C,H,W]``.

    ``imputer="exact"`` solves the system of ``linear_imputation_system`` with
    one SuperLU factorisation shared by the channels (``exact_solve``: ``spsolve``'s solution to ~1e-13);
    ``"cg"`` solves the same system
    with ``noisy_linear_impute_batch``'s conjugate gradient. ``N(0, noise^2)`` is added to the imputed
    values, drawn as a ``[C, n]`` ``torch.randn`` from ``generator`` (with a generator seeded like the
    global RNG this reproduces pytorch-grad-cam's ``NoisyLinearImputer`` exactly). Returns float32
    ``[C,H,W]`` on the image's device.
    """
    imputer = resolve_imputer(imputer, image.device)
    if imputer == "cg":
        gen = generator if generator is not None else torch.default_generator
        return noisy_linear_impute_batch(
            image[None], removed.reshape(1, *image.shape[-2:]), noise=noise, generators=[gen]
        )[0]
    c, h, w = image.shape
    rem = removed.detach().cpu().numpy().astype(bool).reshape(h, w)
    out = image.detach().float().cpu().clone().reshape(c, -1)
    n = int(rem.sum())
    if n == 0:
        return out.reshape(c, h, w).to(image.device)
    if n == h * w:
        raise InputError(
            "ROAD cannot impute an image with every pixel removed (no known neighbour); use removal fractions below 1."
        )
    a, b = linear_imputation_system(rem, out.reshape(c, h, w).numpy())
    sol = exact_solve(a, b).reshape(n, c)
    vals = torch.from_numpy(sol).float().t()
    if noise:
        vals = vals + noise * torch.randn(vals.shape, generator=generator)
    out[:, np.flatnonzero(rem.reshape(-1))] = vals
    return out.reshape(c, h, w).to(image.device)


def noisy_linear_impute_batch(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generators: Sequence[torch.Generator] | None = None,
    tol: float = 1e-5,
) -> Tensor:
    """``noisy_linear_impute`` of every row at once: ``images [N,C,H,W]``, ``removed [N,H,W]`` (bool).

    The N systems (x C channels) are solved together by ``imputation.solve_masked_laplace`` (multigrid-
    preconditioned conjugate gradient on ROAD's masked 8-neighbour Laplacian, float64, on the images'
    device; ``tol`` bounds the error estimate, the result equals the sparse direct solve to ~1e-5). Row
    ``n``'s noise is ``generators[n]``'s ``[C, n_removed]`` ``torch.randn`` in flat pixel order -- the very
    numbers ``imputer="exact"`` adds. Returns float32 ``[N,C,H,W]`` on the images' device.
    """
    n, c, h, w = images.shape
    removed = removed.reshape(n, h, w).to(images.device).bool()
    counts = removed.reshape(n, -1).sum(dim=1)
    if bool((counts == h * w).any()):
        raise InputError(
            "ROAD cannot impute an image with every pixel removed (no known neighbour); use removal fractions below 1."
        )
    x = images.detach().float().contiguous()  # the runner's channels_last images: solve on a row-major copy
    if not bool(counts.any()):
        return x.clone()
    vals = solve_masked_laplace(x, removed, tol=tol).float()
    if noise:
        if generators is None or len(generators) != n:
            raise InputError(
                f"noise needs one generator per row: expected {n}, got "
                f"{None if generators is None else len(generators)}."
            )
        flat = removed.reshape(n, -1).cpu()
        draws = torch.zeros(n, c, h * w)
        for i, (gen, k) in enumerate(zip(generators, counts.tolist(), strict=True)):  # one draw per row, not per pixel
            if k:
                draws[i][:, flat[i]] = torch.randn((c, k), generator=gen)
        vals = vals + noise * draws.view(n, c, h, w).to(images.device)
    return torch.where(removed[:, None], vals, x)


def road_removal_counts(n_pixels: int, percentages: Sequence[float], rule: str = "round") -> Tensor:
    """Pixels removed for each fraction ``p`` in ``percentages`` (fractions in [0, 1)).

    ``rule="round"``: ``round(p * HW)``. ``rule="percentile"``: pytorch-grad-cam's thresholding at
    ``np.percentile(cam, 100 (1 - p))`` on a tie-free map, i.e. ``HW - ceil((HW - 1)(1 - p))``.
    """
    out = []
    for p in percentages:
        if not 0 <= p < 1:
            raise InputError(
                f"ROAD percentages are removed fractions in [0, 1); got {p}. "
                "(pytorch-grad-cam's `percentile` is the percentage KEPT: 80 there = 0.2 here.)"
            )
        if rule == "round":
            out.append(int(math.floor(p * n_pixels + 0.5)))
        elif rule == "percentile":
            out.append(n_pixels - int(math.ceil((n_pixels - 1) * (1 - p) - 1e-9)))
        else:
            raise InputError(f"rule must be 'round' or 'percentile', got {rule!r}.")
    return torch.tensor(out, dtype=torch.long)


def _item_generator(seed: int, key: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(key), int(step)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) & 0x7FFFFFFF)


def road_curves(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    order: str = "morf",
    noise: float = 0.01,
    seed: int = 0,
    score: str = "prob",
    count_rule: str = "round",
    image_index: Tensor | None = None,
    noise_keys: Tensor | None = None,
    batch_size: int = 64,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
    imputer: str = "cg",
) -> Tensor:
    """ROAD curves ``[N, P]``: target score after imputing the removed fraction ``p`` of each row's pixels.

    ``order="morf"`` removes the most relevant pixels first, ``"lerf"`` the least relevant (ties: lower
    flat index first in both). Imputation runs lazily per forward chunk. The noise of row ``n`` at
    percentage ``j`` is drawn from a generator seeded by ``(seed, noise_keys[n], j)`` (default key = the
    image index), so rows of different methods on one image share their random numbers and results do
    not depend on the chunk size. ``imputer="cg"`` solves the imputations of a forward chunk (rows x
    percentages) by conjugate gradient on the images' device (all at once on accelerators, one row at a time
    on CPU, each on its holes' bounding box); ``"exact"`` runs one sparse LU solve per (row, percentage), the
    reference algorithm (they agree to ~1e-5 per pixel); ``"auto"``
    picks exact on CPU, cg elsewhere.
    """
    if images.ndim == 5:
        raise DimensionError(
            f"ROAD is not defined in 3-D yet: its noisy linear imputation solves over 2-D pixel neighbourhoods, "
            f"and these inputs are volumes or clips {tuple(images.shape)}. Use deletion_auc / insertion_auc "
            "(3-D blur substrate) for the faithfulness of volume and video maps."
        )
    imputer = resolve_imputer(imputer, images.device)
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}.")
    n = saliency.shape[0]
    h, w = images.shape[-2:]
    if image_index is None:
        image_index = torch.arange(n, device=images.device)
    image_index = image_index.to(images.device).long()
    keys = (image_index if noise_keys is None else noise_keys).cpu().tolist()
    ks = road_removal_counts(h * w, percentages, count_rule)
    p = ks.shape[0]
    ranks = order_to_rank(pixel_order(saliency.to(images.device), descending=order == "morf"))
    if imputer == "exact":
        ranks = ranks.cpu()

    def build_batched(items: Tensor) -> Tensor:
        rows, js = items.div(p, rounding_mode="floor"), items.remainder(p)
        rows_dev, js_dev = rows.to(images.device), js.to(images.device)
        removed = (ranks[rows_dev] < ks.to(images.device)[js_dev][:, None]).view(-1, h, w)
        gens = [_item_generator(seed, keys[r], j) for r, j in zip(rows.tolist(), js.tolist(), strict=True)]
        imgs = images[image_index[rows_dev]]
        return noisy_linear_impute_batch(imgs, removed, noise=noise, generators=gens).to(images.dtype)

    def build(items: Tensor) -> Tensor:
        if imputer == "cg":
            return build_batched(items)
        out = []
        for item in items.tolist():  # one sparse solve per (row, percentage): the reference algorithm
            row, j = divmod(item, p)
            removed = (ranks[row] < ks[j]).view(h, w)
            gen = _item_generator(seed, keys[row], j)
            out.append(noisy_linear_impute(images[image_index[row]], removed, noise=noise, generator=gen))
        return torch.stack(out).to(images.dtype)

    flat_targets = targets.to(images.device).long().repeat_interleave(p)
    return batched_scores(  # chunks sized from the images themselves: no imputation spent on a probe
        model, build, flat_targets, batch_size=batch_size, score=score, oom_errors=oom_errors, example=images[:1]
    ).view(n, p)


def road(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    saliency: Tensor,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    order: str = "morf",
    *,
    noise: float = 0.01,
    seed: int = 0,
    score: str = "prob",
    count_rule: str = "round",
    noise_keys: Tensor | None = None,
    return_curve: bool = False,
    batch_size: int = 64,
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
    imputer: str = "cg",
) -> Tensor | tuple[Tensor, Tensor]:
    """ROAD (Rong et al., ICML 2022): mean target probability over removal fractions ``percentages``.

    Pixels are removed in ``order`` ("morf": most relevant first -- lower is better; "lerf": least relevant
    first -- higher is better) and imputed by noisy linear imputation (``noise`` = std of the added
    Gaussian). The noise of image ``i`` is seeded by ``(seed, noise_keys[i], percentage index)``; the
    default key is the position in the batch, so pass stable per-image keys (the registry hashes
    ``Batch.ids``) to make results independent of batching. ``count_rule="percentile"`` reproduces
    pytorch-grad-cam's pixel counts. ``imputer``: ``"cg"`` (batched conjugate gradient, default) or
    ``"exact"`` (scipy sparse solve per image, the reference). Returns ``Tensor[B]`` (and the curve ``[B, P]``).
    """
    _check_inputs(images, targets, saliency)
    curve = road_curves(
        model,
        images,
        targets,
        saliency,
        percentages=percentages,
        order=order,
        noise=noise,
        seed=seed,
        score=score,
        count_rule=count_rule,
        noise_keys=noise_keys,
        batch_size=batch_size,
        oom_errors=oom_errors,
        imputer=imputer,
    )
    value = curve.mean(dim=1)
    return (value, curve) if return_curve else value
