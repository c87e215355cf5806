"""Parity of the extra CAM methods with pytorch-grad-cam 1.5.7 ("pgc") and torchcam 0.5.0 ("tc"), plus
known-answer tests against the papers' formulas written out independently.

Criterion for parity: per-image Pearson r >= 0.99 between our final map and the peer's (upsampled the same
way), on two architectures with random init and small inputs. Runs single-threaded (tiny models are
fastest that way and the CI machine is shared).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmark import methods
from benchmark.errors import LayerError
from benchmark.methods.base import _context
from benchmark.methods.score_variants import iscam_coefficients, sscam_noise, tc_channel_masks

from conftest import tiny_cnn

pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputReST,
    ClassifierOutputTarget,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def _model(arch: str, classes: int = 10) -> nn.Module:
    """A seeded random-init torchvision model, "woken up" so that scores are not vanishingly small.

    Random-init MobileNet/EfficientNet give logits ~1e-10 (every softmax is uniform, every Score-CAM weight
    equal): BatchNorm statistics are calibrated on one random batch and the Linear layers re-initialised
    with std 1/sqrt(fan_in). Seeded; the model is then in eval mode.
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=classes)
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features**-0.5, generator=g)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64, generator=g))
    return model.eval()


def _images(n: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / den) if den > 0 else float(np.allclose(a, b))


def _assert_parity(ours: torch.Tensor, ref, name: str, r_min: float = 0.99) -> None:
    ref = np.asarray(ref.detach() if isinstance(ref, torch.Tensor) else ref)
    assert tuple(ours.shape) == ref.shape, (name, ours.shape, ref.shape)
    for i in range(ref.shape[0]):
        assert ours[i].std() > 0 and ref[i].std() > 0, f"{name} image {i}: constant map, test is vacuous"
        r = pearson(ours[i].numpy(), ref[i])
        assert r >= r_min, f"{name} image {i}: Pearson {r:.4f} < {r_min}"


def _upsample(low: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(low[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _raw(name, model, layer, x, targets, **params):
    return methods.explain(model, layer, x, targets, [name], params={name: params}, details=True)[name]


GRAD_CASES = [("resnet18", "layer3"), ("mobilenet_v3_small", "features.8")]
# MobileNet-V3's hardsigmoid has no double backward (pgc's ShapleyCAM fails on it too): EfficientNet-B0 (SiLU,
# sigmoid gates) is the second architecture for the Hessian-vector product.
HVP_CASES = [("resnet18", "layer3"), ("efficientnet_b0", "features.5")]


# -- gradcamelementwise / kpcacam / shapleycam (pgc, same call pattern) -------------------------------------
PGC_SIMPLE = {"gradcamelementwise": pgc.GradCAMElementWise, "kpcacam": pgc.KPCA_CAM, "shapleycam": pgc.ShapleyCAM}


@pytest.mark.parametrize(
    "arch,layer,names",
    [(a, lay, ["gradcamelementwise", "kpcacam"]) for a, lay in GRAD_CASES]
    + [(a, lay, ["shapleycam"]) for a, lay in HVP_CASES],
)
def test_pgc_parity_elementwise_kpca_shapley(arch: str, layer: str, names: list) -> None:
    model, x, targets = _model(arch), _images(2, 96), [3, 7]
    module = methods.resolve_layer(model, layer)
    ours = methods.explain(model, layer, x, targets, names)
    for name in names:
        cls = PGC_SIMPLE[name]
        with cls(model=model, target_layers=[module]) as cam:
            ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
        _assert_parity(ours[name], ref, name)


def test_shapleycam_rest_objective_matches_pgc_and_hvp_matters() -> None:
    """On EfficientNet-B0 (SiLU, sigmoid gates) the Hessian term is non-zero: ShapleyCAM != Grad-CAM."""
    model, x, targets = _model("efficientnet_b0"), _images(2, 96), [3, 7]
    layer = "features.5"
    ours = _raw("shapleycam", model, layer, x, targets, objective="rest")
    with pgc.ShapleyCAM(model=model, target_layers=[methods.resolve_layer(model, layer)]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputReST(t) for t in targets])
    _assert_parity(ours.maps, ref, "shapleycam-rest")
    logit = _raw("shapleycam", model, layer, x, targets).raw
    grad = _raw("gradcam", model, layer, x, targets).raw
    assert not torch.allclose(logit, grad, rtol=1e-3, atol=1e-6 * float(grad.abs().max()))


# -- finercam -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,layer", GRAD_CASES)
def test_finercam_matches_pgc_softmax_weighting(arch: str, layer: str) -> None:
    model, x, target = _model(arch), _images(2, 96), 4
    ours = methods.get("finercam")(model, layer, x, [target, target])
    with pgc.FinerCAM(model=model, target_layers=[methods.resolve_layer(model, layer)]) as cam:
        ref = cam(input_tensor=x, target_idx=target)
    _assert_parity(ours, ref, "finercam-pgc")


@pytest.mark.parametrize("arch,layer", GRAD_CASES)
def test_finercam_matches_torchcam_mean_weighting(arch: str, layer: str) -> None:
    model, x, targets = _model(arch), _images(2, 96), [2, 5]
    ours = methods.get("finercam", weighting="mean", alpha=0.6)(model, layer, x, targets)
    ext = tcm.FinerCAM(model, layer, input_shape=tuple(x.shape[1:]))
    try:
        scores = model(x)
        low = ext(targets, scores)[0]
    finally:
        ext.remove_hooks()
    _assert_parity(ours, _upsample(low, x.shape[-2:]), "finercam-tc")


def test_finercam_is_gradcam_of_the_contrast() -> None:
    """Linear ("mean") objective: raw map = Grad-CAM(c) - alpha * mean_j Grad-CAM(d_j) (gradients are linear)."""
    model, x = _model("resnet18"), _images(2, 64)
    targets = torch.tensor([1, 6])
    with torch.no_grad():
        logits = model(x)
    fin = _raw("finercam", model, "layer3", x, targets, weighting="mean", alpha=0.7, n_comparisons=2).raw
    expected = _raw("gradcam", model, "layer3", x, targets).raw.clone()
    for i in range(2):
        d = (logits[i] - logits[i, targets[i]]).abs()
        d[targets[i]] = float("inf")
        refs = d.argsort()[:2]
        for j in refs:
            gj = _raw("gradcam", model, "layer3", x[i : i + 1], [int(j)]).raw[0]
            expected[i] -= 0.7 / 2 * gj
    # float32: the contrast cancels most of Grad-CAM, so the absolute tolerance is relative to the map scale
    torch.testing.assert_close(fin, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    # alpha = 0: both weightings reduce to Grad-CAM exactly (sum_j p_j y_c / sum_j p_j = y_c).
    gc = _raw("gradcam", model, "layer3", x, targets).raw
    for w in ("mean", "softmax"):
        f0 = _raw("finercam", model, "layer3", x, targets, weighting=w, alpha=0.0).raw
        torch.testing.assert_close(f0, gc, rtol=1e-4, atol=1e-7)


# -- ShapleyCAM known answers --------------------------------------------------------------------------
class QuadHead(nn.Module):
    """features -> y = W . mean_ij(A^2): the Hessian w.r.t. A is diagonal, H A = 2 W_k A / hw."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Tanh())
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc((self.features(x) ** 2).mean(dim=(-2, -1)))


def test_shapleycam_quadratic_head_known_answer() -> None:
    torch.manual_seed(0)
    model, x, t = QuadHead().eval(), _images(3, 16), torch.tensor([0, 1, 2])
    a = model.features(x).detach()
    w = model.fc.weight.detach()[t]  # [B,C]
    hw = a.shape[-1] * a.shape[-2]
    g = 2 * w[:, :, None, None] * a / hw
    hv = 2 * w[:, :, None, None] * a / hw
    expected = torch.einsum("bc,bchw->bhw", (g - 0.5 * hv).mean(dim=(-2, -1)), a)
    got = _raw("shapleycam", model, "features", x, t).raw
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_shapleycam_without_double_backward_fails_clearly() -> None:
    from benchmark.errors import CaptureError

    with pytest.raises(CaptureError, match="second derivatives.*hardsigmoid"):
        methods.get("shapleycam")(_model("mobilenet_v3_small"), "features.8", _images(1, 64), 0)


def test_shapleycam_equals_gradcam_for_piecewise_linear_nets() -> None:
    model, x = _model("resnet18"), _images(2, 64)
    s = _raw("shapleycam", model, "layer3", x, [1, 2]).raw
    g = _raw("gradcam", model, "layer3", x, [1, 2]).raw
    torch.testing.assert_close(s, g, rtol=1e-4, atol=1e-6 * float(g.abs().max()))


def test_gradcamelementwise_formula() -> None:
    model, x = _model("mobilenet_v3_small"), _images(2, 64)
    cap = _context(model, "features.8", x, torch.tensor([1, 2])).capture
    expected = np.maximum(cap.gradients.numpy() * cap.activations.numpy(), 0).sum(axis=1)
    got = _raw("gradcamelementwise", model, "features.8", x, [1, 2]).raw
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-9)


def test_kpcacam_linear_kernel_is_eigencam_up_to_sign() -> None:
    """Kernel PCA with a linear kernel on centred data is PCA: the projection equals Eigen-CAM's up to sign."""
    model, x = _model("resnet18"), _images(2, 96)
    k = _raw("kpcacam", model, "layer3", x, 0, kernel="linear").raw
    e = _raw("eigencam", model, "layer3", x, 0).raw
    for i in range(2):
        assert abs(pearson(k[i].numpy(), e[i].numpy())) > 0.9999


# -- FullGrad -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_fullgrad_matches_pgc(arch: str) -> None:
    model, x, targets = _model(arch), _images(2, 64), [3, 8]
    ours = methods.get("fullgrad")(model, None, x, targets)
    with pgc.FullGrad(model=model, target_layers=[]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    _assert_parity(ours, ref, "fullgrad")
    again = methods.get("fullgrad")(model, "layer1" if arch == "resnet18" else "features.2", x, targets)
    torch.testing.assert_close(again, ours)  # the target layer is ignored


def test_fullgrad_known_answer_on_a_bias_free_linear_net() -> None:
    """No bias layers: FullGrad = sum over RGB of the per-channel min-max of |x * dy/dx|; here dy/dx = W."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 2, bias=False)
    ).eval()
    x = _images(2, 8)
    # dy/dx of a linear model, by hand: the Linear weight pulled back through the conv (conv_transpose)
    w = model[2].weight.detach()[[0, 1]].view(2, 4, 8, 8)
    gx = F.conv_transpose2d(w, model[0].weight.detach(), padding=1)
    e = (x * gx).abs()
    lo, hi = e.amin(dim=(-2, -1), keepdim=True), e.amax(dim=(-2, -1), keepdim=True)
    for eps in (1e-7, 0.0):
        expected = ((e - lo) / (hi - lo + eps)).sum(dim=1)
        got = _raw("fullgrad", model, "0", x, [0, 1], eps=eps).raw
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_fullgrad_scale_free_option_ignores_rounding_noise_but_keeps_tiny_structure() -> None:
    from benchmark.methods.fullgrad import channel_minmax

    tiny = torch.tensor([[[[1e-9, 3e-9], [2e-9, 0.0]]]])
    flat = torch.full((1, 1, 2, 2), 5e-3) + torch.tensor([[[[0.0, 1e-12], [0.0, 0.0]]]])
    torch.testing.assert_close(channel_minmax(tiny, 0.0), tiny / 3e-9)  # scale-free: full range
    assert float(channel_minmax(tiny).max()) < 0.03  # pgc's eps squashes it
    assert float(channel_minmax(flat, 0.0).abs().max()) == 0.0  # float rounding is not structure


# -- SS-CAM / IS-CAM (torchcam) -----------------------------------------------------------------------
SCORE_CASES = [("mobilenet_v3_small", "features.0", 2), ("resnet18", "layer1.0.conv1", 1)]


class _SameNoise:
    """Replaces torchcam's Normal sampler: sample i returns our i-th seeded noise (the same for each image)."""

    def __init__(self, ctx, std: float) -> None:
        self.ctx, self.std, self.i = ctx, std, 0

    def sample(self, size):
        b, c, h, w = size
        noise = sscam_noise(self.ctx, self.i, (c, h, w), self.std)
        self.i += 1
        return noise[None].expand(b, c, h, w)


def _tc_score(cls, model, layer, x, targets, **kw):
    ext = cls(model, layer, batch_size=64, input_shape=tuple(x.shape[1:]), **kw)
    try:
        with torch.no_grad():
            scores = model(x)
        return ext(class_idx=list(targets), scores=scores)[0]
    finally:
        ext.remove_hooks()


@pytest.mark.parametrize("arch,layer,n", SCORE_CASES)
def test_sscam_matches_torchcam_with_the_same_noise(arch: str, layer: str, n: int) -> None:
    model, x = _model(arch), _images(n, 32)
    targets = [2, 5][:n]
    ours = methods.get("sscam", n_samples=3)(model, layer, x, targets, seed=7)
    ctx = _context(model, layer, x, torch.tensor(targets), seed=7)
    ext = tcm.SSCAM(model, layer, batch_size=64, num_samples=3, std=2.0, input_shape=tuple(x.shape[1:]))
    try:
        ext._distrib = _SameNoise(ctx, 2.0)
        with torch.no_grad():
            scores = model(x)
        low = ext(class_idx=targets, scores=scores)[0]
    finally:
        ext.remove_hooks()
    _assert_parity(ours, _upsample(low, x.shape[-2:]), "sscam")


@pytest.mark.parametrize("arch,layer,n", SCORE_CASES)
def test_iscam_matches_torchcam(arch: str, layer: str, n: int) -> None:
    model, x = _model(arch), _images(n, 32)
    targets = [2, 5][:n]
    ours = methods.get("iscam", n_samples=3)(model, layer, x, targets)
    low = _tc_score(tcm.ISCAM, model, layer, x, targets, num_samples=3)
    _assert_parity(ours, _upsample(low, x.shape[-2:]), "iscam")


def _score_formula(model, layer, x, targets, scales, noises):
    """Brute force, one image and one channel at a time: softmax_k mean_i y((s_i M_k + n_ik) x) - y(x)."""
    cap = _context(model, layer, x, torch.tensor(targets)).capture
    a = cap.activations
    out = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            base = model(x[b : b + 1])[0, targets[b]]
            w = []
            for k in range(a.shape[1]):
                ak = a[b, k]
                m = (ak - ak.min()) / (ak.max() - ak.min() + 1e-8)
                m = F.interpolate(m[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                s = [
                    model((sc * m + nz[k]) * x[b : b + 1])[0, targets[b]] - base
                    for sc, nz in zip(scales, noises, strict=True)
                ]
                w.append(torch.stack(s).mean())
            w = torch.stack(w).softmax(0)
            out.append(torch.einsum("c,chw->hw", w, a[b]))
    return torch.stack(out)


def test_sscam_and_iscam_match_the_paper_formulas() -> None:
    model = tiny_cnn(seed=0, classes=3)
    x, t = _images(2, 8), [0, 2]
    ctx = _context(model, "1", x, torch.tensor(t), seed=3)
    noises = [sscam_noise(ctx, i, (4, 8, 8), 0.5) for i in range(3)]
    ss = methods.explain(
        model, "1", x, t, ["sscam"], params={"sscam": {"n_samples": 3, "std": 0.5}}, seed=3, details=True
    )["sscam"].raw
    torch.testing.assert_close(ss, _score_formula(model, "1", x, t, [1.0] * 3, noises), rtol=1e-4, atol=1e-6)
    scales = iscam_coefficients(4).tolist()
    assert scales == pytest.approx([0.25, 0.75, 1.5, 2.5])  # s_i = sum_{j<=i} j / N
    zero = [torch.zeros(4, 8, 8)] * 4
    is_ = _raw("iscam", model, "1", x, t, n_samples=4).raw
    torch.testing.assert_close(is_, _score_formula(model, "1", x, t, scales, zero), rtol=1e-4, atol=1e-6)


def test_sscam_seeded_batch_size_free_and_noise_matters() -> None:
    model, x = _model("mobilenet_v3_small"), _images(2, 32)
    run = lambda **kw: methods.explain(
        model, "features.0", x, [1, 2], ["sscam"], params={"sscam": {"n_samples": 2}}, **kw
    )["sscam"]
    a, b = run(seed=1, forward_batch_size=64), run(seed=1, forward_batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, run(seed=2), atol=1e-3)


def test_tc_channel_masks_are_low_res_minmax_then_upsampled() -> None:
    a = torch.rand(1, 2, 3, 3)
    m = tc_channel_masks(a, (6, 6))
    low = (a - a.amin((-2, -1), keepdim=True)) / (a.amax((-2, -1), keepdim=True) - a.amin((-2, -1), keepdim=True))
    torch.testing.assert_close(m, F.interpolate(low, size=(6, 6), mode="bilinear", align_corners=False))


# -- LeGrad (tc) on tiny torchvision ViTs ---------------------------------------------------------------
def _vit(layers: int, heads: int, patch: int) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=patch, num_layers=layers, num_heads=heads, hidden_dim=32, mlp_dim=64, num_classes=6
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision initialises the head to zeros
    return model.eval()


@pytest.mark.parametrize("layers,heads,patch,n_blocks", [(2, 2, 8, None), (3, 4, 4, 2)])
def test_legrad_matches_torchcam(layers: int, heads: int, patch: int, n_blocks) -> None:
    model, x, targets = _vit(layers, heads, patch), _images(2, 32), [1, 4]
    ours = methods.get("legrad", n_blocks=n_blocks)(model, None, x, targets)
    blocks = list(model.encoder.layers)
    chosen = blocks if n_blocks is None else blocks[-n_blocks:]
    ext = tcm.LeGrad(model, chosen)
    try:
        scores = model(x)
        low = ext(targets, scores)[0]
    finally:
        ext.remove_hooks()
    _assert_parity(ours, _upsample(low, x.shape[-2:]), "legrad", r_min=0.999)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_legrad_target_layer_selects_the_last_block_and_cnn_fails_clearly() -> None:
    model, x = _vit(3, 2, 8), _images(2, 32)
    first = methods.get("legrad")(model, "encoder.layers.encoder_layer_0.ln_1", x, [0, 1])
    only0 = methods.get("legrad", n_blocks=1)(model, "encoder.layers.encoder_layer_0", x, [0, 1])
    torch.testing.assert_close(first, only0)
    with pytest.raises(LayerError, match="torchvision VisionTransformer"):
        methods.get("legrad")(_model("resnet18"), "layer4", _images(1, 32), 0)
