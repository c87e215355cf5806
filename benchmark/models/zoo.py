"""torchvision and timm ImageNet classifiers as :class:`ModelHandle`s, strictly offline.

``weights="default"``: the torchvision checkpoint in the local torch hub cache
(``torch.hub.get_dir()/checkpoints/<file of the weights enum URL>``) or, for timm, the Hugging Face /
torch hub cache. Nothing is ever downloaded: if the file is absent, :class:`WeightsError` is raised
before the model is built, naming the file, the URL and where to put it. ``"random"``: seeded random
init. A path: a state dict loaded with ``torch.load(weights_only=True)``.

Default target layers (docs/methods.md#common, pytorch-grad-cam's documented choices):
ResNet ``layer4`` (last block output); VGG/DenseNet/MobileNet/EfficientNet/ConvNeXt ``features`` (last
feature map before pooling); ViT ``encoder.layers.encoder_layer_11.ln_1`` (input LayerNorm of the last
block: the last block's output only feeds the head through the class token, so patch gradients would
be 0) with :func:`vit_reshape`; Swin ``features.7.1.norm2`` (channels-last ``[B,7,7,C]``; pgc's
``layers[-1].blocks[-1].norm2``) with :func:`swin_reshape`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data._common import imagenet_names
from ..errors import InputError, UnknownNameError, WeightsError
from ..methods.capture import default_layer_name, swin_reshape, vit_reshape
from ..types import ModelHandle, Reshape
from .base import MODELS, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- weights ------------------------------------------------------------------------------------------
@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build a model under ``torch.manual_seed(seed)`` without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps ``url``'s file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def _unwrap_state_dict(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path} is not a state dict of tensors (got {type(obj).__name__}). Save the weights with "
            "torch.save(model.state_dict(), path)."
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike) -> dict:
    """Read a checkpoint without executing anything: safetensors, or ``torch.load(weights_only=True)``."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"Checkpoint file {p} does not exist. Pass an existing file or weights='random'.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as e:  # unpickling refused (not plain tensors) or a corrupt file
        raise WeightsError(
            f"Cannot read checkpoint {p} with torch.load(weights_only=True): {e}. Only plain state dicts "
            "of tensors are accepted (nothing from a checkpoint is executed)."
        ) from e
    return _unwrap_state_dict(obj, p)


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _fix_densenet_keys(sd: dict) -> dict:
    """The published DenseNet checkpoints name ``norm.1`` what the module calls ``norm1``."""
    out = {}
    for k, v in sd.items():
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, name: str, fix: Callable[[dict], dict] | None = None
) -> nn.Module:
    """Load a state dict (strict) into ``model``; mismatches raise :class:`WeightsError`."""
    sd = read_state_dict(path)
    if fix is not None:
        sd = fix(sd)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"Checkpoint {path} does not fit model {name}: {str(e)[:600]}") from e
    return model


def missing_weights_error(name: str, path: Path, url: str) -> WeightsError:
    return WeightsError(
        f"Pretrained weights for {name} are not available offline: {path} does not exist. "
        f"Download {url} and save it as {path} (e.g. `curl -L -o {path} {url}`, or run torchvision once "
        f"with internet so it fills the cache; set TORCH_HOME to use another cache), pass a local "
        f"checkpoint path as weights='/path/to/file.pth', or use weights='random'."
    )


def swin_tokens_reshape(x: torch.Tensor) -> torch.Tensor:
    """Swin activations -> ``[B,C,h,w]``: channels-last maps ``[B,h,w,C]`` (torchvision, timm stage
    outputs) are permuted; token sequences ``[B,N,C]`` (timm block norms) go to a square grid, with no
    class token to drop (docs/methods.md#common)."""
    if x.ndim == 4:
        return swin_reshape(x)
    return vit_reshape(x, prefix=0)


def redraw_zero_linears(model: nn.Module, std: float = 0.02) -> int:
    """Redraw ``N(0, std²)`` every ``nn.Linear`` weight that is all zeros; returns how many.

    torchvision zero-initialises the ViT head, so a randomly initialised ViT would output constant
    logits and every gradient would be 0 (useless for CAMs and for randomisation tests).
    """
    count = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and not bool(m.weight.detach().any()):
            with torch.no_grad():
                m.weight.normal_(0.0, std)
            count += 1
    return count


# -- torchvision --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TorchvisionSpec:
    name: str
    weights_enum: str  # attribute of torchvision.models, e.g. "ResNet18_Weights"
    target_layer: str
    reshape: Reshape | None = None
    fix: Callable[[dict], dict] | None = None
    family: str = "cnn"


TORCHVISION_MODELS: dict[str, TorchvisionSpec] = {
    s.name: s
    for s in [
        TorchvisionSpec("resnet18", "ResNet18_Weights", "layer4"),
        TorchvisionSpec("resnet50", "ResNet50_Weights", "layer4"),
        TorchvisionSpec("vgg16", "VGG16_Weights", "features"),
        TorchvisionSpec("densenet121", "DenseNet121_Weights", "features", fix=_fix_densenet_keys),
        TorchvisionSpec("mobilenet_v3_large", "MobileNet_V3_Large_Weights", "features"),
        TorchvisionSpec("efficientnet_b0", "EfficientNet_B0_Weights", "features"),
        TorchvisionSpec("convnext_tiny", "ConvNeXt_Tiny_Weights", "features"),
        TorchvisionSpec(
            "vit_b_16",
            "ViT_B_16_Weights",
            "encoder.layers.encoder_layer_11.ln_1",
            vit_reshape,
            family="vit",
        ),
        TorchvisionSpec("swin_t", "Swin_T_Weights", "features.7.1.norm2", swin_tokens_reshape, family="swin"),
    ]
}


def torchvision_model(
    spec: TorchvisionSpec, weights: str = "default", seed: int = 0, target_layer: str | None = None
) -> ModelHandle:
    """Build torchvision ``spec.name`` with ``weights`` ("default" = local hub cache, "random", a path)."""
    import torchvision.models as tvm

    enum = getattr(tvm, spec.weights_enum).DEFAULT
    builder = getattr(tvm, spec.name)
    ckpt: Path | None = None
    if weights == "default":
        ckpt = hub_checkpoint_path(enum.url)
        if not ckpt.is_file():  # fail before building anything
            raise missing_weights_error(spec.name, ckpt, enum.url)
    elif weights != "random":
        ckpt = Path(weights)
        if not ckpt.is_file():
            raise WeightsError(
                f"Checkpoint {ckpt} for {spec.name} does not exist. Pass an existing state-dict file, "
                "'default' (torch hub cache) or 'random'."
            )
    with seeded_init(seed):
        model = builder(weights=None)
        if ckpt is None:
            redraw_zero_linears(model)
    if ckpt is not None:
        load_checkpoint(model, ckpt, spec.name, fix=spec.fix)
    return ModelHandle(
        name=spec.name,
        model=model.eval(),
        target_layer=target_layer or spec.target_layer,
        input_size=(224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        reshape=spec.reshape,
        class_names=list(enum.meta["categories"]),
        meta={
            "weights": str(ckpt) if ckpt is not None else weights,
            "url": enum.url,
            "family": spec.family,
            "num_classes": 1000,
        },
    )


for _spec in TORCHVISION_MODELS.values():
    register_model(_spec.name, source="torchvision", family=_spec.family, pretrained="torch-hub-cache")(
        partial(torchvision_model, _spec)
    )


# -- timm ---------------------------------------------------------------------------------------------
#: timm models registered as ``timm/<name>``; any other timm name works through :func:`timm_model`.
TIMM_MODELS = (
    "resnet18",
    "resnet50",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "convnext_tiny",
    "efficientnet_b0",
    "mobilenetv3_large_100",
)


def _timm_cached_weights(model_name: str) -> tuple[Path | None, list[str]]:
    """Locate the pretrained file of a timm model in the local HF / torch hub caches (no network)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    tried: list[str] = []
    if cfg is None:
        return None, tried
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
            from huggingface_hub.constants import HF_HUB_CACHE

            files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for fname in files:
                found = try_to_load_from_cache(cfg.hf_hub_id, fname)
                tried.append(f"{HF_HUB_CACHE}/models--{cfg.hf_hub_id.replace('/', '--')}/.../{fname}")
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found), tried
        except ImportError:
            pass
    if isinstance(cfg.url, str) and cfg.url and not cfg.custom_load:
        p = hub_checkpoint_path(cfg.url)
        tried.append(str(p))
        if p.is_file():
            return p, tried
    return None, tried


def timm_model(
    model_name: str, weights: str = "default", seed: int = 0, target_layer: str | None = None
) -> ModelHandle:
    """Any timm classifier, offline. Pretrained weights only from the local HF / torch hub cache."""
    try:
        import timm
    except ImportError as e:
        raise WeightsError(f"timm/{model_name} needs timm (pip install timm).") from e
    if model_name not in timm.list_models() and model_name.split(".")[0] not in timm.list_models():
        raise UnknownNameError(f"timm has no model {model_name!r}; see timm.list_models('<pattern>').")
    sd: dict | None = None
    src = weights
    if weights == "default":
        path, tried = _timm_cached_weights(model_name)
        if path is None:
            raise WeightsError(
                f"Pretrained weights for timm/{model_name} are not in the local cache (looked for: "
                f"{'; '.join(tried) or 'no pretrained config'}). On a machine with internet run "
                f"`python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"` and copy "
                f"the Hugging Face cache (HF_HOME), pass weights='/path/to/checkpoint', or use "
                "weights='random'."
            )
        sd, src = read_state_dict(path), str(path)
    elif weights != "random":
        sd = read_state_dict(weights)
    with seeded_init(seed):
        if sd is not None and weights == "default":
            # the pretrained filter (e.g. positional-embedding resampling) runs on our tensors
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"state_dict": sd})
        else:
            model = timm.create_model(model_name, pretrained=False)
            if sd is None:
                redraw_zero_linears(model)
    if sd is not None and weights != "default":
        load_checkpoint_dict(model, sd, f"timm/{model_name}")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    layer = target_layer or default_layer_name(model)
    cls = type(model).__name__.lower()
    reshape: Reshape | None = None
    if "visiontransformer" in cls or "deit" in cls:
        reshape = partial(vit_reshape, prefix=int(getattr(model, "num_prefix_tokens", 1)))
    elif "swin" in cls:
        reshape = swin_tokens_reshape
        if target_layer is None and hasattr(model, "layers"):
            stages: Any = model.layers  # timm Swin: a Sequential of stages with ``blocks``
            last = len(stages) - 1
            layer = f"layers.{last}.blocks.{len(stages[last].blocks) - 1}.norm2"
    size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    num_classes = int(getattr(model, "num_classes", 1000))
    return ModelHandle(
        name=f"timm/{model_name}",
        model=model.eval(),
        target_layer=layer,
        input_size=(int(size[0]), int(size[1])),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        reshape=reshape,
        class_names=imagenet_names() if num_classes == 1000 else None,
        meta={"weights": src, "num_classes": num_classes, "source": "timm"},
    )


def load_checkpoint_dict(model: nn.Module, sd: dict, name: str) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"Checkpoint does not fit model {name}: {str(e)[:600]}") from e


def _timm_available() -> bool:
    """Checked without importing timm (its import costs seconds)."""
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def _resolve_timm(model_name: str) -> tuple[Callable[..., ModelHandle], dict[str, Any]]:
    """``"timm/<any timm name>"``: a factory of :func:`timm_model` (timm is imported when it is called)."""
    return partial(timm_model, model_name), {"source": "timm", "family": "timm", "pretrained": "hf-cache"}


MODELS.add_prefix("timm", _resolve_timm)

if _timm_available():
    for _name in TIMM_MODELS:
        register_model(f"timm/{_name}", source="timm", family="timm", pretrained="hf-cache")(partial(timm_model, _name))


# -- torchvision video classifiers (Kinetics-400) ------------------------------------------------------
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class MViTTokens:
    """Reshape of MViT's token outputs ``[B, 1 + t*h*w, C]`` (class token first) to ``[B,C,t,h,w]``.

    MViT carries the token grid ``thw`` beside the tokens (``block(x, thw)``); a forward pre-hook on the
    block that holds the target layer records it on every forward, so the reshape always uses the grid of
    the clip just explained. Picklable state: the recorded grid only.
    """

    def __init__(self) -> None:
        self.thw: tuple[int, int, int] | None = None

    def record(self, module: nn.Module, args: tuple) -> None:
        self.thw = tuple(int(v) for v in args[1])  # type: ignore[assignment]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.thw is None:
            raise WeightsError("MViT token grid unknown: the model has not run since it was built.")
        t, h, w = self.thw
        b, n, c = x.shape
        if n - 1 != t * h * w:
            raise InputError(f"MViT: {n - 1} patch tokens do not form the recorded {t}x{h}x{w} grid.")
        return x[:, 1:, :].reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


@dataclass(frozen=True)
class VideoSpec:
    name: str
    weights_enum: str  # attribute of torchvision.models.video
    target_layer: str
    input_size: tuple[int, int, int]  # (T, H, W) the weights were trained at
    family: str = "video_cnn"


VIDEO_MODELS: dict[str, VideoSpec] = {
    s.name: s
    for s in [
        VideoSpec("r3d_18", "R3D_18_Weights", "layer4", (16, 112, 112)),
        VideoSpec("mc3_18", "MC3_18_Weights", "layer4", (16, 112, 112)),
        VideoSpec("r2plus1d_18", "R2Plus1D_18_Weights", "layer4", (16, 112, 112)),
        VideoSpec("s3d", "S3D_Weights", "features", (16, 224, 224)),
        # the last block's input LayerNorm (as for ViT: the block output reaches the head only through the
        # class token, so its patch gradients would be 0)
        VideoSpec("mvit_v2_s", "MViT_V2_S_Weights", "blocks.15.norm1", (16, 224, 224), family="video_transformer"),
    ]
}


def video_model(
    spec: VideoSpec,
    weights: str = "default",
    seed: int = 0,
    target_layer: str | None = None,
    input_size: tuple[int, int, int] | None = None,
) -> ModelHandle:
    """torchvision video classifier ``spec.name`` ("default" = the Kinetics-400 checkpoint in the local torch
    hub cache, never downloaded; "random"; or a state-dict path). ``input_size`` (T, H, W) overrides the
    clip size the data is resized to (tiny clips for CPU tests)."""
    import torchvision.models.video as tvv

    enum = getattr(tvv, spec.weights_enum).DEFAULT
    ckpt: Path | None = None
    if weights == "default":
        ckpt = hub_checkpoint_path(enum.url)
        if not ckpt.is_file():
            raise missing_weights_error(spec.name, ckpt, enum.url)
    elif weights != "random":
        ckpt = Path(weights)
        if not ckpt.is_file():
            raise WeightsError(
                f"Checkpoint {ckpt} for {spec.name} does not exist. Pass an existing state-dict file, "
                "'default' (torch hub cache) or 'random'."
            )
    with seeded_init(seed):
        model = getattr(tvv, spec.name)(weights=None)
        if ckpt is None:
            redraw_zero_linears(model)
    if ckpt is not None:
        load_checkpoint(model, ckpt, spec.name)
    layer = target_layer or spec.target_layer
    reshape: Reshape | None = None
    if spec.family == "video_transformer":
        tokens = MViTTokens()
        block = ".".join(layer.split(".")[:2])  # "blocks.<i>"
        dict(model.named_modules())[block].register_forward_pre_hook(tokens.record)
        reshape = tokens
    return ModelHandle(
        name=spec.name,
        model=model.eval(),
        target_layer=layer,
        input_size=tuple(input_size or spec.input_size),
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        reshape=reshape,
        class_names=list(enum.meta["categories"]),
        meta={
            "weights": str(ckpt) if ckpt is not None else weights,
            "url": enum.url,
            "family": spec.family,
            "num_classes": len(enum.meta["categories"]),
            "ndim": 3,
        },
    )


for _vspec in VIDEO_MODELS.values():
    register_model(_vspec.name, source="torchvision", family=_vspec.family, pretrained="torch-hub-cache", ndim=3)(
        partial(video_model, _vspec)
    )
