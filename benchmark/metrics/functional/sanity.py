"""Sanity checks: cascading model-parameter randomisation (Adebayo et al. 2018; Quantus MPRT).

Specification: docs/metrics.md#model_randomization.

The explain function takes the model: ``explain_fn(model, images, targets, names) -> {name: [B,H,W]}``
(the :class:`benchmark.metrics.ExplainFn` protocol). It must resolve the target layer **by name** on the
model it is given, since the randomised model is a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor, nn

from ...errors import InputError
from .robustness import _minmax, ssim

LAYER_ORDERS = ("top_down", "bottom_up", "independent")
SIMILARITIES = ("spearman", "ssim")


def randomizable_layers(model: nn.Module, layer_order: str = "top_down") -> list[str]:
    """Names of the modules with ``reset_parameters`` (Quantus' choice), in randomisation order:
    reverse ``named_modules`` order for ``top_down`` (logits first), forward order otherwise."""
    if layer_order not in LAYER_ORDERS:
        raise InputError(f"layer_order must be one of {LAYER_ORDERS}; got {layer_order!r}.")
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")]
    return names[::-1] if layer_order == "top_down" else names


def _randomize(module: nn.Module, seed: int) -> None:
    """``torch.manual_seed(seed + 1); module.reset_parameters()`` (Quantus MPRT), without touching the
    caller's global RNG state, and the same new weights on every device and memory format.

    The reset runs on a CPU copy with contiguous tensors, whose values are then copied into ``module``'s own
    tensors (their device and layout unchanged). Resetting a CUDA channels_last model in place drew other
    weights than the CPU did (measured on an H200, benchmarks/RESULTS.md section 5).
    """
    fresh = copy.deepcopy(module).to("cpu")
    for t in [*fresh.parameters(), *fresh.buffers()]:
        t.data = t.data.contiguous()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        cast(Callable[[], None], fresh.reset_parameters)()  # a module with reset_parameters
    with torch.no_grad():
        old, new = [*module.parameters(), *module.buffers()], [*fresh.parameters(), *fresh.buffers()]
        for dst, src in zip(old, new, strict=True):
            dst.copy_(src)


def spearman(a: Tensor, b: Tensor, abs: bool = True) -> Tensor:
    """Spearman rank correlation ``[B]`` of flattened maps (average ranks for ties, as scipy).

    ``abs`` takes absolute values first (Quantus MPRT default). NaN when either map is constant.
    """
    x, y = a.detach().double().flatten(1).cpu().numpy(), b.detach().double().flatten(1).cpu().numpy()
    if abs:
        x, y = np.abs(x), np.abs(y)
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1.0), np.nan)
    return torch.from_numpy(r).float()


def map_similarity(
    a: Tensor, b: Tensor, similarity: str = "spearman", abs: bool = True, signed: bool = False
) -> Tensor:
    """``spearman`` (see :func:`spearman`) or ``ssim`` on min-max normalised maps (constant -> 0).

    The Spearman similarity is ``|rho|`` unless ``signed`` (see :func:`model_randomization` for the
    choice); ``abs`` is the separate choice of ranking the maps' absolute values."""
    if similarity == "spearman":
        r = spearman(a, b, abs=abs)
        return r if signed else r.abs()
    if similarity == "ssim":
        return ssim(_minmax(a.detach().float()), _minmax(b.detach().float())).cpu()
    raise InputError(f"similarity must be one of {SIMILARITIES}; got {similarity!r}.")


def model_randomization(
    model: nn.Module,
    explain_fn: Callable[..., dict],
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    layer_order: str = "top_down",
    seed: int = 42,
    similarity: str = "spearman",
    max_layers: int | None = None,
    per_layer: bool = False,
    abs: bool = True,
    reference: dict[str, Tensor] | None = None,
    signed: bool = False,
) -> dict[str, Tensor]:
    """Model-parameter randomisation test: similarity of maps before and after randomising the model.

    Layers (modules with ``reset_parameters``, see :func:`randomizable_layers`; the first ``max_layers``
    only if given) are re-initialised one after another on a deep copy (``model`` is never modified).
    Default: the similarity after the **full cascade** ``{method: [B]}`` (Quantus
    ``return_last_correlation``), computed with a single explain call, since every reset is seeded
    identically and is independent of the order. ``per_layer=True`` explains after every step and returns
    ``{method: [L,B]}`` in randomisation order (``layer_order="independent"`` randomises one layer at a
    time and needs ``per_layer``). A method that passes the check has **low** similarity. Spearman of a
    constant map is NaN.

    Sign convention: the Spearman similarity is the **absolute** correlation ``|rho|`` (as MetaQuantus and
    the smooth/efficient MPRT of Hedstrom et al. 2023 read it), ``signed=True`` gives Adebayo et al.'s
    signed ``rho``. The metric asks whether the map still depends on the trained weights; a randomised map
    anti-correlated with the original (``rho = -0.6``) is as dependent on them as a correlated one, yet the
    signed value would rank it better than an unrelated map (``rho = 0``) on this lower-is-better metric.
    """
    methods = list(methods)
    layers = randomizable_layers(model, layer_order)
    if max_layers is not None:
        layers = layers[: int(max_layers)]
    if not layers:
        raise InputError(f"{type(model).__name__} has no module with reset_parameters() to randomise.")
    if layer_order == "independent" and not per_layer:
        raise InputError("layer_order='independent' randomises one layer at a time: pass per_layer=True.")
    if reference is None:
        reference = explain_fn(model, images, targets, methods)
    rand = copy.deepcopy(model).eval()
    modules = dict(rand.named_modules())
    if not per_layer:
        for name in layers:
            _randomize(modules[name], seed)
        maps = explain_fn(rand, images, targets, methods)
        return {m: map_similarity(reference[m], maps[m], similarity, abs, signed) for m in methods}
    pristine = copy.deepcopy(rand.state_dict()) if layer_order == "independent" else None
    steps: dict[str, list[Tensor]] = {m: [] for m in methods}
    for name in layers:
        if pristine is not None:
            rand.load_state_dict(pristine)
        _randomize(modules[name], seed)
        maps = explain_fn(rand, images, targets, methods)
        for m in methods:
            steps[m].append(map_similarity(reference[m], maps[m], similarity, abs, signed))
    return {m: torch.stack(v) for m, v in steps.items()}
