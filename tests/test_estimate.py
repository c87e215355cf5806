"""Cost before running: forwards per image from a probe, the plan summary and its warning (issue 29)."""

from __future__ import annotations

import pytest
import torch

from benchmark import cli
from benchmark.methods.contract import _check_model
from benchmark.runner.estimate import ExperimentEstimate, count_forwards, estimate_text

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_count_forwards_known_answers():
    import benchmark.methods  # noqa: F401  (registers the built-ins)

    model, layer, _ = _check_model(False, 0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    acts = model.features(x)  # [2, 8, 16, 16]: Score-CAM masks the input once per channel with a live map
    live = int(((acts.amax(dim=(-2, -1)) - acts.amin(dim=(-2, -1))) > 0).sum()) / 2
    fw = count_forwards(model, layer, x, torch.tensor([0, 1]), ["gradcam", "scorecam", "random", "oracle"])
    assert fw["gradcam"] == 1.0  # one capture (forward + backward) per image
    assert fw["scorecam"] == 1.0 + live  # the capture, then one forward per live channel
    assert fw["random"] == 0.0  # a baseline reads no model
    assert fw["oracle"] != fw["oracle"]  # NaN: needs ground truth the probe does not have


def test_estimate_text_warns_and_names_the_dominant_methods():
    cheap = ExperimentEstimate("m", "d", 100, {"gradcam": 1.0, "random": 0.0}, 0.01)
    costly = ExperimentEstimate("m2", "d2", 100, {"gradcam": 1.0, "scorecam": 512.0, "ablationcam": 64.0}, 0.01)
    assert cheap.seconds == pytest.approx(1.0) and costly.dominant() == ["scorecam", "ablationcam", "gradcam"]
    text = estimate_text([cheap, costly], warn_minutes=5)
    assert "m2 on d2: 577 forwards/image x 100 images ~ 10 min (most: scorecam 512, ablationcam 64, gradcam 1)" in text
    warn = text.splitlines()[-1]
    assert warn.startswith("WARNING: this suite will take more than 5 minutes") and "scorecam, ablationcam" in warn
    assert "WARNING" not in estimate_text([cheap], warn_minutes=5)


def test_cli_estimate_prints_the_plan_cost_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    suite = str(runner_fakes.SUITES / "tiny.toml")
    assert cli.main(["run", suite, "--out", str(out), "--estimate", "--limit", "3"]) == 0
    cap = capsys.readouterr()
    text = cap.out
    assert "Cost estimate" in text and "forwards/image x 3 images" in text and "total ~" in text
    assert not (out / "parts").exists()
    # n = 3 cannot separate any pair of the suite's methods: said before any work
    assert "has n = 3 images for" in cap.err and "no pair of methods can differ significantly" in cap.err
