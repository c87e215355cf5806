"""Score-CAM variants of torchcam 0.5.0: SS-CAM (smoothed) and IS-CAM (integrated).

Both follow torchcam's Score-CAM conventions (docs/methods.md#scorecam, "tc" row): each channel is min-max normalised at
the layer's resolution (``(A_k - min) / (max - min + 1e-8)``), upsampled bilinearly (align_corners=False)
to the input size, multiplied with the (model-normalised) input; the score is the target logit minus the
logit of the unmasked input; the channel weights are a softmax over channels of the averaged scores, and
the map is ``sum_k w_k A_k`` at the layer's resolution.

Every masked forward goes through ``ctx.forward_scores`` (inference mode) in chunks of exactly
``ctx.forward_batch_size`` rows, mixing images and samples in one stream, and masked inputs are built one block
(one sample, one image) at a time, never all ``N x B x C`` at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .base import ExplainContext, register_method
from .gradient import spatial, weighted_sum
from .score import interp_mode

SSCAM_SALT = 4242


def tc_channel_masks(acts: Tensor, size: tuple[int, ...], eps: float = 1e-8) -> Tensor:
    """torchcam's Score-CAM masks: per-channel min-max at low resolution, then bilinear upsampling.

    ``[B,C,h,w] -> [B,C,H,W]``; volumes and clips ``[B,C,t,h,w] -> [B,C,T,H,W]`` (trilinear).
    """
    axes = spatial(acts)
    lo = acts.amin(dim=axes, keepdim=True)
    m = acts - lo
    m = m / (m.amax(dim=axes, keepdim=True) + eps)
    return F.interpolate(m, size=size, mode=interp_mode(size), align_corners=False)


def stream_scores(ctx: ExplainContext, blocks: Iterator[tuple[Tensor, Tensor]], total: int) -> Tensor:
    """Score a stream of ``(inputs [n,...], classes [n])`` blocks in chunks of exactly ``ctx.forward_batch_size``.

    Returns the ``[total]`` target scores in stream order. At most one block plus one chunk is in memory.
    """
    out = torch.empty(total, device=ctx.images.device)
    pending_x: list[Tensor] = []
    pending_t: list[Tensor] = []
    n_pending, done = 0, 0

    def flush(final: bool) -> None:
        nonlocal n_pending, done
        if not pending_x:
            return
        x, t = torch.cat(pending_x), torch.cat(pending_t)
        pending_x.clear()
        pending_t.clear()
        cut = x.shape[0] if final else (x.shape[0] // ctx.forward_batch_size) * ctx.forward_batch_size
        if cut:
            out[done : done + cut] = ctx.forward_scores(x[:cut], t[:cut])
            done += cut
        if cut < x.shape[0]:
            pending_x.append(x[cut:])
            pending_t.append(t[cut:])
        n_pending = x.shape[0] - cut

    for x, t in blocks:
        pending_x.append(x)
        pending_t.append(t)
        n_pending += x.shape[0]
        if n_pending >= ctx.forward_batch_size:
            flush(final=False)
    flush(final=True)
    assert done == total, (done, total)
    return out


def sscam_noise(ctx: ExplainContext, sample: int, shape: tuple[int, ...], std: float) -> Tensor:
    """The ``sample``-th SS-CAM mask noise ``N(0, std^2)`` of shape ``[C,H,W]``, seeded by ``ctx.seed``.

    Each sample has its own generator, and the same noise serves every image of the batch: maps do not
    depend on the batch composition or on ``batch_size``.
    """
    return std * ctx.randn(shape, salt=SSCAM_SALT + sample)


def _weighted_low_res(acts: Tensor, scores: Tensor) -> Tensor:
    w = scores.softmax(dim=1)  # [B,C]
    return weighted_sum(w, acts)


@register_method(
    "sscam",
    family="perturbation",
    needs_gradients=False,
    cost="expensive",  # one forward per channel of the target layer (x n_samples)
    paper="Wang et al. 2020 (SS-CAM), arXiv 2006.14255, eq. 4-5",
)
def sscam(ctx: ExplainContext, n_samples: int = 35, std: float = 2.0) -> Tensor:
    """SS-CAM: Score-CAM with weights averaged over ``n_samples`` noisy masks ``M_k + N(0, std^2)``.

    ``w = softmax_k( mean_i [ y^c((M_k + delta_i) * x) - y^c(x) ] )`` (torchcam ``SSCAM``: noise added to the
    upsampled normalised mask, defaults 35 samples, std 2.0). Seeded through :func:`sscam_noise`.
    """
    if n_samples < 1:
        raise InputError(f"sscam needs n_samples >= 1, got {n_samples}.")
    a = ctx.capture.activations
    b, c = a.shape[:2]
    size = ctx.input_size
    masks = tc_channel_masks(a.float(), size)  # [B,C,H,W]
    base = ctx.forward_scores(ctx.images, ctx.targets)  # [B]
    dtype = ctx.images.dtype

    def blocks() -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(n_samples):
            noise = sscam_noise(ctx, s, (c, *size), std)
            for i in range(b):
                x = ((masks[i] + noise)[:, None] * ctx.images[i][None].float()).to(dtype)
                yield x, ctx.targets[i].expand(c)

    scores = stream_scores(ctx, blocks(), n_samples * b * c).view(n_samples, b, c)
    scores = scores.mean(dim=0) - base[:, None]
    return _weighted_low_res(a, scores)


def iscam_coefficients(n_samples: int) -> Tensor:
    """IS-CAM's input scales as torchcam 0.5.0 computes them: ``s_i = sum_{j=1..i} j / N``, ``i = 1..N``.

    (torchcam's docstring writes ``sum_{j=0..i-1} j/N``; its code, reproduced here, sums ``j = 1..i``.)
    """
    i = torch.arange(1, n_samples + 1, dtype=torch.float64)
    return (i * (i + 1) / (2 * n_samples)).float()


@register_method(
    "iscam",
    family="perturbation",
    needs_gradients=False,
    cost="expensive",  # one forward per channel of the target layer (x n_samples)
    paper="Naidu et al. 2020 (IS-CAM), arXiv 2010.03023, eq. 5",
)
def iscam(ctx: ExplainContext, n_samples: int = 10) -> Tensor:
    """IS-CAM: Score-CAM with scores integrated over scaled masked inputs ``s_i (M_k * x)``.

    ``w = softmax_k( mean_i [ y^c(s_i M_k * x) - y^c(x) ] )`` with ``s_i`` from :func:`iscam_coefficients`
    (torchcam ``ISCAM``, default 10 samples). Deterministic. A channel constant over the image has an
    all-zero mask, so all its scaled inputs are ``x*0``: one forward per image scores every such channel at
    every scale (on real networks 30-60 % of the head's channels; see :func:`~.score.scorecam`).
    """
    if n_samples < 1:
        raise InputError(f"iscam needs n_samples >= 1, got {n_samples}.")
    a = ctx.capture.activations
    b, c = a.shape[:2]
    masks = tc_channel_masks(a.float(), ctx.input_size)
    base = ctx.forward_scores(ctx.images, ctx.targets)
    coeff = iscam_coefficients(n_samples).tolist()
    dtype = ctx.images.dtype
    zero = masks.flatten(2).amax(dim=2) == 0  # [B,C]: constant channel -> all-zero mask
    live = [(~zero[i]).nonzero().flatten() for i in range(b)]
    n_live = sum(int(ch.shape[0]) for ch in live)

    def blocks() -> Iterator[tuple[Tensor, Tensor]]:
        for s in coeff:
            for i in range(b):
                if live[i].shape[0]:
                    x = s * masks[i, live[i]][:, None] * ctx.images[i][None].float()
                    yield x.to(dtype), ctx.targets[i].expand(live[i].shape[0])

    flat = stream_scores(ctx, blocks(), n_samples * n_live)
    scores = torch.empty(n_samples, b, c, device=a.device)
    if bool(zero.any()):  # the score of x*0, shared by every all-zero mask of the image at every scale
        scores[:] = ctx.forward_scores(ctx.images * 0, ctx.targets)[None, :, None]
    done = 0
    for s in range(n_samples):
        for i in range(b):
            k = int(live[i].shape[0])
            scores[s, i, live[i]] = flat[done : done + k]
            done += k
    scores = scores.mean(dim=0) - base[:, None]
    return _weighted_low_res(a, scores)
