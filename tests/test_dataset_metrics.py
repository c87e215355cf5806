"""Dataset-level metrics: the register_metric(level="dataset") contract, their storage in the parts, and
the leaderboard's MaxBoxAccV2 / PxAP against an independent port of wsolevaluation's evaluation
(Choe et al. CVPR 2020, clovaai/wsolevaluation ``BoxEvaluator`` / ``MaskEvaluator``) on the same maps."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import cv2  # test-only (opencv-python, a pytorch-grad-cam dependency): the reference's contour tracing
import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import methods as Mth
from benchmark.data.transforms import make_batches
from benchmark.metrics import METRICS, MetricContext, compute_metrics, dataset_value, register_metric
from benchmark.report.build import write_report
from benchmark.report.tables import _seed_for, bootstrap_stat, ranked_leaderboard
from benchmark.runner import parse_suite, run_suite
from benchmark.runner.resources import get_dataset, get_model
from benchmark.store import Store

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = """
name = "dataset-level"
seed = 2
device = "cpu"
batch_size = 2
shard_size = 4
gallery = 0
bootstrap = 50
plugins = ["{plugin}"]
methods = ["gradcam", "eigencam", "layercam", "center"]
metrics = ["max_box_acc", "pxap", "fake_inside"]

[metric_params.max_box_acc]
cam_curve_interval = 0.05
[metric_params.pxap]
cam_curve_interval = 0.05

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 10 }}
"""


@pytest.fixture(scope="module")
def suite():
    return parse_suite(SUITE.format(plugin=Path(runner_fakes.__file__).resolve()), default_name="dataset-level")


@pytest.fixture(scope="module")
def run(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("dl")
    torch.set_num_threads(1)
    res = run_suite(suite, out, quiet=True, report=partial(write_report, plots=False))
    return res, out


# -- an independent port of wsolevaluation's evaluation (numpy + cv2, as the reference) ----------------
def wsol_normalize(m: np.ndarray) -> np.ndarray:
    m = m.astype(np.float32)
    if not np.isfinite(m).all():
        return np.zeros_like(m)
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def wsol_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """calculate_multiple_iou: inclusive pixel boxes, +1 areas."""
    a, b = boxes_a[:, None, :].astype(float), boxes_b[None, :, :].astype(float)
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)
    return inter / (area(a) + area(b) - inter)


class WsolBoxEvaluator:
    """BoxEvaluator with multi-contour evaluation (MaxBoxAccV2)."""

    def __init__(self, cam_curve_interval: float, iou_thresholds=(30, 50, 70)):
        self.taus = list(np.arange(0, 1, cam_curve_interval))
        self.iou_thresholds = iou_thresholds
        self.num_correct = {t: np.zeros(len(self.taus)) for t in iou_thresholds}
        self.cnt = 0

    def accumulate(self, scoremap: np.ndarray, gt_boxes: np.ndarray) -> None:
        img = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
        h, w = scoremap.shape
        per_tau = []
        for tau in self.taus:
            _, thr = cv2.threshold(img, int(tau * np.max(img)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if len(contours) == 0:
                boxes = np.array([[0, 0, 0, 0]])
            else:
                boxes = []
                for c in contours:
                    x, y, bw, bh = cv2.boundingRect(c)
                    boxes.append([x, y, min(x + bw, w - 1), min(y + bh, h - 1)])
                boxes = np.array(boxes)
            per_tau.append(wsol_iou(boxes, gt_boxes).max())
        per_tau = np.asarray(per_tau)
        for t in self.iou_thresholds:
            self.num_correct[t][np.where(per_tau >= t / 100)[0]] += 1
        self.cnt += 1

    def compute(self) -> float:
        return float(np.mean([(self.num_correct[t] / self.cnt).max() for t in self.iou_thresholds]))


class WsolMaskEvaluator:
    """MaskEvaluator: pixel histograms over the dataset, then the area under the PR curve."""

    def __init__(self, cam_curve_interval: float):
        self.edges = np.append(np.arange(0, 1, cam_curve_interval), [1.0, 2.0, 3.0])
        self.pos = np.zeros(len(self.edges) - 1)
        self.neg = np.zeros(len(self.edges) - 1)

    def accumulate(self, scoremap: np.ndarray, gt_mask: np.ndarray) -> None:
        self.pos += np.histogram(scoremap[gt_mask == 1], bins=self.edges)[0]
        self.neg += np.histogram(scoremap[gt_mask == 0], bins=self.edges)[0]

    def compute(self) -> float:
        tp = self.pos[::-1].cumsum()
        fn = self.pos.sum() - tp
        fp = self.neg[::-1].cumsum()
        nz = (tp + fp) != 0
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        return float((precision[1:] * np.diff(recall))[nz[1:]].sum())


def test_leaderboard_max_box_acc_and_pxap_equal_the_wsolevaluation_port(suite, run):
    res, out = run
    board = pd.read_csv(out / "leaderboard.csv")
    exp = suite.experiments[0]
    handle, _ = get_model(exp, torch.device("cpu"), False)
    dataset = get_dataset(exp, suite.seed)
    methods = ["gradcam", "eigencam", "layercam", "center"]
    boxes_ev = {m: WsolBoxEvaluator(0.05) for m in methods}
    masks_ev = {m: WsolMaskEvaluator(0.05) for m in methods}
    for batch in make_batches(dataset, handle, 2, indices=list(range(10))):
        maps = Mth.explain(handle.model, handle.target_layer, batch.images, batch.targets, methods)
        for m in methods:
            for i in range(len(batch.ids)):
                sm = wsol_normalize(maps[m][i].numpy())
                # the datasets' pixel-edge box [x0, x1) read as the reference's inclusive pixel box
                gt = batch.boxes[i].numpy().astype(int) - np.array([0, 0, 1, 1])
                boxes_ev[m].accumulate(sm, gt)
                masks_ev[m].accumulate(sm, batch.masks[i].numpy().astype(np.uint8))
    got = board.set_index(["method", "metric"])
    # cambench compares maps and thresholds at RANK_RESOLUTION = 2**-16 (docs/reproducibility.md), which moves a
    # pixel to the neighbouring PxAP bin only when it lies within 2**-17 of a bin edge: measured 4.1e-6 (LayerCAM)
    for m in methods:
        assert got.loc[(m, "max_box_acc"), "mean"] == pytest.approx(boxes_ev[m].compute(), abs=1e-5)
        assert got.loc[(m, "pxap"), "mean"] == pytest.approx(masks_ev[m].compute(), abs=1e-5)
        assert got.loc[(m, "max_box_acc"), "n"] == 10 and got.loc[(m, "pxap"), "n"] == 10
        lo, hi = got.loc[(m, "pxap"), ["ci_low", "ci_high"]]
        assert lo <= hi
    assert got.loc[("center", "max_box_acc"), "baseline"] and np.isnan(got.loc[("center", "max_box_acc"), "rank"])


def test_statistics_are_stored_per_image_and_survive_resume(suite, run, tmp_path):
    res, out = run
    store = Store(out, res.plan.hash)
    st = store.load_stats()
    assert set(st["metric"]) == {"max_box_acc", "pxap"}
    assert len(st) == 2 * 4 * 10 and st.groupby(["method", "metric"]).size().eq(10).all()
    assert {len(v) for v in st[st["metric"] == "pxap"]["stats"]} == {2 * 22}
    assert {len(v) for v in st[st["metric"] == "max_box_acc"]["stats"]} == {20}
    scores = store.load_scores()
    assert set(scores["metric"]) == {"fake_inside"}  # dataset-level metrics have no per-image score rows
    # resume: delete one unit's part, rerun: the statistics come back identical
    part = sorted(store.parts.iterdir())[0]
    part.unlink()
    again = run_suite(suite, out, quiet=True, report=partial(write_report, plots=False))
    assert len(again.ran) == 1
    st2 = Store(out, res.plan.hash).load_stats()
    pd.testing.assert_frame_equal(st2.drop(columns="stats"), st.drop(columns="stats"))
    assert all(np.array_equal(a, b) for a, b in zip(st2["stats"], st["stats"], strict=True))


def test_loky_backend_stores_the_same_statistics(suite, run, tmp_path):
    res, out = run
    other = run_suite(suite, tmp_path, quiet=True, report=False, backend="loky", workers=2)
    a, b = Store(out, res.plan.hash).load_stats(), Store(tmp_path, other.plan.hash).load_stats()
    pd.testing.assert_frame_equal(a.drop(columns="stats"), b.drop(columns="stats"))
    assert all(np.array_equal(x, y) for x, y in zip(a["stats"], b["stats"], strict=True))


# -- the contract --------------------------------------------------------------------------------
def _sum_ratio(stats, ids, scale: float = 1.0) -> float:
    """A ratio of sums (not a mean of ratios): hits / trials over the dataset."""
    return scale * float(stats[:, 0].sum() / stats[:, 1].sum())


def _ratio_metric(ctx: MetricContext, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        m: torch.stack([s.flatten(1).sum(1), torch.full((s.shape[0],), float(s[0].numel()))], 1)
        for m, s in ctx.saliency.items()
    }


@pytest.fixture(autouse=True)
def _test_ratio_metric():
    """A dataset-level test metric, registered only during each test (never seen by other test files)."""
    register_metric(
        "test_ratio", family="localization", higher_is_better=True, level="dataset", compute=_sum_ratio, override=True
    )(_ratio_metric)
    yield
    METRICS.remove("test_ratio")


def test_register_metric_checks_the_level_and_compute():
    with pytest.raises(ValueError, match="needs `compute="):
        register_metric("x_bad", family="localization", higher_is_better=True, level="dataset")
    with pytest.raises(ValueError, match="Unknown metric level"):
        register_metric("x_bad", family="localization", higher_is_better=True, level="batch")
    assert METRICS.entry("test_ratio").meta["level"] == "dataset"
    assert METRICS.entry("pointing_game").meta["level"] == "image"


def test_dataset_value_drops_undefined_rows_and_passes_params():
    stats = np.array([[1.0, 4.0], [3.0, 4.0], [np.nan, 4.0]])
    assert dataset_value("test_ratio", stats, ["a", "b", "c"]) == pytest.approx(0.5)
    assert dataset_value("test_ratio", stats, ["a", "b", "c"], {"scale": 2.0}) == pytest.approx(1.0)
    assert np.isnan(dataset_value("test_ratio", stats[2:], ["c"]))
    with pytest.raises(ValueError, match="per-image metric"):
        dataset_value("pointing_game", stats, ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 rows but 2 ids"):
        dataset_value("test_ratio", stats, ["a", "b"])
    ctx = MetricContext(model=torch.nn.Identity(), batch=None, saliency={"m": torch.ones(2, 2, 2)})  # type: ignore
    assert compute_metrics(ctx, ["test_ratio"])["test_ratio"]["m"].shape == (2, 2)


def test_leaderboard_of_a_dataset_level_metric_is_compute_of_all_rows_with_a_bootstrap_ci():
    rng = np.random.default_rng(0)
    rows = []
    for m, p in (("a", 0.8), ("b", 0.3), ("random", 0.5)):
        for i in range(30):
            trials = float(rng.integers(1, 20))
            st_row = np.array([rng.binomial(int(trials), p), trials])
            rows.append(("x", "d", m, "test_ratio", f"i{i:02d}", st_row, False))
    st = pd.DataFrame(rows, columns=["model", "dataset", "method", "metric", "image_id", "stats", "degenerate"])
    empty = pd.DataFrame(
        columns=["model", "dataset", "method", "metric", "image_id", "value", "status", "message", "degenerate"]
    ).astype({"value": float})
    r = ranked_leaderboard(empty, {"test_ratio": True}, n_boot=200, stats=st, baselines=["random"])
    b = r.board.set_index(["method", "metric"])
    for m in ("a", "b"):
        arr = np.stack(st[st["method"] == m]["stats"])
        assert b.loc[(m, "test_ratio"), "mean"] == pytest.approx(arr[:, 0].sum() / arr[:, 1].sum())
        assert b.loc[(m, "test_ratio"), "n"] == 30
        seed = _seed_for(0, ("x", "d"))  # common random numbers: one seed per experiment
        lo, hi = bootstrap_stat(_sum_ratio, arr, list(range(30)), n_boot=200, seed=seed)
        assert (b.loc[(m, "test_ratio"), "ci_low"], b.loc[(m, "test_ratio"), "ci_high"]) == pytest.approx((lo, hi))
    assert (b.loc[("a", "test_ratio"), "rank"], b.loc[("b", "test_ratio"), "rank"]) == (1, 2)
    assert np.isnan(b.loc[("random", "test_ratio"), "rank"]) and b.loc[("random", "test_ratio"), "baseline"]
    assert ("random", "mean_rank") not in b.index
    # a (0.8) and b (0.3) are far apart on 30 images: the paired bootstrap separates them
    pw = r.pairwise[r.pairwise["metric"] == "test_ratio"]
    assert len(pw) == 1 and bool(pw["significant"].iloc[0]) and pw["test"].iloc[0] == "paired_bootstrap"
    assert b.loc[("a", "test_ratio"), "group"] == "a" and b.loc[("b", "test_ratio"), "group"] == "b"


def test_weighted_resampling_equals_recomputing_on_resampled_rows():
    """compute_weighted (one call for every bootstrap resample) = compute on the resampled rows."""
    from benchmark.report.tables import _dataset_compute

    rng = np.random.default_rng(4)
    box_rows = rng.random((13, 20))
    hist_rows = rng.integers(0, 30, (13, 44)).astype(float)
    for metric, rows, params in (
        ("max_box_acc", box_rows, {"cam_curve_interval": 0.05}),
        ("pxap", hist_rows, {"cam_curve_interval": 0.05}),
    ):
        fn = _dataset_compute(metric, params)
        assert hasattr(fn, "weighted")
        ids = [f"i{i}" for i in range(13)]
        plain = lambda a, i, fn=fn: fn(a, i)
        assert bootstrap_stat(fn, rows, ids, n_boot=300, seed=7) == pytest.approx(
            bootstrap_stat(plain, rows, ids, n_boot=300, seed=7), abs=1e-12
        )
        assert fn(rows, ids) == pytest.approx(dataset_value(metric, rows, ids, params), abs=1e-12)


def test_store_stats_parts_are_atomic_stale_and_fresh_aware(suite, run, tmp_path):
    import shutil

    res, out = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    store = Store(copy, res.plan.hash)
    n = len(list(store.stats.iterdir()))
    assert n == len(res.plan.units)  # one statistics file per unit, next to its part
    stale = store.stats / "00-old__deadbeef.parquet"
    stale.write_bytes(b"x")
    (store.stats / ".x.parquet.tmp").write_bytes(b"x")
    store.prepare()
    # other settings' statistics are kept on disk (like their parts) but never read; temp files go
    assert stale.exists() and len(list(store.stats.iterdir())) == n + 1
    assert len(store.load_stats()) == len(Store(out, res.plan.hash).load_stats())
    stale.unlink()
    # a statistics file whose part is missing is an unfinished unit: not loaded
    next(iter(sorted(store.parts.iterdir()))).unlink()
    assert len(store.load_stats()) == len(Store(out, res.plan.hash).load_stats()) - 2 * 4 * 4
    store.prepare(fresh=True)
    assert list(store.stats.iterdir()) == [] and len(store.load_stats()) == 0
