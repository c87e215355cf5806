"""Text-query explanations of a CLIP-style dual encoder (``target = "text"``).

``patch_text_similarity``: the cosine similarity of every patch embedding with the query's text embedding
(the dense patch-text similarity ExCEL builds its CAMs from; Yang et al., CVPR 2025). For a dual encoder
whose image embedding is the mean of its patch embeddings, the image-text similarity is
``<mean_j p_j, t> / ||mean_j p_j||``: the map is that sum's per-patch terms up to the per-patch
normalisation. The model must expose ``patch_embeddings(images) -> [B, d, h, w]`` and ``text_embeddings()
-> [Q, d]`` (``shapes_dual_encoder``); other models are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CambenchError
from .base import ExplainContext, register_method


def patch_text_map(patches: Tensor, text: Tensor) -> Tensor:
    """Cosine of each patch embedding ``[B, d, h, w]`` with the query embeddings ``[B, d]``: ``[B, h, w]``."""
    return torch.einsum("bdhw,bd->bhw", F.normalize(patches, dim=1), F.normalize(text, dim=1))


@register_method(
    "patch_text_similarity",
    family="projection",
    needs_gradients=False,
    paper="Yang et al., CVPR 2025 (ExCEL: patch-text similarity)",
    architectures=("dual_encoder", "dualencoder"),
)
def patch_text_similarity(ctx: ExplainContext) -> Tensor:
    """Per-patch cosine similarity with the explained text query (module docstring)."""
    model: Any = ctx.model
    if not (hasattr(model, "patch_embeddings") and hasattr(model, "text_embeddings")):
        raise CambenchError(
            "Method 'patch_text_similarity' explains a dual encoder's similarity to a text query: the model "
            f"must have patch_embeddings() and text_embeddings() (shapes_dual_encoder), got {type(model).__name__}. "
            'Use it with target = "text", or choose a class-logit method.'
        )
    with torch.no_grad():
        patches = model.patch_embeddings(ctx.images)
        text = model.text_embeddings()[ctx.targets.to(patches.device)]
        return patch_text_map(patches, text)


__all__ = ["patch_text_map", "patch_text_similarity"]
