"""benchmark.evaluate: one batch (targets, every method from one capture, every metric), the public API and
the runner's only path."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark import methods
from benchmark.errors import UnknownNameError
from benchmark.evaluate import TARGET_KINDS, evaluate_batch, resolve_targets
from benchmark.metrics import METRICS, MetricContext, compute_metrics, register_metric
from benchmark.plugins import isolated
from benchmark.types import Batch

from conftest import tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(targets=(0, 3, 1)) -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(len(targets), 3, 8, 8, generator=g)
    masks = torch.zeros(len(targets), 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    return Batch(x, torch.tensor(targets), [f"i{i}" for i in range(len(targets))], masks)


def test_evaluate_batch_equals_explain_then_compute_metrics() -> None:
    """The maps are methods.explain's (one capture) and the scores compute_metrics' on those maps."""
    model, batch = tiny_cnn(), _batch()
    names, metrics = ["gradcam", "layercam", "scorecam"], ["pointing_game", "deletion_auc"]
    params = {"deletion_auc": {"n_steps": 4}}
    out = evaluate_batch(model, "1", None, batch, names, metrics, seed=5, forward_batch_size=4, metric_params=params)
    ref = methods.explain(model, "1", batch.images, batch.targets, names, forward_batch_size=4, seed=5)
    assert list(out.maps) == names
    for n in names:
        torch.testing.assert_close(out.maps[n], ref[n], rtol=0, atol=0)
    torch.manual_seed(5)
    ctx = MetricContext(model=model, batch=batch, saliency=ref, seed=5, forward_batch_size=4)
    want = compute_metrics(ctx, metrics, params)
    assert list(out.scores) == metrics and not out.statistics
    for m in metrics:
        for n in names:
            torch.testing.assert_close(out.scores[m][n], want[m][n], rtol=0, atol=0, equal_nan=True)
    assert set(out.curves["deletion_auc"]) == set(names) and out.scored["deletion_auc"] == tuple(names)
    assert out.capture_facts["activation_min"] >= 0  # the target layer is a ReLU


def test_failures_are_recorded_and_the_others_go_on() -> None:
    """Fault injection: a method and a metric that raise are recorded; the other method and metric score."""
    with isolated():

        @methods.register_method("broken_method", family="baseline", needs_gradients=False)
        def broken_method(ctx) -> Tensor:
            raise RuntimeError("no map today")

        @register_metric("broken_metric", family="sanity", higher_is_better=True)
        def broken_metric(ctx) -> dict[str, Tensor]:
            raise ValueError("no score today")

        out = evaluate_batch(
            tiny_cnn(), "1", None, _batch(), ["broken_method", "gradcam"], ["broken_metric", "pointing_game"], seed=0
        )
    assert out.method_failures == {"broken_method": "RuntimeError: no map today"}
    assert out.metric_failures == {"broken_metric": "ValueError: no score today"}
    assert list(out.maps) == ["gradcam"] and list(out.scores) == ["pointing_game"]
    assert out.scored["pointing_game"] == ("broken_method", "gradcam")  # the failed method is asked, then reported


def test_each_metric_starts_from_the_batch_seed() -> None:
    """A metric drawing from torch's global generator scores the same whether or not another one drew first."""
    with isolated():

        @register_metric("global_draw", family="sanity", higher_is_better=True)
        def global_draw(ctx) -> dict[str, Tensor]:
            return {n: torch.rand(s.shape[0]) for n, s in ctx.saliency.items()}

        @register_metric("global_draw_2", family="sanity", higher_is_better=True)
        def global_draw_2(ctx) -> dict[str, Tensor]:
            return {n: torch.rand(s.shape[0]) for n, s in ctx.saliency.items()}

        model, batch = tiny_cnn(), _batch()
        alone = evaluate_batch(model, "1", None, batch, ["gradcam"], ["global_draw_2"], seed=3)
        after = evaluate_batch(model, "1", None, batch, ["gradcam"], ["global_draw", "global_draw_2"], seed=3)
        other = evaluate_batch(model, "1", None, batch, ["gradcam"], ["global_draw_2"], seed=4)
    a, b = alone.scores["global_draw_2"]["gradcam"], after.scores["global_draw_2"]["gradcam"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, other.scores["global_draw_2"]["gradcam"])


def test_reexplaining_metrics_see_the_reexplain_selection_only() -> None:
    names = ["gradcam", "random"]
    out = evaluate_batch(
        tiny_cnn(), "1", None, _batch(), names, ["max_sensitivity", "pointing_game"], seed=0,
        metric_params={"max_sensitivity": {"n_samples": 1}}, reexplain_methods=("gradient",),
    )  # fmt: skip
    assert "explainer" in METRICS.entry("max_sensitivity").meta["needs"]
    assert out.scored["max_sensitivity"] == ("gradcam",) and set(out.scores["max_sensitivity"]) == {"gradcam"}
    assert out.scored["pointing_game"] == tuple(names)


def test_metrics_whose_needs_are_missing_are_left_out() -> None:
    b = _batch()
    plain = Batch(b.images, b.targets, b.ids)  # no masks
    out = evaluate_batch(tiny_cnn(), "1", None, plain, ["gradcam"], ["pointing_game", "deletion_auc"], seed=0)
    assert "pointing_game" not in out.scored and "deletion_auc" in out.scores


def test_resolve_targets_by_kind() -> None:
    model, batch = tiny_cnn(), _batch((2, -1, 4))
    with torch.inference_mode():
        top1 = model(batch.images).argmax(1)
    label = resolve_targets(model, batch, "label")  # the loader's -1 sentinel: explain the prediction
    assert label.targets.tolist() == [2, int(top1[1]), 4] and label.labels.tolist() == [2, -1, 4]
    pred = resolve_targets(model, batch, "predicted")
    assert torch.equal(pred.targets, top1) and not pred.targets.is_inference()
    same = _batch()
    assert resolve_targets(model, same, "label") is same  # nothing to resolve: no forward
    assert {"label", "predicted", "labels"} <= set(TARGET_KINDS)
    with pytest.raises(UnknownNameError, match="expected one of label, labels, predicted"):
        resolve_targets(model, batch, "top1")
