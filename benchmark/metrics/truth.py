"""Registry entries of the ``truth`` family: maps scored against what the model provably uses.

On ``shapes_shortcut`` with ``shapes_shortcut_cnn`` the dataset knows the model's evidence by construction
(the class-coded mark; ``Batch.extras["truth_mask"]``), in the spirit of FunnyBirds (Hesse et al., ICCV
2023). Functional forms in ``functional/truth.py``; definitions in ``docs/scenes-and-truth.md``. Datasets without a
model truth skip these metrics (their need ``truth`` is not met).

BAM (Yang & Kim 2019) contrasts two models trained on the same composites (``data/composites.py``,
``models/bam.py``): the object head (the object matters) and the scene head (it does not). ``bam_model_contrast``
and ``bam_input_dependence`` need ``"contrast"``: the explained model declares its contrast model
(``MetricContext.contrast_model``) and the batch its targets (``extras["contrast_target"]``). Ground-truth
methods (``needs_ground_truth``, the oracle) are scored with each model's own truth: the object region under
the object head, the rest of the image under the scene head (the whole scene-only image): their values are
the ceiling (1); a map that ignores the model and the input (center, the per-batch seeded random map) scores 0.
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


def _is_ground_truth(ctx: MetricContext, name: str) -> bool:
    return bool(ctx.method_info(name, "needs_ground_truth", False))


def _contrast_maps(ctx: MetricContext, key: str, images: Tensor) -> dict[str, Tensor]:
    """Maps of every (non-ground-truth) method of ``ctx`` under the contrast model for its targets, cached per
    batch under ``key`` (the two BAM metrics share them)."""
    cache_key = ("bam_contrast", key, tuple(ctx.methods))
    if cache_key not in ctx.cache:
        live = [m for m in ctx.methods if not _is_ground_truth(ctx, m)]
        targets = ctx.batch.extras["contrast_target"].to(ctx.batch.targets.device).long()  # type: ignore[index]
        assert ctx.explain is not None and ctx.contrast_model is not None
        ctx.cache[cache_key] = ctx.explain(ctx.contrast_model, images, targets, live) if live else {}
    return ctx.cache[cache_key]


@register_metric(
    "bam_model_contrast",
    family="truth",
    higher_is_better=True,
    needs=("saliency", "masks", "explainer", "contrast"),
    paper="Yang & Kim 2019 (BAM), model contrast score, eq. 1",
)
def bam_model_contrast(ctx: MetricContext) -> dict[str, Tensor]:
    """``G_obj(object model) - G_obj(contrast model)`` per image: the mean [0,1]-scaled attribution on the object
    region under the explained (object) model minus under its contrast (scene) model. 1 = the ground truth."""
    region = ctx.batch.masks.bool()  # type: ignore[union-attr]
    other = _contrast_maps(ctx, "image", ctx.batch.images)
    out = {}
    for m, s in ctx.saliency.items():
        r = region.to(s.device)
        scene = (~r).float() if _is_ground_truth(ctx, m) else other[m].to(s.device)
        out[m] = F.model_contrast_score(s, scene, r).float().cpu()
    return out


@register_metric(
    "bam_input_dependence",
    family="truth",
    higher_is_better=True,
    needs=("saliency", "masks", "explainer", "contrast"),
    paper="Yang & Kim 2019 (BAM), input dependence rate, eq. 2",
)
def bam_input_dependence(ctx: MetricContext) -> dict[str, Tensor]:
    """1/0 per image: under the contrast (scene) model, the pasted object's region gets less attribution than
    the same region of the scene-only image (``extras["background_image"]``); NaN where the scene model
    misclassifies either image or the data has no scene-only image. The mean is BAM's IDR (an input-blind map: 0)."""
    extras = ctx.batch.extras or {}
    if "background_image" not in extras:
        return {m: torch.full((len(ctx.batch.ids),), float("nan")) for m in ctx.methods}
    region = ctx.batch.masks.bool()  # type: ignore[union-attr]
    bg = extras["background_image"].to(ctx.batch.images.device)
    targets = extras["contrast_target"].to(ctx.batch.images.device).long()
    contrast = ctx.contrast_model
    assert contrast is not None
    with torch.inference_mode():
        ok = (contrast(ctx.batch.images).argmax(1) == targets) & (contrast(bg).argmax(1) == targets)
    with_obj = _contrast_maps(ctx, "image", ctx.batch.images)
    without = _contrast_maps(ctx, "background", bg)
    out = {}
    for m, s in ctx.saliency.items():
        r = region.to(s.device)
        if _is_ground_truth(ctx, m):
            a, b = (~r).float(), torch.ones_like(r, dtype=torch.float32)
        else:
            a, b = with_obj[m].to(s.device), without[m].to(s.device)
        out[m] = F.input_dependence(a, b, r, ok.to(s.device)).float().cpu()
    return out
