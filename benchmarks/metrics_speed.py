"""Benchmark: deletion + insertion AUC for 8 methods' maps with cambench's batched engine vs Quantus.

    python benchmarks/metrics_speed.py --quick          # resnet18, 2 images, 24 steps (~6 CPU-minutes)
    python benchmarks/metrics_speed.py                  # resnet50, 4 images, 147 steps (issue #3 setting)
    python benchmarks/metrics_speed.py --model resnet18 --batch 8 --device cuda

Same random-init model, same maps (the 8 gradient methods of ``benchmark.methods``), same number of
steps and the same zero baseline for every contender:

* cambench ``deletion_auc`` (and ``insertion_auc``) through the registry entry: all methods x images x
  steps stacked and forwarded in chunks of ``--chunk``;
* Quantus ``PixelFlipping``: ``features_in_step`` over C*H*W (1024 at 3x224x224 = 147 steps; 6272 = 24
  steps), called once per method, one forward of the batch per step;
* Quantus ``RegionPerturbation``: 8x8 patches, ``regions_evaluation`` = the same step count.

cambench gets the model the way the runner prepares it (channels_last for CNNs, ``--channels-last off``
to compare without); Quantus gets the model as the user built it.

Prints per-image times (per image, all 8 methods) and the ratios. Timing depends on the machine: run all
contenders in one invocation on the same device.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
import torchvision

from benchmark import methods
from benchmark.metrics import MetricContext, compute_metrics
from benchmark.types import Batch

METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam", "cfcam"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument(
        "--features-in-step",
        type=int,
        default=1024,
        help="Quantus PixelFlipping features per step over C*H*W (1024 -> 147 steps at 224)",
    )
    ap.add_argument("--chunk", type=int, default=64, help="cambench forward chunk (adapts down on OOM)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="resnet18, 2 images, 24 steps")
    ap.add_argument("--no-region", action="store_true", help="skip Quantus RegionPerturbation")
    ap.add_argument("--no-insertion", action="store_true", help="skip the cambench deletion+insertion timing")
    ap.add_argument(
        "--channels-last",
        choices=("on", "off"),
        default="on",
        help="cambench side: channels_last model and inputs (the runner's default for CNNs)",
    )
    args = ap.parse_args()
    if args.quick:
        args.model, args.batch, args.features_in_step = "resnet18", 2, 6272

    import quantus

    if not hasattr(np, "trapz"):  # Quantus 0.6.0 calls np.trapz (removed in NumPy 2.4)
        np.trapz = np.trapezoid

    size = 224
    device = torch.device(args.device)
    hw = size * size
    if hw % args.features_in_step:
        raise SystemExit(f"--features-in-step must divide H*W={hw} (a Quantus assertion).")
    n_steps = 3 * hw // args.features_in_step
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval().to(device)
    x = torch.randn(args.batch, 3, size, size, device=device)
    targets = torch.arange(args.batch, device=device) % 1000
    layer = methods.resolve_layer(model, "layer4")
    maps = methods.explain(model, layer, x, targets, METHODS)
    b, m = args.batch, len(METHODS)
    model_ours, x_ours = copy.deepcopy(model), x
    if args.channels_last == "on":
        model_ours = model_ours.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)

    print(
        f"# metrics_speed: {args.model} random init, {b} images 224x224, {m} methods, {n_steps} steps, "
        f"device={device}, cambench channels_last={args.channels_last}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )

    def ours(names):
        ctx = MetricContext(
            model=model_ours,
            batch=Batch(images=x_ours, targets=targets, ids=[str(i) for i in range(b)]),
            saliency=maps,
            forward_batch_size=args.chunk,
        )
        params = {n: {"n_steps": n_steps, "step": None} for n in names}
        return compute_metrics(ctx, names, params)

    with torch.inference_mode():  # warm-up
        timed(lambda: model_ours(x_ours[:1]), device)
        timed(lambda: model(x[:1]), device)
    per = lambda t: t / b
    line = lambda name, t: print(f"{name:54s} {t:9.2f} {per(t):9.2f}", flush=True)
    print(f"{'contender':54s} {'total s':>9s} {'s/image':>9s}", flush=True)
    t_del, res_del = timed(lambda: ours(["deletion_auc"]), device)
    line("cambench deletion_auc (8 methods, one engine call)", t_del)
    if not args.no_insertion:
        t_both = timed(lambda: ours(["deletion_auc", "insertion_auc"]), device)[0]
        line("cambench deletion+insertion (8 methods)", t_both)

    x_np, y_np = x.cpu().numpy(), targets.cpu().numpy()

    def quantus_all(metric):
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in METHODS:
                a = maps[name][:, None].cpu().numpy()
                out[name] = np.array(
                    metric(
                        model=model,
                        x_batch=x_np,
                        y_batch=y_np,
                        a_batch=a,
                        device=str(device),
                        softmax=True,
                        channel_first=True,
                    )
                )
        return out

    pf = quantus.PixelFlipping(
        features_in_step=args.features_in_step, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    t_pf, res_pf = timed(lambda: quantus_all(pf), device)
    line("Quantus PixelFlipping (8 methods, deletion only)", t_pf)
    print(f"speed-up deletion vs Quantus PixelFlipping: {t_pf / t_del:.2f}x", flush=True)
    if not args.no_insertion:
        print(f"cambench deletion+insertion vs Quantus PixelFlipping deletion alone: {t_pf / t_both:.2f}x", flush=True)
    # sanity: same number of forwards -> curves comparable; AUCs of the two deletion variants correlate
    ours_auc = torch.cat([res_del["deletion_auc"][n] for n in METHODS]).cpu().numpy()
    q_auc = np.concatenate([np.trapezoid(res_pf[n], dx=1 / (res_pf[n].shape[1] - 1), axis=1) for n in METHODS])
    r = float(np.corrcoef(ours_auc, q_auc)[0, 1]) if ours_auc.std() > 0 and q_auc.std() > 0 else float("nan")
    print(
        f"Pearson r of deletion AUCs (ours {n_steps + 1} points incl. start vs Quantus {n_steps}; "
        f"Quantus steps are not whole pixels): {r:.3f}",
        flush=True,
    )
    if not args.no_region:
        rp = quantus.RegionPerturbation(
            patch_size=8,
            regions_evaluation=n_steps,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            disable_warnings=True,
        )
        t_rp, _ = timed(lambda: quantus_all(rp), device)
        line("Quantus RegionPerturbation 8x8 (8 methods)", t_rp)
        print(f"speed-up deletion vs Quantus RegionPerturbation: {t_rp / t_del:.2f}x")


if __name__ == "__main__":
    main()
