"""What the registration decorators accept: method families and metric needs are checked against one list
each (``methods.base.FAMILIES``, ``metrics.base.NEEDS``), so a typo fails at import, not mid-run."""

from __future__ import annotations

import pytest
import torch

from benchmark.methods import METHODS, register_method
from benchmark.methods.base import FAMILIES
from benchmark.metrics import METRICS, register_metric
from benchmark.metrics.base import NEEDS


def test_every_builtin_method_family_is_in_the_list() -> None:
    assert {METHODS.entry(n).meta["family"] for n in METHODS.list()} <= set(FAMILIES)


def test_unknown_method_family_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown family 'gradients'.*gradient.*projection"):
        register_method("typo_cam", family="gradients")(lambda ctx: ctx.images[:, 0])
    assert "typo_cam" not in METHODS


def test_unknown_metric_need_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown needs \\['mask'\\]"):
        register_metric("typo_metric", family="localization", higher_is_better=True, needs=("saliency", "mask"))(
            lambda ctx: {}
        )
    assert "typo_metric" not in METRICS


def test_model_is_not_a_need_and_old_registrations_still_load() -> None:
    assert "model" not in NEEDS
    assert all("model" not in METRICS.entry(n).meta["needs"] for n in METRICS.list())
    try:
        with pytest.warns(DeprecationWarning, match="'model' is no longer a need"):
            register_metric("old_style", family="faithfulness", higher_is_better=True, needs=("saliency", "model"))(
                lambda ctx: {m: torch.zeros(len(ctx.batch)) for m in ctx.saliency}
            )
        assert METRICS.entry("old_style").meta["needs"] == ("saliency",)
    finally:
        METRICS.remove("old_style")


def test_a_metric_declared_by_its_signature_lists_its_defaults_and_takes_overrides() -> None:
    """The signature is the declaration: no ``defaults=``, yet the parameters are listed (METRICS.params,
    ``meta["defaults"]``), overridable, type-checked from the hints, and reach the function."""
    from benchmark.metrics import compute_metrics, metric_params
    from benchmark.runner.validate import check_kwargs
    from benchmark.types import Batch

    @register_metric("sig_only", family="faithfulness", higher_is_better=True)
    def sig_only(ctx, *, scale: float = 2.0, mode: str = "sum", positional_too: int = 3, **extra):
        return {m: scale * positional_too * s.flatten(1).sum(1) for m, s in ctx.saliency.items()}

    try:
        assert METRICS.params("sig_only") == {"scale": 2.0, "mode": "sum", "positional_too": 3}
        assert METRICS.entry("sig_only").meta["defaults"] == METRICS.params("sig_only")
        assert metric_params("sig_only", {"scale": 0.5}) == {"scale": 0.5, "mode": "sum", "positional_too": 3}
        with pytest.raises(TypeError, match="has no parameter 'scal'. Its parameters: mode, positional_too, scale"):
            METRICS.params("sig_only", {"scal": 1.0})
        with pytest.raises(Exception, match="`scale` must be a number"):
            check_kwargs(sig_only, {"scale": "big"}, "[metric_params.sig_only]", unknown_ok=True)
        from benchmark.metrics import MetricContext

        batch = Batch(images=torch.zeros(2, 3, 4, 4), targets=torch.zeros(2, dtype=torch.long), ids=["a", "b"])
        ctx = MetricContext(model=torch.nn.Identity(), batch=batch, saliency={"m": torch.ones(2, 4, 4)})
        out = compute_metrics(ctx, ["sig_only"], {"sig_only": {"scale": 0.5}})
        assert out["sig_only"]["m"].tolist() == [0.5 * 3 * 16] * 2
    finally:
        METRICS.remove("sig_only")


def test_defaults_only_override_and_a_key_the_function_cannot_take_is_refused() -> None:
    """Two names sharing one function: the second overrides a default; ``defaults=`` naming a parameter the
    function does not take (no ``**kwargs``) fails at registration, naming it."""
    from benchmark.errors import CambenchError

    def shared(ctx, threshold: float = 0.5, relative: bool = True):
        return {}

    register_metric("shared_a", family="localization", higher_is_better=True)(shared)
    register_metric("shared_b", family="localization", higher_is_better=True, defaults={"threshold": 0.25})(shared)
    try:
        assert METRICS.params("shared_a") == {"threshold": 0.5, "relative": True}
        assert METRICS.params("shared_b") == {"threshold": 0.25, "relative": True}
        with pytest.raises(CambenchError, match=r"defaults= names \['treshold'\].*threshold, relative"):
            register_metric("shared_c", family="localization", higher_is_better=True,
                            defaults={"treshold": 0.1})(shared)
        assert "shared_c" not in METRICS
    finally:
        METRICS.remove("shared_a")
        METRICS.remove("shared_b")


def test_a_method_declared_by_its_signature_lists_its_defaults() -> None:
    @register_method("sig_cam", family="baseline", needs_gradients=False)
    def sig_cam(ctx, power: float = 1.0, *, floor: float = 0.0):
        return ctx.images[:, 0] ** power + floor

    try:
        assert METHODS.params("sig_cam") == {"power": 1.0, "floor": 0.0}
        assert METHODS.params("sig_cam", {"floor": 0.5}) == {"power": 1.0, "floor": 0.5}
        with pytest.raises(TypeError, match="has no parameter 'pow'. Its parameters: floor, power"):
            METHODS.params("sig_cam", {"pow": 2})
    finally:
        METHODS.remove("sig_cam")


def test_builtin_defaults_are_their_signatures_unless_overridden() -> None:
    """Every built-in method and metric lists exactly its function's signature defaults: no registration
    repeats (or contradicts) them in ``defaults=``."""
    from benchmark.registry import signature_defaults
    from benchmark.runner import load_registries

    load_registries()
    for reg in (METHODS, METRICS):
        for e in reg.entries():
            if e.meta.get("source", "cambench") != "cambench" or e.obj.__module__.startswith("tests"):
                continue
            assert e.meta["defaults"] == signature_defaults(e.obj), e.name
