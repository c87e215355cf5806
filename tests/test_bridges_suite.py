"""End to end: a pytorch-grad-cam BaseCAM subclass in a --plugin file, pgc/ and torchcam/ methods and quantus/
metrics named in a suite, get leaderboard rows for every metric (a fake, seconds-long suite)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("quantus")

from benchmark import plugins
from benchmark.cli import main
from benchmark.methods import METHODS
from benchmark.runner.suite import load_suite

TESTS = Path(__file__).resolve().parent
SUITE = TESTS / "runner_suites" / "bridges.toml"
PLUGIN = TESTS / "plugins" / "pgc_subclass_cam.py"


@pytest.fixture(autouse=True)
def clean_registries():
    with plugins.isolated():
        yield


def test_basecam_plugin_gets_leaderboard_rows_for_every_metric(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["run", str(SUITE), "--plugin", str(PLUGIN), "--out", str(out), "--quiet", "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    suite = load_suite(SUITE)
    lb = pd.read_csv(out / "leaderboard.csv")
    scores = pd.read_parquet(out / "scores.parquet")
    metrics = list(suite.experiments[0].metrics)
    for method in suite.experiments[0].methods:
        for metric in metrics:
            row = lb[(lb["method"] == method) & (lb["metric"] == metric)]
            assert len(row) == 1, (method, metric)
            assert np.isfinite(row["mean"].iloc[0]) and row["n"].iloc[0] == 4, row
            s = scores[(scores["method"] == method) & (scores["metric"] == metric)]
            assert (s["status"] == "ok").all(), s[["status", "message"]]
    hib = lb.drop_duplicates("metric").set_index("metric")["higher_is_better"]
    assert bool(hib["quantus/Sparseness"]) and not bool(hib["quantus/MaxSensitivity"])  # Quantus' directions
    assert METHODS.entry("absgradcam").source == "pgc_subclass_cam.py"


def test_a_broken_basecam_plugin_fails_before_any_work(tmp_path, capsys) -> None:
    bad = tmp_path / "nan_cam.py"
    bad.write_text(
        "import numpy as np\nfrom pytorch_grad_cam.base_cam import BaseCAM\n"
        "from benchmark.methods import from_pytorch_grad_cam\n\n"
        "class NaNCAM(BaseCAM):\n"
        "    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):\n"
        "        return np.full(grads.shape[:2], np.nan, dtype=np.float32)\n\n"
        "from_pytorch_grad_cam('nan_cam', NaNCAM)\n"
    )
    out = tmp_path / "run"
    rc = main(["run", str(SUITE), "--plugin", str(bad), "--out", str(out), "--quiet", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and "nan_cam" in err and "NaN or inf" in err, err
    assert not (out / "leaderboard.csv").exists()


def test_list_shows_the_bridged_names(capsys) -> None:
    assert main(["list", "metrics"]) == 0
    text = capsys.readouterr().out
    assert "quantus/Sparseness" in text and "status=broken" in text and "quantus/IROF" in text
    assert main(["list", "methods"]) == 0
    text = capsys.readouterr().out
    assert "pgc/GradCAM" in text and "torchcam/GradCAM" in text and "captum/LayerGradCam" in text
