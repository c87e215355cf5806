"""Numerical parity of cambench's CAM methods with pytorch-grad-cam 1.5.7 and torchcam 0.5.0.

Two architectures (ResNet-18, MobileNet-V3-small; random init, fixed seed), a last layer (spatially
uniform gradients) and an intermediate one (spatially varying gradients). Criterion: per-image Pearson
r >= 0.99 between our final map and the reference's (upsampled the same way).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from benchmark import methods

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

PGC = {
    "gradcam": pgc.GradCAM,
    "gradcampp": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
    "scorecam": pgc.ScoreCAM,
    "ablationcam": pgc.AblationCAM,
}
GRADIENT = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam"]
PERTURBATION = ["scorecam", "ablationcam"]


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(num_classes=10).eval()


def _images(n: int = 2, size: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / den) if den > 0 else float(np.allclose(a, b))


def _pgc_maps(name: str, model, layer, x, targets) -> np.ndarray:
    kwargs = {"batch_size": 64} if name == "ablationcam" else {}
    with PGC[name](model=model, target_layers=[layer], **kwargs) as cam:
        if name == "scorecam":
            cam.batch_size = 64
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def _assert_parity(ours: torch.Tensor, ref: np.ndarray, name: str) -> None:
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    for i in range(ref.shape[0]):
        r = pearson(ours[i].numpy(), ref[i])
        assert r >= 0.99, f"{name} image {i}: Pearson {r:.4f} < 0.99"


CASES = [
    ("resnet18", "layer4"),
    ("resnet18", "layer3"),
    ("mobilenet_v3_small", "features"),
    ("mobilenet_v3_small", "features.8"),
]


@pytest.mark.parametrize("arch,layer", CASES)
def test_gradient_methods_match_pytorch_grad_cam(arch: str, layer: str) -> None:
    model, x = _model(arch), _images()
    targets = torch.tensor([3, 7])
    ours = methods.explain(model, layer, x, targets, GRADIENT)
    module = methods.resolve_layer(model, layer)
    for name in GRADIENT:
        _assert_parity(ours[name], _pgc_maps(name, model, module, x, targets), name)


# Layers with non-negative outputs: with negative activations pgc's AblationLayer drifts (min - k*1e7 for
# the k-th row, see benchmark.methods.score.default_ablation_value); that case is tested against the formula.
@pytest.mark.parametrize("arch,layer", [("resnet18", "layer2"), ("mobilenet_v3_small", "features.3.block.0")])
def test_perturbation_methods_match_pytorch_grad_cam(arch: str, layer: str) -> None:
    model, x = _model(arch), _images(2, 64)
    targets = torch.tensor([1, 4])
    ours = methods.explain(model, layer, x, targets, PERTURBATION, forward_batch_size=64)
    module = methods.resolve_layer(model, layer)
    for name in PERTURBATION:
        _assert_parity(ours[name], _pgc_maps(name, model, module, x, targets), name)


def test_eigencam_reproduces_pgc_sign_exactly() -> None:
    """Default Eigen-CAM is pgc's (centred, LAPACK sign): maps agree to float precision, not only r."""
    model, x = _model("resnet18"), _images()
    ours = methods.get("eigencam")(model, "layer3", x, [0, 0])
    ref = _pgc_maps("eigencam", model, model.layer3, x, [0, 0])
    # pgc re-normalises after upsampling; compare after the same final min-max.
    o = ours.numpy()
    o = (o - o.min((1, 2), keepdims=True)) / (np.ptp(o, axis=(1, 2), keepdims=True) + 1e-7)
    np.testing.assert_allclose(o, ref, atol=1e-4)


tc = pytest.importorskip("torchcam.methods")
TC = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM"}


@pytest.mark.parametrize("name", sorted(TC))
def test_methods_match_torchcam(name: str) -> None:
    model = _model("resnet18")
    layer = "layer2" if name == "scorecam" else "layer3"
    x = _images(2, 64 if name == "scorecam" else 128)
    targets = [2, 5]
    ours = methods.get(name)(model, layer, x, targets)
    extractor = getattr(tc, TC[name])(model, target_layer=layer, input_shape=tuple(x.shape[1:]))
    try:
        if name == "scorecam":
            extractor.bs = 64
        with torch.set_grad_enabled(name != "scorecam"):
            scores = model(x)
        low = extractor(class_idx=targets, scores=scores)[0]
    finally:
        extractor.remove_hooks()
    ref = F.interpolate(low[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    _assert_parity(ours, ref.detach().numpy(), name)
