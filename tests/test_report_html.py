"""Plots and the self-contained HTML report (plus a headless-Chromium screenshot when available)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    return runner_fakes.run_cached(tmp_path_factory.mktemp("html"), plots=True)


def test_plots_are_written_per_experiment(reported):
    plots = reported.report.plots
    for kind in ("bars", "ranks", "curves", "gallery"):
        names = sorted(p.name for p in plots[kind])
        assert names == [f"{kind}-fake_cnn-fake_plain.png", f"{kind}-fake_cnn-fake_shapes.png"], kind
    from PIL import Image

    gal = Image.open(reported.out / "plots" / "gallery-fake_cnn-fake_shapes.png")
    assert gal.size[0] > 2 * gal.size[1]  # 10 columns (image + 9 methods) x 3 rows
    assert np.asarray(gal.convert("L")).std() > 10  # not blank


def test_report_is_self_contained_and_complete(reported):
    html = (reported.out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", html)  # nothing external
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # bars, ranks, curves, gallery, Kendall tau and critical-difference diagrams (mean rank + the fake
    # metrics' family) of two experiments
    assert len(imgs) == sum(len(v) for v in reported.report.plots.values())
    kinds = {k: len(v) for k, v in reported.report.plots.items()}
    assert kinds["bars"] == kinds["ranks"] == kinds["gallery"] == 2 and kinds["kendall"] == 2 and kinds["cd"] >= 2
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    for needle in (
        "Leaderboard",
        "What this experiment can conclude",
        "Equivalent methods",
        "(reference)",
        "fake_inside",
        "mean rank",
        "Settings",
        "name = &quot;tiny&quot;",
        "Versions",
        "torch",
        "cambench",
        "Timings",
        "Failures",
        "Skipped metrics",
        "needs masks",
        reported.plan.hash,
    ):
        assert needle in html, needle
    assert html.count('class="best') >= 5  # one rank-1 cell per (experiment, metric) ("best grey" when flagged)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(reported, tmp_path):
    shot = tmp_path / "report.png"
    profile = tempfile.mkdtemp()
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        "--window-size=1400,3000",
        (reported.out / "report.html").as_uri(),
    ]
    try:
        subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (3000, 1400)
    assert (img < 128).mean() > 0.02  # text, tables and figures were drawn
