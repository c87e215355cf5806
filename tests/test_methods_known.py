"""Known-answer and contract tests of the CAM methods (docs/methods.md)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import methods
from benchmark.errors import CaptureError, LayerError, UnknownNameError
from benchmark.methods.cfcam import cluster_channels, cluster_filter


class GapNet(nn.Module):
    """conv -> ReLU -> conv(C) -> ReLU ["features"] -> GAP -> Linear: the CAM architecture."""

    def __init__(self, channels: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, stride=2, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(-2, -1)))


class SpatialNet(nn.Module):
    """A head that is *not* GAP: gradients vary over space and with the input (flatten -> MLP)."""

    def __init__(self, channels: int = 8, side: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(channels * side * side, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def _net(cls=GapNet, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kw).eval()


def _x(n: int = 4, size: int = 16, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _raw(name, model, layer, x, targets, **params):
    return methods.explain(model, layer, x, targets, [name], params={name: params}, details=True)[name]


def test_gradcam_equals_cam_up_to_scale_on_gap_linear() -> None:
    """On GAP->Linear, dy^c/dA_k(i,j) = W[c,k]/(hw), so Grad-CAM's raw map is CAM's divided by hw."""
    model, x = _net(), _x()
    t = torch.tensor([0, 1, 2, 3])
    g = _raw("gradcam", model, "features", x, t).raw
    c = _raw("cam", model, "features", x, t).raw
    hw = g.shape[-1] * g.shape[-2]
    torch.testing.assert_close(g * hw, c, rtol=1e-5, atol=1e-6)


def test_hirescam_equals_gradcam_when_gradients_are_spatially_constant() -> None:
    model, x = _net(), _x()
    out = methods.explain(model, "features", x, [1, 2, 3, 0], ["hirescam", "gradcam", "xgradcam"])
    torch.testing.assert_close(out["hirescam"], out["gradcam"], atol=1e-5, rtol=0)


def test_hirescam_differs_from_gradcam_when_gradients_vary() -> None:
    model, x = _net(SpatialNet), _x()
    out = methods.explain(model, "features", x, [0, 1, 2, 0], ["hirescam", "gradcam"])
    assert (out["hirescam"] - out["gradcam"]).abs().max() > 0.05


class OneChannel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(1, 2)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(-2, -1)))


def test_eigencam_on_one_channel_equals_the_sign_fixed_activation() -> None:
    model, x = _net(OneChannel), _x(3)
    a = methods.capture(model, model.features, x, torch.zeros(3, dtype=torch.long)).activations[:, 0]
    # Without centring the projection is +-A; sign="corr" fixes it to +A.
    maps = methods.get("eigencam", center=False, sign="corr")(model, "features", x, 0)
    expected = methods.finalize(a, x.shape[-2:])[0]
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
    # With centring (pgc default) and the sign fixed: ReLU(A - mean A).
    raw = _raw("eigencam", model, "features", x, 0, sign="corr").raw
    torch.testing.assert_close(raw, a - a.mean(dim=(-2, -1), keepdim=True), atol=1e-5, rtol=1e-4)


def test_eigencam_sign_options() -> None:
    model, x = _net(SpatialNet), _x()
    raw = {s: _raw("eigencam", model, "features", x, 0, sign=s).raw for s in ("none", "max_abs", "corr")}
    for s in ("max_abs", "corr"):
        same = torch.isclose(raw[s], raw["none"], atol=1e-6).flatten(1).all(1)
        flipped = torch.isclose(raw[s], -raw["none"], atol=1e-6).flatten(1).all(1)
        assert bool((same | flipped).all())
    r = raw["max_abs"].flatten(1)
    assert bool((r.max(1).values >= r.min(1).values.abs() - 1e-6).all())
    with pytest.raises(ValueError, match="sign must be one of"):
        methods.get("eigencam", sign="bogus")(model, "features", x, 0)


def _paper_gradcampp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM++ eq. 19 written out with explicit sums (independent oracle)."""
    b, k = a.shape[:2]
    out = np.zeros((b, *a.shape[2:]))
    for i in range(b):
        for c in range(k):
            s = a[i, c].sum()
            g2, g3 = g[i, c] ** 2, g[i, c] ** 3
            alpha = np.where(g[i, c] != 0, g2 / (2 * g2 + s * g3 + 1e-6), 0.0)
            w = (alpha * np.maximum(g[i, c], 0)).sum()
            out[i] += w * a[i, c]
    return out


def test_gradcampp_matches_the_paper_formula() -> None:
    model, x = _net(SpatialNet), _x()
    t = torch.tensor([0, 1, 2, 1])
    cap = methods.capture(model, model.features, x, t)
    ours = _raw("gradcampp", model, "features", x, t).raw.numpy()
    ref = _paper_gradcampp(cap.activations.numpy().astype(np.float64), cap.gradients.numpy().astype(np.float64))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-9)


def test_gradcampp_alpha_norm_changes_weights() -> None:
    model, x = _net(SpatialNet), _x()
    a = _raw("gradcampp", model, "features", x, 0).maps
    b = _raw("gradcampp", model, "features", x, 0, alpha_norm=True).maps
    assert (a - b).abs().max() > 1e-3


def test_smooth_gradcampp_with_zero_noise_equals_gradcampp() -> None:
    model, x = _net(SpatialNet), _x()
    out = methods.explain(
        model,
        "features",
        x,
        [0, 1, 2, 0],
        ["gradcampp", "smoothgradcampp"],
        params={"smoothgradcampp": {"std": 0.0}},
    )
    torch.testing.assert_close(out["smoothgradcampp"], out["gradcampp"])


def test_smooth_gradcampp_is_seeded_and_noise_matters() -> None:
    model, x = _net(SpatialNet), _x()
    sg = methods.get("smoothgradcampp", std=1.0, n_samples=3)
    a, b = sg(model, "features", x, 0, seed=5), sg(model, "features", x, 0, seed=5)
    torch.testing.assert_close(a, b)
    c = sg(model, "features", x, 0, seed=6)
    g = methods.get("gradcampp")(model, "features", x, 0)
    assert (a - g).abs().max() > 1e-3 and (a - c).abs().max() > 1e-4


def test_smooth_gradcampp_averages_gradient_powers_of_noisy_copies() -> None:
    """Against a direct, unbatched implementation of Omeiza et al. eqs. 6-8."""
    model, x = _net(SpatialNet), _x(2)
    t = torch.tensor([1, 2])
    n, std, seed = 3, 0.5, 9
    ctx_gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    noise = torch.randn((n, *x.shape), generator=ctx_gen)
    caps = [methods.capture(model, model.features, x + std * noise[s], t) for s in range(n)]
    gs = torch.stack([c.gradients for c in caps]).double()
    a = methods.capture(model, model.features, x, t).activations.double()
    d1, d2, d3 = gs.mean(0), (gs**2).mean(0), (gs**3).mean(0)
    alpha = torch.where(d2 != 0, d2 / (2 * d2 + a.sum((-2, -1), keepdim=True) * d3 + 1e-6), torch.zeros_like(d2))
    w = (alpha * d1.clamp_min(0)).sum((-2, -1))
    ref = (w[:, :, None, None] * a).sum(1)
    ours = _raw("smoothgradcampp", model, "features", x, t, n_samples=n, std=std).raw
    # The method's seed is the explain seed (0 by default) -> regenerate with seed 0 for the reference.
    ctx_gen = torch.Generator().manual_seed(0 * 1_000_003 + 17)
    noise = torch.randn((n, *x.shape), generator=ctx_gen)
    caps = [methods.capture(model, model.features, x + std * noise[s], t) for s in range(n)]
    gs = torch.stack([c.gradients for c in caps]).double()
    d1, d2, d3 = gs.mean(0), (gs**2).mean(0), (gs**3).mean(0)
    alpha = torch.where(d2 != 0, d2 / (2 * d2 + a.sum((-2, -1), keepdim=True) * d3 + 1e-6), torch.zeros_like(d2))
    ref = ((alpha * d1.clamp_min(0)).sum((-2, -1))[:, :, None, None] * a).sum(1)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-8)


def test_xgradcam_formula() -> None:
    model, x = _net(SpatialNet), _x()
    cap = methods.capture(model, model.features, x, torch.zeros(4, dtype=torch.long))
    a, g = cap.activations, cap.gradients
    w = (a / (a.sum((-2, -1), keepdim=True) + 1e-7) * g).sum((-2, -1))
    torch.testing.assert_close(_raw("xgradcam", model, "features", x, 0).raw, (w[..., None, None] * a).sum(1))


def test_layercam_formula() -> None:
    model, x = _net(SpatialNet), _x()
    cap = methods.capture(model, model.features, x, torch.ones(4, dtype=torch.long))
    ref = (cap.gradients.clamp_min(0) * cap.activations).sum(1)
    torch.testing.assert_close(_raw("layercam", model, "features", x, 1).raw, ref)


def test_ablationcam_formula_with_negative_activations() -> None:
    """Against the paper's definition with explicit per-channel forwards (value = min(A) - 1e7 per image)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    x = _x(2, 8)
    t = torch.tensor([0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _raw("ablationcam", model, "0", x, t).raw
        zero = _raw("ablationcam", model, "0", x, t, ablation_value=0.0).raw
    with torch.no_grad():
        a = model[0](x)
        y = model[2](model[1](a)).gather(1, t[:, None]).squeeze(1)
        for value_rule, got in (("pgc", ours), ("zero", zero)):
            ref = torch.zeros(2, 8, 8)
            for i in range(2):
                v = float(a[i].min()) - 1e7 if value_rule == "pgc" else 0.0
                for k in range(4):
                    ab = a[i : i + 1].clone()
                    ab[:, k] = v
                    yk = model[2](model[1](ab))[0, t[i]]
                    ref[i] += (y[i] - yk) / y[i] * a[i, k]
            torch.testing.assert_close(got, ref, rtol=2e-3, atol=1e-2)


def test_scorecam_official_variant_differs_and_is_valid() -> None:
    model, x = _net(SpatialNet), _x(2)
    a = methods.get("scorecam")(model, "features", x, 0)
    b = methods.get("scorecam", variant="official")(model, "features", x, 0)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-3
    assert float(b.min()) >= 0 and float(b.max()) <= 1


# -- CF-CAM -----------------------------------------------------------------------------------------
def test_cfcam_reduces_to_gradcam_without_clustering_filtering_and_softmax() -> None:
    model, x = _net(SpatialNet), _x()
    p = {"cluster": False, "sigma_spatial": 0.0, "weight_norm": "none"}
    out = methods.explain(model, "features", x, 1, ["cfcam", "gradcam"], params={"cfcam": p})
    torch.testing.assert_close(out["cfcam"], out["gradcam"])


def test_cfcam_softmax_base_case() -> None:
    model, x = _net(SpatialNet), _x()
    cap = methods.capture(model, model.features, x, torch.ones(4, dtype=torch.long))
    w = cap.gradients.mean((-2, -1)).softmax(1)
    ref = (w[..., None, None] * cap.activations).sum(1)
    raw = _raw("cfcam", model, "features", x, 1, cluster=False, sigma_spatial=0.0).raw
    torch.testing.assert_close(raw, ref)


def test_cfcam_is_deterministic_and_differs_from_gradcam_when_channels_cluster() -> None:
    model, x = _net(SpatialNet, channels=24), _x()
    a = methods.get("cfcam")(model, "features", x, 2)
    b = methods.get("cfcam")(model, "features", x, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    feats = methods.capture(model, model.features, x, torch.full((4,), 2)).activations
    labels = cluster_channels(feats[0].flatten(1).numpy())
    assert (labels == -2).sum() >= 6 and (labels >= 0).any(), labels
    g = methods.get("gradcam")(model, "features", x, 2)
    assert (a - g).abs().max() > 0.05


def test_cluster_channels_rules() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 16))
    # 12 channels: 3 large-norm ones, then two tight groups of 4 and one outlier + 1 more.
    feats = np.concatenate(
        [
            10 * rng.normal(size=(3, 16)),
            base[0] + 0.01 * rng.normal(size=(4, 16)),
            base[1] + 0.01 * rng.normal(size=(4, 16)),
            3 * rng.normal(size=(1, 16)),
        ]
    )
    labels = cluster_channels(feats)
    norms = np.linalg.norm(feats, axis=1)
    assert set(np.flatnonzero(labels == -2)) == set(np.flatnonzero(norms >= np.percentile(norms, 75)))
    rest = labels[labels != -2]
    assert len(set(rest[rest >= 0])) >= 2  # the two tight groups are clusters
    assert (labels == -1).any()  # the outlier is noise


def _filter_oracle(g: np.ndarray, ss: float, sr: float) -> np.ndarray:
    """docs/methods.md#cfcam (the filter) written out: one kernel, zero-padded 'same' cross-correlation."""
    h, w = g.shape
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    k = np.exp(-((i - h / 2) ** 2 + (j - w / 2) ** 2) / (2 * ss**2)) * np.exp(-((g - g.mean()) ** 2) / (2 * sr**2))
    k = k / (k.sum() + 1e-6)
    top, left = (h - 1) // 2, (w - 1) // 2
    out = np.zeros_like(g)
    for y in range(h):
        for x in range(w):
            for u in range(h):
                for v in range(w):
                    yy, xx = y + u - top, x + v - left
                    if 0 <= yy < h and 0 <= xx < w:
                        out[y, x] += k[u, v] * g[yy, xx]
    return out


@pytest.mark.parametrize("n", [6, 7])
@pytest.mark.parametrize("sr", [0.1, 1e-4])
def test_cluster_filter_matches_the_reference_formula(n: int, sr: float) -> None:
    g = np.random.default_rng(n).normal(scale=1e-4, size=(n, n))
    ours = cluster_filter(torch.from_numpy(g), sigma_spatial=5.0, sigma_range=sr).numpy()
    np.testing.assert_allclose(ours, _filter_oracle(g, 5.0, sr), rtol=1e-9, atol=1e-15)


def test_cluster_filter_identity_at_sigma_zero() -> None:
    g = torch.randn(5, 5)
    torch.testing.assert_close(cluster_filter(g, sigma_spatial=0.0), g)


# -- contract ---------------------------------------------------------------------------------------
# Built-ins only (test plugins such as tests/runner_fakes.py register extra methods in the same process).
ALL = [
    n
    for n in methods.list_methods()
    if n != "oracle"
    and methods.METHODS.get(n).__module__.startswith("benchmark.")
    and methods.is_applicable(n, GapNet())
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_shape_range_and_batch_consistency(dtype) -> None:
    model = _net(GapNet).to(dtype)
    x = _x(8, 16, dtype=dtype)
    t = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = methods.explain(model, "features", x, t, ALL)
        for name, maps in batch.items():
            assert maps.shape == (8, 16, 16) and maps.dtype == torch.float32, name
            assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, name
        for i in (0, 5):
            single = methods.explain(model, "features", x[i : i + 1], t[i : i + 1], ALL)
            for name in ALL:
                if name in ("random", "smoothgradcampp"):
                    continue  # seeded per batch, not per image
                torch.testing.assert_close(single[name][0], batch[name][i], atol=1e-4, rtol=0, msg=name)


def test_registry_keys() -> None:
    expected = {
        "cam",
        "gradcam",
        "gradcampp",
        "smoothgradcampp",
        "xgradcam",
        "hirescam",
        "layercam",
        "scorecam",
        "ablationcam",
        "eigencam",
        "eigengradcam",
        "cfcam",
        "random",
        "center",
        "oracle",
    }
    assert expected <= set(methods.list_methods())


def test_constant_and_nonfinite_maps_become_zeros_and_are_flagged() -> None:
    raw = torch.stack([torch.full((4, 4), 3.0), torch.full((4, 4), float("nan")), torch.arange(16.0).view(4, 4)])
    maps, bad = methods.finalize(raw, (8, 8))
    assert bad.tolist() == [True, True, False]
    assert maps[:2].abs().max() == 0 and torch.isfinite(maps).all()
    assert float(maps[2].max()) == pytest.approx(1.0) and float(maps[2].min()) == 0.0


def test_dead_network_gives_flagged_zero_maps_not_nan() -> None:
    model = _net(SpatialNet)
    with torch.no_grad():
        for p in model.features.parameters():
            p.zero_()
    out = methods.explain(model, "features", _x(2), 0, ["gradcam", "eigencam", "layercam"], details=True)
    for res in out.values():
        assert bool(res.degenerate.all()) and float(res.maps.abs().max()) == 0.0


def test_unknown_method_and_parameter() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'gradcam'"):
        methods.get("gradcma")
    with pytest.raises(TypeError, match="no parameter 'foo'"):
        methods.get("gradcam", foo=1)


def test_unknown_layer_lists_valid_names() -> None:
    model = _net()
    with pytest.raises(LayerError, match=r"no layer 'featurs'.*Did you mean 'features'"):
        methods.get("gradcam")(model, "featurs", _x(), 0)


def test_hooks_removed_after_success_and_error() -> None:
    model = _net()
    methods.explain(model, "features", _x(), 0, ["gradcam", "scorecam", "ablationcam"])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError):
        methods.explain(model, "features", _x(), [0, 1], ["gradcam"])  # wrong number of targets
    bad = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 2)).eval()  # shape error inside
    with pytest.raises(RuntimeError):
        methods.explain(bad, "0", _x(), 0, ["gradcam"])
    with pytest.raises(RuntimeError):
        methods.explain(bad, "0", _x(), 0, ["ablationcam"])
    for m in (*model.modules(), *bad.modules()):
        assert not m._forward_hooks and not m._forward_pre_hooks


class KwargBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x, drop_connect_rate=None):
        return torch.relu(self.conv(x)) * (1.0 if drop_connect_rate is None else 1.0)


class KwargNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = KwargBlock()
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.block(x, drop_connect_rate=0.2).mean((-2, -1)))


def test_capture_works_for_modules_called_with_keyword_arguments() -> None:
    model = _net(KwargNet)
    out = methods.explain(model, "block", _x(), 1, ["gradcam", "ablationcam", "scorecam"])
    assert all(torch.isfinite(v).all() for v in out.values())


class Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((-2, -1)))


def test_module_running_twice_fails_clearly() -> None:
    with pytest.raises(CaptureError, match="ran 2 times"):
        methods.get("gradcam")(_net(Reuse), "conv", _x(), 0)


def test_layer_not_on_the_path_fails_clearly() -> None:
    model = _net()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(CaptureError, match="never called"):
        methods.get("gradcam")(model, "unused", _x(), 0)


def test_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="model.eval"):
        methods.get("gradcam")(GapNet().train(), "features", _x(), 0)


def test_inputs_made_under_inference_mode_are_accepted() -> None:
    """``targets = model(x).argmax(1)`` under ``torch.inference_mode()`` (and such images) must not break the
    gradient capture: the maps equal those of normal tensors."""
    torch.manual_seed(0)
    model, x = GapNet().eval(), torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        x_inf = x.clone()
        t_inf = model(x_inf).argmax(1)
    assert x_inf.is_inference() and t_inf.is_inference()
    names = ["gradcam", "scorecam", "ablationcam"]
    got = methods.explain(model, "features", x_inf, t_inf, names)
    want = methods.explain(model, "features", x, t_inf.clone().tolist(), names)
    for n in names:
        torch.testing.assert_close(got[n], want[n])


def test_random_draws_are_made_on_the_cpu_and_do_not_depend_on_the_device() -> None:
    """Seeded draws (random baseline, SS-CAM noise, SmoothGrad-CAM++ noise) come from a CPU generator and
    are moved to the images' device: CUDA's generator would draw other numbers for the same seed."""
    from benchmark.methods.base import ExplainContext

    ctx = ExplainContext(
        model=GapNet().eval(), layer=None, images=torch.zeros(2, 3, 8, 8), targets=torch.zeros(2), seed=3
    )
    assert ctx.generator(5).device.type == "cpu"
    want = torch.rand((2, 4), generator=torch.Generator().manual_seed(3 * 1_000_003 + 5))
    torch.testing.assert_close(ctx.rand((2, 4), salt=5), want)
    ctx_meta = ExplainContext(
        model=GapNet().eval(), layer=None, images=torch.zeros(2, 3, 8, 8, device="meta"), targets=torch.zeros(2), seed=3
    )
    assert ctx_meta.randn((2, 4), salt=5).device.type == "meta"


def test_tf32_context_sets_and_restores_the_flags() -> None:
    from benchmark.forward import tf32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with tf32(allow=False):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with pytest.raises(RuntimeError), tf32(allow=True):
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("boom")
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_inplace_relu_after_target_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    x = _x()
    cap = methods.capture(model, model[0], x, torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        pre = model[0](x)
    torch.testing.assert_close(cap.activations, pre)  # captured before the in-place ReLU
    assert cap.gradients.abs().sum() > 0


def test_oracle_uses_masks() -> None:
    model, x = _net(), _x(2)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 4:8, 4:8] = True
    out = methods.explain(model, "features", x, 0, ["oracle"], masks=masks, params={"oracle": {"mask_dilation": 0}})[
        "oracle"
    ]
    torch.testing.assert_close(out, masks.float())
    # default rim (mask_dilation=8 px): the mask keeps 1, the rim gets values in (0, 0.01] decreasing outwards
    rim = methods.explain(model, "features", x, 0, ["oracle"], masks=masks)["oracle"]
    assert torch.equal(rim[masks], torch.ones(int(masks.sum())))
    assert 0 < float(rim[0, 3, 5]) <= 0.01 and float(rim[0, 3, 5]) > float(rim[0, 0, 5]) > 0
    assert float(rim[0, 15, 15]) == 0.0
    with pytest.raises(ValueError, match="ground-truth masks"):
        methods.explain(model, "features", x, 0, ["oracle"])


def test_one_capture_serves_every_gradient_method() -> None:
    model = _net()
    forwards, backwards = [], []
    hooks = [
        model.register_forward_hook(lambda *a: forwards.append(1)),
        model.register_full_backward_hook(lambda *a: backwards.append(1)),
    ]
    names = ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam", "cfcam"]
    try:
        out = methods.explain(model, "features", _x(), 0, names)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(out) == sorted(names)
    assert (len(forwards), len(backwards)) == (1, 1)  # one forward and one backward for all nine maps


def test_vit_reshape() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # cls + 2x2 patches, 3 dims
    out = methods.vit_reshape(tokens)
    assert out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out[0, :, 0, 1], tokens[0, 2])


def test_eigen_gram_solver_matches_lapack_up_to_sign() -> None:
    from benchmark.methods.eigen import first_right_singular_vector

    o = torch.randn(5, 16, 40, generator=torch.Generator().manual_seed(3))
    o = o - o.mean(1, keepdim=True)
    a = first_right_singular_vector(o, "lapack")
    b = first_right_singular_vector(o, "gram")
    cos = (a * b).sum(1).abs()
    torch.testing.assert_close(cos, torch.ones(5), atol=1e-5, rtol=0)
    model, x = _net(SpatialNet), _x()
    for name in ("eigencam", "eigengradcam"):
        m = methods.get(name, solver="gram", sign="corr")(model, "features", x, 0)
        ref = methods.get(name, sign="corr")(model, "features", x, 0)
        torch.testing.assert_close(m, ref, atol=1e-4, rtol=0)


def test_cluster_channels_equals_the_reference_dbscan_recipe() -> None:
    """docs/methods.md#cfcam step 2 done the authors' way: scipy distances with +inf diagonal, P25 over both
    triangles, sklearn DBSCAN(euclidean) on the remaining channels."""
    from scipy.spatial.distance import pdist, squareform
    from sklearn.cluster import DBSCAN

    for seed in range(3):
        r = np.random.default_rng(seed)
        centers = r.normal(size=(5, 49)) * 3
        feats = np.concatenate(
            [np.abs(r.normal(size=(60, 49))) * 5, centers[r.integers(0, 5, 180)] + 0.3 * r.normal(size=(180, 49))]
        ).astype(np.float32)
        labels = cluster_channels(feats)
        norms = np.linalg.norm(feats, axis=1)
        rest = np.flatnonzero(norms < np.percentile(norms, 75))
        fr = feats[rest].astype(np.float64)
        d = squareform(pdist(fr))
        np.fill_diagonal(d, np.inf)
        eps = max(np.percentile(d[np.isfinite(d)], 25), 1e-5)
        ref = DBSCAN(eps=eps, min_samples=max(2, int(0.05 * rest.size))).fit(fr).labels_
        np.testing.assert_array_equal(labels[rest], ref)
        assert len(set(ref) - {-1}) >= 2
