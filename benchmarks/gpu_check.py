"""CUDA against CPU: the same maps and the same metric values on both devices (run on a GPU machine).

The unit tests run on CPU only (CI has no GPU). This script checks what they cannot: every method's map and
the main metrics computed on ``cuda`` (channels_last, as the runner prepares CNNs) equal the CPU values of the
same seeded model and images, and the CUDA-only paths run (device synchronisation in ``latency_ms``,
``peak_memory_mb``, autocast forwards under ``--precision bf16``).

    python benchmarks/gpu_check.py                 # resnet18 (seeded random weights), 2 images at 96x96

TF32 is switched off for the comparison (cuDNN uses it for convolutions by default on Ampere and later, which
alone moves maps by ~1e-3). Stochastic methods draw their noise from seeded CPU generators, so they are compared
too. Prints one line per method and metric with the largest absolute difference, and FAIL where it exceeds the
tolerance; exits non-zero if any does.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmark import methods
from benchmark.forward import forward_precision, tf32
from benchmark.metrics import MetricContext, compute_metrics
from benchmark.types import Batch

METRICS = [
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "pointing_game",
    "mask_iou",
    "road_morf",
    "max_sensitivity",
    "gradient_noise_stability",
    "model_randomization",
    "latency_ms",
    "peak_memory_mb",
]
PARAMS = {
    "deletion_auc": {"n_steps": 16},
    "insertion_auc": {"n_steps": 16},
    "road_morf": {"percentages": [0.5]},
    "max_sensitivity": {"n_samples": 2},
    "model_randomization": {"max_layers": 3},
    "latency_ms": {"repeats": 3, "warmup": 1},
}
REEXPLAIN = {"max_sensitivity", "gradient_noise_stability", "model_randomization", "latency_ms", "peak_memory_mb"}
REEXPLAINED = {"gradcam", "gradcampp", "layercam", "eigencam", "scorecam", "ablationcam", "cfcam"}
#: SS-CAM and IS-CAM with fewer noise samples / scales than their defaults (the same code path, ~10x cheaper)
METHOD_PARAMS = {"sscam": {"n_samples": 4}, "iscam": {"n_samples": 3}}
NOT_COMPARED = {"latency_ms", "peak_memory_mb"}  # device-dependent by definition: checked finite on CUDA


def inputs(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear")
    x = (x - 0.45) / 0.225
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, size // 4 : size // 2, size // 3 : 2 * size // 3] = True
    return x, masks


def run(model, x, targets, masks, names, device, channels_last, precision="fp32", metrics=tuple(METRICS)):
    model = copy.deepcopy(model).to(device)
    x, targets, masks = x.to(device), targets.to(device), masks.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def explain_fn(m, images, tg, ns, *, gradient_noise=None):
        return methods.explain(
            m, "layer4", images, tg, ns, forward_batch_size=32, gradient_noise=gradient_noise, params=METHOD_PARAMS
        )

    with forward_precision(precision), tf32(allow=False):  # as the runner computes a unit
        maps = methods.explain(model, "layer4", x, targets, names, forward_batch_size=32, params=METHOD_PARAMS)
        ctx = MetricContext(
            model=model,
            batch=Batch(x, targets, [str(i) for i in range(len(x))], masks),
            saliency=maps,
            explain=explain_fn,
            seed=0,
            forward_batch_size=64,
        )
        values = compute_metrics(ctx, [m for m in metrics if m not in REEXPLAIN], PARAMS)
        # the metrics that re-explain (each call repeats the methods) on a few methods of each family
        ctx_re = MetricContext(
            model=model,
            batch=ctx.batch,
            explain=explain_fn,
            seed=0,
            forward_batch_size=64,
            saliency={k: v for k, v in maps.items() if k in REEXPLAINED},
        )
        values.update(compute_metrics(ctx_re, [m for m in metrics if m in REEXPLAIN], PARAMS))
    return (
        {k: v.float().cpu() for k, v in maps.items()},
        {m: {k: v.float().cpu() for k, v in per.items()} for m, per in values.items()},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--map-tol", type=float, default=2e-3, help="max |map_cuda - map_cpu| (maps lie in [0,1])")
    ap.add_argument("--metric-tol", type=float, default=2e-3, help="max |metric_cuda - metric_cpu|")
    ap.add_argument(
        "--device", default="cuda", help="the device checked against CPU (cpu: a dry run, channels_last only)"
    )
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device (torch.cuda.is_available() is False).")
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x, masks = inputs(args.images, args.size)
    with torch.inference_mode():
        targets = model(x).argmax(1).clone()
    names = [n for n in methods.METHODS.list() if n not in ("oracle", "legrad", "fullgrad")]
    print(
        f"# gpu_check: resnet18 seeded, {args.images} images {args.size}px, {len(names)} methods, "
        f"torch {torch.__version__}, {args.device}"
    )
    t0 = time.perf_counter()
    cpu_maps, cpu_vals = run(
        model,
        x,
        targets,
        masks,
        names,
        torch.device("cpu"),
        channels_last=False,
        metrics=[m for m in METRICS if m not in NOT_COMPARED],
    )
    print(f"cpu run {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    gpu_maps, gpu_vals = run(model, x, targets, masks, names, dev, channels_last=True)
    print(f"{dev} run {time.perf_counter() - t0:.1f} s", flush=True)
    bad = 0
    for n in names:
        d = float((gpu_maps[n] - cpu_maps[n]).abs().max())
        ok = d <= args.map_tol
        bad += not ok
        print(f"map    {n:24s} max|cuda-cpu| {d:.2e} {'ok' if ok else 'FAIL'}")
    for metric, per in gpu_vals.items():
        for n, v in per.items():
            if metric in NOT_COMPARED:  # peak memory is NaN on CPU (documented)
                ok = bool(torch.isfinite(v).all()) and bool((v >= 0).all())
                print(f"metric {metric:24s} {n:18s} cuda values {v.tolist()} {'ok (finite)' if ok else 'FAIL'}")
                bad += not ok
                continue
            c = cpu_vals[metric][n]
            both_nan = torch.isnan(v) & torch.isnan(c)
            d = float(torch.where(both_nan, 0.0, (v - c).abs()).max())
            ok = d <= args.metric_tol
            bad += not ok
            if not ok or n == names[0]:
                print(f"metric {metric:24s} {n:18s} max|cuda-cpu| {d:.2e} {'ok' if ok else 'FAIL'}")
    # bf16 autocast for the perturbation forwards: how far the AUCs move (informative, not a pass/fail)
    _, bf = run(
        model,
        x,
        targets,
        masks,
        ["gradcam", "scorecam"],
        dev,
        True,
        precision="bf16",
        metrics=["deletion_auc", "insertion_auc"],
    )
    for metric in ("deletion_auc", "insertion_auc"):
        for n in ("gradcam", "scorecam"):
            d = float((bf[metric][n] - gpu_vals[metric][n]).abs().max())
            print(f"bf16   {metric:24s} {n:18s} max|bf16-fp32| {d:.2e}")
    print(f"gpu_check: {bad} failure(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
