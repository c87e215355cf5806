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


# -- per-token and per-query galleries (target = "tokens" / "text") -----------------------------------------
class _Handle:
    """What the unit's Gallery reads of a model handle."""

    class_names = None

    @staticmethod
    def denormalize(x):
        return x


def _token_batch(ids: list[str], words_truth: list[tuple[bool, bool]]):
    import torch

    from benchmark.types import Batch

    n = len(ids)
    masks = torch.zeros(n, 8, 8, dtype=torch.bool)
    for i, (_, truth) in enumerate(words_truth):
        masks[i, i % 8, :4] = truth
    return Batch(
        images=torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(n)),
        targets=torch.arange(n) + 100,  # flat indices of the token view, not word ids
        ids=ids,
        masks=masks,
        extras={
            "position": torch.tensor([int(i.split("#t")[1][:2]) for i in ids]),
            "function_word": torch.tensor([f for f, _ in words_truth]),
            "has_truth": torch.tensor([t for _, t in words_truth]),
        },
    )


def test_gallery_keeps_every_token_of_the_first_images():
    """Token rows: the gallery keeps whole captions of the first ``size`` images, even when an image's rows
    span batches, with each row's word, position and truth flags; other targets keep the first rows."""
    import torch

    from benchmark.runner.unit import Gallery

    b1 = _token_batch(["im0#t00:a", "im0#t01:red", "im1#t00:a"], [(True, False), (False, True), (True, False)])
    b2 = _token_batch(
        ["im1#t01:blue", "im1#t02:disk", "im2#t00:a", "im2#t01:red"],
        [(False, True), (False, False), (True, False), (False, True)],
    )
    maps = lambda b: {"m": torch.rand(len(b.ids), 8, 8), "oracle": b.masks.float()}
    gal = Gallery(2, by_image=True)
    m1, m2 = maps(b1), maps(b2)
    gal.add(_Handle, b1, m1)
    gal.add(_Handle, b2, m2)
    out = gal.arrays(_Handle, "cap", "ds")
    assert out["ids"].tolist() == ["im0#t00:a", "im0#t01:red", "im1#t00:a", "im1#t01:blue", "im1#t02:disk"]
    assert out["words"].tolist() == out["target_names"].tolist() == ["a", "red", "a", "blue", "disk"]
    assert out["image_ids"].tolist() == ["im0", "im0", "im1", "im1", "im1"]
    assert out["positions"].tolist() == [0, 1, 0, 1, 2]
    assert out["function_word"].tolist() == [True, False, True, False, False]
    assert out["has_truth"].tolist() == [False, True, False, True, False]
    np.testing.assert_array_equal(out["maps"][3, 0], m2["m"][0].numpy().astype(np.float16))
    np.testing.assert_array_equal(out["masks"][4], b2.masks[1].numpy())
    assert out["images"].shape == (5, 8, 8, 3)
    rows = Gallery(2)  # not by image: the first two rows, as before
    rows.add(_Handle, b1, m1)
    rows.add(_Handle, b2, m2)
    assert rows.arrays(_Handle, "cap", "ds")["ids"].tolist() == ["im0#t00:a", "im0#t01:red"]


def _word_samples(tokens: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    words = [["a", "red", "disk", "<eos>"], ["a", "blue", "ring", "and", "a", "red", "bar", "<eos>"], ["a", "x", "y"]]
    if not tokens:
        words = [["red disk"], ["blue ring", "red bar"], ["green cross"]]
    ids, image_ids, pos, fn, truth = [], [], [], [], []
    for i, ws in enumerate(words):
        for t, w in enumerate(ws):
            ids.append(f"im{i}#t{t:02d}:{w}")
            image_ids.append(f"im{i}")
            pos.append(t)
            fn.append(w in ("a", "and", "<eos>"))
            truth.append(w not in ("a", "and", "<eos>") and w != "bar")  # "bar": a wrong word
    n = len(ids)
    methods = ["m1", "m2", "m3", "random", "oracle"]
    masks = np.zeros((n, 16, 16), dtype=bool)
    masks[np.asarray(truth), 4:9, 4:9] = True
    s = {
        "experiment": np.asarray(["cap", "ds"]),
        "images": rng.integers(0, 255, (n, 16, 16, 3)).astype(np.uint8),
        "ids": np.asarray(ids),
        "targets": np.arange(n),
        "methods": np.asarray(methods),
        "maps": rng.random((n, len(methods), 16, 16)).astype(np.float16),
        "masks": masks,
        "image_ids": np.asarray(image_ids),
        "words": np.asarray([i.rpartition(":")[2] for i in ids]),
    }
    if tokens:
        s.update(positions=np.asarray(pos), function_word=np.asarray(fn), has_truth=np.asarray(truth))
    return [s]


def test_token_gallery_figure_shows_the_best_methods_and_the_oracle_per_word(tmp_path):
    import pandas as pd
    from PIL import Image

    from benchmark.report.plots import _best_methods, token_gallery

    board = pd.DataFrame(
        {"model": "cap", "dataset": "ds", "metric": "mean_rank", "method": ["m1", "m2", "m3"], "mean": [3.0, 1.0, 2.0]}
    )
    assert _best_methods(["m1", "m2", "m3", "random", "oracle"], board, "cap", "ds", 2) == ["m2", "m3", "oracle"]
    assert _best_methods(["m1", "m2", "random"], None, "cap", "ds", 5) == ["m1", "m2"]
    (tok,) = token_gallery(_word_samples(True), tmp_path, board, max_images=2, max_methods=2)
    (qry,) = token_gallery(_word_samples(False), tmp_path, board, max_images=3, max_methods=3)
    assert tok.name == "tokens-cap-ds.png" and qry.name == "queries-cap-ds.png"
    # tokens: 2 images x (2 methods + oracle) rows, 1 + 8 columns (the longest caption); queries: 3 x 4 rows, 1 + 2
    w, h = Image.open(tok).size
    assert 0.8 < (w / 9) / (h / 6) < 1.4, (w, h)
    w2, h2 = Image.open(qry).size
    assert h2 > 1.5 * w2 and w2 < w  # 12 rows of 3 columns (the title sets a minimum width)
    assert np.asarray(Image.open(tok).convert("L")).std() > 10  # maps drawn, not blank
    assert token_gallery(_word_samples(True)[:0], tmp_path) == []
    plain = {k: v for k, v in _word_samples(True)[0].items() if k not in ("words", "image_ids")}
    assert token_gallery([plain], tmp_path / "none") == []  # a classifier's gallery has no per-word figure


def test_token_gallery_section_in_headless_chromium(tmp_path):
    """The per-token and per-query sections of an experiment: headings, the figures embedded and decoded in a
    real browser, the page no wider than a 1400 px window."""
    from benchmark.report.html import CSS, words_html
    from benchmark.report.plots import token_gallery

    figs = {
        "tokens": token_gallery(_word_samples(True), tmp_path),
        "queries": token_gallery(_word_samples(False), tmp_path),
    }
    section = words_html(figs)
    assert "Per-token explanations" in section and "Per-query explanations" in section
    assert section.count('src="data:image/png;base64,') == 2
    assert words_html({"tokens": [], "gallery": figs["tokens"]}) == ""
    page = tmp_path / "words.html"
    page.write_text(f"<!DOCTYPE html><html><head><style>{CSS}</style></head><body>{section}{PROBE}</body></html>")
    res = _browse(page, "--dump-dom", "--virtual-time-budget=10000", "--window-size=1400,1000")
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    probe = json.loads(html.unescape(m.group(1)))
    assert probe["images"] == 2 and probe["broken"] == 0, probe
    assert probe["page_width"] <= 1400, probe
