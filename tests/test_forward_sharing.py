"""Forwards the perturbation CAMs share without changing their maps.

* Ablation-CAM forwards one image per chunk and lets the target layer's hook supply the ablated batch. The
  shortcut must give the map of the n-copy definition on networks that carry the batch downstream (skip
  connections included) and fall back to n copies on networks that cannot (a concatenation with an
  upstream tensor, a reshape to the input's batch size) or silently disagree.
* Score-CAM and IS-CAM score the input ``x*0`` of every all-zero mask (a constant channel) once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmark import methods
from benchmark.methods import score
from benchmark.methods.score_variants import iscam_coefficients


def _maps(
    model: nn.Module, layer: str, x: torch.Tensor, t: torch.Tensor, *, tail: bool | None, batch_size: int = 16
) -> tuple[torch.Tensor, list[int]]:
    """Raw Ablation-CAM maps and the batch sizes the model's input saw (tail forced on/off, or auto)."""
    module = methods.resolve_layer(model, layer)
    score._TAIL_OK.pop(module, None)
    if tail is not None:
        score._TAIL_OK[module] = tail
    seen: list[int] = []
    h = model.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(int(args[0].shape[0])))
    try:
        out = methods.explain(model, layer, x, t, ["ablationcam"], forward_batch_size=batch_size, details=True)
    finally:
        h.remove()
    return out["ablationcam"].raw, seen


@pytest.mark.slow
def test_resnet_tail_equals_full_copies_with_one_image_per_chunk() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([1, 3])
    full, seen_full = _maps(model, "layer3", x, t, tail=False)
    auto, seen_auto = _maps(model, "layer3", x, t, tail=None)
    assert score._TAIL_OK[model.layer3] is True
    torch.testing.assert_close(auto, full, rtol=1e-4, atol=1e-5)
    # 256 channels in chunks of 16 = 16 chunks per image; after the capture (batch 2) every chunk forwards
    # one image, plus the two-row check on first use, instead of 16 copies
    assert seen_full[1:] == [16] * 32
    assert seen_auto[1:] == [1, 2] + [1] * 31


class CatNet(nn.Module):
    """DenseNet-style: the head concatenates the target layer's output with an upstream tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        return self.fc(torch.cat([s, self.block(s)], dim=1).mean(dim=(-2, -1)))


class BatchReshapeNet(nn.Module):
    """A head that reshapes to the *input's* batch size: the batch the hook adds cannot survive it."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).reshape(x.shape[0], -1))


class BatchMeanNet(nn.Module):
    """Pathological: mixes rows of the batch, so one image's score depends on the others. The n identical
    copies and the n ablated rows then differ, and the check must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.block(x).mean(dim=(-2, -1))
        return self.fc(f - 0.5 * f.mean(dim=0, keepdim=True) * x.shape[0])


def test_networks_that_cannot_carry_the_batch_fall_back_to_full_copies() -> None:
    for cls in (CatNet, BatchReshapeNet, BatchMeanNet):
        torch.manual_seed(0)
        model = cls().eval()
        x = torch.rand(2, 3, 8, 8)
        t = torch.tensor([0, 2])
        full, _ = _maps(model, "block", x, t, tail=False, batch_size=3)
        auto, seen = _maps(model, "block", x, t, tail=None, batch_size=3)
        assert score._TAIL_OK[model.block] is False, cls.__name__
        torch.testing.assert_close(auto, full, msg=cls.__name__)
        c = model.block[0].out_channels
        chunks = [min(3, c - j) for j in range(0, c, 3)] * 2  # n full copies per chunk, both images
        assert seen[-len(chunks) :] == chunks, (cls.__name__, seen)


class DeadNet(nn.Module):
    """Channels 0-2 of the target layer are dead (ReLU of a very negative bias): constant zero maps."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 7, 3, stride=2, padding=1), nn.ReLU())
        with torch.no_grad():
            self.block[0].bias[:3] = -1e3
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(7 * 4 * 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x))


def _brute_force(model: nn.Module, x: torch.Tensor, t: list[int], variant: str, scales: list[float]) -> torch.Tensor:
    """One channel and one forward at a time, as the papers write it (no sharing)."""
    with torch.no_grad():
        a = model.block(x)
        out = []
        for b in range(x.shape[0]):
            base = model(x[b : b + 1])[0, t[b]]
            s = []
            for k in range(a.shape[1]):
                ak = a[b, k]
                if variant == "iscam":  # torchcam: low-res min-max, then upsample
                    m = (ak - ak.min()) / (ak.max() - ak.min() + 1e-8)
                    m = F.interpolate(m[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                    s.append(torch.stack([model(sc * m * x[b : b + 1])[0, t[b]] - base for sc in scales]).mean())
                else:  # pgc: upsample (align_corners=True), then min-max
                    u = F.interpolate(ak[None, None], size=x.shape[-2:], mode="bilinear", align_corners=True)[0, 0]
                    m = (u - u.min()) / (u.max() - u.min() + 1e-8)
                    s.append(model(m * x[b : b + 1])[0, t[b]])
            out.append(torch.einsum("c,chw->hw", torch.stack(s).softmax(0), a[b]))
    return torch.stack(out)


def test_all_zero_masks_share_one_forward_and_keep_the_maps() -> None:
    torch.manual_seed(0)
    model = DeadNet().eval()
    x = torch.rand(2, 3, 8, 8)
    t = [0, 2]
    with torch.no_grad():
        f = model.block(x).flatten(2)
    const = f.amax(2) == f.amin(2)  # [B,C]
    assert const[:, :3].all() and (~const).any(dim=1).all()
    live = int((~const).sum())
    for name, params, scales in (("scorecam", {}, [1.0]), ("iscam", {"n_samples": 3}, iscam_coefficients(3).tolist())):
        seen: list[int] = []
        h = model.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(int(args[0].shape[0])))
        try:
            raw = methods.explain(
                model, "block", x, t, [name], params={name: params}, forward_batch_size=64, details=True
            )[name].raw
        finally:
            h.remove()
        torch.testing.assert_close(raw, _brute_force(model, x, t, name, scales), rtol=1e-4, atol=1e-5, msg=name)
        # after the capture (2 images): the live channels of each image (at each scale), plus x*0 once per
        # image (iscam also scores the two clean images once)
        expected = live + 2 if name == "scorecam" else 2 + 3 * live + 2
        assert sum(seen[1:]) == expected, (name, seen)
