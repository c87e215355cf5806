"""pgc/, torchcam/ and captum/ methods by name, and a researcher's own BaseCAM / torchcam class: each equals its
library's direct output (Pearson r >= 0.999 per image), passes the method contract, and fails clearly when wrong."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.base_cam import BaseCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from benchmark import methods, plugins  # noqa: E402
from benchmark.methods import METHODS, bridges, from_pytorch_grad_cam, from_torchcam  # noqa: E402
from benchmark.plugins import ContractError, check_method, load_plugins  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_registries():
    with plugins.isolated():
        yield


class SmallCNN(nn.Module):
    """conv-BN-ReLU-conv-ReLU ["features", 8 x 12 x 12 at 24 x 24] -> GAP -> Linear(5)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(-2, -1)))


def _small():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.features[1].running_mean.copy_(0.3 * torch.randn(8, generator=g))
        model.features[1].bias.copy_(0.2 * torch.randn(8, generator=g))
    return model, "features", torch.randn(3, 3, 24, 24, generator=g), torch.tensor([0, 3, 4])


def _resnet18():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    return resnet18(num_classes=10).eval(), "layer4", torch.randn(2, 3, 64, 64, generator=g), torch.tensor([1, 7])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).numpy()


def _up(maps: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _assert_close_maps(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    keep = ref.flatten(1).std(1) > 0  # a constant reference map has no correlation (ours is zeros, flagged)
    assert keep.any()
    r = _pearson(ours[keep], ref[keep])
    assert (r >= 0.999).all(), r


def _quiet():
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.simplefilter("ignore")
    return w


# -- pytorch-grad-cam ----------------------------------------------------------------------------------
def _pgc_direct(cls, model, layer, x, t, seed=0, **kw):
    np.random.seed(seed)
    torch.manual_seed(seed)
    cam = cls(model=model, target_layers=[dict(model.named_modules())[layer]], **kw)
    try:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t]))
    finally:
        cam.activations_and_grads.release()


PGC = sorted(bridges._library_classes("pgc"))


def test_every_pgc_basecam_class_is_listed() -> None:
    names = METHODS.list("pgc/*")
    assert names == [f"pgc/{n}" for n in PGC] and len(names) >= 15 and "pgc/GradCAM" in names
    assert METHODS.list() == [n for n in METHODS.list() if "/" not in n]  # "all" is unchanged
    e = METHODS.entry("pgc/AblationCAM")
    assert e.family == "perturbation" and e.relu and e.defaults["batch_size"] == 32 and e.library == "pytorch-grad-cam"


@pytest.mark.parametrize("name", PGC)
def test_pgc_method_equals_pytorch_grad_cam(name: str) -> None:
    model, layer, x, t = _small()
    w = _quiet()
    try:
        ours = methods.explain(model, layer, x, t, [f"pgc/{name}"], details=True)[f"pgc/{name}"]
        ref = _pgc_direct(getattr(pgc, name), model, layer, x, t)
    finally:
        w.__exit__(None, None, None)
    _assert_close_maps(ours.maps, ref)
    assert check_method(f"pgc/{name}") == []


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "LayerCAM", "EigenCAM"])
def test_pgc_on_resnet18_equals_pytorch_grad_cam_and_the_builtin(name: str) -> None:
    model, layer, x, t = _resnet18()
    ours = methods.explain(model, layer, x, t, [f"pgc/{name}"])[f"pgc/{name}"]
    _assert_close_maps(ours, _pgc_direct(getattr(pgc, name), model, layer, x, t))
    builtin = {
        "GradCAM": "gradcam",
        "GradCAMPlusPlus": "gradcampp",
        "XGradCAM": "xgradcam",
        "LayerCAM": "layercam",
        "HiResCAM": "hirescam",
        "EigenCAM": "eigencam",
    }[name]
    _assert_close_maps(ours, methods.explain(model, layer, x, t, [builtin])[builtin])


def test_gradient_noise_reaches_bridged_methods_like_the_builtins() -> None:
    model, layer, x, t = _small()

    def noise(g):
        return g + 0.5 * g.std() * torch.randn(g.shape, generator=torch.Generator().manual_seed(5))

    out = methods.explain(model, layer, x, t, ["pgc/GradCAM", "gradcam", "torchcam/GradCAM"], gradient_noise=noise)
    clean = methods.explain(model, layer, x, t, ["pgc/GradCAM"])["pgc/GradCAM"]
    _assert_close_maps(out["pgc/GradCAM"], out["gradcam"])
    _assert_close_maps(out["torchcam/GradCAM"], out["gradcam"])
    assert not torch.allclose(out["pgc/GradCAM"], clean, atol=1e-3)


# -- torchcam -------------------------------------------------------------------------------------------
torchcam_methods = pytest.importorskip("torchcam.methods")
TORCHCAM = [n for n in sorted(bridges._library_classes("torchcam")) if n != "LeGrad"]


def _torchcam_direct(cls, model, layer, x, t, seed=0, **kw):
    torch.manual_seed(seed)
    ext = cls(model, target_layer=layer, **kw)
    try:
        with torch.enable_grad():
            cams = ext(class_idx=[int(c) for c in t], scores=model(x))  # torchcam's own min-max
    finally:
        ext.remove_hooks()
    return _up(cams[0].detach(), x.shape[-2:])


@pytest.mark.parametrize("name", TORCHCAM)
def test_torchcam_method_equals_torchcam(name: str) -> None:
    model, layer, x, t = _small()
    w = _quiet()
    try:
        ours = methods.explain(model, layer, x, t, [f"torchcam/{name}"])[f"torchcam/{name}"]
        ref = _torchcam_direct(getattr(torchcam_methods, name), model, layer, x, t)
    finally:
        w.__exit__(None, None, None)
    _assert_close_maps(ours, ref)
    assert check_method(f"torchcam/{name}") == []


def test_torchcam_on_resnet18() -> None:
    model, layer, x, t = _resnet18()
    for name in ("GradCAM", "GradCAMpp", "CAM"):
        ours = methods.explain(model, layer, x, t, [f"torchcam/{name}"])[f"torchcam/{name}"]
        _assert_close_maps(ours, _torchcam_direct(getattr(torchcam_methods, name), model, layer, x, t))


# -- Captum ---------------------------------------------------------------------------------------------
captum_attr = pytest.importorskip("captum.attr")
#: InternalInfluence sums layer gradients, spatially constant behind global average pooling; LRP needs a rule for
#: every module of the model (not the case for this CNN's containers).
CAPTUM = [n for n in sorted(bridges._library_classes("captum")) if n not in ("InternalInfluence", "LayerLRP")]


@pytest.mark.parametrize("name", CAPTUM)
def test_captum_method_equals_captum(name: str) -> None:
    from benchmark.methods.postprocess import minmax

    model, layer, x, t = _small()
    cls = getattr(captum_attr, name)
    kw = {"target": t} if name != "LayerActivation" else {}
    params = {}
    if name == "LayerFeatureAblation":  # ablate each location across channels (default: each neuron, slow)
        params = {"layer_mask": torch.arange(144).view(1, 1, 12, 12)}
    ours = methods.explain(model, layer, x, t, [f"captum/{name}"], params={f"captum/{name}": params})[f"captum/{name}"]
    kw.update(params)
    attr = cls(model, dict(model.named_modules())[layer])
    if name in bridges.CAPTUM_ZERO_BASELINES:
        kw["baselines"] = torch.zeros(2, *x.shape[1:])
    torch.manual_seed(0)
    a = attr.attribute(x, **kw)
    a = a[0] if isinstance(a, tuple) else a
    raw = a.detach().sum(1)
    raw = raw.clamp_min(0) if name == "LayerGradCam" else raw
    ref = captum_attr.LayerAttribution.interpolate(minmax(raw)[:, None], tuple(x.shape[-2:]), "bilinear")[:, 0]
    _assert_close_maps(ours, ref)
    if name != "LayerFeatureAblation":  # one forward per layer neuron: the contract's 4 x 6 calls take minutes
        assert check_method(f"captum/{name}") == []


def test_captum_layer_gradcam_on_resnet18_matches_the_builtin() -> None:
    model, layer, x, t = _resnet18()
    out = methods.explain(model, layer, x, t, ["captum/LayerGradCam", "gradcam"])
    _assert_close_maps(out["captum/LayerGradCam"], out["gradcam"])


# -- missing libraries ------------------------------------------------------------------------------------
def test_a_missing_library_names_the_pip_install(monkeypatch) -> None:
    monkeypatch.setitem(bridges.LIBRARIES, "torchcam", ("no_such_torchcam_module", "torchcam==0.5.0", "torchcam"))
    METHODS._resolved.pop("torchcam/GradCAM", None)
    with pytest.raises(bridges.BridgeError, match=r"pip install torchcam==0.5.0"):
        METHODS.entry("torchcam/GradCAM")
    assert METHODS.list("torchcam/*") == []  # nothing to list, lookups explain why
    with pytest.raises(bridges.BridgeError, match="pip install torchcam"):
        from_torchcam("x", object)
    from benchmark.cli import main

    assert main(["list", "methods"]) == 0


# -- a researcher's own classes ----------------------------------------------------------------------------
class PositiveGradCAM(BaseCAM):
    """Grad-CAM with the positive part of the gradients only (a "new variant" for the tests)."""

    def __init__(self, model, target_layers, reshape_transform=None, power: float = 1.0):
        super().__init__(model, target_layers, reshape_transform)
        self.power = power

    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
        return np.mean(np.maximum(grads, 0) ** self.power, axis=(2, 3))


class NaNCAM(BaseCAM):
    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
        return np.full(grads.shape[:2], np.nan, dtype=np.float32)


def test_from_pytorch_grad_cam_registers_checks_and_equals_the_class() -> None:
    fn = from_pytorch_grad_cam("posgradcam", PositiveGradCAM, power=1.0, paper="tests")
    e = METHODS.entry("posgradcam")
    assert (
        e.obj is fn
        and e.family == "gradient"
        and e.relu
        and e.defaults == {"aug_smooth": False, "eigen_smooth": False, "power": 1.0}
    )
    model, layer, x, t = _small()
    for power in (1.0, 2.0):
        ours = methods.explain(model, layer, x, t, ["posgradcam"], params={"posgradcam": {"power": power}})
        _assert_close_maps(ours["posgradcam"], _pgc_direct(PositiveGradCAM, model, layer, x, t, power=power))
    with pytest.raises(ContractError, match=r"(?s)method 'nancam'.*NaN or inf"):
        from_pytorch_grad_cam("nancam", NaNCAM)
    assert "nancam" not in METHODS  # unregistered after the failed check
    with pytest.raises(bridges.BridgeError, match="subclass of pytorch_grad_cam.base_cam.BaseCAM"):
        from_pytorch_grad_cam("notacam", nn.Conv2d)
    with pytest.raises(TypeError, match="takes no parameter"):
        from_pytorch_grad_cam("badparam", PositiveGradCAM, powr=2.0)


def test_from_torchcam_registers_a_torchcam_subclass() -> None:
    class MaxGradCAM(torchcam_methods.GradCAM):
        """Grad-CAM whose channel weight is the largest gradient instead of the mean."""

        def _get_weights(self, class_idx, scores, **kwargs):
            self._backprop(scores, class_idx, **kwargs)
            return [grad.flatten(2).amax(-1) for grad in self.hook_g]

    from_torchcam("maxgradcam", MaxGradCAM)
    assert METHODS.entry("maxgradcam").relu
    model, layer, x, t = _small()
    ours = methods.explain(model, layer, x, t, ["maxgradcam"])["maxgradcam"]
    _assert_close_maps(ours, _torchcam_direct(MaxGradCAM, model, layer, x, t))
    with pytest.raises(bridges.BridgeError, match="torchcam extractor class"):
        from_torchcam("nope", PositiveGradCAM)


def test_example_pgc_plugin_loads_is_checked_and_equals_its_class(tmp_path) -> None:
    (plugin,) = load_plugins([str(ROOT / "examples" / "my_pgc_cam.py")], entry_points=False)
    assert plugin.methods == ["poscam"] and METHODS.entry("poscam").source == "my_pgc_cam.py"
    mod = sys.modules[[n for n in sys.modules if n.startswith("cambench_plugin_my_pgc_cam")][0]]
    model, layer, x, t = _small()
    ours = methods.get("poscam")(model, layer, x, t)
    _assert_close_maps(ours, _pgc_direct(mod.PositiveGradCAM, model, layer, x, t))


@pytest.mark.parametrize("name", ["pgc/GradCAM", "torchcam/GradCAM", "captum/LayerGradCam"])
def test_bridged_methods_leave_parameter_grads_as_found(name: str) -> None:
    model, layer, x, t = _small()
    weight = model.fc.weight
    weight.grad = torch.full_like(weight, 7.0)
    methods.explain(model, layer, x, t, [name])
    assert torch.equal(weight.grad, torch.full_like(weight, 7.0)) and model.features[0].weight.grad is None
