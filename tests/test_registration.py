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
