"""Shipped weights of the synthetic models: loaded (never trained) by default, verified, accurate; the
non-linear-head model separates Grad-CAM, HiResCAM and XGrad-CAM."""

from __future__ import annotations

import shutil

import pytest
import torch

from benchmark import methods as M
from benchmark.data.synthetic import ShapesDataset
from benchmark.errors import WeightsError
from benchmark.models import create_model
from benchmark.models import synthetic as S
from benchmark.models.shipped import has_shipped, load_shipped, shipped_meta, weights_dir

NAMES = ["shapes_cnn", "shapes_deep_cnn", "shapes_shortcut_cnn"]


@pytest.mark.parametrize("name", NAMES)
def test_default_weights_are_shipped_and_never_trained(name, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert has_shipped(name)
    monkeypatch.setattr(S, "train_shapes_model", lambda cfg: pytest.fail("trained at run time"))
    h = create_model(name)
    meta = shipped_meta(name)
    assert meta["hash"] == S.DEFAULT_CONFIGS[name].digest() and (weights_dir() / f"{name}.pt").stat().st_size < 2e6
    acc = meta["held_out_accuracy"]
    assert acc["simple"] >= 0.95 and acc.get("clutter", 1.0) >= 0.95, acc
    state = h.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in load_shipped(name).items())


def test_tampered_weights_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for suffix in (".pt", ".json"):
        shutil.copy(weights_dir() / f"shapes_shortcut_cnn{suffix}", tmp_path / f"shapes_shortcut_cnn{suffix}")
    load_shipped("shapes_shortcut_cnn", root=tmp_path)  # intact: loads
    pt = tmp_path / "shapes_shortcut_cnn.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256 check.*train-models shapes_shortcut_cnn"):
        load_shipped("shapes_shortcut_cnn", root=tmp_path)
    with pytest.raises(WeightsError, match="another configuration"):
        load_shipped("shapes_cnn", expect_hash="0" * 64)


@torch.inference_mode()
def test_shipped_accuracy_on_held_out_images() -> None:
    for name in ("shapes_cnn", "shapes_deep_cnn"):
        h = create_model(name)
        for kind in S.DEFAULT_CONFIGS[name].scenes:
            acc = S.evaluate_accuracy(h.model, ShapesDataset(n=200, split="test", seed=5, scene=kind))
            assert acc >= 0.95, (name, kind, acc)


def test_gradient_methods_differ_on_the_deep_model_only() -> None:
    names = ["gradcam", "hirescam", "xgradcam"]
    ds = ShapesDataset(n=8, split="test", seed=2, scene="clutter")  # the scenes the quick suite explains
    x, y = ds.images_and_labels()
    out = {}
    for model in ("shapes_cnn", "shapes_deep_cnn"):
        h = create_model(model)
        maps = M.explain(h.model, h.target_layer, h.normalize(x), y, names)
        out[model] = {n: maps[n] for n in names}
    for a, b in [("gradcam", "hirescam"), ("gradcam", "xgradcam"), ("hirescam", "xgradcam")]:
        lin = (out["shapes_cnn"][a] - out["shapes_cnn"][b]).abs().max().item()
        deep = (out["shapes_deep_cnn"][a] - out["shapes_deep_cnn"][b]).abs().mean().item()
        assert lin <= 1e-4, (a, b, lin)  # GAP + linear: identical by construction (min-max normalised)
        assert deep >= 0.01, (a, b, deep)


def test_deep_model_architecture() -> None:
    h = create_model("shapes_deep_cnn", weights="random")
    assert h.target_layer == "block4" and isinstance(h.model.block5[0], torch.nn.Conv2d)
    with pytest.raises(ValueError, match="head must be"):
        S.ShapesCNN(head="mlp")


@pytest.mark.slow
@pytest.mark.training
def test_training_reaches_95_percent(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``weights="train"`` retrains the default configuration (minutes on 2 CPU cores)."""
    monkeypatch.setenv("CAMBENCH_CACHE", str(tmp_path))
    h = create_model("shapes_cnn", weights="train")
    acc = S.held_out_accuracy(h.model, S.DEFAULT_CONFIGS["shapes_cnn"], 200)
    assert acc["simple"] >= 0.95 and acc["clutter"] >= 0.95, acc
