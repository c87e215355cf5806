"""3-D models: the shipped volume_cnn (accuracy, CAM on the lesion), its training loop, the video zoo offline."""

from __future__ import annotations

import pytest
import torch

from benchmark import methods
from benchmark.data.volumetric import VolumesDataset
from benchmark.errors import WeightsError
from benchmark.metrics.functional.localization import energy_pointing_game
from benchmark.models import create_model
from benchmark.models.shipped import shipped_meta
from benchmark.models.volumetric import VolumeTrainConfig, evaluate_accuracy, normalize, train_volume_model


def test_shipped_volume_cnn_accuracy_and_record() -> None:
    h = create_model("volume_cnn")
    assert h.input_size == (32, 32, 32) and h.target_layer == "block3"
    meta = shipped_meta("volume_cnn")
    assert meta["test_accuracy"] >= 0.95 and meta["hash"] == VolumeTrainConfig().digest()
    # held-out volumes the training never saw (another data seed of the test split)
    assert evaluate_accuracy(h.model, VolumesDataset(n=60, seed=7, split="test")) >= 0.9


def test_gradcam_of_the_shipped_model_points_at_the_lesion() -> None:
    h = create_model("volume_cnn")
    x, y = VolumesDataset(n=8, seed=11, split="test").images_and_labels()
    masks = torch.stack([VolumesDataset(n=8, seed=11, split="test")[i].mask for i in range(8)])
    out = methods.explain(h.model, h.target_layer, normalize(x), y, ["gradcam", "random"])
    assert out["gradcam"].shape == (8, 32, 32, 32)
    gc = energy_pointing_game(out["gradcam"], masks).nanmean()
    rnd = energy_pointing_game(out["random"], masks).nanmean()
    assert float(gc) > 2 * float(rnd)


def test_training_loop_runs_and_learns_something() -> None:
    cfg = VolumeTrainConfig(n_train=48, size=16, epochs=2, batch_size=16, widths=(4, 4, 8))
    model, info = train_volume_model(cfg)
    assert info["final_loss"] < 1.6 and info["train_seconds"] > 0
    assert model(torch.zeros(1, 3, 16, 16, 16)).shape == (1, 4)
    assert cfg.digest() != VolumeTrainConfig().digest()


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s"])
def test_video_zoo_offline(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError, match="checkpoints"):
        create_model(name)  # default weights: the hub cache is empty here, nothing is downloaded
    h = create_model(name, weights="random")
    assert len(h.input_size) == 3 and h.meta["num_classes"] == 400
    assert methods.resolve_layer(h.model, h.target_layer) is not None
