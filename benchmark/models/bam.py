"""BAM-style model truth on the composites: an object head and a scene head on frozen efficientnet_lite0.

Yang & Kim 2019 (BAM, arXiv:1907.09701, Sec. 3) train two models on the same composite images: one to
predict the pasted object's class (so the object matters to it) and one to predict the scene (so the object
does not). Here both are linear heads on the frozen, globally pooled ``_head_act`` features of the offline
ImageNet efficientnet_lite0 (``models/efficientnet.py``), trained on ``composites`` ``split="train"``
(every candidate, ``keep="all"``) and shipped like the synthetic models (``benchmark/models/weights``,
SHA-256 checked, ``weights_only=True``; ``python run_bench.py train-models composites_heads`` retrains them
and rewrites the list of composites efficientnet_lite0 recognises, ``data/annotations/composites_kept.json``).

``composites_object``: the object head's model; it declares its contrast model (the scene head on the same
backbone) as its ``contrast_model`` attribute, which BAM's metrics (``metrics/truth.py``, need
``"contrast"``) explain beside it. ``composites_scene``: the scene head alone. Both are GAP -> Linear over
``backbone._head_act``, so CAM is defined there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.composites import (
    GENERATOR_VERSION,
    KEEP_TOP_K,
    KEPT_FILE,
    CompositesDataset,
    background_ids,
)
from ..errors import WeightsError
from ..types import ModelHandle
from .base import register_model
from .efficientnet import LITE_MEAN, LITE_STD, build_lite0, lite0_weights_path
from .shipped import load_shipped, save_shipped, shipped_meta
from .zoo import load_checkpoint

log = logging.getLogger(__name__)

TARGET_LAYER = "backbone._head_act"
TRAINER_VERSION = 1
#: Candidates of the test split scored for the kept list, and training images of the heads.
N_CANDIDATES = 840
N_TRAIN = 540
HEAD_NAMES = ("composites_object_head", "composites_scene_head")


class HeadModel(nn.Module):
    """Frozen efficientnet_lite0 features -> global average pooling -> ``nn.Linear`` head.

    ``contrast_model`` (optional submodule): the model BAM's contrast metrics explain beside this one (the
    scene head for the object head); it shares this model's backbone.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, contrast: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        if contrast is not None:
            self.contrast_model = contrast

    def forward(self, x: Tensor) -> Tensor:
        return self.head(pooled_features(self.backbone, x))


def pooled_features(net: Any, x: Tensor) -> Tensor:
    """efficientnet_lite0's globally pooled ``_head_act`` features ``[B,1280]`` (what its ``_fc`` reads)."""
    return net._avg_pooling(net.extract_features(x)).flatten(1)


def _config() -> dict[str, Any]:
    """What the heads' weights depend on (their hash); the kept list's settings are recorded beside it."""
    return {
        "generator_version": GENERATOR_VERSION,
        "trainer_version": TRAINER_VERSION,
        "n_train": N_TRAIN,
        "backbone": "efficientnet_lite0 (efficientnet-lite0-57934424.pth)",
        "head": "linear on pooled _head_act features; Adam lr 0.01, weight decay 1e-3, 300 full-batch steps",
    }


def config_hash() -> str:
    return hashlib.sha256(json.dumps(_config(), sort_keys=True).encode()).hexdigest()


def _lite0() -> nn.Module:
    net = build_lite0()
    load_checkpoint(net, lite0_weights_path(), name="efficientnet_lite0")
    return net.eval()


def _features(net: Any, images01: Tensor, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Pooled ``_head_act`` features ``[N,1280]`` and ImageNet logits ``[N,1000]`` of images in [0,1]."""
    mean = torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD).view(1, 3, 1, 1)
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(images01), batch_size):
            x = (images01[i : i + batch_size] - mean) / std
            f = pooled_features(net, x)
            feats.append(f)
            logits.append(net._fc(f))
    return torch.cat(feats), torch.cat(logits)


def _encode(net: Any, ds: CompositesDataset, chunk: int = 64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    fs: list[Tensor] = []
    ls: list[Tensor] = []
    ys: list[Tensor] = []
    zs: list[Tensor] = []
    t0 = time.perf_counter()
    for i in range(0, len(ds), chunk):
        x, y, z = ds.images_and_labels(range(i, min(len(ds), i + chunk)))
        f, lg = _features(net, x)
        fs.append(f)
        ls.append(lg)
        ys.append(y)
        zs.append(z)
        done, secs = min(len(ds), i + chunk), time.perf_counter() - t0
        log.info("composites %s: %d/%d encoded (%.0f s)", ds.split, done, len(ds), secs)
    return torch.cat(fs), torch.cat(ls), torch.cat(ys), torch.cat(zs)


def kept_from_logits(logits: Tensor, classes: Tensor, k: int = KEEP_TOP_K) -> Tensor:
    """``[N]`` bool: whether each image's ``classes[i]`` (ImageNet index) is among the top-``k`` logits."""
    top = logits.topk(k, dim=1).indices
    return (top == classes[:, None]).any(dim=1)


def train_head(features: Tensor, labels: Tensor, num_classes: int, seed: int = 0, steps: int = 300) -> nn.Linear:
    """A linear head fitted by full-batch Adam on cross-entropy (L2 weight decay), deterministic on CPU."""
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(features), labels)
        loss.backward()
        opt.step()
    return head.eval()


def _accuracy(head: nn.Linear, f: Tensor, y: Tensor) -> float:
    with torch.inference_mode():
        return float((head(f).argmax(1) == y).float().mean())


def train_and_ship(root: Path | None = None, kept_file: Path | None = None) -> dict[str, dict[str, Any]]:
    """Score :data:`N_CANDIDATES` test composites with efficientnet_lite0 (kept list, top-5), train both heads
    on :data:`N_TRAIN` train composites, measure their held-out accuracy on the kept test composites, and
    write the kept list and both heads' shipped weights. Returns each head's record."""
    t0 = time.perf_counter()
    net = _lite0()
    test = CompositesDataset(n=N_CANDIDATES, split="test", keep="all", label="object")
    f_te, lg_te, y_te, z_te = _encode(net, test)
    imagenet = torch.tensor(test.imagenet_classes)[y_te]
    kept = kept_from_logits(lg_te, imagenet)
    indices = torch.nonzero(kept).flatten().tolist()
    doc = {
        "_about": (
            f"Indices of the composites candidates (benchmark/data/composites.py) whose pasted object's ImageNet class "
            f"efficientnet_lite0 ranks in its top {KEEP_TOP_K}, out of the first {N_CANDIDATES} candidates; written by "
            "`python run_bench.py train-models composites_heads` (benchmark/models/bam.py)."
        ),
        "kept": {
            f"v{GENERATOR_VERSION}/seed0/test/objects1": {
                "candidates": N_CANDIDATES,
                "top_k": KEEP_TOP_K,
                "share_kept": round(len(indices) / N_CANDIDATES, 4),
                "indices": indices,
            }
        },
    }
    path = kept_file or KEPT_FILE
    path.write_text(json.dumps(doc, indent=1) + "\n")
    train = CompositesDataset(n=N_TRAIN, split="train", keep="all", label="object")
    f_tr, _, y_tr, z_tr = _encode(net, train)
    heads = {
        "composites_object_head": (train_head(f_tr, y_tr, len(test.imagenet_classes)), y_te),
        "composites_scene_head": (train_head(f_tr, z_tr, len(background_ids())), z_te),
    }
    out = {}
    for name, (head, y_true) in heads.items():
        record = {
            "hash": config_hash(),
            "config": _config(),
            "held_out_accuracy": {
                "kept_test": _accuracy(head, f_te[kept], y_true[kept]),
                "all_test_candidates": _accuracy(head, f_te, y_true),
            },
            "train_accuracy": _accuracy(head, f_tr, y_tr if name == "composites_object_head" else z_tr),
            "kept_list": {"candidates": N_CANDIDATES, "top_k": KEEP_TOP_K, "share_kept": len(indices) / N_CANDIDATES},
            "seconds": time.perf_counter() - t0,
        }
        save_shipped(name, head.state_dict(), record, root=root)
        out[name] = shipped_meta(name, root)
        log.info("%s: shipped (held-out accuracy %s)", name, record["held_out_accuracy"])
    return out


def _head(name: str, num_classes: int, weights: str, seed: int) -> nn.Linear:
    head = nn.Linear(1280, num_classes)
    if weights == "default":
        head.load_state_dict(load_shipped(name, expect_hash=config_hash()))
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head.reset_parameters()
    else:
        raise WeightsError(f"weights of {name!r} must be 'default' (shipped) or 'random'; got {weights!r}.")
    return head


def _handle(name: str, model: nn.Module, class_names: list[str], weights: str, head_name: str) -> ModelHandle:
    meta: dict[str, Any] = {"weights": weights}
    if weights == "default":
        meta.update({k: v for k, v in shipped_meta(head_name).items() if k != "config"})
    return ModelHandle(
        name=name,
        model=model.eval(),
        target_layer=TARGET_LAYER,
        input_size=(224, 224),
        mean=LITE_MEAN,
        std=LITE_STD,
        class_names=class_names,
        meta=meta,
    )


def _object_classes() -> list[str]:
    return CompositesDataset(keep="all", n=0, label="object").class_names or []


@register_model("composites_object", dataset="composites", family="efficientnet", paper="Yang & Kim 2019 (BAM)")
def composites_object(weights: str = "default", seed: int = 0) -> ModelHandle:
    """The object head (pasted object's class; ``data = {label = "object"}``) with the scene head as its
    ``contrast_model``; weights: "default" (shipped heads) or "random" (random heads, frozen ImageNet backbone)."""
    backbone = _lite0()
    obj = _head("composites_object_head", len(_object_classes()), weights, seed)
    scene = _head("composites_scene_head", len(background_ids()), weights, seed + 1)
    model = HeadModel(backbone, obj, contrast=HeadModel(backbone, scene))
    return _handle("composites_object", model, _object_classes(), weights, "composites_object_head")


@register_model("composites_scene", dataset="composites", family="efficientnet", paper="Yang & Kim 2019 (BAM)")
def composites_scene(weights: str = "default", seed: int = 0) -> ModelHandle:
    """The scene head alone (predicts the background; explain ``data.extras["contrast_target"]``)."""
    model = HeadModel(_lite0(), _head("composites_scene_head", len(background_ids()), weights, seed))
    return _handle("composites_scene", model, background_ids(), weights, "composites_scene_head")


__all__ = [
    "HEAD_NAMES",
    "HeadModel",
    "TARGET_LAYER",
    "composites_object",
    "composites_scene",
    "config_hash",
    "kept_from_logits",
    "train_and_ship",
    "train_head",
]
