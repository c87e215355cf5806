"""A new metric in one file: the target probability when only the top ``fraction`` of the map is kept.

Every metric scores all methods of a batch at once and returns one value per image (NaN = undefined).
"""

import torch
from torch import Tensor

from benchmark.metrics import MetricContext, register_metric


@register_metric(
    "keep_top_prob",
    family="faithfulness",
    higher_is_better=True,
    needs=("saliency",),
    paper="CONTRIBUTING example",
)
def keep_top_prob(ctx: MetricContext, fraction: float = 0.2) -> dict[str, Tensor]:  # parameters: the signature
    """Softmax probability of the target on ``x * 1[map in its top fraction]`` (zeros elsewhere)."""
    images, targets = ctx.batch.images, ctx.batch.targets
    out = {}
    with torch.inference_mode():
        for method, maps in ctx.saliency.items():  # maps: [B, H, W] in [0, 1]
            flat = maps.flatten(1)
            k = max(1, int(fraction * flat.shape[1]))
            cut = flat.topk(k, dim=1).values[:, -1:]  # the k-th largest value of each map
            keep = (flat >= cut).view_as(maps)[:, None].to(images.dtype)
            probs = ctx.model(images * keep).softmax(dim=1)
            out[method] = probs.gather(1, targets[:, None]).squeeze(1).float().cpu()
    return out
