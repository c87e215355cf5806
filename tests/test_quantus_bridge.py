"""quantus/<ClassName> metrics: every Quantus 0.6.0 metric probed once on a tiny model, equal to Quantus called
directly on the same maps (abs diff <= 1e-6), broken ones failing with their documented reason."""

from __future__ import annotations

import inspect
import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")

from benchmark import methods  # noqa: E402
from benchmark.metrics import METRICS, MetricContext, compute_metrics  # noqa: E402
from benchmark.metrics.functional import quantus_bridge as Q  # noqa: E402
from benchmark.metrics.functional import quantus_metric  # noqa: E402
from benchmark.types import Batch  # noqa: E402

#: Small settings so that every metric runs in about a second (Quantus' defaults are for 224x224 images).
SMALL = dict(
    nr_samples=3,
    nr_runs=5,
    subset_size=16,
    n_perturb_samples=2,
    nr_steps=4,
    regions_evaluation=4,
    patch_size=16,
    features_in_step=256,
    percentages=[10, 50],
    k=50,
    layer_names=["2"],
    perturb_patch_sizes=[16],
)
#: Per-metric image size: NonSensitivity only works with features_in_step=1 on RGB (one forward per pixel).
SIZE = {"NonSensitivity": 6}


def _model() -> nn.Module:
    """Conv(bias) first, as Quantus' InputInvariance needs; 5 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _data(size: int = 32, b: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, size, size, generator=g)
    y = torch.arange(b) % 5
    masks = torch.rand(b, size, size, generator=g) > 0.6
    return x, y, masks


def _explain(model, x, t):
    return methods.get("gradcam")(model, "2", x, t)


def _params(name: str) -> dict:
    sig = set(Q.quantus_defaults(name))
    p = {k: v for k, v in SMALL.items() if k in sig}
    if name == "NonSensitivity":
        p["features_in_step"] = 1
    return p


def _direct(name: str, model, x, y, a, masks, seed: int, **params):
    """Quantus called by hand, as its README shows (no cambench code but the explain function)."""
    cls = getattr(quantus, name)
    init = {k: v for k, v in params.items() if k != "softmax"}
    if name in ("MPRT", "SmoothMPRT", "ModelParameterRandomisation"):
        init.setdefault("return_last_correlation", True)
    if name == "RandomLogit":
        init.setdefault("num_classes", 5)
    call_sig = inspect.signature(cls.__call__).parameters
    softmax = params.get("softmax", call_sig["softmax"].default)

    def explain_func(model, inputs, targets, **kw):
        return _explain(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]

    np.random.seed(seed)
    torch.manual_seed(seed)
    metric = cls(**init, return_aggregate=False, disable_warnings=True, display_progressbar=False)
    out = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=a.numpy()[:, None],
        s_batch=masks.numpy()[:, None].astype(np.float32),
        channel_first=True,
        explain_func=explain_func,
        device="cpu",
        softmax=softmax,
    )
    if isinstance(out, dict):
        out = list(out.values())[-1]
    return np.array([np.trapezoid(np.asarray(v, float), dx=1) if np.ndim(v) else float(v) for v in out])


ALL = Q.quantus_metric_names()
WORKING = [n for n in ALL if n not in Q.BROKEN and n not in Q.UNSUPPORTED]


def test_every_quantus_metric_class_is_registered_with_quantus_metadata() -> None:
    names = METRICS.list("quantus/*")
    assert len(names) == len(ALL) == 39 and "quantus/Sparseness" in names and "quantus/IROF" in names
    assert METRICS.list() == [n for n in METRICS.list() if not n.startswith("quantus/")]  # "all" unchanged
    for n in ALL:
        cls, e = getattr(quantus, n), METRICS.entry(f"quantus/{n}")
        assert e.higher_is_better == (cls.score_direction.value == "higher")
        assert e.quantus_category == cls.evaluation_category.value
        assert e.status == ("broken" if n in Q.BROKEN else "unsupported" if n in Q.UNSUPPORTED else "ok")
        assert ("explainer" in e.needs) == (n in Q.REEXPLAIN)
    e = METRICS.entry("quantus/Sparseness")
    assert e.family == "complexity" and e.higher_is_better and e.defaults["abs"] is True
    assert METRICS.entry("quantus/MaxSensitivity").defaults["nr_samples"] == 200  # Quantus' default
    assert METRICS.entry("quantus/AvgSensitivity").defaults["perturb_func"] == "batch_uniform_noise"
    assert (
        METRICS.entry("quantus/PointingGame").family == "localization"
        and "masks" in METRICS.entry("quantus/PointingGame").needs
    )


def test_reexplain_set_matches_quantus_sources() -> None:
    """REEXPLAIN is the set of classes whose module calls explain_func (checked against the installed source)."""
    found = set()
    for n in ALL:
        src = inspect.getsource(inspect.getmodule(getattr(quantus, n)))
        if any(s in src for s in ("self.explain_batch(", "explain_smooth_batch(", "self.explain_func(")):
            found.add(n)
    assert found == set(Q.REEXPLAIN)


@pytest.mark.parametrize("name", WORKING)
def test_bridged_metric_equals_quantus_called_directly(name: str) -> None:
    model = _model()
    x, y, masks = _data(SIZE.get(name, 32), 1 if name in SIZE else 3)
    a = _explain(model, x, y)
    params = _params(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = quantus_metric(name, model, x, y, a, masks=masks, explain=_explain, seed=7, **params)
        ref = _direct(name, model, x, y, a, masks, 7, **params)
    assert ours.shape == (x.shape[0],) and ours.dtype == torch.float32
    np.testing.assert_allclose(
        ours.double().numpy(), ref.astype(np.float32).astype(np.float64), atol=1e-6, rtol=0, equal_nan=True
    )


@pytest.mark.parametrize("name", sorted({**Q.BROKEN, **Q.UNSUPPORTED}))
def test_broken_metrics_raise_naming_the_upstream_problem(name: str) -> None:
    model = _model()
    x, y, masks = _data()
    a = _explain(model, x, y)
    with pytest.raises(Q.QuantusBridgeError, match=f"quantus/{name} (is broken|has no per-image)"):
        quantus_metric(name, model, x, y, a, masks=masks, explain=_explain)
    # and they really are: Quantus itself fails (or returns no per-image score) on these inputs
    if name in Q.BROKEN:
        with pytest.raises(Exception):  # noqa: B017 - Quantus' own failure, whatever its type
            _direct(name, model, x, y, a, masks, 0, **_params(name))


def test_registry_entry_scores_every_method_through_the_context() -> None:
    model = _model()
    x, y, masks = _data()
    names = ["gradcam", "gradcampp"]

    def explain_fn(model_, images, targets, names_, **kw):
        return methods.explain(model_, "2", images, targets, names_)

    sal = methods.explain(model, "2", x, y, names)
    ctx = MetricContext(
        model=model, batch=Batch(x, y, ["a", "b", "c"], masks=masks), saliency=sal, explain=explain_fn, seed=3
    )
    params = {
        "quantus/Sparseness": {},
        "quantus/MaxSensitivity": {"nr_samples": 2},
        "quantus/RelevanceMassAccuracy": {},
    }
    res = compute_metrics(ctx, list(params), params)
    for n in names:
        torch.testing.assert_close(res["quantus/Sparseness"][n], quantus_metric("Sparseness", model, x, y, sal[n]))
        assert res["quantus/MaxSensitivity"][n].shape == (3,)
        direct = _direct("MaxSensitivity", model, x, y, sal[n], masks, 3, nr_samples=2) if n == "gradcam" else None
        if direct is not None:
            np.testing.assert_allclose(res["quantus/MaxSensitivity"][n].numpy(), direct, atol=1e-6)
    with pytest.raises(TypeError, match="no parameter 'nr_sample'"):
        compute_metrics(ctx, ["quantus/MaxSensitivity"], {"quantus/MaxSensitivity": {"nr_sample": 2}})


def test_errors_and_parameter_checks(monkeypatch) -> None:
    # other test modules shim numpy.trapz (removed in NumPy 2.4) for their direct Quantus calls: undo it here
    monkeypatch.delattr(np, "trapz", raising=False)
    model = _model()
    x, y, masks = _data()
    a = _explain(model, x, y)
    with pytest.raises(TypeError, match="no parameter 'nr_sample'"):
        quantus_metric("MaxSensitivity", model, x, y, a, explain=_explain, nr_sample=2)
    with pytest.raises(Q.QuantusBridgeError, match="re-explains"):
        quantus_metric("MaxSensitivity", model, x, y, a)
    with pytest.raises(Q.QuantusBridgeError, match="features_in_step=1"):
        quantus_metric("NonSensitivity", model, x, y, a, features_in_step=4)
    with pytest.raises(Q.QuantusBridgeError, match="first submodule"):
        quantus_metric("InputInvariance", nn.Sequential(nn.Sequential(model)).eval(), x, y, a, explain=_explain)
    with pytest.raises(Q.QuantusBridgeError, match="NumPy"):  # Quantus' own AUC option calls numpy.trapz
        quantus_metric("PixelFlipping", model, x, y, a, features_in_step=256, return_auc_per_sample=True)
    with pytest.raises(TypeError, match="names no function"):
        quantus_metric("AvgSensitivity", model, x, y, a, explain=_explain, perturb_func="no_such_func")
    # a Quantus function by name is the function itself
    p = dict(nr_samples=2, explain=_explain)
    gaussian = quantus.functions.perturb_func.batch_gaussian_noise
    torch.testing.assert_close(
        quantus_metric("AvgSensitivity", model, x, y, a, perturb_func="batch_gaussian_noise", **p),
        quantus_metric("AvgSensitivity", model, x, y, a, perturb_func=gaussian, **p),
    )
    with pytest.raises(KeyError):
        quantus_metric("NoSuchMetric", model, x, y, a)


def test_seeding_is_reproducible_and_restores_global_generators() -> None:
    model = _model()
    x, y, _ = _data()
    a = _explain(model, x, y)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    r1 = quantus_metric("FaithfulnessCorrelation", model, x, y, a, nr_runs=5, subset_size=16, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)
    r2 = quantus_metric("FaithfulnessCorrelation", model, x, y, a, nr_runs=5, subset_size=16, seed=1)
    r3 = quantus_metric("FaithfulnessCorrelation", model, x, y, a, nr_runs=5, subset_size=16, seed=2)
    torch.testing.assert_close(r1, r2)
    assert not torch.equal(r1, r3)
