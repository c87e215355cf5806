"""Plots and the self-contained HTML report (plus a headless-Chromium screenshot when available)."""

from __future__ import annotations

import base64
import html
import json
import os
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
    # ... and the findings' copy of the best-concluding experiment's mean-rank CD diagram
    assert len(imgs) == sum(len(v) for v in reported.report.plots.values()) + 1
    kinds = {k: len(v) for k, v in reported.report.plots.items()}
    assert kinds["bars"] == kinds["ranks"] == kinds["gallery"] == 2 and kinds["kendall"] == 2 and kinds["cd"] >= 2
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert html.index('id="findings"') < html.index('class="exp"')  # findings first
    for needle in (
        'id="toc"',
        "Findings",
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


def _chromium() -> str:
    """The headless browser: required under CI (``.ci/run`` installs Debian's ``chromium``); elsewhere the
    browser tests skip with the reason when it is not installed."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true but Chromium is not installed (.ci/run installs it: apt-get install chromium)")
        pytest.skip("headless Chromium is not installed (apt-get install chromium); CI installs it and never skips")
    return exe


def _browse(html_path, *args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp()
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
        html_path.as_uri(),
    ]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=120, check=False, text=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


#: appended to a copy of the report: after the page loaded, what the browser laid out, as JSON in the DOM
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var top = function (el) { return el ? el.getBoundingClientRect().top + window.scrollY : -1; };
  var r = {
    images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.width > 0); }).length,
    h2: Array.prototype.slice.call(document.querySelectorAll("h2")).map(function (h) { return h.textContent; }),
    findings: top(document.getElementById("findings")),
    first_experiment: top(document.querySelector("section.exp")),
    first_image: top(document.querySelector("#findings img")),
    page_width: document.documentElement.scrollWidth
  };
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def test_report_renders_findings_first_in_headless_chromium(reported, tmp_path):
    """The report in a real browser: every picture decodes, the findings come first (before any experiment's
    tables) with a critical-difference diagram on the first screen, and the layout fits a 1400 px window."""
    page = tmp_path / "probe.html"
    page.write_text((reported.out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    res = _browse(page, "--dump-dom", "--virtual-time-budget=10000", "--window-size=1400,1000")
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    probe = json.loads(html.unescape(m.group(1)))
    n_plots = sum(len(v) for v in reported.report.plots.values())
    assert probe["images"] >= n_plots and probe["broken"] == 0, probe
    assert probe["h2"][0] == "Findings", probe["h2"]
    assert 0 <= probe["findings"] < probe["first_experiment"], probe
    assert 0 < probe["first_image"] < 1000, probe  # the CD diagram is on the first screen
    assert probe["page_width"] <= 1400, probe  # nothing wider than the window


def test_report_screenshot_in_headless_chromium(reported, tmp_path):
    """A screenshot of the first screen: the expected size, not blank (text, tables and a figure drawn)."""
    shot = tmp_path / "report.png"
    _browse(reported.out / "report.html", f"--screenshot={shot}", "--window-size=1400,1000")
    from PIL import Image

    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert rgb.shape == (1000, 1400, 3)
    grey = rgb.mean(axis=2)
    assert (grey < 128).mean() > 0.01  # text and lines were drawn
    assert (grey > 230).mean() > 0.3  # on a light page, not a black or error screen
    rows = np.flatnonzero((grey < 128).any(axis=1))
    assert rows.max() - rows.min() > 500  # drawn down the screen, not one line
