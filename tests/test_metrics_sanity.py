"""Model-parameter randomisation: Quantus MPRT parity, the model is untouched, baselines vs Grad-CAM."""

import copy

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import benchmark.metrics as M
from benchmark import methods
from benchmark.metrics.functional import sanity as S
from benchmark.types import Batch

from conftest import tiny_features_cnn

np.trapz = getattr(np, "trapz", np.trapezoid)  # Quantus 0.6 on NumPy >= 2.4
import quantus  # noqa: E402


def tiny_cnn(seed=0):
    return tiny_features_cnn(seed, batchnorm=True)


LAYER = "features.4"


def explain_fn(model, images, targets, names, *, gradient_noise=None):
    return methods.explain(model, LAYER, images, targets, names, gradient_noise=gradient_noise)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3])


def test_spearman_equals_scipy_and_constant_is_nan():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(3, 10, 10, generator=g) * 4).round()  # ties
    b = (torch.rand(3, 10, 10, generator=g) * 4).round()
    ours = S.spearman(a, b).numpy()
    ref = [scipy.stats.spearmanr(a[i].flatten(), b[i].flatten())[0] for i in range(3)]
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert np.isnan(S.spearman(torch.zeros(1, 10, 10), a[:1]).numpy()).all()


def test_mprt_equals_quantus(data):
    images, targets = data
    model = tiny_cnn()

    def qexplain(model, inputs, targets, **kw):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        return explain_fn(model, x, t, ["gradcam"])["gradcam"][:, None].numpy()

    q = quantus.MPRT(disable_warnings=True, seed=42)
    layers = q(
        model=model, x_batch=images.numpy(), y_batch=targets.numpy(), explain_func=qexplain, batch_size=64, device="cpu"
    )
    # Quantus MPRT reports the signed Spearman rho: cambench's option signed=True
    per = S.model_randomization(model, explain_fn, images, targets, ["gradcam"], per_layer=True, signed=True)["gradcam"]
    names = S.randomizable_layers(model)
    assert list(layers) == ["original"] + names
    for k, name in enumerate(names):
        np.testing.assert_allclose(per[k].numpy(), np.asarray(layers[name], dtype=np.float32), rtol=1e-4, atol=1e-5)
    last = S.model_randomization(model, explain_fn, images, targets, ["gradcam"], signed=True)["gradcam"]
    torch.testing.assert_close(last, per[-1], equal_nan=True)
    absolute = S.model_randomization(model, explain_fn, images, targets, ["gradcam"])["gradcam"]  # the default
    torch.testing.assert_close(absolute, last.abs(), equal_nan=True)
    ql = quantus.MPRT(disable_warnings=True, return_last_correlation=True)(
        model=model, x_batch=images.numpy(), y_batch=targets.numpy(), explain_func=qexplain, device="cpu"
    )
    np.testing.assert_allclose(last.numpy(), np.asarray(ql, dtype=np.float32), rtol=1e-4, atol=1e-5)


def test_model_untouched_center_stays_gradcam_drops(data):
    images, targets = data
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    names = ["gradcam", "layercam", "center", "random"]
    for sim in ("spearman", "ssim"):
        out = S.model_randomization(model, explain_fn, images, targets, names, similarity=sim)
        torch.testing.assert_close(out["center"], torch.ones(4))
        torch.testing.assert_close(out["random"], torch.ones(4))
        # Grad-CAM of the randomised model changes (or goes constant: NaN Spearman, as documented)
        assert torch.all(torch.nan_to_num(out["gradcam"], nan=0.0) < 0.9), out["gradcam"]
        assert sim == "spearman" or not torch.isnan(out["gradcam"]).any()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert not model.training
    # batch equals per-image, and max_layers limits the cascade
    one = S.model_randomization(model, explain_fn, images[:1], targets[:1], ["gradcam"])["gradcam"]
    full = S.model_randomization(model, explain_fn, images, targets, ["gradcam"])["gradcam"]
    torch.testing.assert_close(one, full[:1], equal_nan=True)
    one = S.model_randomization(model, explain_fn, images[1:2], targets[1:2], ["gradcam"])["gradcam"]
    torch.testing.assert_close(one, full[1:2])
    top = S.model_randomization(model, explain_fn, images, targets, ["gradcam"], max_layers=1, per_layer=True)
    assert top["gradcam"].shape == (1, 4)
    indep = S.model_randomization(
        model, explain_fn, images, targets, ["gradcam"], layer_order="independent", per_layer=True
    )["gradcam"]
    assert indep.shape == (len(S.randomizable_layers(model)), 4)
    with pytest.raises(ValueError, match="per_layer=True"):
        S.model_randomization(model, explain_fn, images, targets, ["gradcam"], layer_order="independent")
    with pytest.raises(ValueError, match="layer_order"):
        S.randomizable_layers(model, "sideways")


def test_registry_model_randomization(data):
    images, targets = data
    model = tiny_cnn()
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[:, 4:9, 5:12] = True
    names = ["gradcam", "center", "oracle"]
    sal = methods.explain(model, LAYER, images, targets, names, masks=masks)
    batch = Batch(images=images, targets=targets, ids=list("abcd"), masks=masks)
    meta = {n: methods.METHODS.entry(n).meta for n in names}  # what the runner passes: the baselines' family
    ctx = M.MetricContext(model=model, batch=batch, saliency=sal, explain=explain_fn, method_meta=meta)
    res = M.compute_metrics(ctx, ["model_randomization", "model_randomization_ssim"])
    direct = S.model_randomization(model, explain_fn, images, targets, ["gradcam"], reference=sal)
    torch.testing.assert_close(res["model_randomization"]["gradcam"], direct["gradcam"], equal_nan=True)
    for m in ("model_randomization", "model_randomization_ssim"):
        torch.testing.assert_close(res[m]["oracle"], torch.ones(4))
        torch.testing.assert_close(res[m]["center"], torch.ones(4))
        assert M.METRICS.entry(m).higher_is_better is False and M.METRICS.entry(m).family == "sanity"


def test_randomized_weights_do_not_depend_on_memory_format(monkeypatch):
    """A channels_last model (the runner's default for CNNs) gets the same new weights as a contiguous one.

    torch before 2.14 reset a conv in place with ``tensor.uniform_``, which fills in memory order: a
    channels_last conv drew other weights (seen on CUDA with torch 2.11). The patch restores that reset."""

    def in_place_reset(self):
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
        nn.init.uniform_(self.bias, -(fan_in**-0.5), fan_in**-0.5)

    monkeypatch.setattr(nn.Conv2d, "reset_parameters", in_place_reset)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    plain, cl = conv, copy.deepcopy(conv).to(memory_format=torch.channels_last)
    S._randomize(plain, seed=3)
    S._randomize(cl, seed=3)
    assert cl.weight.is_contiguous(memory_format=torch.channels_last)  # layout kept
    torch.testing.assert_close(cl.weight, plain.weight, rtol=0, atol=0)
    torch.testing.assert_close(cl.bias, plain.bias, rtol=0, atol=0)
    # and the draw is Quantus' ``torch.manual_seed(seed + 1); reset_parameters()`` on a contiguous tensor
    ref = nn.Conv2d(8, 16, 3)
    torch.manual_seed(4)
    ref.reset_parameters()
    torch.testing.assert_close(plain.weight, ref.weight, rtol=0, atol=0)


def test_randomize_copies_what_reset_parameters_does_to_children():
    """A module's ``reset_parameters`` may re-initialise its children: their new values are copied too."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def reset_parameters(self):
            nn.init.constant_(self.inner.weight, 0.5)
            nn.init.zeros_(self.inner.bias)

    block = Block()
    S._randomize(block, seed=0)
    assert torch.all(block.inner.weight == 0.5) and torch.all(block.inner.bias == 0)


def test_similarity_sign_convention_and_undefined_count(data):
    """|rho| by default: an inverted map (rho = -1) is as dependent on the original as the map itself
    (|rho| = 1), and scores no better than an unrelated one; signed=True keeps Adebayo et al.'s rho. NaN
    similarities (a constant map) are counted in a warning, not dropped silently."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 12, 12, generator=g)
    unrelated = torch.rand(2, 12, 12, generator=g)
    inv = 1.0 - a
    assert torch.allclose(S.map_similarity(a, inv, signed=True), -torch.ones(2))
    assert torch.allclose(S.map_similarity(a, inv), torch.ones(2))
    assert (S.map_similarity(a, unrelated) < S.map_similarity(a, inv)).all()
    images, targets = data
    model = tiny_cnn()

    def constant_after(model_, images_, targets_, names, **kw):
        maps = explain_fn(model_, images_, targets_, names)
        return maps if model_ is model else {n: torch.zeros_like(v) for n, v in maps.items()}

    sal = explain_fn(model, images, targets, ["gradcam"])
    batch = Batch(images=images, targets=targets, ids=list("abcd"))
    ctx = M.MetricContext(model=model, batch=batch, saliency=sal, explain=constant_after)
    with pytest.warns(RuntimeWarning, match=r"4 of 4 similarities of 'gradcam' are undefined"):
        res = M.compute_metrics(ctx, ["model_randomization"])
    assert torch.isnan(res["model_randomization"]["gradcam"]).all()
