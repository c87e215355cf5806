"""Cost before running: forwards per image of every method, measured by a short probe, times the images.

:func:`count_forwards` runs each method once on a probe batch and counts the images the model is asked to
forward (a forward pre-hook on the model): Grad-CAM costs 1 forward (+ backward) per image, Score-CAM one per
live channel, ablation one per channel, the baselines 0. :func:`estimate_plan` does it per experiment of a
plan on two random inputs of the model's size, times one forward, and :func:`estimate_text` states the
estimate per experiment and warns, naming the dominant methods, when the suite will take more than
``warn_minutes``. Explanations only: metrics add their own forwards (deletion / insertion ``n_steps`` + 1 per
map, robustness re-explains ``n_samples`` times), so the estimate is a lower bound.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..methods import explain_context, run_method
from ..models import create_model


def count_forwards(
    model: nn.Module,
    layer: str,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    params: Mapping[str, Mapping] | None = None,
    *,
    reshape: object = None,
    forward_batch_size: int = 64,
) -> dict[str, float]:
    """Images forwarded through ``model`` per input image, per method (NaN where the method fails on the
    probe, e.g. the oracle without ground truth)."""

    seen = [0]

    def hook(_mod: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            seen[0] += int(args[0].shape[0])

    handle = model.register_forward_pre_hook(hook)
    out: dict[str, float] = {}
    try:
        for name in methods:
            seen[0] = 0
            try:
                ctx = explain_context(
                    model, layer, images, targets, reshape=reshape, forward_batch_size=forward_batch_size, seed=0
                )
                run_method(ctx, name, (params or {}).get(name))
                out[name] = seen[0] / images.shape[0]
            except Exception:  # a probe estimates; the run reports the method's failure
                out[name] = float("nan")
    finally:
        handle.remove()
    return out


def seconds_per_forward(model: nn.Module, images: Tensor, repeats: int = 3) -> float:
    """Wall seconds of one image's forward (the best of ``repeats`` timed batches, after a warm-up)."""
    with torch.inference_mode():
        model(images)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(images)
            best = min(best, time.perf_counter() - t0)
    return best / images.shape[0]


@dataclass
class ExperimentEstimate:
    label: str
    dataset: str
    n_images: int
    forwards: dict[str, float] = field(default_factory=dict)  # per image, per method
    seconds_per_forward: float = 0.0

    @property
    def forwards_per_image(self) -> float:
        return float(sum(v for v in self.forwards.values() if v == v))

    @property
    def seconds(self) -> float:
        """Explanations' forwards x images x seconds per forward (backward passes count as two forwards)."""
        return self.n_images * self.forwards_per_image * self.seconds_per_forward

    def dominant(self, k: int = 3) -> list[str]:
        """The ``k`` methods with the most forwards per image (those that set the cost)."""
        ranked = sorted((v, m) for m, v in self.forwards.items() if v == v and v > 0)
        return [m for v, m in reversed(ranked)][:k]


def estimate_plan(plan: object, device: str = "cpu", probe_images: int = 2) -> list[ExperimentEstimate]:
    """One :class:`ExperimentEstimate` per experiment of a :class:`~benchmark.runner.plan.Plan`: its methods'
    forwards per image on ``probe_images`` random inputs of the model's size, and one forward's time."""

    out = []
    suite = plan.suite  # type: ignore[attr-defined]
    for exp, ep in zip(suite.experiments, plan.experiments, strict=True):  # type: ignore[attr-defined]
        handle = create_model(exp.model, weights=exp.weights, device=device, **exp.model_kwargs)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(probe_images, 3, *handle.input_size, generator=gen).to(device)
        with torch.inference_mode():
            t = handle.model(x).argmax(dim=1)
        layer = exp.layer or handle.target_layer
        fw = count_forwards(handle.model, layer, x, t, ep.methods, ep.method_params, reshape=handle.reshape)
        out.append(ExperimentEstimate(ep.label, ep.dataset, ep.n_images, fw, seconds_per_forward(handle.model, x)))
    return out


def _dur(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_text(estimates: Sequence[ExperimentEstimate], warn_minutes: float = 10.0) -> str:
    """The plan summary: per experiment the forwards per image x images and a time, then the total, and a
    warning naming the dominant methods when it exceeds ``warn_minutes``."""
    lines = ["Cost estimate (explanations only, from a probe; metrics add their own forwards):"]
    for e in estimates:
        top = ", ".join(f"{m} {e.forwards[m]:.0f}" for m in e.dominant())
        lines.append(
            f"  {e.label} on {e.dataset}: {e.forwards_per_image:.0f} forwards/image x {e.n_images} images "
            f"~ {_dur(e.seconds)}" + (f" (most: {top})" if top else "")
        )
    total = sum(e.seconds for e in estimates)
    lines.append(f"  total ~ {_dur(total)}")
    if total > 60 * warn_minutes:
        worst: dict[str, float] = {}
        for e in estimates:
            for m, v in e.forwards.items():
                if v == v:
                    worst[m] = worst.get(m, 0.0) + v * e.n_images * e.seconds_per_forward
        names = [m for m, _ in sorted(worst.items(), key=lambda kv: -kv[1])[:3]]
        lines.append(
            f"WARNING: this suite will take more than {warn_minutes:g} minutes; most of it is {', '.join(names)}. "
            "Leave them out (`methods = [...]`), lower `n`, or run on a GPU."
        )
    return "\n".join(lines)
