"""Multi-label targets (target = "labels"), the seed metrics, multi-scale + flip CAMs, and a tiny suite."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from benchmark import methods as M
from benchmark.data import create_dataset
from benchmark.data.transforms import check_class_count, image_key, make_batches, per_class
from benchmark.errors import DataError
from benchmark.metrics import METRICS, MetricContext, compute_metrics
from benchmark.metrics import seeds as S
from benchmark.metrics.functional import miou_from_confusion, seed_labels, segmentation_confusion
from benchmark.models import create_model
from benchmark.types import Batch


@pytest.fixture(scope="module")
def handle():
    torch.manual_seed(0)
    return create_model("shapes_multilabel_cnn", weights="random")


@pytest.fixture(scope="module")
def data():
    return create_dataset("shapes_multilabel", n=12, split="test")


@pytest.fixture(scope="module")
def batches(handle, data):
    return list(make_batches(per_class(data), handle, batch_size=5))


def test_labels_view_has_one_item_per_present_class_and_keeps_images_together(data, batches):
    ids = [i for b in batches for i in b.ids]
    want = [s.id for i in range(len(data)) for s in data.class_samples(i)]
    assert ids == want and len(ids) > len(data)  # several classes per image, in image order
    for b in batches:
        keys = [image_key(i) for i in b.ids]
        # an image's rows never straddle two batches
        assert all(k not in [image_key(j) for c in batches if c is not b for j in c.ids] for k in keys)
        for i, t, m in zip(b.ids, b.targets.tolist(), b.masks, strict=True):
            assert i.split("#")[1] == data.class_names[t] and bool(m.any())
    # per-class masks of one image are disjoint and match the scene exactly (at 64 px, no resize)
    sc = data.multi_scene(0)
    got = {s.target: s.mask for s in data.class_samples(0)}
    assert sorted(got) == sorted(sc.classes)
    for c, m in zip(sc.classes, sc.masks, strict=True):
        assert torch.equal(got[c], m)


def test_labels_view_needs_per_class_ground_truth():
    with pytest.raises(DataError, match="labels"):
        per_class(create_dataset("shapes", n=2))


def test_class_count_mismatch_is_a_clear_error(data):
    other = create_model("shapes_multilabel_cnn", weights="random")
    other.meta["num_classes"] = 20
    with pytest.raises(DataError, match="Class-count mismatch"):
        check_class_count(other, per_class(data))


def test_ignore_mask_is_resized_with_the_image():
    from benchmark.data.base import Sample
    from benchmark.data.transforms import resize_sample

    ign = torch.zeros(8, 8, dtype=torch.bool)
    ign[:, :4] = True
    s = resize_sample(Sample(image=torch.rand(3, 8, 8), target=0, id="a", mask=ign.clone(), ignore=ign), 16)
    assert s.ignore.shape == (16, 16) and torch.equal(s.ignore, s.mask) and int(s.ignore.sum()) == 128


def _ctx(handle, batch, saliency):
    return MetricContext(model=handle.model, batch=batch, saliency=saliency, seed=0)


def _reference_confusion(batch, saliency, threshold, k):
    """Independent per-image loop: group rows by image id, seed_labels, segmentation_confusion."""
    conf = torch.zeros(k + 1, k + 1, dtype=torch.long)
    keys = [image_key(i) for i in batch.ids]
    for key in dict.fromkeys(keys):
        rows = [j for j, x in enumerate(keys) if x == key]
        h, w = batch.masks.shape[-2:]
        cams, gt = torch.zeros(1, k, h, w), torch.zeros(h, w, dtype=torch.long)
        present = torch.zeros(1, k, dtype=torch.bool)
        for j in rows:
            c = int(batch.targets[j])
            cams[0, c], present[0, c] = saliency[j], True
            gt[batch.masks[j]] = c + 1
        if batch.ignore is not None:
            gt[batch.ignore[rows[0]]] = 255
        conf += segmentation_confusion(seed_labels(cams, present, threshold), gt, k + 1)
    return conf


def test_seed_statistics_equal_the_per_image_reference(handle, batches):
    torch.manual_seed(1)
    rows, ids, ref = [], [], {t: torch.zeros(7, 7, dtype=torch.long) for t in (0.0, 0.35, 0.5)}
    for b in batches:
        b = Batch(
            b.images, b.targets, b.ids, b.masks, b.boxes, b.labels, ignore=torch.rand(b.masks.shape) < 0.05
        )  # some void pixels, same for the rows of an image
        keys = [image_key(i) for i in b.ids]
        first = {k: keys.index(k) for k in keys}
        b.ignore[:] = b.ignore[[first[k] for k in keys]]
        sal = torch.rand(b.masks.shape)
        st = S.image_statistics(_ctx(handle, b, {"m": sal}), n_thresholds=21)["m"]
        assert st.shape == (len(b), 21 * 3 * 7)
        rows.append(st.numpy())
        ids += b.ids
        for t in ref:
            ref[t] += _reference_confusion(b, sal, t, 6)
    stats = np.concatenate(rows)
    curve = S.miou_curve(stats, 21)
    grid = S.thresholds(21)
    for t, conf in ref.items():
        j = int(np.argmin(np.abs(grid - t)))
        assert curve[j] == pytest.approx(float(miou_from_confusion(conf)[0]), abs=1e-12)
    assert S.compute_seed_miou_oracle(stats, ids, 21) == pytest.approx(np.nanmax(curve))


def test_seed_miou_is_one_for_the_ground_truth_and_zero_rows_elsewhere(handle, batches):
    stats, ids = [], []
    for b in batches:
        res = compute_metrics(_ctx(handle, b, {"oracle": b.masks.float()}), ["seed_miou", "seed_miou_oracle_threshold"])
        assert torch.equal(res["seed_miou"]["oracle"], res["seed_miou_oracle_threshold"]["oracle"])  # shared
        st = res["seed_miou"]["oracle"].numpy()
        keys = [image_key(i) for i in b.ids]
        later = [j for j, k in enumerate(keys) if keys.index(k) != j]
        assert (st[later] == 0).all()  # an image's statistics sit in its first row
        stats.append(st)
        ids += b.ids
    stats = np.concatenate(stats)
    held = S.held_out(ids, 0.5)
    assert held.any() and not held.all()
    assert S.compute_seed_miou(stats, ids, 21, 0.5) == pytest.approx(1.0)
    assert S.compute_seed_miou_oracle(stats, ids, 21) == pytest.approx(1.0)
    # threshold 0 (nothing is background) is worse than any threshold in (0, 1]
    assert S.miou_curve(stats, 21)[0] < 1.0
    assert 0.0 < S.chosen_threshold(stats, ids, 21, 0.5) <= 1.0


def test_held_out_split_is_by_image_and_deterministic():
    ids = [f"img{i}#c{j}" for i in range(200) for j in range(3)]
    h = S.held_out(ids, 0.3).reshape(200, 3)
    assert (h == h[:, :1]).all()  # all classes of an image on the same side
    assert 0.2 < h[:, 0].mean() < 0.4
    assert np.array_equal(S.held_out(ids[::-1], 0.3), h.reshape(-1)[::-1])
    with pytest.raises(ValueError, match="threshold_split"):
        S.held_out(ids, 1.0)


def test_seed_metrics_are_dataset_level_and_labelled():
    for name, optimistic in (("seed_miou", False), ("seed_miou_oracle_threshold", True)):
        meta = METRICS.entry(name).meta
        assert meta["level"] == "dataset" and callable(meta["compute"]) and meta["optimistic"] is optimistic
    assert "OPTIMISTIC" in METRICS.entry("seed_miou_oracle_threshold").meta["threshold"]


def test_seed_metrics_yield_nothing_without_multilabel_ids(handle):
    d = create_dataset("shapes_multilabel", n=3)
    b = next(iter(make_batches(d, handle, batch_size=3)))
    assert compute_metrics(_ctx(handle, b, {"m": torch.rand(b.masks.shape)}), ["seed_miou"])["seed_miou"] == {}


def test_seed_metric_reports_a_class_count_mismatch(handle, batches):
    b = batches[0]
    with pytest.raises(DataError, match="mismatch"):
        S.image_statistics(_ctx(handle, b, {"m": b.masks.float()}), num_classes=2)


def test_every_method_accepts_multilabel_batches(handle, batches):
    b = batches[0]
    maps = M.explain(handle.model, handle.target_layer, b.images, b.targets, ["gradcam", "cam", "layercam"])
    for m in maps.values():
        assert m.shape == b.masks.shape and torch.isfinite(m).all()
    # the row of class k explains logit k
    g = M.explain(handle.model, handle.target_layer, b.images[:1], b.targets[:1], ["gradcam"])["gradcam"]
    assert torch.allclose(g, maps["gradcam"][:1], atol=1e-5)


# -- multi-scale + flip ------------------------------------------------------------------------------


def _mirror_model():
    from benchmark.models.multilabel import MultiLabelCNN

    torch.manual_seed(3)
    return MultiLabelCNN(6).eval()


def test_ms_flip_is_flip_equivariant_for_any_model():
    model = _mirror_model()
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([1, 4])
    cfg = M.msflip.MultiScaleFlip(scales=(0.5, 1.0, 1.5))
    a = M.explain(model, "block4", x, t, ["gradcam", "cam"], ms_flip=cfg)
    b = M.explain(model, "block4", x.flip(-1), t, ["gradcam", "cam"], ms_flip=cfg)
    for n in a:
        assert torch.allclose(b[n], a[n].flip(-1), atol=1e-5), n
    plain = M.explain(model, "block4", x, t, ["gradcam"])["gradcam"]
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)  # the model itself is not symmetric


def test_ms_flip_known_answer_single_scale():
    from benchmark.methods.postprocess import minmax, upsample

    model = _mirror_model()
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([0, 2])
    got = M.explain(model, "block4", x, t, ["gradcam"], ms_flip=M.msflip.MultiScaleFlip(scales=(1.0,)), details=True)[
        "gradcam"
    ]
    raw = M.explain(model, "block4", x, t, ["gradcam"], details=True)["gradcam"].raw
    raw_f = M.explain(model, "block4", x.flip(-1), t, ["gradcam"], details=True)["gradcam"].raw
    want = minmax(upsample(raw.clamp_min(0), (32, 32)) + upsample(raw_f.clamp_min(0), (32, 32)).flip(-1))
    assert torch.allclose(got.maps, want, atol=1e-6)
    # 2x scale: the map of the 64 px input, downsampled to 32 px, enters the sum
    two = M.explain(
        model, "block4", x, t, ["gradcam"], ms_flip=M.msflip.MultiScaleFlip(scales=(2.0,), flip=False), details=True
    )["gradcam"]
    big = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    raw2 = M.explain(model, "block4", big, t, ["gradcam"], details=True)["gradcam"].raw
    assert torch.allclose(two.maps, minmax(upsample(raw2.clamp_min(0), (32, 32))), atol=1e-6)


def test_default_path_is_untouched_by_ms_flip():
    model = _mirror_model()
    x = torch.randn(2, 3, 32, 32)
    a = M.explain(model, "block4", x, 1, ["gradcam", "scorecam"], details=True)
    b = M.explain(model, "block4", x, 1, ["gradcam", "scorecam"], details=True, ms_flip=None)
    for n in a:
        assert torch.equal(a[n].maps, b[n].maps) and torch.equal(a[n].raw, b[n].raw)


# -- suite ------------------------------------------------------------------------------------------

SUITE = """
name = "wsss-tiny"
batch_size = 4
shard_size = 6
gallery = 2
bootstrap = 10
[[experiments]]
model = "shapes_multilabel_cnn"
weights = "random"
dataset = "shapes_multilabel"
target = "labels"
data = { n = 6 }
methods = ["gradcam", "cam"]
metrics = ["pointing_game", "energy_pointing_game_mask"]
"""


def test_suite_keys_and_hash():
    from benchmark.runner.suite import parse_suite

    s = parse_suite(SUITE)
    assert s.experiments[0].target == "labels" and s.experiments[0].ms_flip_config is None
    assert "ms_flip" not in s.normalized()["experiments"][0]  # hashes of existing suites unchanged
    s2 = parse_suite(SUITE.replace('target = "labels"', 'target = "labels"\nms_flip = true\nms_scales = [1.0, 2.0]'))
    assert s2.experiments[0].ms_flip_config.scales == (1.0, 2.0) and s2.hash() != s.hash()
    from benchmark.errors import SuiteError

    with pytest.raises(SuiteError, match="ms_scales"):
        parse_suite(SUITE.replace('target = "labels"', 'target = "labels"\nms_scales = [0]'))


@pytest.mark.parametrize("ms_flip", [False, True])
def test_tiny_multilabel_suite_scores_one_row_per_image_and_class(ms_flip):
    from benchmark.runner import plan_run, run_unit
    from benchmark.runner.suite import parse_suite

    text = SUITE.replace('target = "labels"', 'target = "labels"\nms_flip = true') if ms_flip else SUITE
    suite = parse_suite(text)
    plan = plan_run(suite)
    res = run_unit(suite, plan.units[0])
    s = res.scores
    d = per_class(create_dataset("shapes_multilabel", n=6))
    want = sorted(x.id for i in range(6) for x in d[i])
    for _, g in s.groupby(["method", "metric"]):
        assert sorted(g["image_id"]) == want
        assert (g["status"] == "ok").all(), g["message"].tolist()


# -- report ------------------------------------------------------------------------------------------


def test_seeds_table_and_curves_from_stored_statistics(handle, batches, tmp_path):
    import pandas as pd

    from benchmark.report.seeds import seed_curves, seeds_table, write_seed_report

    torch.manual_seed(0)
    rows = []
    for b in batches:
        sal = {"oracle": b.masks.float(), "noise": torch.rand(b.masks.shape)}
        res = compute_metrics(_ctx(handle, b, sal), ["seed_miou", "seed_miou_oracle_threshold"])
        for metric, per in res.items():
            for method, st in per.items():
                rows += [
                    ("m", "shapes_multilabel", method, metric, i, r) for i, r in zip(b.ids, st.numpy(), strict=True)
                ]
    stats = pd.DataFrame(rows, columns=["model", "dataset", "method", "metric", "image_id", "stats"])
    names = create_dataset("shapes_multilabel", n=1).class_names
    table = seeds_table(stats, names)
    assert set(table["variant"]) == {"held_out", "oracle"}
    for method in ("oracle", "noise"):
        sub = stats[(stats["method"] == method) & (stats["metric"] == "seed_miou")]
        arr, ids = np.stack(sub["stats"]), list(sub["image_id"])
        t = table[(table["method"] == method) & (table["class"] == "mean")].set_index("variant")["iou"]
        assert t["held_out"] == pytest.approx(S.compute_seed_miou(arr, ids, 21, 0.5))
        assert t["oracle"] == pytest.approx(S.compute_seed_miou_oracle(arr, ids, 21))
    per = table[(table["class"] != "mean")]
    ok = per.dropna(subset=["iou"])
    assert np.allclose(ok["iou"] + ok["fp_ratio"] + ok["fn_ratio"], 1.0)
    perfect = per[(per["method"] == "oracle") & per["iou"].notna()]
    assert np.allclose(perfect["precision"], 1.0) and np.allclose(perfect["recall"], 1.0)
    curves = seed_curves(stats)
    assert len(curves) == 2 * 21 and curves.groupby("method")["miou"].max()["oracle"] == pytest.approx(1.0)
    written = write_seed_report(stats, tmp_path, {("m", "shapes_multilabel"): names})
    assert written["seeds"].is_file() and written["plot"].stat().st_size > 1000


def test_wsss_voc_suite_needs_its_checkpoint_and_data(monkeypatch):
    from pathlib import Path

    from benchmark.errors import SuiteError
    from benchmark.runner import plan_run
    from benchmark.runner.suite import load_suite

    monkeypatch.delenv("WSSS_CHECKPOINT", raising=False)
    monkeypatch.delenv("VOC_ROOT", raising=False)
    s = load_suite(str(Path(__file__).resolve().parents[1] / "suites" / "wsss-voc.toml"))
    assert [e.target for e in s.experiments] == ["labels", "labels"]
    assert [e.ms_flip for e in s.experiments] == [False, True]
    with pytest.raises(SuiteError, match="WSSS_CHECKPOINT|VOC_ROOT"):
        plan_run(s)


def test_runner_refuses_a_class_count_mismatch(tmp_path):
    from test_data_loaders import _voc_root

    from benchmark.runner import plan_run, run_unit
    from benchmark.runner.suite import parse_suite

    root = _voc_root(tmp_path)
    text = SUITE.replace('dataset = "shapes_multilabel"', 'dataset = "voc"').replace(
        "data = { n = 6 }", f'data = {{ root = "{root}" }}'
    )
    suite = parse_suite(text)
    with pytest.raises(DataError, match="Class-count mismatch.*6 classes.*20"):
        run_unit(suite, plan_run(suite).units[0])


def test_a_run_writes_seeds_csv_and_the_threshold_plot_into_the_report(tmp_path):
    """End to end: seed metrics through the runner's dataset-level statistics into leaderboard, seeds.csv,
    plots/ and report.html."""
    from functools import partial

    import pandas as pd

    from benchmark.report.build import write_report
    from benchmark.runner import run_suite
    from benchmark.runner.suite import parse_suite

    text = SUITE.replace(
        'metrics = ["pointing_game", "energy_pointing_game_mask"]',
        'metrics = ["seed_miou", "seed_miou_oracle_threshold"]',
    )
    out = tmp_path / "run"
    run_suite(parse_suite(text), out, quiet=True, report=partial(write_report, plots=True))
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"seed_miou", "seed_miou_oracle_threshold"} <= set(board["metric"])
    seeds = pd.read_csv(out / "seeds.csv")
    assert set(seeds["method"]) == {"gradcam", "cam"} and "background" in set(seeds["class"])
    oracle = board[board["metric"] == "seed_miou_oracle_threshold"].set_index("method")["mean"]
    assert ((oracle >= 0) & (oracle <= 1)).all()
    assert (out / "plots" / "seed_miou_vs_threshold.png").is_file()
    assert "WSSS seeds" in (out / "report.html").read_text()
    # --no-plots: the tables are rebuilt, no plot is drawn (and the one above is left as it was)
    (out / "plots" / "seed_miou_vs_threshold.png").unlink()
    write_report(out, plots=False)
    assert (out / "seeds.csv").is_file() and not (out / "plots" / "seed_miou_vs_threshold.png").exists()
