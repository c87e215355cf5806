"""Every annotated photo is usable: efficientnet_lite0 ranks its class in the top 5 (else it is excluded)."""

from __future__ import annotations

import torch

from benchmark.data import create_dataset
from benchmark.data.transforms import resize_sample
from benchmark.models import create_model


@torch.inference_mode()
def test_every_photo_class_is_in_the_models_top5() -> None:
    ds = create_dataset("photos")
    assert len(ds) >= 8 and {o.get("source", "skimage") for o in ds.objects} == {"skimage", "sklearn", "matplotlib"}
    h = create_model("efficientnet_lite0")
    x = torch.stack([resize_sample(ds[i], h.input_size).image for i in range(len(ds))])
    top5 = h.model(h.normalize(x)).topk(5, dim=1).indices
    targets = torch.tensor([ds[i].target for i in range(len(ds))])
    assert bool((top5 == targets[:, None]).any(dim=1).all()), [o["id"] for o in ds.objects]
