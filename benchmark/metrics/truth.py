"""Registry entries of the ``truth`` family: maps scored against what the model provably uses.

On ``shapes_shortcut`` with ``shapes_shortcut_cnn`` the dataset knows the model's evidence by construction
(the class-coded mark; ``Batch.extras["truth_mask"]``), in the spirit of FunnyBirds (Hesse et al., ICCV
2023). Functional forms in ``functional/truth.py``; definitions in ``docs/scenes-and-truth.md``. Datasets without a
model truth skip these metrics (their need ``truth`` is not met).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import MetricContext, register_metric
from .functional import truth as F
from .perturbation import batched_scores


def _truth(ctx: MetricContext) -> Tensor:
    return ctx.batch.extras["truth_mask"].bool()  # type: ignore[index]


@register_metric(
    "shortcut_pointing",
    family="truth",
    higher_is_better=True,
    needs=("saliency", "truth"),
    paper="Hesse et al. 2023 (FunnyBirds) style; pointing game (Zhang et al. 2016) on the model truth",
)
def shortcut_pointing(ctx: MetricContext) -> dict[str, Tensor]:
    """1/0 per image: the map's maximum lies on the evidence the model uses (the mark)."""
    t = _truth(ctx)
    return {m: F.shortcut_pointing(s, t.to(s.device)).float().cpu() for m, s in ctx.saliency.items()}


@register_metric(
    "shortcut_energy",
    family="truth",
    higher_is_better=True,
    needs=("saliency", "truth"),
    paper="Hesse et al. 2023 (FunnyBirds) style; energy pointing game (Wang et al. 2020) on the model truth",
)
def shortcut_energy(ctx: MetricContext) -> dict[str, Tensor]:
    """Share of the map's positive energy on the mark (the model's evidence)."""
    t = _truth(ctx)
    return {m: F.shortcut_energy(s, t.to(s.device)).float().cpu() for m, s in ctx.saliency.items()}


@register_metric(
    "shortcut_intervention",
    family="truth",
    higher_is_better=True,
    needs=("saliency", "truth"),
    paper="Hesse et al. 2023 (FunnyBirds) style intervention: remove the map's top pixels vs the true cause",
)
def shortcut_intervention(
    ctx: MetricContext, fraction: float | None = None, min_drop: float = 0.1
) -> dict[str, Tensor]:
    """Drop of p(target) when the map's top-k pixels are removed, relative to removing the mark.

    ``k`` = the mark's pixel count (``fraction=None``: the oracle then removes exactly the mark) or
    ``fraction`` of the image. Both removals fill with the image's mean colour.
    """
    if fraction is not None and not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction must be in (0, 1] (share of the image) or None (the mark's size), got {fraction}.")
    images, targets, t = ctx.batch.images, ctx.batch.targets, _truth(ctx).to(ctx.batch.images.device)
    b, _, h, w = images.shape
    k = t.flatten(1).sum(dim=1) if fraction is None else torch.full((b,), round(float(fraction) * h * w))
    methods = ctx.methods
    regions = [t] + [F.top_k_mask(ctx.saliency[m].to(images.device), k) for m in methods]
    regions_t = torch.stack(regions)  # [1+M, B, H, W]

    def build(items: Tensor) -> Tensor:
        j, i = items // b, items % b  # j = 0: unperturbed, 1: truth removed, 2..: method j-2
        x = images[i]
        cut = regions_t[(j - 1).clamp(min=0), i]
        return torch.where((j > 0)[:, None, None, None], F.remove_region(x, cut), x)

    n_rows = (2 + len(methods)) * b
    scores = batched_scores(ctx.model, build, targets.repeat(2 + len(methods)), batch_size=ctx.forward_batch_size)
    scores = scores.view(2 + len(methods), b).cpu()
    p0, p_truth = scores[0], scores[1]
    assert n_rows == scores.numel()
    return {m: F.intervention_ratio(p0, scores[2 + j], p_truth, min_drop) for j, m in enumerate(methods)}


@register_metric(
    "distractibility",
    family="truth",
    higher_is_better=False,
    needs=("saliency", "truth", "explainer"),
    paper="Hesse et al. 2023 (FunnyBirds) style counterfactual: a distractor moved must not move the map",
)
def distractibility(ctx: MetricContext) -> dict[str, Tensor]:
    """Total-variation distance between the map and the map of the same image with one distractor (of
    another class, which the model does not use) moved elsewhere: 0 = unmoved. NaN: no distractor."""
    moved = ctx.batch.extras["moved_image"]  # type: ignore[index]
    ok = torch.isfinite(moved.flatten(1)).all(dim=1)
    out = {m: torch.full((len(ok),), float("nan")) for m in ctx.methods}
    if not bool(ok.any()) or ctx.explain is None:
        return out
    # the whole batch (images without a distractor unchanged), so per-image inputs such as the oracle's
    # ground truth (the mark, which did not move) still line up with the images
    images = torch.where(ok.to(moved.device)[:, None, None, None], moved, ctx.batch.images.to(moved.device))
    maps = ctx.explain(ctx.model, images.to(ctx.batch.images.device), ctx.batch.targets, ctx.methods)
    for m in ctx.methods:
        shift = F.map_shift(ctx.saliency[m], maps[m].to(ctx.saliency[m].device)).float().cpu()
        out[m] = torch.where(ok.cpu(), shift, out[m])
    return out
