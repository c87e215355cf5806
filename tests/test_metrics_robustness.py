"""Robustness and cost metrics: Quantus parity (Max/Avg-Sensitivity), skimage SSIM parity, invariants."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import benchmark.metrics as M
from benchmark import methods
from benchmark.metrics.functional import cost as C
from benchmark.metrics.functional import robustness as R
from benchmark.types import Batch

from conftest import tiny_features_cnn

np.trapz = getattr(np, "trapz", np.trapezoid)  # Quantus 0.6 on NumPy >= 2.4
import quantus  # noqa: E402

LAYER = "features.3"


tiny_cnn = tiny_features_cnn


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    targets = torch.tensor([0, 1, 2, 3])

    def explain(images, targets, names, *, gradient_noise=None):
        return methods.explain(model, LAYER, images, targets, names, gradient_noise=gradient_noise)

    return model, images, targets, explain


def quantus_run(metric_cls, setup, radius, n):
    model, images, targets, explain = setup
    shape = images.shape[1:]
    calls = []

    def perturb(arr, indices, **kw):  # the same delta_s as ours, in Quantus' [B, C*H*W] layout
        d = R.uniform_noise(shape, radius, seed=3, sample=len(calls)).numpy().reshape(1, -1)
        calls.append(1)
        return arr + d

    def qexplain(model, inputs, targets, **kw):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        return explain(x, t, ["gradcam"])["gradcam"][:, None].numpy()

    metric = metric_cls(
        nr_samples=n,
        lower_bound=radius,
        perturb_func=perturb,
        disable_warnings=True,
        return_nan_when_prediction_changes=False,
    )
    out = metric(
        model=model, x_batch=images.numpy(), y_batch=targets.numpy(), explain_func=qexplain, batch_size=64, device="cpu"
    )
    assert len(calls) == n
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize(
    "ours,theirs", [(R.max_sensitivity, quantus.MaxSensitivity), (R.avg_sensitivity, quantus.AvgSensitivity)]
)
def test_sensitivity_equals_quantus(setup, ours, theirs):
    model, images, targets, explain = setup
    got = ours(explain, images, targets, ["gradcam"], radius=0.2, n_samples=3, seed=3, batch_size=5)
    ref = quantus_run(theirs, setup, 0.2, 3)
    np.testing.assert_allclose(got["gradcam"].numpy(), ref, rtol=1e-4, atol=1e-6)
    assert np.all(ref > 0)


def test_sensitivity_batching_and_baselines(setup):
    model, images, targets, explain = setup
    names = ["gradcam", "layercam", "center"]
    whole = R.max_sensitivity(explain, images, targets, names, n_samples=2, seed=5, batch_size=64)
    chunked = R.max_sensitivity(explain, images, targets, names, n_samples=2, seed=5, batch_size=3)
    single = [
        R.max_sensitivity(explain, images[i : i + 1], targets[i : i + 1], names, n_samples=2, seed=5) for i in range(4)
    ]
    for n in names:
        torch.testing.assert_close(whole[n], chunked[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(whole[n], torch.cat([s[n] for s in single]), rtol=1e-5, atol=1e-6)
    assert torch.all(whole["center"] == 0) and torch.all(whole["gradcam"] > 0)
    avg = R.avg_sensitivity(explain, images, targets, names, n_samples=2, seed=5)
    assert torch.all(avg["gradcam"] <= whole["gradcam"] + 1e-6)
    # more noise moves maps more (on average over the batch)
    big = R.avg_sensitivity(explain, images, targets, ["gradcam"], radius=2.0, n_samples=2, seed=5)
    assert big["gradcam"].mean() > avg["gradcam"].mean()
    # a zero reference map gives NaN (0/0), never a crash
    ref = {"gradcam": torch.zeros(4, 32, 32)}
    nan = R.max_sensitivity(explain, images, targets, ["gradcam"], n_samples=2, reference=ref)
    assert torch.isnan(nan["gradcam"]).all()


def test_local_lipschitz(setup):
    model, images, targets, explain = setup
    out = R.local_lipschitz(explain, images, targets, ["gradcam", "center"], n_samples=2, seed=0)
    assert torch.all(out["center"] == 0) and torch.all(out["gradcam"] > 0)
    # known answer for a linear explainer Phi(x) = 0.5 * x[:, 0] / max: check by hand
    lin = lambda x, t, names, **kw: {n: x[:, 0] for n in names}
    x = torch.rand(2, 3, 8, 8) + 1.0
    got = R.local_lipschitz(lin, x, torch.zeros(2, dtype=torch.long), ["m"], std=0.1, n_samples=2, seed=9)
    ref = []
    for s in range(2):
        d = R.gaussian_noise(x.shape[1:], 0.1, 9, s)
        a, b = x[:, 0], (x + d)[:, 0]
        a = a / a.flatten(1).abs().max(1).values.view(-1, 1, 1)
        b = b / b.flatten(1).abs().max(1).values.view(-1, 1, 1)
        ref.append((a - b).flatten(1).norm(dim=1) / (d.norm() + 1e-10))
    torch.testing.assert_close(got["m"], torch.stack(ref).max(0).values)


def test_ssim_equals_skimage():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 20, 24, generator=g), torch.rand(3, 20, 24, generator=g)
    b[1] = a[1]
    ours = R.ssim(a, b).numpy()
    ref = [
        structural_similarity(
            a[i].numpy().astype(np.float64),
            b[i].numpy().astype(np.float64),
            data_range=1.0,
            win_size=7,
            gaussian_weights=False,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours[1] == pytest.approx(1.0)


def test_gradient_noise_stability(setup):
    model, images, targets, explain = setup
    names = ["gradcam", "hirescam", "center", "eigencam"]
    out = R.gradient_noise_stability(explain, images, targets, names + ["cfcam"], sigma=1.0, seed=1)
    again = R.gradient_noise_stability(explain, images, targets, names, sigma=1.0, seed=1)
    for n in names:
        torch.testing.assert_close(out["ssim"][n], again["ssim"][n])
    for n in ("gradcam", "hirescam"):
        assert torch.all(out["ssim"][n] < 1 - 1e-6) and torch.all(out["mse"][n] > 0)
    # CF-CAM is genuinely perturbed (the noise precedes its weights; the reference code's noise had no
    # effect at all), but its softmax over tiny gradient means makes the change minute (docs/methods.md#cfcam)
    assert torch.all(out["mse"]["cfcam"] > 0)
    assert out["ssim"]["hirescam"].mean() < out["ssim"]["gradcam"].mean()  # no spatial averaging
    for n in ("center", "eigencam"):  # read no gradient: untouched
        torch.testing.assert_close(out["ssim"][n], torch.ones(4))
        torch.testing.assert_close(out["mse"][n], torch.zeros(4))
    zero = R.gradient_noise_stability(explain, images, targets, ["gradcam"], sigma=0.0, seed=1)
    torch.testing.assert_close(zero["ssim"]["gradcam"], torch.ones(4))
    # the noise reaches the weights: equal to explaining with the same noise function by hand
    noisy = explain(images, targets, ["gradcam"], gradient_noise=R.gradient_noise_fn(1.0, 1))["gradcam"]
    clean = explain(images, targets, ["gradcam"])["gradcam"]
    torch.testing.assert_close(out["mse"]["gradcam"], ((R._minmax(noisy) - R._minmax(clean)) ** 2).mean((1, 2)))
    # relative noise: the scale of the gradients does not matter
    g = torch.randn(2, 4, 5, 5)
    f = R.gradient_noise_fn(0.3, 2)
    torch.testing.assert_close(f(g * 1e-4) / 1e-4, f(g))
    # per image the noise does not depend on the rest of the batch
    torch.testing.assert_close(f(g)[1:], f(g[1:]))
    more = R.gradient_noise_stability(explain, images, targets, ["gradcam"], sigma=4.0, seed=1)
    assert more["ssim"]["gradcam"].mean() < out["ssim"]["gradcam"].mean()


def make_ctx(setup, names):
    model, images, targets, explain = setup

    def explain_fn(model, images, targets, names, *, gradient_noise=None):
        return methods.explain(model, LAYER, images, targets, names, gradient_noise=gradient_noise)

    sal = explain_fn(model, images, targets, names)
    batch = Batch(images=images, targets=targets, ids=[str(i) for i in range(4)])
    meta = {n: methods.METHODS.entry(n).meta for n in sal}  # what the runner passes (family, needs_gradients)
    return M.MetricContext(
        model=model, batch=batch, saliency=sal, explain=explain_fn, seed=0, forward_batch_size=8, method_meta=meta
    )


def test_registry_robustness_and_cost(setup):
    names = ["gradcam", "center", "random", "scorecam"]
    ctx = make_ctx(setup, names)
    metrics = [
        "max_sensitivity",
        "avg_sensitivity",
        "local_lipschitz",
        "gradient_noise_stability",
        "gradient_noise_mse",
        "latency_ms",
        "peak_memory_mb",
    ]
    params = {m: {"n_samples": 2} for m in metrics[:3]}
    params["latency_ms"] = {"warmup": 0, "repeats": 1}
    res = M.compute_metrics(ctx, metrics, params)
    for m in metrics:
        assert set(res[m]) == set(names) and all(v.shape == (4,) for v in res[m].values())
    assert torch.all(res["max_sensitivity"]["gradcam"] > 0)
    assert torch.all(res["max_sensitivity"]["random"] == 0)  # seeded, input-independent map
    assert torch.all(res["gradient_noise_stability"]["scorecam"] == 1)  # reads no gradient
    direct = R.max_sensitivity(
        lambda *a, **k: ctx.explain(ctx.model, *a, **k),
        ctx.batch.images,
        ctx.batch.targets,
        ["gradcam"],
        n_samples=2,
        seed=0,
        reference=ctx.saliency,
    )
    torch.testing.assert_close(res["max_sensitivity"]["gradcam"], direct["gradcam"])
    lat = res["latency_ms"]["scorecam"]
    assert torch.all(lat > 0) and torch.all(lat == lat[0])
    assert torch.isnan(res["peak_memory_mb"]["gradcam"]).all()  # CPU: not measurable honestly
    assert M.METRICS.entry("max_sensitivity").higher_is_better is False
    assert M.METRICS.entry("gradient_noise_stability").higher_is_better is True
    no_explainer = M.MetricContext(model=ctx.model, batch=ctx.batch, saliency=ctx.saliency)
    assert M.compute_metrics(no_explainer, metrics) == {}


def test_latency_counts_calls_and_divides_by_batch(setup):
    model, images, targets, _ = setup
    calls = []

    def slow(model, images, targets, names):
        calls.append(names)
        import time

        time.sleep(0.02)
        return {}

    lat = C.latency_ms(slow, model, images, targets, "gradcam", warmup=2, repeats=3)
    assert len(calls) == 5 and calls[0] == ["gradcam"]
    assert 20 / 4 <= float(lat[0]) < 200 / 4
    with pytest.raises(ValueError, match="repeats"):
        C.latency_ms(slow, model, images, targets, "gradcam", repeats=0)
