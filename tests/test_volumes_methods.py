"""CAM methods on volumes and clips ``[B,3,T,H,W]``: shapes, parity with pytorch-grad-cam (5-D) and Captum's
LayerGradCam (N-D), known answers (Grad-CAM = CAM / N on a conv -> GAP -> linear model), batch invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import methods
from benchmark.errors import CaptureError, LayerError
from benchmark.methods import METHODS
from benchmark.methods.postprocess import finalize, upsample
from benchmark.models.volumetric import VolumeCNN

ALL = [  # the built-in methods (other test modules register fakes while pytest collects)
    n
    for n in methods.list_methods()
    if n != "oracle"
    and not METHODS.entry(n).meta.get("architectures")  # LeGrad (ViTs), TAM (captioners), ...
    and METHODS.entry(n).obj.__module__.startswith("benchmark.")
]
FAST = {"smoothgradcampp": {"n_samples": 2}, "sscam": {"n_samples": 2}, "iscam": {"n_samples": 2}}


class SameRes(nn.Module):
    """Conv3d -> ReLU -> Conv3d (target, at input resolution) -> ReLU -> GAP -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv3d(6, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


@pytest.fixture(scope="module")
def vol_model() -> VolumeCNN:
    torch.manual_seed(0)
    m = VolumeCNN(4, (4, 8, 12)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm3d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return torch.randn(4, 3, 8, 16, 16, generator=torch.Generator().manual_seed(1))


def test_finalize_3d_trilinear_and_unit_range() -> None:
    raw = torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    maps, bad = finalize(raw, (4, 8, 8))
    assert maps.shape == (2, 4, 8, 8) and not bad.any()
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    ref = torch.nn.functional.interpolate(
        (
            (raw - raw.amin((1, 2, 3), keepdim=True))
            / (raw.amax((1, 2, 3), keepdim=True) - raw.amin((1, 2, 3), keepdim=True))
        )[:, None],
        size=(4, 8, 8),
        mode="trilinear",
        align_corners=False,
    )[:, 0]
    torch.testing.assert_close(maps, ref)
    assert upsample(raw, (2, 4, 4)) is raw
    const, flag = finalize(torch.ones(1, 2, 3, 3), (2, 6, 6))
    assert flag.all() and not const.any()


@pytest.mark.parametrize("name", ALL)
def test_every_method_gives_volume_maps(vol_model: VolumeCNN, clips: torch.Tensor, name: str) -> None:
    out = methods.explain(
        vol_model, "block3", clips[:2], [0, 3], [name], params=FAST, details=True, forward_batch_size=16
    )[name]
    assert out.maps.shape == (2, 8, 16, 16)
    assert out.maps.dtype == torch.float32 and torch.isfinite(out.maps).all()
    assert float(out.maps.min()) >= 0 and float(out.maps.max()) <= 1
    assert out.raw.ndim == 4


@pytest.mark.parametrize("name", [n for n in ALL if METHODS.entry(n).meta.get("batch_consistent", True)])
def test_batch_of_one_equals_batch_of_four(vol_model: VolumeCNN, clips: torch.Tensor, name: str) -> None:
    targets = torch.tensor([0, 1, 2, 3])
    four = methods.explain(vol_model, "block3", clips, targets, [name], params=FAST, forward_batch_size=16)[name]
    ones = torch.cat(
        [
            methods.explain(
                vol_model, "block3", clips[i : i + 1], targets[i : i + 1], [name], params=FAST, forward_batch_size=16
            )[name]
            for i in range(4)
        ]
    )
    torch.testing.assert_close(four, ones, atol=2e-5, rtol=1e-4)


def test_gradcam_equals_cam_up_to_scale_on_gap_linear(vol_model: VolumeCNN, clips: torch.Tensor) -> None:
    """On A -> GAP -> Linear, dy^c/dA_k = W[c,k] / (t h w): Grad-CAM's raw map is CAM's divided by t h w."""
    out = methods.explain(vol_model, "block3", clips, [0, 1, 2, 3], ["cam", "gradcam"], details=True)
    cam, grad = out["cam"].raw, out["gradcam"].raw
    n = cam[0].numel()  # t * h * w of the target layer
    torch.testing.assert_close(grad * n, cam, atol=1e-5, rtol=1e-4)
    pos = cam.flatten(1).amin(1) > 0  # where CAM is positive everywhere, the final maps agree too
    if pos.any():
        torch.testing.assert_close(out["gradcam"].maps[pos], out["cam"].maps[pos], atol=1e-5, rtol=1e-4)


def test_gradient_methods_match_pytorch_grad_cam_5d() -> None:
    """pytorch-grad-cam 1.5 accepts 5-D input for the Grad-CAM family; at a target layer at input resolution
    its scipy zoom is the identity, so the final maps must agree."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(3)
    model = SameRes().eval()
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    targets = [1, 3]
    pairs = {
        "gradcam": pgc.GradCAM,
        "gradcampp": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "hirescam": pgc.HiResCAM,
        "layercam": pgc.LayerCAM,
    }
    ours = methods.explain(model, "conv2", x, targets, list(pairs))
    for name, cls in pairs.items():
        with cls(model=model, target_layers=[model.conv2]) as cam:
            ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
        assert ref.shape == (2, 4, 8, 8)
        np.testing.assert_allclose(ours[name].numpy(), ref, atol=2e-5, err_msg=name)


def test_gradcam_matches_captum_layergradcam_nd(vol_model: VolumeCNN, clips: torch.Tensor) -> None:
    captum = pytest.importorskip("captum.attr")
    targets = torch.tensor([0, 1, 2, 3])
    ref = captum.LayerGradCam(vol_model, vol_model.block3).attribute(clips, target=targets)  # [B,1,t,h,w]
    raw = methods.explain(vol_model, "block3", clips, targets, ["gradcam"], details=True)["gradcam"].raw
    torch.testing.assert_close(raw, ref[:, 0].detach(), atol=1e-6, rtol=1e-4)


def test_explain_rejects_a_2d_layer_on_clips_and_legrad_names_itself(vol_model: VolumeCNN, clips: torch.Tensor) -> None:
    with pytest.raises(CaptureError, match="3-D conv"):
        methods.explain(vol_model, "fc", clips[:1], 0, ["gradcam"])
    with pytest.raises(LayerError, match="legrad"):
        methods.explain(vol_model, "block3", clips[:1], 0, ["legrad"])


def test_r3d18_tiny_clips_every_method() -> None:
    """r3d_18 (random init) on tiny 3x8x32x32 clips: every method whose cost does not scale with full forwards
    per channel (Score-/SS-/IS-CAM need 512 r3d_18 forwards per clip: checked on volume_cnn above)."""
    from benchmark.models import create_model

    h = create_model("r3d_18", weights="random", input_size=(8, 32, 32))
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    names = [n for n in ALL if n not in ("scorecam", "sscam", "iscam")]
    out = methods.explain(h.model, h.target_layer, x, [0, 1], names, params=FAST, details=True)
    for n, o in out.items():
        assert o.maps.shape == (2, 8, 32, 32), n
        assert torch.isfinite(o.maps).all() and float(o.maps.max()) <= 1 and float(o.maps.min()) >= 0, n
    assert sum(not bool(o.degenerate.all()) for o in out.values()) >= len(out) - 3


def test_r3d18_score_family_on_a_shallow_layer() -> None:
    """Score-/SS-/IS-CAM on r3d_18 clips, batched in 3-D (layer1: 64 channels keeps the CPU cost small)."""
    from benchmark.models import create_model

    h = create_model("r3d_18", weights="random", input_size=(4, 16, 16))
    x = torch.randn(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    params = {"sscam": {"n_samples": 1}, "iscam": {"n_samples": 1}}
    out = methods.explain(
        h.model, "layer1", x, [3], ["scorecam", "sscam", "iscam"], params=params, forward_batch_size=64
    )
    for n, m in out.items():
        assert m.shape == (1, 4, 16, 16) and torch.isfinite(m).all() and float(m.max()) > 0, n


def test_oracle_rim_dilates_in_3d() -> None:
    """The oracle's mask_dilation grows a decreasing rim in every direction of a volume (Chebyshev distance)."""
    from benchmark.methods.base import ExplainContext, run_method

    mask = torch.zeros(1, 9, 9, 9, dtype=torch.bool)
    mask[0, 4, 4, 4] = True
    model = nn.Sequential(nn.Conv3d(3, 2, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2))
    ctx = ExplainContext(
        model=model, layer=model[0], images=torch.rand(1, 3, 9, 9, 9), targets=torch.zeros(1).long(), masks=mask
    )
    raw = run_method(ctx, "oracle", {"mask_dilation": 2}).raw
    assert raw[0, 4, 4, 4] == 1.0
    rim1, rim2 = raw[0, 3, 3, 3], raw[0, 2, 6, 4]
    assert 0 < rim2 < rim1 < 1 and raw[0, 0, 0, 0] == 0
