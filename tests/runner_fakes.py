"""Test-only plugin for the runner tests: a tiny dataset, a tiny CNN, a broken method and fake metrics.

Loaded as a suite plugin (``plugins = ["../runner_fakes.py"]``) in-process and in CLI subprocesses;
every registration uses ``override=True`` so that loading it twice is harmless.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.data import CamDataset, Sample, register_dataset
from benchmark.methods import register_method
from benchmark.metrics import MetricContext, register_metric
from benchmark.models import register_model
from benchmark.types import ModelHandle

SIZE = 32


class FakeShapes(CamDataset):
    """``n`` seeded 32x32 images: a bright square (class 0) or bar (class 1) on noise, with mask and box."""

    num_classes = 2
    class_names = ["square", "bar"]

    def __init__(self, n: int = 6, seed: int = 0, masks: bool = True, broken: tuple = ()) -> None:
        super().__init__()
        self.n = n
        self.seed = seed
        self.has_masks = self.has_boxes = masks
        self.broken = set(broken)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if i in self.broken:
            raise OSError(f"img_{i:03d}.png is truncated")
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        img = torch.rand(3, SIZE, SIZE, generator=g) * 0.3
        cls = i % 2
        h, w = (10, 10) if cls == 0 else (4, 16)
        y = int(torch.randint(0, SIZE - h, (1,), generator=g))
        x = int(torch.randint(0, SIZE - w, (1,), generator=g))
        img[:, y : y + h, x : x + w] = torch.tensor([0.9, 0.8, 0.2])[:, None, None]
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        mask[y : y + h, x : x + w] = True
        box = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
        return Sample(
            image=img,
            target=cls,
            id=f"fake{i:03d}",
            mask=mask if self.has_masks else None,
            boxes=box if self.has_boxes else None,
            label=cls,
        )


@register_dataset("fake_shapes", has_masks=True, has_boxes=True, default_model="fake_cnn", override=True)
def fake_shapes(root=None, n=None, seed=0, broken=()) -> FakeShapes:
    return FakeShapes(n=6 if n is None else n, seed=seed, broken=tuple(broken))


@register_dataset("fake_plain", has_masks=False, has_boxes=False, default_model="fake_cnn", override=True)
def fake_plain(root=None, n=None, seed=0) -> FakeShapes:
    return FakeShapes(n=6 if n is None else n, seed=seed, masks=False)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("fake_cnn", override=True)
def fake_cnn(weights: str = "default") -> ModelHandle:
    """Seeded random weights (seed 0 for "default", 1 for "random")."""
    model = TinyCNN()
    g = torch.Generator().manual_seed(0 if weights == "default" else 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return ModelHandle(
        "fake_cnn",
        model.eval(),
        "features",
        input_size=(SIZE, SIZE),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=["square", "bar"],
    )


@register_method("fake_broken", family="baseline", needs_gradients=False, override=True)
def fake_broken(ctx) -> Tensor:
    raise RuntimeError("fake_broken always fails")


@register_metric(
    "fake_inside", family="localization", higher_is_better=True, needs=("saliency", "masks"), override=True
)
def fake_inside(ctx: MetricContext) -> dict[str, Tensor]:
    """Mean saliency inside the ground-truth mask (NaN for an empty mask)."""
    m = ctx.batch.masks.float()
    area = m.sum((1, 2))
    out = {}
    for name, s in ctx.saliency.items():
        v = (s * m).sum((1, 2)) / area
        out[name] = torch.where(area > 0, v, torch.full_like(v, float("nan")))
    return out


@register_metric("fake_drop", family="faithfulness", higher_is_better=False, needs=("saliency",), override=True)
def fake_drop(ctx: MetricContext, steps: int = 4) -> dict[str, Tensor]:
    """Tiny deletion AUC: zero the top-k salient pixels (k = 0..HW in ``steps``), all methods batched."""
    names = list(ctx.saliency)
    sal = torch.stack([ctx.saliency[n] for n in names])  # [M,B,H,W]
    m, b, h, w = sal.shape
    order = sal.reshape(m * b, h * w).argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w).expand(m * b, -1))
    imgs = ctx.batch.images.repeat(m, 1, 1, 1)
    tg = ctx.batch.targets.repeat(m)
    fr = torch.linspace(0, 1, steps + 1)
    with torch.inference_mode():
        probs = []
        for f in fr:
            keep = (ranks >= int(round(float(f) * h * w))).reshape(m * b, 1, h, w)
            p = ctx.model(imgs * keep).softmax(1).gather(1, tg[:, None]).squeeze(1)
            probs.append(p)
    curve = torch.stack(probs, 1).reshape(m, b, steps + 1)
    auc = torch.trapezoid(curve, dx=1.0 / steps, dim=2)
    ctx.curves.setdefault("fake_drop", {}).update({n: curve[i] for i, n in enumerate(names)})
    return {n: auc[i] for i, n in enumerate(names)}


@register_metric(
    "fake_noise", family="robustness", higher_is_better=False, needs=("saliency", "explainer"), override=True
)
def fake_noise(ctx: MetricContext, sigma: float = 0.5) -> dict[str, Tensor]:
    """Mean |map - map under seeded gradient noise| (the CF-CAM protocol), through ctx.explain."""
    g = torch.Generator().manual_seed(ctx.seed)

    def noise(grad: Tensor) -> Tensor:
        return grad + sigma * grad.std() * torch.randn(grad.shape, generator=g).to(grad)

    noisy = ctx.explain(ctx.model, ctx.batch.images, ctx.batch.targets, ctx.methods, gradient_noise=noise)
    return {n: (noisy[n] - ctx.saliency[n]).abs().mean((1, 2)) for n in ctx.methods}


@register_metric("fake_fail", family="sanity", higher_is_better=True, override=True)
def fake_fail(ctx: MetricContext) -> dict[str, Tensor]:
    raise ValueError("fake_fail always fails")


@register_method("fake_constant", family="baseline", needs_gradients=False, override=True)
def fake_constant(ctx) -> Tensor:
    """A constant map: the pipeline flags it degenerate (zeros)."""
    return torch.ones(ctx.images.shape[0], 4, 4, device=ctx.images.device)


@register_method("fake_warns", family="baseline", needs_gradients=False, override=True)
def fake_warns(ctx) -> Tensor:
    """A valid map that warns on every call (the runner must collect the warning, not print it)."""
    import warnings

    warnings.warn("fake_warns has something to say", RuntimeWarning, stacklevel=2)
    return torch.rand(ctx.images.shape[0], 4, 4, generator=ctx.generator(3)).to(ctx.images.device)


@register_method("fake_env", family="baseline", needs_gradients=False, override=True)
def fake_env(ctx) -> Tensor:
    """A valid map that records the process state it ran in (``METHODS.get("fake_env").seen``): precision,
    compile, cuDNN autotuning and TF32 flags, as :func:`benchmark.runner.unit.unit_environment` sets them."""
    from benchmark import forward

    fake_env.seen = {  # type: ignore[attr-defined]
        "precision": forward._FORWARD_DTYPE.get(),
        "compile": forward._FORWARD_COMPILE.get(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32),
    }
    return torch.rand(ctx.images.shape[0], 4, 4, generator=ctx.generator(5)).to(ctx.images.device)


# -- helpers shared by the runner test modules ---------------------------------------------------

from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

SUITES = Path(__file__).parent / "runner_suites"


_RUNS: dict = {}


def run_cached(tmp_root: Path, suite: str = "tiny", plots: bool = False, **kw):
    """Run ``runner_suites/<suite>.toml`` once per test session (cached by arguments)."""
    from benchmark.report.build import write_report
    from benchmark.runner import load_suite, run_suite

    key = (suite, plots, tuple(sorted(kw.items())))
    if key not in _RUNS:
        out = Path(tmp_root) / f"{suite}-{len(_RUNS)}"
        _RUNS[key] = run_suite(
            load_suite(SUITES / f"{suite}.toml"), out, quiet=True, report=partial(write_report, plots=plots), **kw
        )
    return _RUNS[key]


def state_seen_by_a_unit(options) -> dict:
    """Run one unit of a one-method suite (``fake_env`` on two fake images) through the public
    :func:`benchmark.runner.run_unit` with ``options``; return the state its method saw."""
    from benchmark.methods import METHODS
    from benchmark.runner import parse_suite, plan_run, run_unit

    suite = parse_suite(
        f"""
name = "env"
seed = 0
device = "cpu"
batch_size = 2
shard_size = 2
gallery = 0
bootstrap = 10
plugins = ["{Path(__file__).resolve()}"]
methods = ["fake_env"]
metrics = ["fake_inside"]

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 2 }}
""",
        default_name="env",
    )
    plan = plan_run(suite)
    result = run_unit(suite, plan.units[0], options=options)
    assert (result.scores["status"] == "ok").all(), result.scores
    return dict(METHODS.get("fake_env").seen)


def fake_suite_toml(
    name: str,
    *,
    plugins: tuple[str | Path, ...] = (),
    methods: tuple[str, ...] = ("gradcam", "random"),
    gallery: int = 1,
    n: int = 4,
) -> str:
    """The TOML of a tiny suite on this module's model and data (2 images a batch and a unit, the fake
    metrics), loading this module and ``plugins``: the runner-fault tests' common suite."""
    files = ", ".join(f'"{p}"' for p in (Path(__file__).resolve(), *plugins))
    names = ", ".join(f'"{m}"' for m in methods)
    return f"""
name = "{name}"
seed = 0
device = "cpu"
batch_size = 2
shard_size = 2
gallery = {gallery}
bootstrap = 20
plugins = [{files}]
methods = [{names}]
metrics = ["fake_inside", "fake_drop"]

[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = {n} }}
"""
