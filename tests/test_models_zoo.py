"""torchvision / timm zoo: default layers capture [B,C,h,w] with live gradients; offline weights."""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import WeightsError
from benchmark.methods.capture import capture, resolve_layer
from benchmark.models import MODELS, create_model, list_models, zoo

TRANSFORMERS = {"vit_b_16", "swin_t"}


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", sorted(zoo.TORCHVISION_MODELS))
def test_default_layer_captures_feature_map_with_gradients(name: str) -> None:
    h = create_model(name, weights="random")
    assert not h.model.training and h.input_size == (224, 224)
    assert h.class_names is not None and len(h.class_names) == 1000 and h.class_names[281] == "tabby"
    size, batch = (224, 1) if name in TRANSFORMERS else (64, 2)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    layer = resolve_layer(h.model, h.target_layer)
    cap = capture(h.model, layer, x, torch.tensor([3] * batch), reshape=h.reshape)
    a, g = cap.activations, cap.gradients
    assert a.ndim == 4 and a.shape[:2] == g.shape[:2] and a.shape == g.shape and a.shape[0] == batch
    # every spatial position (patch token) receives gradient, not only the class token / one cell
    per_position = g.abs().sum(1)
    assert (per_position > 0).float().mean() > 0.9, f"{name}: gradients vanish at {h.target_layer}"
    if name == "vit_b_16":
        assert tuple(a.shape) == (1, 768, 14, 14)
        # torchvision zero-initialises the ViT head; a random ViT must not give constant logits
        assert h.model.heads.head.weight.abs().sum() > 0
    if name == "swin_t":
        assert tuple(a.shape) == (1, 768, 7, 7)


def test_registered_names() -> None:
    names = set(list_models())
    assert set(zoo.TORCHVISION_MODELS) <= names
    assert {"efficientnet_lite0", "timm/resnet18", "timm/vit_tiny_patch16_224"} <= names


def test_random_weights_are_seeded_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = create_model("resnet18", weights="random", seed=1)
    assert torch.equal(torch.rand(3), expected)  # building did not consume the caller's stream
    b = create_model("resnet18", weights="random", seed=1)
    c = create_model("resnet18", weights="random", seed=2)
    wa, wb, wc = (h.model.conv1.weight for h in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_missing_default_weights_raise_before_work_naming_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    built = []
    import torchvision.models as tvm

    monkeypatch.setattr(tvm, "resnet50", lambda **kw: built.append(1))
    with pytest.raises(WeightsError) as err:
        create_model("resnet50")
    msg = str(err.value)
    expected = tmp_path / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert str(expected) in msg and "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg
    assert "weights='random'" in msg and not built


def test_default_weights_load_from_hub_cache_with_densenet_key_fix(tmp_path, monkeypatch) -> None:
    ref = create_model("resnet18", weights="random", seed=7).model
    (tmp_path / "checkpoints").mkdir()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    h = create_model("resnet18")  # "default": from the (fake) local cache, no download
    for (k, v), (k2, v2) in zip(h.model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert h.meta["weights"].endswith("resnet18-f37072fd.pth")


def test_densenet_legacy_keys_are_renamed() -> None:
    sd = {
        "features.denseblock1.denselayer1.norm.1.weight": 1,
        "features.denseblock1.denselayer1.conv.2.weight": 2,
        "features.norm5.weight": 3,
    }
    assert zoo._fix_densenet_keys(sd) == {
        "features.denseblock1.denselayer1.norm1.weight": 1,
        "features.denseblock1.denselayer1.conv2.weight": 2,
        "features.norm5.weight": 3,
    }


class _NotATensor:
    pass


def test_checkpoint_path_is_loaded_with_weights_only(tmp_path) -> None:
    ref = create_model("resnet18", weights="random", seed=3).model
    good = tmp_path / "good.pth"
    torch.save({"state_dict": ref.state_dict()}, good)
    h = create_model("resnet18", weights=str(good))
    assert torch.equal(h.model.fc.weight, ref.fc.weight)

    evil = tmp_path / "evil.pth"
    torch.save({"x": _NotATensor()}, evil)  # needs full unpickling: must be refused
    with pytest.raises(WeightsError, match="weights_only"):
        create_model("resnet18", weights=str(evil))

    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(WeightsError, match="does not fit"):
        create_model("resnet18", weights=str(wrong))
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("resnet18", weights=str(tmp_path / "nope.pth"))


timm = pytest.importorskip("timm")


@pytest.mark.parametrize(
    "name,size,shape",
    [("resnet18", 64, (2, 512, 2, 2)), ("vit_tiny_patch16_224", 224, (1, 192, 14, 14))],
)
def test_timm_models_random_capture(name: str, size: int, shape: tuple) -> None:
    h = create_model(f"timm/{name}", weights="random")
    x = torch.randn(shape[0], 3, size, size, generator=torch.Generator().manual_seed(0))
    layer = resolve_layer(h.model, h.target_layer)
    cap = capture(h.model, layer, x, torch.tensor([1] * shape[0]), reshape=h.reshape)
    assert tuple(cap.activations.shape) == shape
    assert (cap.gradients.abs().sum(1) > 0).float().mean() > 0.9
    if "vit" in name:
        assert h.target_layer == "blocks.11.norm1" and h.mean == (0.5, 0.5, 0.5)


def test_timm_any_name_and_swin_tokens_reshape() -> None:
    tokens = torch.arange(2 * 49 * 3, dtype=torch.float32).view(2, 49, 3)
    grid = zoo.swin_tokens_reshape(tokens)
    assert grid.shape == (2, 3, 7, 7) and grid[1, 2, 3, 4] == tokens[1, 3 * 7 + 4, 2]
    nhwc = torch.randn(2, 7, 7, 3)
    assert torch.equal(zoo.swin_tokens_reshape(nhwc), nhwc.permute(0, 3, 1, 2))
    h = zoo.timm_model("resnet10t", weights="random")  # not registered: any timm name works
    assert h.name == "timm/resnet10t" and h.target_layer == "layer4"
    assert "timm" in MODELS.prefixes() and "timm/resnet10t" not in MODELS.list()
    h2 = create_model("timm/resnet10t", weights="random")  # through the zoo's prefix resolver
    assert h2.name == "timm/resnet10t" and not h2.model.training
    assert MODELS.entry("timm/resnet10t").meta["family"] == "timm"


def test_timm_pretrained_only_from_local_cache(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hfc
    from safetensors.torch import save_file

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="not in the local cache"):
        create_model("timm/resnet18")
    # a Hugging Face cache entry as huggingface_hub lays it out
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    base = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("abc123")
    (base / "snapshots" / "abc123").mkdir(parents=True)
    ref = timm.create_model("resnet18", pretrained=False)
    save_file(ref.state_dict(), str(base / "snapshots" / "abc123" / "model.safetensors"))
    h = create_model("timm/resnet18")
    assert torch.equal(h.model.fc.weight, ref.fc.weight)
