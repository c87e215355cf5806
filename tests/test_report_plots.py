"""Report figures, unit by unit: labels that fit, distinct colours, disagreement order, paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.report import plots as P
from benchmark.report.tables import MEAN_RANK


def test_method_styles_are_distinct_for_25_methods():
    names = [f"method_{i:02d}" for i in range(25)] + ["random", "oracle"]
    styles = P.method_styles(names)
    ranked = [styles[n] for n in names[:25]]
    assert len({(tuple(np.round(c, 6)), ls) for c, ls in ranked}) == 25
    assert len({tuple(np.round(c, 6)) for c, _ in ranked}) == 25  # colours alone tell them apart
    colours = np.array([c[:3] for c, _ in ranked])
    d = np.sqrt(((colours[:, None] - colours[None]) ** 2).sum(-1)) + np.eye(25)
    assert d.min() > 0.05  # no two near-identical colours
    assert styles["random"][1] == "--" and styles["random"][0][0] == styles["random"][0][1]  # grey, dashed
    assert P.method_styles(names[::-1]) == styles  # the same colour for a method in every figure


def test_disagreement_orders_images_by_the_spread_of_the_maps():
    rng = np.random.default_rng(0)
    maps = np.repeat(rng.uniform(size=(3, 1, 8, 8)), 4, axis=1)  # [N=3, M=4]: every method agrees ...
    maps[1, 2] = 1.0 - maps[1, 2]  # ... except on image 1
    maps[:, 3] = rng.uniform(size=(3, 8, 8))  # a baseline (random) left out by `keep`
    spread = P.disagreement(maps, keep=[0, 1, 2])
    assert spread[0] < 1e-6 and spread[2] < 1e-6 and spread[1] > 0.1
    ref = np.std(maps[1, :3], axis=0).mean()
    assert spread[1] == pytest.approx(ref, rel=1e-6)


def test_paired_differences_known_answers():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    mean, lo, hi = P.paired_differences(a + 0.5, a)
    assert (mean, lo, hi) == pytest.approx((0.5, 0.5, 0.5))  # a constant difference: a zero-width CI
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=200), rng.normal(size=200)
    mean, lo, hi = P.paired_differences(x, y, seed=3)
    assert mean == pytest.approx(np.mean(x - y)) and lo < mean < hi
    se = np.std(x - y) / np.sqrt(200)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # the bootstrap CI of a mean ~ the normal one
    assert P.paired_differences(x, y, seed=3) == (mean, lo, hi)  # seeded


def test_cd_diagram_labels_fit_inside_the_saved_figure(tmp_path):
    names = ["smoothgradcampp", "a", "gradcamelementwise_with_a_long_name", "b", "layercam", "x"]
    rows = [
        ("m", "d", n, metric, r, r, 0.8, metric == "del", "a" if r < 4 else "b", r, 1.2, False)
        for metric in ("del", MEAN_RANK)
        for r, n in enumerate(names, start=1)
    ]
    board = pd.DataFrame(
        rows,
        columns=["model", "dataset", "method", "metric", "mean", "rank", "n", "higher_is_better", "group"]
        + ["avg_rank", "cd", "baseline"],
    )
    paths = P.cd_diagrams(board, {"del": "faithfulness"}, tmp_path)
    assert len(paths) == 2
    for p in paths:
        g = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        border = np.concatenate([g[:, :2].ravel(), g[:, -2:].ravel(), g[:2].ravel(), g[-2:].ravel()])
        assert border.min() > 200, p  # no label runs into the edge (clipped text would)
        assert (g < 128).mean() > 0.005  # drawn


def test_saved_figures_are_palette_pngs(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.random.default_rng(0).uniform(size=(32, 32)), cmap="jet")
    path = P._save(fig, tmp_path / "x.png")
    with Image.open(path) as im:
        assert im.mode == "P" and im.format == "PNG"
