"""Faithfulness metrics: parity with Quantus and pytorch-grad-cam, known answers and invariants."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from benchmark.metrics import METRICS, MetricContext, compute_metrics
from benchmark.metrics.functional import (
    average_drop,
    deletion_auc,
    increase_in_confidence,
    insertion_auc,
    noisy_linear_impute,
    rise_blur,
    road,
)
from benchmark.metrics.functional.faithfulness import (
    explanation_images,
    gkern,
    road_removal_counts,
)
from benchmark.metrics.perturbation import order_to_rank, patch_order, perturbation_curves, pixel_order
from benchmark.types import Batch

from conftest import tiny_cnn

if not hasattr(np, "trapz"):  # Quantus 0.6.0 calls np.trapz, removed in NumPy 2.4
    np.trapz = np.trapezoid


class BoxModel(nn.Module):
    """Logit 0 = alpha * mean over the box of the channel-summed image, logit 1 = 0 (softmax over 2)."""

    def __init__(self, h: int, w: int, box: tuple[int, int, int, int], alpha: float = 4.0):
        super().__init__()
        m = torch.zeros(h, w)
        y0, y1, x0, x1 = box
        m[y0:y1, x0:x1] = 1.0
        self.register_buffer("mask", m / m.sum())
        self.alpha = alpha

    def forward(self, x):
        s = (x.sum(1) * self.mask).flatten(1).sum(1) * self.alpha
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def data(seed: int, b: int = 3, h: int = 12, w: int = 12):
    g = torch.Generator().manual_seed(seed)
    images, sal = torch.randn(b, 3, h, w, generator=g), torch.rand(b, h, w, generator=g)
    return images, sal, torch.randint(0, 5, (b,), generator=g)


# --------------------------------------------------------------------------------------------------
# parity with Quantus


@pytest.mark.parametrize("softmax", [True, False])
def test_deletion_curve_equals_quantus_pixel_flipping(softmax):
    quantus = pytest.importorskip("quantus")
    model = tiny_cnn()
    x, sal, t = data(0)  # 12x12: H*W=144 divisible by features_in_step
    # Quantus flips `features_in_step` features of the C*H*W broadcast map: 12 features = 4 whole pixels
    metric = quantus.PixelFlipping(
        features_in_step=12, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = np.array(
            metric(
                model=model,
                x_batch=x.numpy(),
                y_batch=t.numpy(),
                a_batch=sal[:, None].numpy(),
                device="cpu",
                softmax=softmax,
                channel_first=True,
            )
        )
    _, curve = deletion_auc(model, x, t, sal, step=4, score="prob" if softmax else "logit", return_curve=True)
    assert curve.shape == (3, 37) and q.shape == (3, 36)  # Quantus omits the unperturbed start
    np.testing.assert_allclose(curve[:, 1:].numpy(), q, rtol=1e-5, atol=1e-6)


def test_patch_curves_equal_quantus_region_perturbation():
    quantus = pytest.importorskip("quantus")
    model = tiny_cnn(1)
    x, sal, t = data(1, h=16, w=16)
    metric = quantus.RegionPerturbation(
        patch_size=4, regions_evaluation=10, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = np.array(
            metric(
                model=model,
                x_batch=x.numpy(),
                y_batch=t.numpy(),
                a_batch=sal[:, None].numpy(),
                device="cpu",
                softmax=True,
                channel_first=True,
            )
        )
    curve = perturbation_curves(model, x, patch_order(sal, 4), torch.zeros(1, 3, 16, 16), torch.arange(11) * 16, t)
    np.testing.assert_allclose((curve[:, :1] - curve[:, 1:]).numpy(), q, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# parity with pytorch-grad-cam (ROAD, confidence change)


@pytest.mark.parametrize("percentile,order", [(80, "morf"), (30, "morf"), (20, "lerf"), (70, "lerf")])
def test_road_imputation_equals_pgc_with_identical_seeds(percentile, order):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    x, sal, _ = data(2, b=2, h=32, w=32)
    cls = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    remover = cls(percentile, NoisyLinearImputer(noise=0.01))
    # pgc's `percentile` is the fraction KEPT
    k = road_removal_counts(32 * 32, [1 - percentile / 100], rule="percentile")[0]
    for i in range(2):
        torch.manual_seed(123)
        ref = remover(x[i], sal[i])
        removed = order_to_rank(pixel_order(sal[i : i + 1], descending=order == "morf"))[0].view(32, 32) < k
        assert torch.equal((ref != x[i]).any(0), removed)
        ours = noisy_linear_impute(x[i], removed, noise=0.01, generator=torch.Generator().manual_seed(123))
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
        # the batched conjugate-gradient imputer: same noise, the solve within its 1e-4 tolerance
        ours_cg = noisy_linear_impute(
            x[i], removed, noise=0.01, generator=torch.Generator().manual_seed(123), imputer="cg"
        )
        torch.testing.assert_close(ours_cg, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_scores_equal_pgc_average_over_percentiles(order):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        AveragerAcrossThresholds,
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = tiny_cnn(2)
    x, sal, t = data(3, b=2, h=32, w=32)
    cls = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    kept = [20, 50, 80]
    averager = AveragerAcrossThresholds(
        lambda p: lambda *a: PerturbationConfidenceMetric(cls(p, NoisyLinearImputer(noise=0.0)))(*a, return_diff=False),
        kept,
    )
    ref = averager(x, sal.numpy(), [ClassifierOutputSoftmaxTarget(int(c)) for c in t], model)
    value, curve = road(
        model,
        x,
        t,
        sal,
        percentages=[1 - p / 100 for p in kept],
        order=order,
        noise=0.0,
        count_rule="percentile",
        return_curve=True,
    )
    assert curve.shape == (2, 3)
    np.testing.assert_allclose(value.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_confidence_change_equals_pgc():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    model = tiny_cnn(3)
    x, sal, t = data(4, b=6)
    for target_cls, score in ((ClassifierOutputTarget, "logit"), (ClassifierOutputSoftmaxTarget, "prob")):
        targets = [target_cls(int(c)) for c in t]
        ref_drop = DropInConfidence()(x, sal.numpy(), targets, model)
        ref_inc = IncreaseInConfidence()(x, sal.numpy(), targets, model)
        ours_drop = average_drop(model, x, t, sal, score=score, relative=False)
        ours_inc = increase_in_confidence(model, x, t, sal, score=score)
        np.testing.assert_allclose(ours_drop.numpy(), ref_drop, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ours_inc.numpy(), ref_inc)


def test_average_drop_paper_formula_by_hand():
    model = tiny_cnn(4)
    x, sal, t = data(5, b=4)
    with torch.no_grad():
        y = torch.softmax(model(x), 1)[torch.arange(4), t]
        o = torch.softmax(model(x * sal[:, None]), 1)[torch.arange(4), t]
    torch.testing.assert_close(average_drop(model, x, t, sal), (y - o).clamp_min(0) / y)
    torch.testing.assert_close(increase_in_confidence(model, x, t, sal), (o > y).float())
    # CF-CAM variant: binary mask on raw RGB, re-normalised; the drop is not clamped
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    e = explanation_images(x, sal, variant="cfcam", mean=mean, std=std)
    raw = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    expect = ((raw * (sal > 0.5)[:, None]) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(e, expect)
    with torch.no_grad():
        o2 = torch.softmax(model(e), 1)[torch.arange(4), t]
    torch.testing.assert_close(average_drop(model, x, t, sal, variant="cfcam", mean=mean, std=std), (y - o2) / y)


# --------------------------------------------------------------------------------------------------
# ROAD imputation known answers


def test_linear_imputation_solves_the_neighbour_mean_equations():
    g = torch.Generator().manual_seed(6)
    img = torch.randn(3, 10, 9, generator=g)
    removed = torch.rand(10, 9, generator=g) < 0.6
    out = noisy_linear_impute(img, removed, noise=0.0).double()
    k = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64)
    conv = lambda t: torch.nn.functional.conv2d(t[:, None], k[None, None], padding=1)[:, 0]
    weight_sum = conv(torch.ones(1, 10, 9, dtype=torch.float64))  # only in-image neighbours count
    residual = conv(out) - weight_sum * out
    assert residual[:, removed].abs().max() < 1e-5  # every imputed pixel = weighted mean of its neighbours
    assert torch.equal(out[:, ~removed].float(), img[:, ~removed])  # known pixels untouched
    const = torch.full((3, 10, 9), 0.7)
    torch.testing.assert_close(noisy_linear_impute(const, removed, noise=0.0), const)


def test_road_noise_is_seeded_and_removal_fraction_validated():
    model = tiny_cnn(5)
    x, sal, t = data(7, b=2, h=10, w=10)
    a = road(model, x, t, sal, percentages=[0.3, 0.6], seed=1)
    b = road(model, x, t, sal, percentages=[0.3, 0.6], seed=1)
    c = road(model, x, t, sal, percentages=[0.3, 0.6], seed=2)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="KEPT"):
        road(model, x, t, sal, percentages=[80])
    assert road_removal_counts(100, [0.0, 0.25, 0.5]).tolist() == [0, 25, 50]


# --------------------------------------------------------------------------------------------------
# deletion / insertion known answers


def test_rise_blur_kernel():
    k = gkern(11, 5)
    assert k.shape == (11, 11) and abs(float(k.sum()) - 1) < 1e-5 and k.argmax() == 60
    x = torch.full((1, 3, 21, 21), 2.0)
    y = rise_blur(x)
    torch.testing.assert_close(y[:, :, 5:-5, 5:-5], x[:, :, 5:-5, 5:-5])  # interior of a constant image
    assert float(y[0, 0, 0, 0]) < 2.0  # zero padding at the border, as RISE


def test_box_order_is_the_fastest_deletion_and_insertion():
    h = w = 10
    model = BoxModel(h, w, (2, 6, 3, 8))
    x = torch.zeros(1, 3, h, w)
    x[:, :, 2:6, 3:8] = 1.0
    t = torch.zeros(1, dtype=torch.long)
    box = torch.zeros(1, h, w)
    box[:, 2:6, 3:8] = 1.0
    d_box = deletion_auc(model, x, t, box, step=2)
    i_box = insertion_auc(model, x, t, box, step=2, substrate="zeros")
    g = torch.Generator().manual_seed(8)
    for _ in range(20):
        rnd = torch.rand(1, h, w, generator=g)
        assert float(d_box) <= float(deletion_auc(model, x, t, rnd, step=2)) + 1e-7
        assert float(i_box) >= float(insertion_auc(model, x, t, rnd, step=2, substrate="zeros")) - 1e-7
    # the box holds 20 pixels: after 10 steps of 2 the target probability is at chance level
    _, curve = deletion_auc(model, x, t, box, step=2, return_curve=True)
    assert abs(float(curve[0, 10]) - 0.5) < 1e-6 and float(curve[0, 0]) > 0.98


def test_constant_model_gives_constant_curve_auc():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.1, 1.0, -0.5, 0.3]))
    x, sal, _ = data(9, b=2, h=8, w=8)
    t = torch.tensor([1, 2])
    p = torch.softmax(model[1].bias.detach(), 0)[t]
    torch.testing.assert_close(deletion_auc(model, x, t, sal, step=5), p)
    torch.testing.assert_close(insertion_auc(model, x, t, sal, n_steps=7), p)


def test_all_zero_map_is_deterministic_raster_order_not_nan():
    model = tiny_cnn(6)
    x, _, t = data(10, b=2, h=8, w=8)
    zero = torch.zeros(2, 8, 8)
    ramp = torch.arange(64, 0, -1).float().view(1, 8, 8).expand(2, 8, 8)  # strictly raster order
    auc, curve = deletion_auc(model, x, t, zero, step=4, return_curve=True)
    assert torch.isfinite(curve).all()
    torch.testing.assert_close(auc, deletion_auc(model, x, t, ramp, step=4))
    rise = deletion_auc(model, x, t, zero, step=4, rise_ties=True)
    torch.testing.assert_close(rise, deletion_auc(model, x, t, ramp.flip(-1).flip(-2), step=4))


def test_batch_results_equal_per_image_results():
    model = tiny_cnn(7)
    x, sal, t = data(11, b=3, h=10, w=10)
    fns = [
        lambda *a: deletion_auc(*a, step=7),
        lambda *a: insertion_auc(*a, step=7),
        lambda *a: average_drop(*a),
    ]
    for fn in fns:
        batch = fn(model, x, t, sal)
        single = torch.cat([fn(model, x[i : i + 1], t[i : i + 1], sal[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    # ROAD noise is keyed per image: with stable keys a batch equals its images run one by one
    keys = torch.tensor([11, 22, 33])
    batch = road(model, x, t, sal, percentages=[0.2, 0.7], seed=3, noise_keys=keys)
    single = torch.cat(
        [
            road(
                model,
                x[i : i + 1],
                t[i : i + 1],
                sal[i : i + 1],
                percentages=[0.2, 0.7],
                seed=3,
                noise_keys=keys[i : i + 1],
            )
            for i in range(3)
        ]
    )
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    assert not torch.equal(batch, road(model, x, t, sal, percentages=[0.2, 0.7], seed=3))  # keys matter


def test_bad_shapes_are_clear_errors():
    model = tiny_cnn()
    x, sal, t = data(12, b=2)
    with pytest.raises(ValueError, match="input resolution"):
        deletion_auc(model, x, t, sal[:, :6, :6])
    with pytest.raises(ValueError, match="either"):
        deletion_auc(model, x, t, sal, step=3, n_steps=4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), step=st.integers(1, 40), a=st.integers(1, 5), b=st.integers(-5, 5))
def test_aucs_in_unit_interval_and_invariant_to_monotone_rescaling(seed, step, a, b):
    model = tiny_cnn(seed % 3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.randint(0, 5, (2,), generator=g)
    sal = torch.randint(0, 10, (2, 8, 8), generator=g).float()  # integer maps with ties
    rescaled = a * sal**3 + b  # strictly increasing and exact in float32 for these integers
    for fn in (deletion_auc, insertion_auc):
        auc = fn(model, x, t, sal, step=step)
        assert bool(((auc >= 0) & (auc <= 1)).all())
        torch.testing.assert_close(fn(model, x, t, rescaled, step=step), auc)


# --------------------------------------------------------------------------------------------------
# registry entries


def _ctx(seed: int = 13, methods=("gradcam", "random", "center")):
    x, _, t = data(seed, b=2, h=10, w=10)
    g = torch.Generator().manual_seed(seed)
    sal = {m: torch.rand(2, 10, 10, generator=g) for m in methods}
    return MetricContext(
        model=tiny_cnn(8), batch=Batch(images=x, targets=t, ids=["a", "b"]), saliency=sal, forward_batch_size=5, seed=4
    )


def test_registry_entries_metadata():
    expect = {
        "deletion_auc": False,
        "insertion_auc": True,
        "average_drop": False,
        "increase_in_confidence": True,
        "road_morf": False,
        "road_lerf": True,
        "road_combined": True,
    }
    for name, hib in expect.items():
        e = METRICS.entry(name)
        assert e.meta["family"] == "faithfulness" and e.meta["higher_is_better"] is hib
        assert set(e.meta["needs"]) == {"saliency"}
    assert METRICS.entry("deletion_auc").meta["defaults"]["step"] == 224
    assert METRICS.entry("insertion_auc").meta["defaults"]["substrate"] == "blur"


def test_stacked_methods_equal_methods_run_separately():
    ctx = _ctx()
    params = {
        "deletion_auc": {"step": 9},
        "insertion_auc": {"n_steps": 8},
        "road_morf": {"percentages": (0.2, 0.5)},
        "road_lerf": {"percentages": (0.2, 0.5)},
        "road_combined": {"percentages": (0.2, 0.5)},
    }
    names = list(params) + ["average_drop", "increase_in_confidence"]
    together = compute_metrics(ctx, names, params)
    assert ctx.curves["deletion_auc"]["random"].shape == (2, 13)  # ceil(100/9)=12 steps + start
    assert ctx.curves["insertion_auc"]["center"].shape == (2, 9)
    for m in ctx.methods:
        alone = _ctx()
        alone.saliency = {m: alone.saliency[m]}
        res = compute_metrics(alone, names, params)
        for name in names:
            torch.testing.assert_close(together[name][m], res[name][m], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ctx.curves["deletion_auc"][m], alone.curves["deletion_auc"][m])
    # registry values equal the functional API
    x, t = ctx.batch.images, ctx.batch.targets
    sal = ctx.saliency["gradcam"]
    torch.testing.assert_close(together["deletion_auc"]["gradcam"], deletion_auc(ctx.model, x, t, sal, step=9))
    torch.testing.assert_close(together["insertion_auc"]["gradcam"], insertion_auc(ctx.model, x, t, sal, n_steps=8))
    keys = torch.tensor([zlib.crc32(i.encode()) for i in ctx.batch.ids])
    torch.testing.assert_close(
        together["road_morf"]["gradcam"], road(ctx.model, x, t, sal, percentages=(0.2, 0.5), seed=4, noise_keys=keys)
    )
    # ROAD noise follows the image id, not the batch position: a reordered batch gives reordered values
    flipped = _ctx()
    flipped.batch = flipped.batch.select([1, 0])
    flipped.saliency = {m: v.flip(0) for m, v in flipped.saliency.items()}
    res = compute_metrics(flipped, ["road_morf"], params)
    torch.testing.assert_close(res["road_morf"]["random"], together["road_morf"]["random"].flip(0))
    torch.testing.assert_close(
        together["road_combined"]["gradcam"], (together["road_lerf"]["gradcam"] - together["road_morf"]["gradcam"]) / 2
    )
