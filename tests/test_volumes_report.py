"""Volumes end to end: the runner on a 3-D experiment (scores, 3-D gallery sample) and the slice gallery."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.report.build import write_report
from benchmark.report.plots import gallery, strip_slices
from benchmark.runner import load_suite, run_suite

SUITE = """
name = "vol-tiny"
seed = 0
device = "cpu"
batch_size = 2
shard_size = 2
gallery = 1
bootstrap = 10
methods = ["gradcam", "cam", "random"]
metrics = ["mask_iou", "temporal_energy", "deletion_auc", "box_iou", "pointing_game"]
[metric_params.deletion_auc]
n_steps = 2
[[experiments]]
model = "volume_cnn"
dataset = "volumes"
target = "label"
data = { n = 2, size = 32 }
"""


def test_runner_on_volumes_scores_and_slice_gallery(tmp_path: Path) -> None:
    path = tmp_path / "vol.toml"
    path.write_text(SUITE)
    out = run_suite(load_suite(path), tmp_path / "out", quiet=True, report=partial(write_report, plots=True))
    scores = pd.read_parquet(out.out / "scores.parquet")
    assert set(scores["metric"]) == {"mask_iou", "temporal_energy", "deletion_auc", "box_iou", "pointing_game"}
    ok = scores[scores["method"] == "gradcam"]
    assert (ok["status"] == "ok").all() and np.isfinite(ok["value"]).all()
    npz = next((out.out / "gallery").glob("*.npz"))
    sample = dict(np.load(npz))
    assert sample["images"].shape[1:] == (32, 32, 32, 3) and sample["maps"].shape[-3:] == (32, 32, 32)
    assert sample["boxes"].shape[-1] == 6
    assert (out.out / "plots" / "gallery-volume_cnn-volumes.png").is_file()


def test_slice_gallery_shows_slices_through_the_object(tmp_path: Path) -> None:
    masks = np.zeros((1, 10, 8, 8), dtype=bool)
    masks[0, 4:7, 2:5, 2:5] = True
    assert strip_slices(10, masks[0], 3) == [4, 5, 6]
    assert strip_slices(10, None, 2) == [2, 7]
    sample = {
        "experiment": np.asarray(["m", "d"]),
        "images": np.zeros((1, 10, 8, 8, 3), np.uint8),
        "ids": np.asarray(["v0"]),
        "targets": np.asarray([1]),
        "methods": np.asarray(["a", "b"]),
        "maps": np.random.default_rng(0).random((1, 2, 10, 8, 8)).astype(np.float16),
        "masks": masks,
        "boxes": np.asarray([[[2, 2, 4, 5, 5, 7]]], np.float32),
    }
    paths = gallery([sample], tmp_path)
    assert [p.name for p in paths] == ["gallery-m-d.png"] and paths[0].stat().st_size > 1000
