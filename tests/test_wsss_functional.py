"""Seed labels, segmentation confusion and mIoU against independent numpy / scikit-learn implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix

from benchmark.metrics.functional import (
    miou_from_confusion,
    seed_labels,
    seed_statistics,
    segmentation_confusion,
    statistics_from_confusion,
)


def _seed_loops(cams: np.ndarray, present: np.ndarray, threshold: float) -> np.ndarray:
    """Pixel-loop reference of the WSSS seed rule."""
    b, k, h, w = cams.shape
    out = np.zeros((b, h, w), dtype=np.int64)
    for i in range(b):
        norm = {}
        for c in range(k):
            if present[i, c]:
                m = cams[i, c].astype(np.float64)
                lo, hi = m.min(), m.max()
                norm[c] = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        for y in range(h):
            for x in range(w):
                best, arg = -np.inf, -1
                for c in sorted(norm):
                    if norm[c][y, x] > best:
                        best, arg = norm[c][y, x], c
                out[i, y, x] = arg + 1 if arg >= 0 and best >= threshold else 0
    return out


def _miou_loops(conf: np.ndarray) -> tuple[float, np.ndarray]:
    ious = []
    for c in range(conf.shape[0]):
        tp = conf[c, c]
        fn = conf[c, :].sum() - tp
        fp = conf[:, c].sum() - tp
        ious.append(np.nan if tp + fn + fp == 0 else tp / (tp + fn + fp))
    ious = np.array(ious)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan"), ious


def test_seed_labels_known_answer():
    cams = torch.zeros(1, 3, 1, 4)
    cams[0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 4.0])  # normalised 0, .25, .5, 1
    cams[0, 1, 0] = torch.tensor([4.0, 3.0, 0.0, 0.0])  # normalised 1, .75, 0, 0
    cams[0, 2, 0] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # absent: never predicted
    present = torch.tensor([[True, True, False]])
    assert seed_labels(cams, present, 0.6).tolist() == [[[2, 2, 0, 1]]]
    assert seed_labels(cams, present, 0.0).tolist() == [[[2, 2, 1, 1]]]
    assert seed_labels(cams, torch.zeros(1, 3, dtype=torch.bool), 0.0).tolist() == [[[0, 0, 0, 0]]]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_seed_labels_matches_loops(seed, threshold):
    rng = np.random.default_rng(seed)
    cams = rng.integers(0, 5, size=(2, 4, 3, 5)).astype(np.float32)  # ties and constant maps happen
    present = rng.random((2, 4)) < 0.6
    got = seed_labels(torch.from_numpy(cams), torch.from_numpy(present), threshold).numpy()
    np.testing.assert_array_equal(got, _seed_loops(cams, present, threshold))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_confusion_and_miou_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    c = 5
    gt = rng.integers(0, c, size=(3, 7, 6))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, c - 1, size=gt.shape)  # class 4 never predicted
    keep = gt != 255
    ref = confusion_matrix(gt[keep], pred[keep], labels=list(range(c)))
    conf = segmentation_confusion(torch.from_numpy(pred), torch.from_numpy(gt), c)
    np.testing.assert_array_equal(conf.numpy(), ref)
    miou, iou = miou_from_confusion(conf)
    ref_miou, ref_iou = _miou_loops(ref)
    np.testing.assert_allclose(iou.numpy(), ref_iou, rtol=1e-12)
    assert miou.item() == pytest.approx(ref_miou, rel=1e-12)


def test_miou_leaves_out_absent_classes():
    conf = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 absent from gt and prediction
    miou, iou = miou_from_confusion(conf)
    assert iou[:2].tolist() == pytest.approx([3 / 4, 2 / 3])
    assert torch.isnan(iou[2])
    assert miou.item() == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert torch.isnan(miou_from_confusion(torch.zeros(2, 2))[0])


def test_confusion_rejects_bad_prediction():
    with pytest.raises(ValueError, match="outside"):
        segmentation_confusion(torch.tensor([3]), torch.tensor([0]), 3)


def test_seed_statistics_add_up_to_the_dataset_confusion():
    rng = np.random.default_rng(0)
    cams = torch.from_numpy(rng.random((4, 3, 6, 6)).astype(np.float32))
    present = torch.from_numpy(rng.random((4, 3)) < 0.7)
    gt = torch.from_numpy(rng.integers(0, 4, size=(4, 6, 6)))
    gt[0, 0] = 255
    ts = [0.0, 0.3, 0.7, 1.01]
    stats = seed_statistics(cams, present, gt, ts, 4)
    assert stats.shape == (4, 4, 3, 4)
    for t, thr in enumerate(ts):
        pred = seed_labels(cams, present, thr)
        conf = segmentation_confusion(pred, gt, 4)
        np.testing.assert_array_equal(stats[:, t].sum(0).numpy(), statistics_from_confusion(conf).numpy())
