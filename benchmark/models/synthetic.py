"""Small CNNs trained by cambench on its own synthetic data: shapes_cnn, shapes_deep_cnn, shapes_shortcut_cnn.

Architecture (:class:`ShapesCNN`): four conv blocks (3x3 conv, BatchNorm, ReLU; the first conv has stride
2 and blocks 1-3 end with a 2x2 max-pool), then global average pooling and one linear layer, so the
original CAM (Zhou et al. 2016, eq. 2: ``M_c = sum_k w_k^c A_k``) applies. At 128x128 the default target
layer ``block4`` outputs an 8x8 map. Default widths 16-32-64-128 (about 16 M multiply-adds per 128 px
image): enough for >= 95 % held-out accuracy within the CPU budget.

``shapes_deep_cnn`` adds a fifth conv block after ``block4`` (still the explained layer), so its head is
not linear: the gradients at ``block4`` vary over space and Grad-CAM, HiResCAM and XGrad-CAM differ.
``shapes_cnn`` and ``shapes_deep_cnn`` are trained on both scene kinds of ``shapes`` (simple and clutter).

Weights ``"default"`` are the files shipped in ``benchmark/models/weights`` (SHA-256 checked, see
:mod:`benchmark.models.shipped`): the same numbers on every machine, no training at run time. Training
(``python run_bench.py train-models [NAMES]`` rewrites the shipped files; ``weights="train"`` trains in
the cache instead) uses a fixed seed and Adam for a few epochs on a few thousand images. Weights
``"train"`` are cached in ``$CAMBENCH_CACHE/synthetic`` (default ``~/.cache/cambench/synthetic``): a
``state_dict`` (``.pt``, loaded with ``weights_only=True``) plus a JSON file with the training
configuration and its hash. A different configuration (or generator version) has a different hash and is trained
again. Files are written to a temporary name and moved into place with
``os.replace``; an exclusive file lock (where the OS has ``fcntl``) makes concurrent processes wait for the
first trainer instead of training twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.synthetic import CLUTTER_VERSION, GENERATOR_VERSION, SCENES, SHAPE_CLASSES, ShapesDataset
from ..errors import InputError, WeightsError
from ..types import ModelHandle
from .base import register_model
from .shipped import load_shipped, save_shipped, shipped_meta
from .training import config_digest, fit, schedule, top1_accuracy

log = logging.getLogger(__name__)

#: Bump when the architecture or the training loop changes: it is part of the cache hash.
TRAINER_VERSION = 2

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
INPUT_SIZE = (128, 128)
TARGET_LAYER = "block4"


class ShapesCNN(nn.Module):
    """``3 -> w1 -> w2 -> w3 -> w4`` conv blocks, GAP and a linear classifier (CAM-compatible).

    ``head="conv"`` adds ``block5`` (3x3 conv, BatchNorm, ReLU at the 8x8 resolution of ``block4``) before
    the pooling: the explained layer ``block4`` is then followed by a non-linear, spatial head, so the
    gradients there vary over space and with the input, and Grad-CAM, HiResCAM and XGrad-CAM differ.
    """

    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential

    def __init__(self, num_classes: int = 6, widths: tuple[int, ...] = (32, 64, 96, 128), head: str = "linear") -> None:
        super().__init__()
        if head not in ("linear", "conv"):
            raise InputError(f"head must be 'linear' or 'conv', got {head!r}.")
        if len(widths) != 4:
            raise InputError(f"ShapesCNN needs 4 block widths, got {widths}.")
        chans = (3, *widths)
        for i in range(4):
            layers: list[nn.Module] = [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=False),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"block{i + 1}", nn.Sequential(*layers))
        self.head = head
        if head == "conv":
            w = widths[-1]
            self.block5 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        if self.head == "conv":
            x = self.block5(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained synthetic model (hashed for the cache)."""

    name: str = "shapes_cnn"
    shortcut: str | None = None  # None: plain shapes; "aligned": shapes_shortcut
    n_train: int = 4000
    image_size: int = 128
    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    widths: tuple[int, ...] = (16, 32, 64, 128)
    data_seed: int = 0
    #: Scene kinds of the training set (``n_train`` split evenly between them; see ``ShapesDataset``).
    scenes: tuple[str, ...] = ("simple",)
    head: str = "linear"  # "conv": one more conv block after the explained layer (ShapesCNN)

    def digest(self) -> str:
        return config_digest(
            self,
            generator_version=GENERATOR_VERSION,
            clutter_version=CLUTTER_VERSION if "clutter" in self.scenes else None,
            trainer_version=TRAINER_VERSION,
        )


DEFAULT_CONFIGS: dict[str, TrainConfig] = {
    # Trained on both scene kinds (6,000 images each, 10 epochs): >= 98 % held-out on simple and clutter scenes.
    "shapes_cnn": TrainConfig(scenes=("simple", "clutter"), n_train=12000, epochs=10),
    # The same data and schedule, with one more conv block after the explained layer (gradient methods differ).
    "shapes_deep_cnn": TrainConfig(
        name="shapes_deep_cnn", scenes=("simple", "clutter"), n_train=12000, epochs=10, head="conv"
    ),
    # The mark is far easier than the shape: little data and two epochs make the model rely on it.
    "shapes_shortcut_cnn": TrainConfig(name="shapes_shortcut_cnn", shortcut="aligned", n_train=2000, epochs=4),
}


def cache_dir() -> Path:
    """``$CAMBENCH_CACHE/synthetic`` or ``~/.cache/cambench/synthetic``."""
    root = os.environ.get("CAMBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cambench")
    return Path(root) / "synthetic"


def _paths(cfg: TrainConfig, root: Path | None = None) -> tuple[Path, Path, Path]:
    d = root if root is not None else cache_dir()
    stem = d / f"{cfg.name}-{cfg.digest()[:16]}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json"), stem.with_suffix(".lock")


def _dataset(cfg: TrainConfig, split: str, n: int, scene: str = "simple") -> ShapesDataset:
    return ShapesDataset(
        n=n,
        seed=cfg.data_seed,
        split=split,  # type: ignore[arg-type]
        image_size=cfg.image_size,
        shortcut=cfg.shortcut,  # type: ignore[arg-type]
        scene=scene,  # type: ignore[arg-type]
    )


_SETS: dict[tuple, tuple[Tensor, Tensor]] = {}  # rendered training sets of this process (train_and_ship)


def _training_set(cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """``n_train`` uint8 images ``[N,3,S,S]`` and labels, split evenly over ``cfg.scenes`` (in that order).

    Kept for the life of the process (at most two sets), so models trained on the same data render it once.
    """
    key = (cfg.n_train, cfg.image_size, cfg.shortcut, cfg.data_seed, cfg.scenes, GENERATOR_VERSION, CLUTTER_VERSION)
    if key not in _SETS:
        if len(_SETS) >= 2:
            _SETS.clear()
        _SETS[key] = _render_training_set(cfg)
    return _SETS[key]


def _render_training_set(cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    bad = [k for k in cfg.scenes if k not in SCENES]
    if bad or not cfg.scenes:
        raise InputError(f"TrainConfig.scenes must be a non-empty subset of {SCENES}, got {cfg.scenes!r}.")
    sizes = [cfg.n_train // len(cfg.scenes) + (i < cfg.n_train % len(cfg.scenes)) for i in range(len(cfg.scenes))]
    xs, ys = [], []
    for kind, n in zip(cfg.scenes, sizes, strict=True):
        ds = _dataset(cfg, "train", n, kind)
        for start in range(0, n, 500):  # in chunks: float images of the whole set would not fit in memory
            x, y = ds.images_and_labels(range(start, min(n, start + 500)))
            xs.append((x * 255).round_().to(torch.uint8))
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _normalize(images01: Tensor) -> Tensor:
    mean = torch.tensor(MEAN, dtype=images01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images01.dtype).view(1, 3, 1, 1)
    return (images01 - mean) / std


def train_shapes_model(cfg: TrainConfig) -> tuple[ShapesCNN, dict[str, Any]]:
    """Train :class:`ShapesCNN` on the ``train`` split as ``cfg`` says (deterministic for a given torch).

    Images are rendered once and kept as uint8 (``n_train x 3 x S x S`` bytes); each epoch visits them in
    a seeded random order; Adam with a one-cycle learning-rate schedule (:func:`benchmark.models.training.fit`).
    """
    return fit(
        lambda: ShapesCNN(len(SHAPE_CLASSES), cfg.widths, cfg.head),
        lambda: _training_set(cfg),
        name=cfg.name,
        **schedule(cfg),
        inputs=lambda u8: _normalize(u8.float().div_(255)),
        loss=nn.functional.cross_entropy,
    )


def evaluate_accuracy(model: nn.Module, dataset: ShapesDataset, batch_size: int = 200) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (labels = the object's class)."""
    return top1_accuracy(model, dataset, _normalize, batch_size)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (no-op where ``fcntl`` is missing: then the first writer wins)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _read_cached(cfg: TrainConfig, pt: Path, js: Path) -> dict[str, Tensor] | None:
    try:
        meta = json.loads(js.read_text())
        if meta.get("hash") != cfg.digest():
            return None
        return torch.load(pt, map_location="cpu", weights_only=True)
    except (FileNotFoundError, json.JSONDecodeError, RuntimeError, EOFError):
        return None


def load_or_train(cfg: TrainConfig, root: Path | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The trained ``state_dict`` for ``cfg`` from the cache, training (and caching) it if needed."""
    pt, js, lock = _paths(cfg, root)
    state = _read_cached(cfg, pt, js)
    if state is not None:
        return state, json.loads(js.read_text())
    with _locked(lock):
        state = _read_cached(cfg, pt, js)  # another process may have trained it while we waited
        if state is not None:
            return state, json.loads(js.read_text())
        model, info = train_shapes_model(cfg)
        state = model.state_dict()
        meta = {
            "hash": cfg.digest(),
            "config": asdict(cfg),
            "generator_version": GENERATOR_VERSION,
            "trainer_version": TRAINER_VERSION,
            "torch": torch.__version__,
            **info,
        }
        _atomic_write(pt, lambda p: torch.save(state, p))
        _atomic_write(js, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
        return state, meta


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a ``state_dict`` checkpoint (``weights_only=True``) into ``model`` with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(
            f"Checkpoint {str(p)!r} does not exist. Pass weights='default' (train/cache), 'random', or the "
            "path of a state_dict saved with torch.save(model.state_dict(), path)."
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"Could not load checkpoint {str(p)!r} with weights_only=True: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise WeightsError(f"Checkpoint {str(p)!r} does not fit {type(model).__name__}: {exc}") from exc


def _build(name: str, weights: str, seed: int, cfg: TrainConfig | None) -> ModelHandle:
    custom = cfg is not None and replace(cfg, name=name) != DEFAULT_CONFIGS[name]
    cfg = cfg or DEFAULT_CONFIGS[name]
    if cfg.name != name:
        cfg = replace(cfg, name=name)
    torch.manual_seed(seed)
    model = ShapesCNN(len(SHAPE_CLASSES), cfg.widths, cfg.head)
    meta: dict[str, Any] = {"weights": weights, "train_config": asdict(cfg)}
    if weights == "default" and not custom:  # the weights shipped with the package (a fixed reference)
        model.load_state_dict(load_shipped(name, expect_hash=cfg.digest()))
        meta.update({k: v for k, v in shipped_meta(name).items() if k not in ("config",)})
    elif weights in ("train", "default"):  # trained here (deterministic for a given torch), cached
        state, info = load_or_train(cfg)
        model.load_state_dict(state)
        meta.update(info)
    elif weights == "random":
        meta["seed"] = seed
    else:
        load_checkpoint(model, weights)
    model.eval()
    return ModelHandle(
        name=name,
        model=model,
        target_layer=TARGET_LAYER,
        input_size=(cfg.image_size, cfg.image_size),
        mean=MEAN,
        std=STD,
        class_names=list(SHAPE_CLASSES),
        meta=meta,
    )


#: Held-out images per scene kind on which :func:`train_and_ship` measures the accuracy it records.
N_HELD_OUT = 400


def held_out_accuracy(model: nn.Module, cfg: TrainConfig, n: int = N_HELD_OUT) -> dict[str, float]:
    """Accuracy on the ``test`` split of each scene kind of ``cfg`` (with its shortcut setting)."""
    return {kind: evaluate_accuracy(model, _dataset(cfg, "test", n, kind)) for kind in cfg.scenes}


def train_and_ship(names: list[str] | None = None, root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Train each synthetic model of ``names`` (default: all) with its default configuration and write its
    shipped weights (:func:`benchmark.models.shipped.save_shipped`); returns each model's record."""
    names = list(DEFAULT_CONFIGS) if not names else list(names)
    unknown = [n for n in names if n not in DEFAULT_CONFIGS]
    if unknown:
        raise WeightsError(f"Unknown synthetic model(s) {unknown}; trainable models: {sorted(DEFAULT_CONFIGS)}.")
    out = {}
    for name in names:
        cfg = DEFAULT_CONFIGS[name]
        model, info = train_shapes_model(cfg)
        record = {
            "hash": cfg.digest(),
            "config": asdict(cfg),
            "generator_version": GENERATOR_VERSION,
            "clutter_version": CLUTTER_VERSION,
            "trainer_version": TRAINER_VERSION,
            "held_out_accuracy": held_out_accuracy(model, cfg),
            **info,
        }
        save_shipped(name, model.state_dict(), record, root=root)
        out[name] = shipped_meta(name, root)
        log.info("%s: shipped (held-out accuracy %s)", name, record["held_out_accuracy"])
    return out


@register_model("shapes_cnn", dataset="shapes", synthetic=True, input_size=INPUT_SIZE)
def shapes_cnn(weights: str = "default", seed: int = 0, train_config: TrainConfig | None = None) -> ModelHandle:
    """Small CNN trained on ``shapes`` (``weights``: "default" = shipped, "train" = train here and cache,
    "random", or a checkpoint path)."""
    return _build("shapes_cnn", weights, seed, train_config)


@register_model("shapes_deep_cnn", dataset="shapes", synthetic=True, input_size=INPUT_SIZE)
def shapes_deep_cnn(weights: str = "default", seed: int = 0, train_config: TrainConfig | None = None) -> ModelHandle:
    """``shapes_cnn`` with one more conv block after the explained layer ``block4`` (non-linear head)."""
    return _build("shapes_deep_cnn", weights, seed, train_config)


@register_model("shapes_shortcut_cnn", dataset="shapes_shortcut", synthetic=True, input_size=INPUT_SIZE)
def shapes_shortcut_cnn(
    weights: str = "default", seed: int = 0, train_config: TrainConfig | None = None
) -> ModelHandle:
    """The same CNN trained on ``shapes_shortcut`` with aligned marks: it reads the mark, not the shape."""
    return _build("shapes_shortcut_cnn", weights, seed, train_config)


__all__ = [
    "DEFAULT_CONFIGS",
    "ShapesCNN",
    "TrainConfig",
    "cache_dir",
    "evaluate_accuracy",
    "load_checkpoint",
    "load_or_train",
    "held_out_accuracy",
    "shapes_cnn",
    "shapes_deep_cnn",
    "shapes_shortcut_cnn",
    "train_and_ship",
    "train_shapes_model",
]
