"""Localization metrics: Quantus / wsolevaluation / cv2 / sklearn parity, known answers, invariants."""

import cv2  # test-only (opencv-python, a pytorch-grad-cam dependency)
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import average_precision_score
from torchvision.ops import masks_to_boxes

import benchmark.metrics as M
from benchmark.metrics.functional import localization as L
from benchmark.types import Batch

np.trapz = getattr(np, "trapz", np.trapezoid)  # Quantus 0.6 on NumPy >= 2.4
import quantus  # noqa: E402


def rect_mask(b, h, w, rng):
    m = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        y1, x1 = rng.integers(y0 + 2, h), rng.integers(x0 + 2, w)
        m[i, y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def quantized_maps(b, h, w, rng, levels=5):
    return torch.from_numpy(rng.integers(0, levels, (b, h, w)).astype(np.float32) / (levels - 1))


# -- pointing game ------------------------------------------------------------------------------
def test_pointing_game_tolerance0_equals_quantus():
    rng = np.random.default_rng(0)
    sal = quantized_maps(12, 16, 16, rng, levels=60)  # a few ties at the max
    masks = torch.from_numpy(rng.random((12, 16, 16)) < 0.3)
    masks[3] = False  # empty mask
    ours = L.pointing_game(sal, masks, tolerance=0).numpy()
    x = rng.random((12, 1, 16, 16)).astype(np.float32)
    ref = quantus.PointingGame(disable_warnings=True)(
        model=None,
        x_batch=x,
        y_batch=np.zeros(12, int),
        a_batch=sal[:, None].numpy(),
        s_batch=masks[:, None].numpy().astype(np.float32),
    )
    ref = np.asarray(ref, dtype=np.float32)
    keep = np.arange(12) != 3
    np.testing.assert_array_equal(ours[keep], ref[keep])
    assert np.nanmin(ours) == 0 and np.nanmax(ours) == 1
    # Quantus documents NaN for an empty mask, but 0.6.0 writes NaN into a bool array (-> True); ours is NaN
    assert np.isnan(ours[3]) and ref[3] == 1


def test_pointing_game_torchray_open_disk_and_first_max():
    sal = torch.zeros(3, 40, 40)
    sal[:, 5, 5] = 1.0
    sal[:, 30, 30] = 1.0  # tie later in raster order: never the point
    mask = torch.zeros(3, 40, 40, dtype=torch.bool)
    mask[0, 5, 19] = True  # distance 14 < 15 -> hit
    mask[1, 5, 20] = True  # distance 15, open disk -> miss
    mask[2, 30, 31] = True  # next to the second maximum only -> miss
    np.testing.assert_array_equal(L.pointing_game(sal, mask).numpy(), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(L.pointing_game(sal, mask, tolerance=0).numpy(), [0.0, 0.0, 0.0])
    # all-zero map: the first max is (0,0) for TorchRay; every pixel is a max for Quantus (documented)
    zero = torch.zeros(3, 40, 40)
    np.testing.assert_array_equal(L.pointing_game(zero, mask).numpy(), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(L.pointing_game(zero, mask, tolerance=0).numpy(), [1.0, 1.0, 1.0])


def test_pointing_game_class_mean():
    hits = torch.tensor([1.0, 0.0, 1.0, 1.0, float("nan")])
    classes = torch.tensor([0, 0, 0, 1, 2])
    assert L.pointing_game_class_mean(hits, classes) == pytest.approx((2 / 3 + 1) / 2)


# -- known answers: map == mask, inverse map ----------------------------------------------------
def test_map_equal_to_mask_and_its_inverse():
    rng = np.random.default_rng(1)
    masks = rect_mask(6, 24, 28, rng)
    boxes = [b[None] for b in masks_to_boxes(masks)]
    sal = masks.float()
    inv = 1.0 - sal
    assert torch.all(L.pointing_game(sal, masks) == 1) and torch.all(L.pointing_game(sal, masks, 0) == 1)
    assert torch.all(L.pointing_game(inv, masks, tolerance=1) == 0)
    assert torch.all(L.pointing_game(inv, masks, tolerance=0) == 0)
    assert torch.all(L.mask_iou(sal, masks) == 1) and torch.all(L.mask_iou(inv, masks) == 0)
    torch.testing.assert_close(L.box_iou(sal, boxes), torch.ones(6))
    torch.testing.assert_close(L.energy_pointing_game(sal, masks), torch.ones(6))
    torch.testing.assert_close(L.energy_pointing_game(inv, masks), torch.zeros(6))
    torch.testing.assert_close(L.pxap(sal, masks), torch.ones(6, dtype=torch.float32))
    # the inverse of a rectangle is one component spanning the image (when the rectangle leaves a frame)
    inner = ~(masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1))
    area = masks.flatten(1).sum(1).float() / (24 * 28)
    got = L.box_iou(inv, boxes)
    torch.testing.assert_close(got[inner], area[inner])


def test_all_zero_map_documented_values():
    rng = np.random.default_rng(2)
    masks = rect_mask(4, 20, 20, rng)
    boxes = [b[None] for b in masks_to_boxes(masks)]
    zero = torch.zeros(4, 20, 20)
    assert torch.all(L.mask_iou(zero, masks) == 0)
    assert torch.all(L.box_iou(zero, boxes) == 0)
    assert torch.isnan(L.energy_pointing_game(zero, masks)).all()
    frac = masks.flatten(1).float().mean(1)
    torch.testing.assert_close(L.pxap(zero, masks), frac)  # one PR point: precision = prevalence
    assert torch.isnan(L.mask_iou(zero, torch.zeros_like(masks))).all()  # 0/0
    assert torch.isnan(L.box_iou(zero, [torch.zeros(0, 4)] * 4)).all()  # no GT box


# -- Quantus AttributionLocalisation ------------------------------------------------------------
def test_energy_pointing_game_equals_quantus_attribution_localisation():
    rng = np.random.default_rng(3)
    sal = torch.from_numpy(rng.random((8, 16, 16)).astype(np.float32))
    masks = rect_mask(8, 16, 16, rng)
    ours = L.energy_pointing_game(sal, masks).numpy()
    ref = quantus.AttributionLocalisation(disable_warnings=True)(
        model=None,
        x_batch=rng.random((8, 1, 16, 16)).astype(np.float32),
        y_batch=np.zeros(8, int),
        a_batch=sal[:, None].numpy(),
        s_batch=masks[:, None].numpy().astype(np.float32),
    )
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-5)


# -- connected components vs cv2 contours ---------------------------------------------------------
def test_component_boxes_match_cv2_contours():
    rng = np.random.default_rng(4)
    n_holes = 0
    for _ in range(60):
        x = ndimage.gaussian_filter(rng.random((30, 36)), 1.5)
        binary = x > np.quantile(x, rng.uniform(0.2, 0.9))
        for mode, holes in ((cv2.RETR_TREE, True), (cv2.RETR_EXTERNAL, False)):
            cs = cv2.findContours(binary.astype(np.uint8) * 255, mode, cv2.CHAIN_APPROX_SIMPLE)[0]
            ref = sorted((x, y, x + w - 1, y + h - 1) for x, y, w, h in map(cv2.boundingRect, cs))
            ours = sorted(map(tuple, L.component_boxes(binary, holes=holes).tolist()))
            assert ours == ref
        n_holes += len(L.component_boxes(binary, True)) - len(L.component_boxes(binary, False))
    assert n_holes > 0  # the hole branch was exercised


def wsol_best_ious(scoremap, gt, taus):
    """wsolevaluation BoxEvaluator (multi-contour), written with cv2 as in the reference."""
    sm = (scoremap * 255).astype(np.uint8)
    h, w = sm.shape
    out = []
    for t in taus:
        _, th = cv2.threshold(sm, int(t * np.max(sm)), 255, cv2.THRESH_BINARY)
        cs = cv2.findContours(th, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        boxes = (
            [[0, 0, 0, 0]]
            if len(cs) == 0
            else [[x, y, min(x + bw, w - 1), min(y + bh, h - 1)] for x, y, bw, bh in map(cv2.boundingRect, cs)]
        )
        out.append(float(L.box_iou_matrix(torch.tensor(boxes), gt).max()))
    return np.array(out)


def test_box_best_ious_match_wsolevaluation_with_cv2():
    rng = np.random.default_rng(5)
    sal = torch.from_numpy(ndimage.gaussian_filter(rng.random((5, 32, 32)), (0, 2, 2)).astype(np.float32))
    boxes = [torch.tensor([[4.0, 6.0, 20.0, 25.0], [18.0, 2.0, 30.0, 12.0]])] * 5
    rows = L.box_best_ious(sal, boxes, cam_curve_interval=0.05)
    norm = L.wsol_normalize(sal).numpy()
    for i in range(5):
        np.testing.assert_allclose(rows[i].numpy(), wsol_best_ious(norm[i], boxes[i], L.cam_thresholds(0.05)))
    total, per = L.max_box_acc_v2(rows)
    expect = {d: max((rows >= d / 100).double().mean(0)).item() for d in (30, 50, 70)}
    assert per == pytest.approx(expect) and total == pytest.approx(np.mean(list(expect.values())))
    assert L.max_box_acc_per_image(rows).mean() >= total - 1e-6  # per-image best threshold is optimistic


def test_pxap_equals_sklearn_average_precision_on_grid_values():
    rng = np.random.default_rng(6)
    grid = np.append(L.cam_thresholds(0.01), 1.0)
    vals = grid[rng.integers(0, len(grid), (3, 20, 20))]
    vals[:, 0, 0], vals[:, 0, 1] = 0.0, 1.0  # min-max normalisation is then the identity
    masks = torch.from_numpy(rng.random((3, 20, 20)) < vals * 0.8)
    sal = torch.from_numpy(vals)
    per = L.pxap(sal, masks).numpy()
    for i in range(3):
        ref = average_precision_score(masks[i].flatten().numpy(), vals[i].flatten())
        assert per[i] == pytest.approx(ref, rel=1e-9)
    pooled = L.pxap_from_histograms(L.pxap_histograms(sal, masks).sum(0))
    assert float(pooled) == pytest.approx(average_precision_score(masks.flatten().numpy(), vals.flatten()))


# -- invariants ---------------------------------------------------------------------------------
maps_st = st.integers(0, 2**31 - 1)


@settings(max_examples=8, deadline=None)
@given(seed=maps_st, scale=st.sampled_from([0.25, 2.0, 8.0]))
def test_invariances_and_batch_equals_per_image(seed, scale):
    rng = np.random.default_rng(seed)
    sal = quantized_maps(4, 12, 14, rng, levels=6)
    masks = rect_mask(4, 12, 14, rng)
    boxes = [b[None] for b in masks_to_boxes(masks)]
    mono = sal**3 + 0.5 * sal  # strictly increasing: same maxima, same order
    for tol in (0, 3, 15):
        torch.testing.assert_close(L.pointing_game(mono, masks, tol), L.pointing_game(sal, masks, tol))
    torch.testing.assert_close(L.energy_pointing_game(sal * scale, masks), L.energy_pointing_game(sal, masks))
    torch.testing.assert_close(L.box_iou(sal * scale, boxes), L.box_iou(sal, boxes))
    torch.testing.assert_close(L.box_best_ious(sal * scale, boxes, 0.1), L.box_best_ious(sal, boxes, 0.1))
    torch.testing.assert_close(L.pxap(sal * scale, masks), L.pxap(sal, masks), equal_nan=True)
    fns = [
        lambda s, m, b: L.pointing_game(s, m),
        lambda s, m, b: L.energy_pointing_game(s, m),
        lambda s, m, b: L.mask_iou(s, m),
        lambda s, m, b: L.box_iou(s, b),
        lambda s, m, b: L.pxap(s, m),
        lambda s, m, b: L.max_box_acc_per_image(L.box_best_ious(s, b, 0.1)),
    ]
    for fn in fns:
        whole = fn(sal, masks, boxes)
        single = torch.cat([fn(sal[i : i + 1], masks[i : i + 1], boxes[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(whole, single, equal_nan=True)


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        L.pointing_game(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="Resize the ground truth"):
        L.mask_iou(torch.zeros(2, 8, 8), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one \\[K,4\\] tensor per image"):
        L.box_iou(torch.zeros(2, 8, 8), [torch.zeros(1, 4)])


# -- registry ----------------------------------------------------------------------------------
def test_registry_entries_score_every_method():
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)  # boxes of >= 8 px: wsol's 1-px-wider box end keeps IoU >= 0.7
    for i, (y0, x0, y1, x1) in enumerate([(1, 2, 10, 12), (5, 5, 15, 14), (0, 0, 9, 9)]):
        masks[i, y0:y1, x0:x1] = True
    edges = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # the datasets' pixel-edge boxes
    batch = Batch(
        images=torch.zeros(3, 3, 16, 16),
        targets=torch.zeros(3, dtype=torch.long),
        ids=["a", "b", "c"],
        masks=masks,
        boxes=[b[None] for b in edges],
    )
    sal = {"oracle": masks.float(), "center": torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))}
    ctx = M.MetricContext(model=torch.nn.Identity(), batch=batch, saliency=sal)
    names = [
        "pointing_game",
        "energy_pointing_game",
        "energy_pointing_game_mask",
        "box_iou",
        "max_box_acc",
        "mask_iou",
        "pxap",
    ]
    res = M.compute_metrics(ctx, names)
    assert set(res) == set(names)
    dataset_level = {"max_box_acc": 100, "pxap": 2 * 102}  # per-image statistics [B, S]
    for name in names:
        assert M.METRICS.entry(name).family == "localization" and M.METRICS.entry(name).higher_is_better
        assert set(res[name]) == {"oracle", "center"}
        if name in dataset_level:
            assert M.METRICS.entry(name).meta["level"] == "dataset"
            assert res[name]["center"].shape == (3, dataset_level[name])
            value = M.dataset_value(name, res[name]["oracle"].numpy(), batch.ids, {})
            assert value == pytest.approx(1.0)
            continue
        assert res[name]["oracle"].shape == (3,)
        torch.testing.assert_close(res[name]["oracle"], torch.ones(3))
    plain = Batch(batch.images, batch.targets, batch.ids)
    no_masks = M.MetricContext(model=torch.nn.Identity(), batch=plain, saliency=sal)
    assert M.compute_metrics(no_masks, names) == {}
