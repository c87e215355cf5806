"""Metrics on volumes and clips: voxel deletion/insertion (3-D blur), pointing game in voxels, energy pointing
game, mask IoU, 3-D box IoU, sensitivities, local Lipschitz, model randomisation, the temporal score, and
the clear errors of what is not defined in 3-D (ROAD, MaxBoxAccV2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import methods
from benchmark.errors import DimensionError
from benchmark.metrics import MetricContext, compute_metrics, dataset_value, metric_level
from benchmark.metrics.functional import faithfulness as FF
from benchmark.metrics.functional import localization as FL
from benchmark.metrics.functional.robustness import ssim
from benchmark.models.volumetric import VolumeCNN
from benchmark.types import Batch


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = VolumeCNN(4, (4, 8, 12)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 16, 16, generator=g)
    masks = torch.zeros(2, 8, 16, 16, dtype=torch.bool)
    masks[0, 2:5, 4:9, 4:10] = True
    masks[1, 5:8, 8:14, 2:6] = True
    boxes = [torch.tensor([[4.0, 4.0, 2.0, 9.0, 8.0, 4.0]]), torch.tensor([[2.0, 8.0, 5.0, 5.0, 13.0, 7.0]])]
    batch = Batch(images=x, targets=torch.tensor([0, 2]), ids=["a", "b"], masks=masks, boxes=boxes)
    return model, batch


def test_pointing_game_ball_in_voxels() -> None:
    sal = torch.zeros(1, 4, 6, 6)
    sal[0, 1, 2, 2] = 1.0
    mask = torch.zeros(1, 4, 6, 6, dtype=torch.bool)
    mask[0, 3, 2, 2] = True  # 2 voxels away along the depth axis
    assert FL.pointing_game(sal, mask, tolerance=2)[0] == 0  # open ball: distance 2 is outside
    assert FL.pointing_game(sal, mask, tolerance=2.01)[0] == 1
    assert FL.pointing_game(sal, mask, tolerance=0)[0] == 0
    assert torch.isnan(FL.pointing_game(sal, torch.zeros_like(mask), tolerance=3))[0]


def test_energy_mask_iou_and_temporal_energy_known_answers() -> None:
    sal = torch.zeros(1, 4, 4, 4)
    sal[0, 0] = 1.0  # all energy in frame 0
    sal[0, 2, 0, 0] = 1.0  # 1/17 of it in frame 2
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 2, 1:3, 1:3] = True
    assert FL.energy_pointing_game(sal, mask)[0] == 0
    torch.testing.assert_close(FL.temporal_energy(sal, mask), torch.tensor([1 / 17]))
    mask[0, 0, 0, 0] = True
    torch.testing.assert_close(FL.temporal_energy(sal, mask), torch.tensor([1.0]))
    torch.testing.assert_close(FL.energy_pointing_game(sal, mask), torch.tensor([1 / 17]))
    torch.testing.assert_close(FL.mask_iou(sal, mask, 0.5), torch.tensor([1 / 21]))  # 1 shared of 17 + 5 - 1
    assert torch.isnan(FL.temporal_energy(torch.zeros_like(sal), mask))[0]
    with pytest.raises(DimensionError, match="T,H,W"):
        FL.temporal_energy(sal[:, 0], mask[:, 0])


def test_box_iou_3d_volumes() -> None:
    a = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])  # 2x2x2 voxels
    b = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 1.0, 1.0, 3.0]])
    torch.testing.assert_close(FL.box_iou_matrix(a, b), torch.tensor([[1 / 15, 8 / 16]], dtype=torch.float64))
    sal = torch.zeros(1, 6, 8, 8)
    sal[0, 1:3, 2:5, 3:7] = 1.0  # t 1..2, y 2..4, x 3..6
    sal[0, 5, 0, 0] = 0.9  # a smaller separate component
    gt = [torch.tensor([[3.0, 2.0, 1.0, 6.0, 4.0, 2.0]])]
    assert float(FL.box_iou(sal, gt)[0]) == pytest.approx(1.0)
    mask = FL.boxes_to_mask(gt, (6, 8, 8))
    assert mask.shape == (1, 6, 8, 8) and int(mask.sum()) == 2 * 3 * 4
    assert torch.equal(mask[0], sal[0] == 1.0)
    with pytest.raises(DimensionError, match="max_box_acc"):
        FL.box_best_ious(sal, gt)


def test_rise_blur_3d_is_a_normalised_isotropic_kernel() -> None:
    k = FF.gkern3d(5, 1.0)
    assert k.shape == (5, 5, 5) and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.permute(2, 0, 1))
    x = torch.ones(1, 3, 9, 9, 9)
    blurred = FF.rise_blur(x, 5, 1.0)
    assert blurred.shape == x.shape
    assert float(blurred[0, 0, 4, 4, 4]) == pytest.approx(1.0, abs=1e-5)  # interior: the kernel sums to 1
    assert float(blurred[0, 0, 0, 0, 0]) < 0.5  # zero padding at the corner


def test_deletion_over_voxels_known_answer() -> None:
    """A model whose logit is the mean of a voxel region: deleting that region first drops the score first."""

    class Region(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[:, 0, :2, :2, :2].mean(dim=(1, 2, 3))
            return torch.stack([s, torch.zeros_like(s)], dim=1)

    x = torch.ones(1, 3, 4, 4, 4)
    good = torch.zeros(1, 4, 4, 4)
    good[0, :2, :2, :2] = 1.0
    bad = 1.0 - good
    d_good = FF.deletion_auc(Region(), x, torch.tensor([0]), good, n_steps=8, score="logit")
    d_bad = FF.deletion_auc(Region(), x, torch.tensor([0]), bad, n_steps=8, score="logit")
    assert float(d_good) < float(d_bad)
    # deleting the 8 region voxels (first of 64, n_steps=8 -> one step) zeroes the logit
    _, curve = FF.deletion_auc(Region(), x, torch.tensor([0]), good, n_steps=8, score="logit", return_curve=True)
    torch.testing.assert_close(curve[0, :2], torch.tensor([1.0, 0.0]))
    ins = FF.insertion_auc(Region(), x, torch.tensor([0]), good, n_steps=8, score="logit", blur_klen=3)
    assert torch.isfinite(ins).all()


def test_road_refuses_3d_with_a_clear_error() -> None:
    x = torch.ones(1, 3, 4, 4, 4)
    with pytest.raises(DimensionError, match="ROAD is not defined in 3-D yet"):
        FF.road(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), x, torch.tensor([0]), torch.rand(1, 4, 4, 4))


def test_ssim_3d_of_identical_maps_is_one() -> None:
    a = torch.rand(2, 8, 9, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    assert float(ssim(a, 1 - a).max()) < 0.5


def test_registry_metrics_finite_on_volumes(setup) -> None:
    model, batch = setup
    names = ["gradcam", "cam", "random", "oracle"]

    def explain(m, images, targets, which, **kw):
        return methods.explain(
            m, "block3", images, targets, which, masks=batch.masks, params={"oracle": {"mask_dilation": 0}}, **kw
        )  # the oracle is the bare mask

    sal = explain(model, batch.images, batch.targets, names)
    meta = {n: methods.METHODS.entry(n).meta for n in names}  # what the runner passes
    ctx = MetricContext(
        model=model, batch=batch, saliency=sal, explain=explain, forward_batch_size=16, method_meta=meta
    )
    params = {
        "deletion_auc": {"n_steps": 4},
        "insertion_auc": {"n_steps": 4, "blur_klen": 3},
        "max_sensitivity": {"n_samples": 2},
        "avg_sensitivity": {"n_samples": 2},
        "local_lipschitz": {"n_samples": 2},
        "model_randomization": {"max_layers": 2},
        "model_randomization_ssim": {"max_layers": 2},
        "pointing_game": {"tolerance": 2},
    }
    wanted = [
        "deletion_auc",
        "insertion_auc",
        "average_drop",
        "increase_in_confidence",
        "pointing_game",
        "energy_pointing_game",
        "energy_pointing_game_mask",
        "mask_iou",
        "box_iou",
        "pxap",
        "max_sensitivity",
        "avg_sensitivity",
        "local_lipschitz",
        "gradient_noise_stability",
        "gradient_noise_mse",
        "model_randomization",
        "model_randomization_ssim",
        "temporal_energy",
    ]
    res = compute_metrics(ctx, wanted, params)
    assert set(res) == set(wanted)
    for metric, per in res.items():
        for m in ("gradcam", "oracle"):
            v = per[m]
            if metric_level(metric) == "dataset":  # per-image statistics [B, S], reduced over the dataset
                assert v.shape[0] == 2 and v.ndim == 2, (metric, m)
                value = dataset_value(metric, v.double().numpy(), list(batch.ids), params.get(metric))
                assert np.isfinite(value), (metric, m)
                continue
            assert v.shape == (2,), (metric, m)
            if metric in ("model_randomization",) and m == "oracle":
                continue  # Spearman of a map with itself: 1, or NaN for constant ones
            assert torch.isfinite(v).all(), (metric, m, v)
    # the oracle map is the mask: perfect localisation (PxAP over the two volumes too)
    pxap = dataset_value("pxap", res["pxap"]["oracle"].double().numpy(), list(batch.ids), None)
    assert pxap == pytest.approx(1.0)
    for metric in ("pointing_game", "energy_pointing_game_mask", "mask_iou", "temporal_energy"):
        torch.testing.assert_close(res[metric]["oracle"], torch.ones(2), msg=metric)


def test_temporal_energy_is_skipped_on_2d_images() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    b = Batch(
        images=torch.rand(1, 3, 8, 8), targets=torch.tensor([0]), ids=["x"], masks=torch.ones(1, 8, 8, dtype=torch.bool)
    )
    ctx = MetricContext(model=model.eval(), batch=b, saliency={"m": torch.rand(1, 8, 8)})
    assert compute_metrics(ctx, ["temporal_energy", "mask_iou"]).keys() == {"mask_iou"}


def test_pointing_game_2d_unchanged() -> None:
    """The 2-D path is the old one (first maximum, disk of ``tolerance`` pixels)."""
    sal = torch.zeros(1, 10, 10)
    sal[0, 2, 2] = 1
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[0, 2, 5] = True
    assert FL.pointing_game(sal, mask, 3)[0] == 0 and FL.pointing_game(sal, mask, 3.5)[0] == 1
    assert np.isclose(float(FL.energy_pointing_game(sal, mask)[0]), 0.0)
