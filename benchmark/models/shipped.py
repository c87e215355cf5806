"""Weights of cambench's own synthetic models, shipped inside the package (a fixed reference everywhere).

Each shipped model ``NAME`` is two files in ``benchmark/models/weights/``:

- ``NAME.pt``: a ``state_dict`` saved with ``torch.save`` and loaded with ``weights_only=True``;
- ``NAME.json``: its SHA-256 (``sha256``), the training configuration and hash (``config``, ``hash``)
  and what training measured (held-out accuracy, seconds, torch version).

:func:`load_shipped` verifies the SHA-256 before loading, so a corrupt or edited file is refused with a
message naming the file and the fix. :func:`save_shipped` writes both files atomically; it is what
``python run_bench.py train-models`` (and the training helpers of each synthetic model) call to refresh them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..errors import WeightsError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def weights_dir() -> Path:
    """The folder of the shipped weights (``benchmark/models/weights``)."""
    return WEIGHTS_DIR


def _paths(name: str, root: Path | None = None) -> tuple[Path, Path]:
    d = root if root is not None else WEIGHTS_DIR
    return d / f"{name}.pt", d / f"{name}.json"


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def has_shipped(name: str, root: Path | None = None) -> bool:
    """Whether weights for ``name`` ship with the package."""
    pt, js = _paths(name, root)
    return pt.is_file() and js.is_file()


def shipped_meta(name: str, root: Path | None = None) -> dict[str, Any]:
    """The JSON record beside the shipped weights of ``name`` (raises :class:`WeightsError` if absent)."""
    pt, js = _paths(name, root)
    if not js.is_file():
        raise WeightsError(
            f"No shipped weights for {name!r}: {str(js)!r} is missing. Reinstall cambench, or train them with "
            f'`python run_bench.py train-models {name}` (or pass weights="train").'
        )
    try:
        return dict(json.loads(js.read_text()))
    except json.JSONDecodeError as exc:
        raise WeightsError(
            f"The record {str(js)!r} of the shipped weights of {name!r} is not valid JSON: {exc}. Reinstall cambench."
        ) from exc


def load_shipped(name: str, root: Path | None = None, expect_hash: str | None = None) -> dict[str, Tensor]:
    """The shipped ``state_dict`` of ``name``, after checking its SHA-256 against its JSON record.

    ``expect_hash``: the training-configuration hash the caller builds for; a record of another
    configuration (the architecture changed, say) is refused instead of loaded into the wrong model.
    """
    pt, _ = _paths(name, root)
    meta = shipped_meta(name, root)
    if not pt.is_file():
        raise WeightsError(
            f"Shipped weights {str(pt)!r} for {name!r} are missing. Reinstall cambench, or run "
            f"`python run_bench.py train-models {name}`."
        )
    digest = sha256_file(pt)
    if digest != meta.get("sha256"):
        raise WeightsError(
            f"Shipped weights {str(pt)!r} fail their SHA-256 check (file {digest[:12]}..., record "
            f"{str(meta.get('sha256'))[:12]}...): the file is corrupt or was edited. Reinstall cambench, or "
            f"retrain with `python run_bench.py train-models {name}`."
        )
    if expect_hash is not None and meta.get("hash") != expect_hash:
        raise WeightsError(
            f"Shipped weights of {name!r} were trained for another configuration (hash "
            f"{str(meta.get('hash'))[:12]}..., expected {expect_hash[:12]}...). Retrain them with "
            f'`python run_bench.py train-models {name}`, or pass weights="train".'
        )
    try:
        return torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"Could not load shipped weights {str(pt)!r} with weights_only=True: {exc}. Reinstall cambench."
        ) from exc


def _atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_shipped(name: str, state: Mapping[str, Tensor], meta: Mapping[str, Any], root: Path | None = None) -> Path:
    """Write ``NAME.pt`` and ``NAME.json`` (with the file's SHA-256) atomically; returns the ``.pt`` path."""
    import io

    pt, js = _paths(name, root)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    data = buf.getvalue()
    _atomic(pt, data)
    record = {**dict(meta), "sha256": hashlib.sha256(data).hexdigest(), "torch": torch.__version__}
    _atomic(js, (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
    return pt


__all__ = ["WEIGHTS_DIR", "has_shipped", "load_shipped", "save_shipped", "sha256_file", "shipped_meta", "weights_dir"]


def load_checkpoint_into(model: nn.Module, path: str, name: str) -> None:
    """Load a user's state_dict file (``weights_only=True``) into ``model``; :class:`WeightsError` (one line
    naming the fix) when the file is missing, unreadable or does not fit ``name``'s architecture."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(
            f"Checkpoint {path!r} does not exist. Pass weights='default' (shipped), 'train', 'random' or the path "
            "of a state_dict saved with torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:
        raise WeightsError(f"Could not load checkpoint {path!r} with weights_only=True: {exc}") from exc
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise WeightsError(f"Checkpoint {path!r} does not fit {name}: {str(exc)[:600]}") from exc


_M = TypeVar("_M", bound=nn.Module)


def resolve_weights(
    model: _M,
    name: str,
    weights: str,
    *,
    digest: str,
    train: Callable[[], tuple[_M, dict[str, Any]]],
    seed: int = 0,
) -> tuple[_M, dict[str, Any]]:
    """A shipped model's ``weights`` argument, one rule for all of them: ``"default"`` loads the shipped file
    (SHA-256 and config ``digest`` checked), ``"train"`` calls ``train()`` (its model and record), ``"random"``
    keeps the seeded initialisation, anything else is a state_dict path. Returns the model and what to add to
    its handle's ``meta``."""
    if weights == "default":
        if not has_shipped(name):
            raise WeightsError(
                f"The shipped weights of {name} are missing; reinstall cambench, run "
                f"`python run_bench.py train-models {name}`, or pass weights='train'."
            )
        model.load_state_dict(load_shipped(name, expect_hash=digest))
        return model, {k: v for k, v in shipped_meta(name).items() if k != "config"}
    if weights == "train":
        return train()
    if weights == "random":
        return model, {"seed": seed}
    load_checkpoint_into(model, weights, name)
    return model, {}
