"""The shared batched perturbation engine behind every perturbation metric.

Deletion/insertion (Petsiuk et al., RISE, BMVC 2018), ROAD (Rong et al., ICML 2022) and Average Drop /
Increase in Confidence (Chattopadhyay et al., WACV 2018) all score a model on many perturbed copies of
each image. This module does that once, for all of them:

* pixel orders come from the saliency maps by a deterministic sort (docs/metrics.md#common: stable
  descending, the lower flat index first among ties; ``rise_ties=True`` puts the higher index first,
  as RISE's ``np.flip(np.argsort(...))``);
* a perturbed image at step ``k`` is ``where(rank < k, substrate, image)`` with ``rank[n, p]`` the
  position of pixel ``p`` in image ``n``'s order (all channels of a pixel together) -- no loop over pixels;
* the start (nothing perturbed) and the end (everything perturbed) of a curve do not depend on the pixel
  order, so the rows of one image and target (the stacked methods) share those two forwards;
* the ``N x S`` perturbed inputs (rows x steps; the caller stacks methods along the rows) are never
  materialised at once: they are built chunk by chunk, and each chunk is one forward pass under
  ``torch.inference_mode()``;
* on CPU the chunk is capped by :func:`benchmark.forward.forward_chunk` (at most 2**18 input
  pixels: large batches of large images run slower on a CPU than small ones);
* the chunk size adapts to memory: on CUDA the first chunk measures the peak memory per input and the
  next chunks hold as many inputs as a fraction of the free memory allows (``torch.cuda.mem_get_info``);
  an out-of-memory error halves the chunk and retries the same chunk (the results are identical
  whatever the chunk size, up to the accelerator's reduction order);
* forwards run under :func:`benchmark.forward.forward_autocast` (``--precision bf16|fp16``), scores
  are read in float32, and nothing inside the chunk loop synchronises host and device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..forward import forward_autocast, forward_chunk, perturbation_forward

#: Exceptions treated as "the chunk does not fit": the chunk is halved and retried.
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)

SCORES = ("prob", "logit")

Builder = Callable[[Tensor], Tensor]

#: Share of the free accelerator memory (plus the allocator's cached blocks) an adaptive chunk may use.
MEMORY_FRACTION = 0.5
#: Largest adaptive chunk (inputs per forward).
MAX_CHUNK = 2048
#: Measured peak bytes per input of a forward: (id(model), device, input shape, dtype) -> bytes.
_BYTES_PER_ITEM: dict[tuple, float] = {}


def memory_chunk(
    free_bytes: float, bytes_per_item: float, n: int, *, fraction: float = MEMORY_FRACTION, cap: int = MAX_CHUNK
) -> int:
    """Inputs per forward that fit in ``fraction`` of ``free_bytes`` at ``bytes_per_item`` each.

    Clamped to ``[1, min(n, cap)]``; an unknown (non-positive) ``bytes_per_item`` gives ``min(n, cap)``.
    """
    hi = max(1, min(int(n), int(cap)))
    if bytes_per_item <= 0:
        return hi
    return max(1, min(hi, int(free_bytes * fraction // bytes_per_item)))


def _free_bytes(device: torch.device) -> float:
    """Free device memory plus the blocks PyTorch's caching allocator holds but does not use."""
    free, _total = torch.cuda.mem_get_info(device)
    return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _check_saliency(saliency: Tensor) -> Tensor:
    if saliency.ndim not in (2, 3, 4):
        raise InputError(
            f"Saliency maps must be [N,H,W] (or [N,T,H,W] for volumes and clips, or flat [N,H*W]); got "
            f"shape {tuple(saliency.shape)}."
        )
    flat = saliency.reshape(saliency.shape[0], -1)
    if not torch.is_floating_point(flat):
        flat = flat.float()
    if torch.isnan(flat).any():
        bad = torch.isnan(flat).any(dim=1).nonzero().flatten().tolist()
        raise InputError(
            f"Saliency maps of rows {bad} contain NaN; a pixel order needs finite values. "
            "Replace NaN (e.g. torch.nan_to_num) before computing perturbation metrics."
        )
    return flat


#: The resolution at which a map is ranked, relative to its range (``max - min``): values are rounded to
#: ``2**-16`` of the range (:func:`rank_levels`) before any order is taken, so that maps equal up to float
#: noise (e.g. Grad-CAM and XGrad-CAM on a GAP + linear head, ~1e-7 apart) rank their pixels the same on
#: every CPU. Pixels within one level are ties, ordered by index. See docs/reproducibility.md.
RANK_RESOLUTION = 2.0**-16


def rank_levels(values: Tensor, resolution: float | None = RANK_RESOLUTION) -> Tensor:
    """``values [N, P]`` as integer levels (float64) of ``resolution`` times each row's range:
    ``round((v - min) / (max - min) / resolution)`` computed in float64 (every step exactly rounded, so the
    levels of a given map are the same on every CPU); a constant row is all level 0. ``None``: the values
    as they are (exact float order)."""
    if resolution is None:
        return values
    x = values.double()
    lo = x.amin(dim=1, keepdim=True)
    span = x.amax(dim=1, keepdim=True) - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    return torch.round((x - lo) / span / resolution)


def snap(values: Tensor, resolution: float | None = RANK_RESOLUTION) -> Tensor:
    """``values`` rounded to the nearest multiple of ``resolution`` (float64): the twin of :func:`rank_levels`
    for metrics that compare a map with thresholds on its own scale (mask IoU at ``s >= 0.5``, MaxBoxAcc and
    PxAP on min-max normalised maps, the Grad-CAM box at ``s >= 0.15 max``). ``resolution`` is a power of two,
    so ``round(v / r) * r`` is exact on every CPU and two maps within float noise of each other give the same
    snapped values (unless a value lies within the noise of a half-level edge). ``None``: the values as they
    are. See docs/reproducibility.md."""
    if resolution is None:
        return values
    return torch.round(values.double() / resolution) * resolution


def snap_threshold(threshold: float, resolution: float | None = RANK_RESOLUTION) -> float:
    """A threshold at the resolution of :func:`snap` (values and thresholds are compared on one grid, so a
    value equal to the threshold stays on its side); ``None``: unchanged."""
    return float(threshold) if resolution is None else float(snap(torch.tensor(float(threshold)), resolution))


def pixel_order(
    saliency: Tensor, *, descending: bool = True, rise_ties: bool = False, resolution: float | None = RANK_RESOLUTION
) -> Tensor:
    """Per-image pixel order ``[N, H*W]`` (flat indices, most salient first when ``descending``).

    The map is ranked at ``resolution`` of its range (:func:`rank_levels`; ``None``: exact float order).
    Ties are broken deterministically by a stable sort: the lower flat (raster) index comes first.
    ``rise_ties=True`` puts the higher index first, matching RISE's ``np.flip(np.argsort(sal))``.
    For ``descending=False`` (least relevant first) the lower index also comes first among ties
    (``rise_ties`` then puts the higher index first).
    """
    flat = rank_levels(_check_saliency(saliency), resolution)
    if rise_ties:
        rev = torch.flip(flat, dims=[1])
        idx = torch.sort(rev, dim=1, descending=descending, stable=True).indices
        return flat.shape[1] - 1 - idx
    return torch.sort(flat, dim=1, descending=descending, stable=True).indices


def order_to_rank(order: Tensor) -> Tensor:
    """Invert orders: ``rank[n, order[n, i]] = i`` (``[N, P]`` long)."""
    if order.ndim != 2:
        raise InputError(f"Pixel orders must be [N, H*W]; got shape {tuple(order.shape)}.")
    order = order.long()
    pos = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def patch_order(
    saliency: Tensor, patch_size: int, *, descending: bool = True, resolution: float | None = RANK_RESOLUTION
) -> Tensor:
    """Pixel order that perturbs whole ``patch_size x patch_size`` regions at a time.

    Regions (a non-overlapping grid in raster order, as Quantus ``RegionPerturbation``) are ranked by the
    sum of the saliency inside them at ``resolution`` (:func:`rank_levels`; stable sort, lower region index
    first among ties); pixels inside a region follow raster order. Perturbing ``j * patch_size**2`` pixels
    then removes exactly ``j`` regions. H and W must be multiples of ``patch_size``.
    """
    if saliency.ndim != 3:
        raise InputError(f"patch_order needs [N,H,W] maps; got shape {tuple(saliency.shape)}.")
    n, h, w = saliency.shape
    p = int(patch_size)
    if h % p or w % p:
        raise InputError(f"Image size {h}x{w} is not a multiple of patch_size={p}; pad the images or pick a divisor.")
    gh, gw = h // p, w // p
    sums = rank_levels(_check_saliency(saliency).view(n, gh, p, gw, p).sum(dim=(2, 4)).reshape(n, gh * gw), resolution)
    region_rank = order_to_rank(torch.sort(sums, dim=1, descending=descending, stable=True).indices)
    # pixel (y, x) belongs to region (y//p, x//p) and has offset (y%p)*p + x%p inside it
    ys = torch.arange(h, device=saliency.device)
    xs = torch.arange(w, device=saliency.device)
    region = ((ys // p)[:, None] * gw + (xs // p)[None, :]).reshape(-1)
    offset = ((ys % p)[:, None] * p + (xs % p)[None, :]).reshape(-1)
    pixel_rank = region_rank[:, region] * (p * p) + offset
    return torch.sort(pixel_rank, dim=1).indices


def step_counts(n_pixels: int, *, step: int | None = None, n_steps: int | None = None) -> Tensor:
    """Pixels perturbed at each point of a curve, including the unperturbed start (``k_0 = 0``).

    ``step`` (RISE): ``k_i = min(i*step, HW)`` for ``i = 0..ceil(HW/step)``.
    ``n_steps``: ``k_i = floor(i*HW/n_steps)`` for ``i = 0..n_steps`` (equal spacing, ``k_last = HW``).
    """
    if (step is None) == (n_steps is None):
        raise InputError("Give exactly one of `step` (pixels per step) or `n_steps` (number of steps).")
    if step is not None:
        if step < 1:
            raise InputError(f"`step` must be a positive number of pixels, got {step}.")
        n = -(-n_pixels // int(step))
        return torch.clamp(torch.arange(n + 1) * int(step), max=n_pixels)
    assert n_steps is not None
    if n_steps < 1:
        raise InputError(f"`n_steps` must be >= 1, got {n_steps}.")
    return torch.div(torch.arange(n_steps + 1) * n_pixels, int(n_steps), rounding_mode="floor")


def _target_scores(out: Tensor, targets: Tensor, score: str) -> Tensor:
    out = out.float()
    if score == "prob":
        out = torch.softmax(out, dim=1)
    return out.gather(1, targets.view(-1, 1).long()).squeeze(1)


def batched_scores(
    model: nn.Module,
    build: Builder,
    targets: Tensor,
    *,
    batch_size: int = 64,
    score: str = "prob",
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
    adaptive: bool = True,
    example: Tensor | None = None,
) -> Tensor:
    """Target scores of ``len(targets)`` lazily built inputs, in adaptive chunks.

    ``build(items)`` returns the model inputs for the item indices ``items`` (a long tensor); it is called
    once per chunk, so at most ``batch_size`` inputs exist at a time. An exception of a type in
    ``oom_errors`` halves the chunk and retries it (the smaller size is kept for the rest); at a chunk of
    one item it propagates. ``score``: ``"prob"`` (softmax probability) or ``"logit"``.
    ``adaptive``: on CUDA, after the first chunk (``batch_size`` inputs), chunks hold as many inputs as
    :data:`MEMORY_FRACTION` of the free memory allows (:func:`memory_chunk`; at most :data:`MAX_CHUNK`);
    on CPU, chunks hold at most :func:`~benchmark.forward.forward_chunk` inputs (sized from ``example``,
    an input of the built shape, when given -- for builders whose inputs are costly, e.g. ROAD's imputations --
    else from one built item). Returns float32 ``[len(targets)]`` on ``targets``' device.
    """
    if score not in SCORES:
        raise InputError(f"score must be one of {SCORES}, got {score!r}.")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    n = targets.shape[0]
    device = targets.device
    out = torch.empty(n, dtype=torch.float32, device=device)
    start, chunk = 0, int(batch_size)
    if adaptive and device.type == "cpu" and n:
        if example is None:
            with torch.inference_mode():
                example = build(torch.arange(0, 1, device=device))
        chunk = forward_chunk(chunk, example)
    adaptive = adaptive and device.type == "cuda"
    key: tuple | None = None
    measure = False
    items: Tensor | None = None
    x: Tensor | None = None
    logits: Tensor | None = None
    while start < n:
        try:
            with torch.inference_mode(), forward_autocast(device):
                if adaptive and key is None:  # size the chunks from free memory (one-item probe for the shape)
                    probe = build(torch.arange(start, start + 1, device=device))
                    key = (id(model), str(device), tuple(probe.shape[1:]), probe.dtype)
                    del probe
                    if key in _BYTES_PER_ITEM:
                        chunk = memory_chunk(_free_bytes(device), _BYTES_PER_ITEM[key], n)
                    else:
                        measure = True
                stop = min(start + chunk, n)
                items = torch.arange(start, stop, device=device)
                x = build(items)
                if measure:
                    base = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                logits = perturbation_forward(model, x)
                if measure:  # peak activation memory of this chunk, plus its inputs, per input
                    assert key is not None
                    peak = torch.cuda.max_memory_allocated(device) - base + x.numel() * x.element_size()
                    _BYTES_PER_ITEM[key] = peak / max(1, stop - start)
                    chunk = memory_chunk(_free_bytes(device), _BYTES_PER_ITEM[key], n)
                    measure = False
                out[start:stop] = _target_scores(logits, targets[start:stop], score).to(out.device)
        except oom_errors:
            items = x = logits = None
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            if key in _BYTES_PER_ITEM:  # the estimate was too low: later calls start smaller
                _BYTES_PER_ITEM[key] *= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    return out


def _rows(t: Tensor, idx: Tensor) -> Tensor:
    return t.expand(idx.shape[0], *t.shape[1:]) if t.shape[0] == 1 else t[idx]


def perturbation_curves(
    model: nn.Module,
    images: Tensor,
    orders: Tensor,
    substrate: Tensor,
    steps: Sequence[int] | Tensor,
    targets: Tensor,
    *,
    image_index: Tensor | None = None,
    batch_size: int = 64,
    score: str = "prob",
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> Tensor:
    """Target scores ``[N, S]`` of ``where(rank < k_s, substrate, image)`` for every row and step.

    images:      ``[B,3,H,W]`` (normalised) -- the start of the curve; volumes and clips ``[B,3,T,H,W]``
                 (then every "pixel" below is a voxel, all channels of a voxel together).
    orders:      ``[N, H*W]`` long, per-row pixel orders (first = perturbed first), e.g. ``pixel_order``.
    substrate:   ``[B,3,H,W]`` (or ``[1,3,H,W]``) -- what perturbed pixels become (zeros, a blur, or,
                 for insertion, the image itself with ``images`` = the blurred start).
    steps:       ``S`` pixel counts ``k_s`` (e.g. ``step_counts``); all channels of a pixel change together.
    targets:     ``[N]`` class of each row.
    image_index: ``[N]`` long, the image (and substrate) row each saliency row uses; default
                 ``arange(N)`` (then ``B == N``). Stacking M methods = ``image_index = arange(B).repeat(M)``
                 without copying the images.
    """
    n = orders.shape[0]
    if images.ndim not in (4, 5):
        raise InputError(f"images must be [B,C,H,W] (or [B,C,T,H,W]); got shape {tuple(images.shape)}.")
    grid = tuple(images.shape[2:])  # (H, W), or (T, H, W)
    hw = 1
    for v in grid:
        hw *= int(v)
    if orders.shape != (n, hw):
        raise InputError(f"orders must be [N, H*W] = [{n}, {hw}] for {grid} images; got {tuple(orders.shape)}.")
    if targets.shape != (n,):
        raise InputError(f"targets must be [N]={n}; got shape {tuple(targets.shape)}.")
    device = images.device
    if image_index is None:
        if images.shape[0] != n:
            raise InputError(f"{images.shape[0]} images for {n} orders: pass image_index to map orders to images.")
        image_index = torch.arange(n, device=device)
    image_index = image_index.to(device).long()
    if substrate.ndim == 3:
        substrate = substrate.unsqueeze(0)
    if substrate.shape[0] not in (1, images.shape[0]) or substrate.shape[1:] != images.shape[1:]:
        raise InputError(
            f"substrate must be [B,C,H,W] or [1,C,H,W] like images {tuple(images.shape)}; got {tuple(substrate.shape)}."
        )
    substrate = substrate.to(device=device, dtype=images.dtype)
    k = torch.as_tensor(steps, dtype=torch.long, device=device).flatten()
    s = k.shape[0]
    if s == 0:
        raise InputError("steps is empty: give at least one pixel count.")
    ranks = order_to_rank(orders.to(device))
    targets = targets.to(device).long()
    pair_row, pair_col, src = _shared_ends(image_index, targets, k, hw)

    def build(items: Tensor) -> Tensor:
        row, col = pair_row[items], pair_col[items]
        img_row = image_index[row]
        mask = (ranks[row] < k[col, None]).view(-1, 1, *grid)
        return torch.where(mask, _rows(substrate, img_row), images[img_row])

    scores = batched_scores(model, build, targets[pair_row], batch_size=batch_size, score=score, oom_errors=oom_errors)
    return scores[src].view(n, s)


def _shared_ends(image_index: Tensor, targets: Tensor, k: Tensor, hw: int) -> tuple[Tensor, Tensor, Tensor]:
    """The (row, step) pairs to forward, and for every ``row * S + step`` the pair that holds its score.

    At ``k = 0`` (the image) and ``k = H*W`` (all substrate) the input does not depend on the pixel order,
    so rows that share an image and a target (the stacked methods of one image) share that forward: a
    curve of ``S`` points over ``M`` methods costs ``M * (S - 2) + 2`` forwards per image, not ``M * S``.
    """
    n, s = image_index.shape[0], k.shape[0]
    device = image_index.device
    ends = (k <= 0) | (k >= hw)  # [S]
    key = image_index * (int(targets.max()) + 1 if n else 1) + targets
    _, group = torch.unique(key, return_inverse=True)  # [N] -> group id
    first = torch.full((int(group.max()) + 1 if n else 0,), n, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, group, torch.arange(n, device=device), reduce="amin")  # representative row
    rows = torch.arange(n, device=device)[:, None].expand(n, s)
    cols = torch.arange(s, device=device)[None, :].expand(n, s)
    rep = torch.where(ends[None, :], first[group][:, None].expand(n, s), rows)  # [N,S] row that is forwarded
    needed = (rep == rows).reshape(-1)  # pairs actually forwarded, in row-major order
    pair_row, pair_col = rows.reshape(-1)[needed], cols.reshape(-1)[needed]
    slot = torch.full((n * s,), -1, dtype=torch.long, device=device)
    slot[needed.nonzero().flatten()] = torch.arange(int(needed.sum()), device=device)
    src = slot[(rep * s + cols).reshape(-1)]
    return pair_row, pair_col, src


def image_scores(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    batch_size: int = 64,
    score: str = "prob",
    oom_errors: tuple[type[BaseException], ...] = OOM_ERRORS,
) -> Tensor:
    """Target scores ``[B]`` of the unperturbed images (chunked like every other forward)."""
    return batched_scores(
        model,
        lambda items: images[items],
        targets.to(images.device).long(),
        batch_size=batch_size,
        score=score,
        oom_errors=oom_errors,
    )


def trapezoid_auc(curve: Tensor) -> Tensor:
    """RISE AUC of curves ``[B, S]`` sampled evenly on [0, 1]: ``(sum s_i - s_0/2 - s_last/2)/(S-1)``."""
    if curve.ndim != 2 or curve.shape[1] < 2:
        raise InputError(f"curve must be [B, S] with S >= 2; got shape {tuple(curve.shape)}.")
    return (curve.sum(dim=1) - curve[:, 0] / 2 - curve[:, -1] / 2) / (curve.shape[1] - 1)
