"""The synthetic CNNs: accuracy, the shortcut model really reads the mark, caching, checkpoints, Grad-CAM.

The two trained models come from the on-disk cache (``$CAMBENCH_CACHE`` or ``~/.cache/cambench``) and are
trained there on first use (once per session: module-scoped fixtures).
"""

from __future__ import annotations

import datetime
import json

import pytest
import torch

from benchmark import methods
from benchmark.data.synthetic import ShapesDataset
from benchmark.errors import WeightsError
from benchmark.models import MODELS, create_model
from benchmark.models import synthetic as S

N_TEST = 600


@pytest.fixture(scope="module")
def shapes_model():  # type: ignore[no-untyped-def]
    return create_model("shapes_cnn")


@pytest.fixture(scope="module")
def shortcut_model():  # type: ignore[no-untyped-def]
    return create_model("shapes_shortcut_cnn")


@pytest.fixture(scope="module")
def test_sets() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Held-out images (the ``test`` split) and labels; rendered once for both models."""
    return {
        k: ShapesDataset(n=N_TEST, split="test", shortcut=sc).images_and_labels()
        for k, sc in (("plain", None), ("aligned", "aligned"), ("shuffled", "shuffled"))
    }


@torch.inference_mode()
def _accuracy(handle, data) -> float:  # type: ignore[no-untyped-def]
    x, y = data
    return (handle.model(handle.normalize(x)).argmax(1) == y).float().mean().item()


def test_handle_contract() -> None:
    h = create_model("shapes_cnn", weights="random")
    assert h.input_size == (128, 128) and h.class_names == list(S.SHAPE_CLASSES)
    assert h.target_layer == "block4" and not h.model.training
    acts = {}
    methods.resolve_layer(h.model, h.target_layer).register_forward_hook(lambda m, i, o: acts.update(a=o))
    logits = h.model(torch.zeros(2, 3, 128, 128))
    assert logits.shape == (2, 6) and acts["a"].shape == (2, 128, 8, 8)
    assert MODELS.entry("shapes_cnn").dataset == "shapes"


def test_random_weights_are_seeded() -> None:
    a = create_model("shapes_cnn", weights="random", seed=1).model.state_dict()
    b = create_model("shapes_cnn", weights="random", seed=1).model.state_dict()
    c = create_model("shapes_cnn", weights="random", seed=2).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["block1.0.weight"], c["block1.0.weight"])


def test_checkpoint_round_trip_weights_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = create_model("shapes_cnn", weights="random", seed=7)
    path = tmp_path / "ckpt.pt"
    torch.save(src.model.state_dict(), path)
    dst = create_model("shapes_cnn", weights=str(path))
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(src.model(x), dst.model(x))
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("shapes_cnn", weights=str(tmp_path / "missing.pt"))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match="does not fit"):
        create_model("shapes_cnn", weights=str(tmp_path / "wrong.pt"))

    # arbitrary pickled objects (here a datetime, not on the allow-list) are refused by weights_only=True
    torch.save({"x": datetime.date(2020, 1, 1)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="weights_only=True"):
        create_model("shapes_cnn", weights=str(tmp_path / "evil.pt"))


def test_cache_trains_once_and_retrains_when_the_config_changes(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CAMBENCH_CACHE", str(tmp_path))
    cfg = S.TrainConfig(name="tiny", n_train=32, epochs=1, batch_size=16, image_size=32, widths=(4, 4, 4, 8))
    calls = []
    real = S.train_shapes_model
    monkeypatch.setattr(S, "train_shapes_model", lambda c: calls.append(c) or real(c))
    state, meta = S.load_or_train(cfg)
    assert meta["hash"] == cfg.digest() and len(calls) == 1
    files = sorted(p.name for p in (tmp_path / "synthetic").iterdir())
    assert any(f.endswith(".pt") for f in files) and any(f.endswith(".json") for f in files)
    assert not any(f.endswith(".tmp") for f in files)
    state2, _ = S.load_or_train(cfg)  # cached: no training
    assert len(calls) == 1 and all(torch.equal(state[k], state2[k]) for k in state)
    # a different configuration has another hash and is trained
    S.load_or_train(S.TrainConfig(**{**cfg.__dict__, "seed": 1}))
    assert len(calls) == 2
    # a metadata file whose hash does not match (stale/corrupt) triggers retraining
    js = S._paths(cfg)[1]
    assert js.is_file()
    js.write_text(json.dumps({"hash": "stale"}))
    S.load_or_train(cfg)
    assert len(calls) == 3
    # training is deterministic for a given configuration
    assert all(torch.equal(state[k], S.load_or_train(cfg)[0][k]) for k in state)


def test_shapes_cnn_accuracy_at_least_95_percent(shapes_model, test_sets) -> None:  # type: ignore[no-untyped-def]
    acc = _accuracy(shapes_model, test_sets["plain"])
    assert acc >= 0.95, f"held-out accuracy {acc:.3f}"
    # the library's evaluation helper agrees on a subset
    sub = ShapesDataset(n=100, split="test")
    assert S.evaluate_accuracy(shapes_model.model, sub, batch_size=64) == pytest.approx(
        _accuracy(shapes_model, (test_sets["plain"][0][:100], test_sets["plain"][1][:100]))
    )


def test_shortcut_model_uses_the_mark(shapes_model, shortcut_model, test_sets) -> None:  # type: ignore[no-untyped-def]
    acc = {k: _accuracy(shortcut_model, data) for k, data in test_sets.items()}
    assert acc["aligned"] >= 0.95, acc
    assert acc["shuffled"] <= 0.45 and acc["aligned"] - acc["shuffled"] >= 0.5, acc
    assert acc["aligned"] - acc["plain"] >= 0.3, acc  # mark absent (= plain images)
    # the plain model ignores the marks
    plain = {k: _accuracy(shapes_model, data) for k, data in test_sets.items()}
    assert abs(plain["shuffled"] - plain["plain"]) <= 0.03, plain


def _hit_rate(maps: torch.Tensor, region: torch.Tensor) -> float:
    """Pointing game: fraction of maps whose first maximum (raster order) lies inside ``region``."""
    flat = maps.flatten(1).argmax(1)
    return region.flatten(1)[torch.arange(len(flat)), flat].float().mean().item()


def _box_masks(boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    out = torch.zeros((len(boxes), size, size), dtype=torch.bool)
    for i, b in enumerate(boxes):
        x1, y1, x2, y2 = b[0].long().tolist()
        out[i, y1:y2, x1:x2] = True
    return out


def test_gradcam_points_at_the_ground_truth(shapes_model, shortcut_model) -> None:  # type: ignore[no-untyped-def]
    """A usable benchmark: Grad-CAM finds the target's box far more often than the centre prior and
    rarely the distractors; on the shortcut model it finds the mark (its documented ground truth)."""
    from benchmark.data import make_batches

    n = 96
    ds = ShapesDataset(n=n, split="test", seed=1)
    batch = next(iter(make_batches(ds, shapes_model, batch_size=n)))
    boxes = _box_masks(batch.boxes, 128)
    run = lambda name, h, b: methods.get(name)(h.model, h.target_layer, b.images, b.targets)
    cam, center = run("gradcam", shapes_model, batch), run("center", shapes_model, batch)
    hit, base = _hit_rate(cam, boxes), _hit_rate(center, boxes)
    assert hit >= 0.8 and hit - base >= 0.3, (hit, base)
    energy = lambda m: ((m * boxes).flatten(1).sum(1) / m.flatten(1).sum(1)).mean().item()
    assert energy(cam) >= 1.5 * energy(center), (energy(cam), energy(center))
    distractors = torch.stack(
        [
            torch.stack(sc.distractor_masks).any(0) if sc.distractor_masks else torch.zeros(128, 128, dtype=torch.bool)
            for sc in (ds.scene(i) for i in range(n))
        ]
    )
    assert _hit_rate(cam, distractors) <= 0.1

    # shortcut model: the peak is nearer the mark than the object (an 8x8 Grad-CAM peaks about one cell
    # inland of a border mark, so a strict pointing game on the 8-pixel mark would not be fair)
    sc = ShapesDataset(n=n, split="test", seed=1, shortcut="aligned", gt="mark")
    batch = next(iter(make_batches(sc, shortcut_model, batch_size=n)))
    peak = run("gradcam", shortcut_model, batch).flatten(1).argmax(1)
    peak = torch.stack([peak // 128, peak % 128], 1).float() + 0.5  # (row, col) pixel centres
    centre = lambda b: torch.stack([(b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2], 1)
    mark = centre(torch.cat(batch.boxes))
    obj = centre(torch.cat([sc.scene(i).object_box for i in range(n)]))
    nearer = (peak - mark).norm(dim=1) < (peak - obj).norm(dim=1)
    assert nearer.float().mean().item() >= 0.8
