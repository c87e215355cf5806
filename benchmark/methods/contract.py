"""The method contract check: every registered method (built-in, bridged or plugin) on a tiny seeded model.

:func:`check_method` runs the contract on one method, :func:`check_methods` on several (raising
:class:`~benchmark.errors.ContractError`); :mod:`benchmark.plugins` re-exports both and runs them on every
plugin it loads. The contract is described in :mod:`benchmark.plugins` and ``docs/interfaces.md``; its map
rules (shape, dtype, range, finite, detached) are checked on every call by the public
``run_method(..., validate=True)``, which this check calls, plus what needs several calls (determinism,
batch consistency, no constant maps) and the model's state (hooks, parameters, eval mode, autograd).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ContractError
from ..models.captioner import Captioner, CaptionerConfig, TokenTargets
from ..models.dual_encoder import DualEncoder, DualEncoderConfig
from .base import METHODS, MethodOutput, explain_context, method_params, run_method
from .capture import vit_reshape


# -- the contract check -------------------------------------------------------------------------------
class _TinyCNN(nn.Module):
    """conv-BN-ReLU-conv-ReLU ["features", 8x16x16 at 32x32] -> GAP -> Linear(5): cheap, with biases."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(-2, -1)))


class _TinyCNN3d(nn.Module):
    """The 3-D twin of :class:`_TinyCNN` (volumes and clips ``[N,3,T,H,W]``): ["features", 8x4x8x8 at 8x16x16]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1),
            nn.BatchNorm3d(8),
            nn.ReLU(),
            nn.Conv3d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(-3, -2, -1)))


#: The input kinds a suite's experiments feed a method: images ``[N,3,H,W]``, volumes or clips
#: ``[N,3,T,H,W]`` (datasets with ``ndim = 3``), and multi-label images (``target = "labels"``: the same
#: image in a batch once per class present, each with its own target).
INPUT_KINDS = ("2d", "3d", "labels")


def _check_model(vit: bool, seed: int, kind: str = "2d", archs: tuple[str, ...] = ()) -> tuple[nn.Module, str, Any]:
    """A seeded tiny model, its target layer name and reshape (ViT: torchvision, 4x4 patches of 8 px; a
    captioner's token view or a dual encoder for the methods registered for those architectures)."""
    gen = torch.Generator().manual_seed(seed)
    model: nn.Module
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if "captioner" in archs:
            cap = Captioner(CaptionerConfig(image_size=32, widths=(8, 8, 8), width=16, heads=2, layers=1))
            with torch.no_grad():
                cap.head.bias.fill_(3.0)  # positive token logits: TAM's ReLU(logit) map is not all zero
            view = TokenTargets(cap.eval())
            view.set_captions(torch.randint(3, 15, (1, view.length), generator=gen))
            return view.eval(), "captioner.encoder", None
        if "dual_encoder" in archs:
            return DualEncoder(DualEncoderConfig(widths=(8, 8, 8), width=16)).eval(), "encoder", None
        if kind == "3d":
            model = _TinyCNN3d()
        elif vit:
            from torchvision.models import VisionTransformer

            vitm = VisionTransformer(
                image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
            )
            nn.init.normal_(vitm.heads.head.weight, std=0.5)  # torchvision initialises the head to zero
            return vitm.eval(), "encoder.layers.encoder_layer_1.ln_1", vit_reshape
        else:
            model = _TinyCNN()
    bn = model.features[1]
    assert isinstance(bn, nn.BatchNorm2d | nn.BatchNorm3d) and bn.running_mean is not None
    assert bn.running_var is not None and bn.bias is not None
    with torch.no_grad():  # non-trivial BatchNorm statistics (FullGrad's biases, non-zero means)
        bn.running_mean.copy_(0.3 * torch.randn(8, generator=gen))
        bn.running_var.copy_(0.5 + torch.rand(8, generator=gen))
        bn.bias.copy_(0.2 * torch.randn(8, generator=gen))
    return model.eval(), "features", None


def _hooks(model: nn.Module) -> dict[str, int]:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    out = {}
    for name, m in model.named_modules():
        n = sum(len(getattr(m, k, {}) or {}) for k in kinds)
        if n:
            out[name or "<model>"] = n
    return out


def _global_hooks() -> int:
    from torch.nn.modules import module as mod

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return sum(len(getattr(mod, n, {}) or {}) for n in names)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one intra-op thread (and do not fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits  # NumPy/SciPy BLAS (Eigen-CAM's SVD, KernelPCA)
        except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
            yield
        else:
            with threadpool_limits(1):
                yield
    finally:
        torch.set_num_threads(n)


def check_method(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    n_images: int = 4,
    seed: int = 0,
    atol: float = 1e-4,
    kind: str = "2d",
) -> list[str]:
    """Run the method contract on ``name`` (with ``params`` overrides); returns the problems found ([] = ok).

    ``kind`` (:data:`INPUT_KINDS`): ``"2d"`` random 3x32x32 images; ``"3d"`` random 3x8x16x16 volumes of a
    tiny 3-D CNN (raw maps ``[B,t,h,w]``); ``"labels"`` each image twice with two different targets.
    Checks, on ``n_images`` inputs of a tiny seeded model:
    raw map: a floating ``Tensor[B,h,w]``, ``1 <= h,w <= 32``, finite, on the images' device;
    final map (after the shared ReLU / min-max / upsampling): ``[B,32,32]`` float32, finite, in [0,1],
    not attached to an autograd graph; not every map constant; deterministic for a fixed seed;
    batch-consistent within ``atol`` (unless registered with ``batch_consistent=False``); and the model
    keeps no hook, the same parameters and buffers, eval mode, and autograd stays as it was.
    """
    with _one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # methods' own advisories (e.g. Ablation-CAM's sign warning)
        return _check_method(name, params, n_images=n_images, seed=seed, atol=atol, kind=kind)


def _check_method(
    name: str, params: Mapping[str, Any] | None, *, n_images: int, seed: int, atol: float, kind: str = "2d"
) -> list[str]:
    if kind not in INPUT_KINDS:
        raise ValueError(f"kind must be one of {INPUT_KINDS}, got {kind!r}.")
    entry = METHODS.entry(name)
    method_params(name, params)  # an unknown parameter is a configuration error: raise it, do not report it
    meta = entry.meta
    archs = tuple(meta.get("architectures", ()))
    vit = "vit" in archs and kind != "3d"
    model, layer, reshape = _check_model(vit, seed, kind, archs)
    g = torch.Generator().manual_seed(seed + 1)
    size: tuple[int, ...] = (8, 16, 16) if kind == "3d" else (32, 32)
    x = torch.randn(n_images, 3, *size, generator=g)
    t = torch.arange(n_images) % 5
    if kind == "labels":  # one image per class present: the same image twice in a row, two targets
        x = x[torch.arange(n_images) // 2].contiguous()
        t = (torch.arange(n_images) // 2 + 2 * (torch.arange(n_images) % 2)) % 5
    masks = torch.rand(n_images, *size, generator=g) > 0.7 if meta.get("needs_ground_truth") else None
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hooks0, global0, grad0 = _hooks(model), _global_hooks(), torch.is_grad_enabled()
    problems: list[str] = []

    def call(xs: Tensor, ts: Tensor, ms: Tensor | None) -> Tensor | None:
        try:
            ctx = explain_context(model, layer, xs, ts, reshape=reshape, forward_batch_size=16, seed=seed, masks=ms)
            out: MethodOutput = run_method(ctx, name, params, validate=True)  # the map contract, every call
        except ContractError as exc:
            problems.extend(exc.problems or [f"raised ContractError: {exc}"])
            return None
        except Exception as exc:  # the check reports; it never crashes on a broken method
            problems.append(f"raised {type(exc).__name__}: {exc}")
            return None
        b = xs.shape[0]
        if b > 1 and bool(out.degenerate.all()):
            problems.append(f"every one of the {b} maps is constant (all zeros after post-processing)")
        return out.maps.detach()

    first = call(x, t, masks)
    if first is not None and not problems:
        again = call(x, t, masks)
        if again is not None and not torch.allclose(first, again, atol=1e-6, rtol=0):
            diff = float((first - again).abs().max())
            problems.append(f"is not deterministic: two runs with seed={seed} differ by up to {diff:.3g}")
        if meta.get("batch_consistent", True) and n_images > 1:
            worst = 0.0
            for i in range(n_images):
                single = call(x[i : i + 1], t[i : i + 1], None if masks is None else masks[i : i + 1])
                if single is None:
                    break
                worst = max(worst, float((single[0] - first[i]).abs().max()))
            if worst > atol:
                problems.append(
                    f"is not batch-consistent: a batch of {n_images} differs from the same images one at a "
                    f"time by up to {worst:.3g} (> {atol}). Seed per image, or register the method with "
                    "batch_consistent=False if it is seeded per batch"
                )
    hooks1 = _hooks(model)
    if hooks1 != hooks0 or _global_hooks() != global0:
        left = {k: v - hooks0.get(k, 0) for k, v in hooks1.items() if v != hooks0.get(k, 0)}
        problems.append(
            f"left hooks on the model ({left or 'global module hooks'}); remove them in a finally block "
            "(handle.remove())"
        )
    changed = [k for k, v in model.state_dict().items() if k not in state or not torch.equal(v, state[k])]
    if changed:
        problems.append(f"modified the model's parameters or buffers: {', '.join(changed[:5])}")
    if model.training:
        problems.append("left the model in training mode; restore model.eval()")
    if torch.is_grad_enabled() != grad0:
        torch.set_grad_enabled(grad0)
        problems.append("changed the global autograd state; use `with torch.enable_grad():` / no_grad blocks")
    return problems


def check_methods(
    names: Iterable[str] | None = None,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    raise_on_error: bool = True,
    kinds: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, list[str]]:
    """Contract-check several methods (default: every registered one); see :func:`check_method`.

    ``params`` maps a method name to hyper-parameter overrides (e.g. a suite's); ``kinds`` a method name to
    the input kinds it will see (:data:`INPUT_KINDS`; default ``2d``), each checked, its problems prefixed
    with the kind beyond 2-D (``on 3d inputs: ...``). Raises :class:`ContractError` listing every failing
    method, its source (plugin) and problems, unless ``raise_on_error=False``; returns ``{name: problems}``.
    """
    names = list(METHODS.list() if names is None else dict.fromkeys(names))
    for n in names:
        METHODS.entry(n)  # unknown names fail here, listing the valid ones
    report: dict[str, list[str]] = {}
    with _one_thread():
        for n in names:
            report[n] = []
            for kind in sorted(set((kinds or {}).get(n, ("2d",))), key=INPUT_KINDS.index):
                probs = check_method(n, (params or {}).get(n), kind=kind)
                report[n] += probs if kind == "2d" else [f"on {kind} inputs: {p}" for p in probs]
    failed = {n: p for n, p in report.items() if p}
    if failed and raise_on_error:
        lines = []
        for n, probs in failed.items():
            source = METHODS.entry(n).meta.get("source", "cambench")
            origin = f"plugin {source!r}" if source != "cambench" else "built-in"
            lines.append(f"method {n!r} ({origin}):")
            lines.extend(f"  - {p}" for p in probs)
        raise ContractError(
            "CAM method contract check failed before any benchmark work:\n"
            + "\n".join(lines)
            + "\nA method is fn(ctx, **params) -> raw Tensor[B,h,w] (see benchmark.plugins)."
        )
    return report


__all__ = ["INPUT_KINDS", "ContractError", "check_method", "check_methods"]
