"""The ``truth`` family: known answers on tensors and on shapes_shortcut with its model (the mark is the cause)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark import methods as M
from benchmark.data import create_dataset, make_batches
from benchmark.metrics import METRICS, MetricContext, compute_metrics, missing_needs
from benchmark.metrics.base import FAMILIES
from benchmark.metrics.functional import truth as F
from benchmark.models import create_model
from benchmark.schema import METRIC_FAMILIES

TRUTH = [
    "shortcut_pointing",
    "shortcut_energy",
    "shortcut_intervention",
    "distractibility",
    "bam_model_contrast",
    "bam_input_dependence",
]


def test_family_is_listed_everywhere() -> None:
    assert "truth" in METRIC_FAMILIES and FAMILIES is METRIC_FAMILIES  # one list (benchmark/schema.py)
    assert {n for n in METRICS.list() if METRICS.entry(n).meta["family"] == "truth"} == set(TRUTH)
    assert METRICS.entry("distractibility").meta["higher_is_better"] is False


def test_functional_known_answers() -> None:
    t = torch.zeros(3, 4, 4, dtype=torch.bool)
    t[:, 0, :2] = True
    s = torch.zeros(3, 4, 4)
    s[0, 0, 0] = 1.0  # peak on the truth
    s[1, 3, 3] = 1.0  # peak elsewhere
    s[2] = 0.5  # constant: no maximum to point with
    assert F.shortcut_pointing(s, t).tolist() == [1.0, 0.0, 0.0]
    plateau = torch.zeros(1, 4, 4)
    plateau[0, :2, :] = 1.0  # ties: the plateau of the maximum touches the truth -> hit
    assert F.shortcut_pointing(plateau, t[:1]).item() == 1.0
    e = torch.ones(1, 4, 4)
    assert F.shortcut_energy(e, t[:1]).item() == pytest.approx(2 / 16)
    assert math.isnan(F.shortcut_energy(torch.zeros(1, 4, 4), t[:1]).item())
    assert math.isnan(F.shortcut_pointing(s[:1], torch.zeros(1, 4, 4, dtype=torch.bool)).item())
    # top-k: k highest, ties in raster order
    m = F.top_k_mask(torch.tensor([[[3.0, 1.0], [1.0, 2.0]]]), torch.tensor([2]))
    assert m.tolist() == [[[True, False], [False, True]]]
    m = F.top_k_mask(torch.ones(1, 2, 2), torch.tensor([3]))
    assert m.flatten().tolist() == [True, True, True, False]
    ratio = F.intervention_ratio(
        torch.tensor([0.9, 0.9, 0.9, 0.9]), torch.tensor([0.5, 0.9, 0.0, 0.2]), torch.tensor([0.1, 0.1, 0.5, 0.85])
    )
    assert ratio[:3].tolist() == pytest.approx([0.5, 0.0, 1.0]) and math.isnan(ratio[3].item())
    a = torch.zeros(1, 2, 2)
    a[0, 0, 0] = 1
    b = torch.zeros(1, 2, 2)
    b[0, 1, 1] = 2
    assert F.map_shift(a, a).item() == 0.0 and F.map_shift(a, b).item() == pytest.approx(1.0)
    assert F.map_shift(a, 0.5 * a + 0.5 * b / 2).item() == pytest.approx(0.5)


@pytest.fixture(scope="module")
def shortcut():  # type: ignore[no-untyped-def]
    h = create_model("shapes_shortcut_cnn")
    ds = create_dataset("shapes_shortcut", n=12, split="test", seed=3)
    batch = next(iter(make_batches(ds, h, batch_size=12)))
    objects = torch.stack([ds.scene(i).object_mask for i in range(len(ds))])
    return h, ds, batch, objects


def _ctx(h, batch, maps):  # type: ignore[no-untyped-def]
    def explain_fn(model, images, targets, names, *, gradient_noise=None):  # type: ignore[no-untyped-def]
        masks = batch.masks if images.shape[0] == batch.masks.shape[0] else None
        return M.explain(
            model, h.target_layer, images, targets, [n for n in names if n in M.METHODS.list()], masks=masks
        )

    return MetricContext(model=h.model, batch=batch, saliency=maps, explain=explain_fn, forward_batch_size=64)


def test_oracle_is_one_and_the_object_is_zero_on_the_shortcut_model(shortcut) -> None:  # type: ignore[no-untyped-def]
    h, ds, batch, objects = shortcut
    assert torch.equal(batch.masks, batch.extras["truth_mask"])  # oracle = the mark on shapes_shortcut
    maps = {
        "oracle": M.explain(
            h.model,
            h.target_layer,
            batch.images,
            batch.targets,
            ["oracle"],
            masks=batch.masks,
            params={"oracle": {"mask_dilation": 0}},
        )["oracle"],
        "object": objects.float(),
        "random": torch.rand(objects.shape, generator=torch.Generator().manual_seed(0)),
    }
    ctx = _ctx(h, batch, maps)
    out = compute_metrics(ctx, ["shortcut_pointing", "shortcut_energy", "shortcut_intervention"])
    assert out["shortcut_pointing"]["oracle"].tolist() == [1.0] * 12
    assert out["shortcut_energy"]["oracle"].tolist() == [1.0] * 12
    assert out["shortcut_pointing"]["object"].tolist() == [0.0] * 12
    assert out["shortcut_energy"]["object"].tolist() == [0.0] * 12
    iv = out["shortcut_intervention"]
    ok = ~torch.isnan(iv["oracle"])
    assert int(ok.sum()) >= 10  # the model depends on the mark on (almost) every image
    assert torch.allclose(iv["oracle"][ok], torch.ones(int(ok.sum())))
    assert float(iv["object"][ok].mean()) <= 0.1  # removing the object hardly matters to this model
    assert float(iv["random"][ok].mean()) < 0.5
    assert float(out["shortcut_energy"]["random"].mean()) < 0.05


def test_distractibility_bounds(shortcut) -> None:  # type: ignore[no-untyped-def]
    h, ds, batch, objects = shortcut
    names = ["oracle", "gradcam"]
    maps = M.explain(h.model, h.target_layer, batch.images, batch.targets, names, masks=batch.masks)
    out = compute_metrics(_ctx(h, batch, maps), ["distractibility"])["distractibility"]
    has = torch.tensor([bool(ds.scene(i).distractor_masks) for i in range(len(ds))])
    assert torch.isnan(out["oracle"][~has]).all() and bool(has.any())
    assert torch.equal(out["oracle"][has], torch.zeros(int(has.sum())))  # the mark did not move
    g = out["gradcam"][has]
    assert bool(((g >= 0) & (g <= 1)).all())


def test_truth_metrics_skip_datasets_without_model_truth() -> None:
    h = create_model("shapes_shortcut_cnn")
    batch = next(iter(make_batches(create_dataset("shapes", n=2), h, batch_size=2)))
    ctx = MetricContext(model=h.model, batch=batch, saliency={"x": torch.rand(2, 128, 128)})
    assert all(missing_needs(n, ctx) == ["truth"] for n in TRUTH[:3])
    assert compute_metrics(ctx, TRUTH[:3]) == {}
