"""The one training loop of cambench's own synthetic models (shapes, multi-label shapes, volumes).

:func:`fit` seeds torch, builds the model, loads the training set (uint8 tensors, converted batch by batch),
and trains with Adam and a one-cycle learning-rate schedule (Smith & Topin 2019, ``pct_start = 0.25``),
visiting the images in a seeded random order each epoch. The order of the random draws (global seed, model
init, data, one permutation per epoch from a private generator) and of the optimizer and scheduler calls
is fixed: the trained weights are a function of the configuration (and of the torch build), and the loop
reproduces the weights the three model modules trained before they shared it.

Progress (:class:`benchmark.progress.EpochProgress`): a tqdm bar over the steps where bars are allowed (a
terminal, not ``--quiet``, not a worker process), else one log line per epoch with the elapsed time and
the ETA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..errors import CambenchError
from ..progress import EpochProgress

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

#: Fraction of the steps in the rising phase of the one-cycle schedule.
PCT_START = 0.25


def top1_correct(logits: Tensor, labels: Tensor) -> int:
    """Images whose arg-max logit is their label."""
    return int((logits.argmax(1) == labels).sum())


@torch.inference_mode()
def top1_accuracy(
    model: nn.Module, dataset: Any, normalize: Callable[[Tensor], Tensor], batch_size: int = 200
) -> float:
    """Top-1 accuracy of ``model`` on a synthetic dataset with ``images_and_labels(indices)``, in batches."""
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.images_and_labels(range(start, min(len(dataset), start + batch_size)))
        correct += top1_correct(model(normalize(x)), y)
    return correct / max(1, len(dataset))


def exact_match_correct(logits: Tensor, targets: Tensor) -> int:
    """Multi-label images with every class right at logit 0 (sigmoid 0.5)."""
    return int(((logits > 0).to(targets.dtype) == targets).all(1).sum())


def schedule(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`fit` that every shipped model's config holds under the same names:
    ``seed``, ``epochs``, ``batch_size``, ``lr`` and ``weight_decay``."""
    return {k: getattr(cfg, k) for k in ("seed", "epochs", "batch_size", "lr", "weight_decay")}


def fit(
    build: Callable[[], M],
    data: Callable[[], tuple[Tensor, Tensor]],
    *,
    name: str,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    inputs: Callable[[Tensor], Tensor],
    loss: Callable[[Tensor, Tensor], Tensor],
    correct: Callable[[Tensor, Tensor], int] | None = top1_correct,
    accuracy: str = "train accuracy",
) -> tuple[M, dict[str, Any]]:
    """Train ``build()`` on ``data()`` and return it in eval mode with ``{"train_seconds", "final_loss"}``.

    ``data()`` gives the training images (any dtype, e.g. uint8) and their targets; ``inputs(images[idx])``
    turns a batch into the model's input (scaling, normalization); ``loss(logits, targets[idx])`` is the
    objective; ``correct(logits, targets)`` counts the right answers of a batch for the epoch line (None: no
    accuracy). ``final_loss`` is the mean loss of the last quarter epoch.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build()
    images, targets = data()
    n = int(targets.shape[0])
    steps = -(-n // batch_size)
    total = max(1, epochs * steps)
    if PCT_START * total - 1 == 0:  # OneCycleLR divides by the length of its rising phase: zero here
        raise CambenchError(
            f"Training {name}: {epochs} epoch(s) of {steps} step(s) ({n} images, batch_size {batch_size}) are "
            f"{total} steps, which the one-cycle schedule cannot split (its warm-up would last 0 steps). Change "
            "epochs, n_train or batch_size (at least 8 steps in all)."
        )
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=PCT_START)
    model.train()
    losses: list[float] = []
    summary = "no epochs"
    with EpochProgress(log, name, epochs, steps) as progress:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            right = 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                logits = model(inputs(images[idx]))
                value = loss(logits, targets[idx])
                if correct is not None:
                    right += correct(logits.detach(), targets[idx])
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                sched.step()
                losses.append(float(value.detach()))
                progress.step()
            summary = f"loss {sum(losses[-steps:]) / steps:.3f}"
            if correct is not None:
                summary += f", {accuracy} {right / n:.3f}"
            progress.epoch(epoch + 1, summary)
    model.eval()
    tail = losses[-max(1, steps // 4) :]
    seconds = time.perf_counter() - t0
    if progress.had_bar:  # the bar is gone: one line that stays
        log.info("%s trained: %s (%.0f s)", name, summary, seconds)
    return model, {"train_seconds": round(seconds, 2), "final_loss": sum(tail) / len(tail)}


__all__ = ["PCT_START", "exact_match_correct", "fit", "top1_accuracy", "top1_correct"]


def config_digest(config: Any, **versions: object) -> str:
    """SHA-256 of a training configuration (a dataclass) with the versions of what makes its data and weights
    (generator, trainer, ...): the hash recorded with shipped weights and checked when they load."""
    payload = {"config": asdict(config), **versions}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
