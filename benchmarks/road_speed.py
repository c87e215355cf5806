"""Benchmark: ROAD (MoRF, noisy linear imputation) with cambench against pytorch-grad-cam, side by side.

    python benchmarks/road_speed.py                       # resnet18, 4 images 224x224, fractions 0.1/0.5/0.9
    python benchmarks/road_speed.py --device cuda --images 32
    python benchmarks/road_speed.py --repeats 5 --threads 1

Same random-init model, images, one Grad-CAM map per image and the same removal fractions on both sides
(pixel counts by pytorch-grad-cam's percentile rule):

* **cambench** ``road`` (functional, what the ``road_morf`` registry entry runs): the model as the runner
  prepares it (channels_last for CNNs); ``imputer="cg"`` (default: the image x fraction systems of a forward
  chunk imputed by conjugate gradient -- batched on an accelerator, one row at a time on CPU, each on its
  holes' bounding box -- then one forward per imputed image) and ``imputer="exact"`` (one sparse LU solve per
  image and fraction, the reference algorithm);
* **pytorch-grad-cam** ``ROADMostRelevantFirstAverage`` as a user calls it (per fraction: one forward of
  the originals, one sparse solve per image, one forward of the imputed batch), and the same without the
  originals' forward (``return_diff=False``: imputation + one forward per fraction, the work cambench does).

Also times the imputation alone (no forwards): cambench's batched CG, cambench's exact path and
pytorch-grad-cam's ``NoisyLinearImputer`` on the same masks, and cambench's forwards alone (the floor of its
ROAD: one forward per imputed image). Each timing is repeated ``--repeats`` times, round-robin over the rows
(min and median printed); on a shared machine compare the ratios of one run, not absolute times. Pin it to
one core for stable figures: ``taskset -c 1 python benchmarks/road_speed.py --threads 1``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import methods
from benchmark.metrics.functional.faithfulness import (
    _item_generator,
    noisy_linear_impute,
    noisy_linear_impute_batch,
    road,
    road_removal_counts,
)
from benchmark.metrics.perturbation import order_to_rank, pixel_order


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, device: torch.device, repeats: int) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Time every ``fns`` entry ``repeats`` times, round-robin (repeat 1 of each, then repeat 2 of each, ...),
    so that a change of machine load hits every row alike instead of one row's repeats."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    outs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            outs[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times, outs


def fmt(times: list[float]) -> str:
    return f"min {min(times):7.3f} s  median {statistics.median(times):7.3f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", choices=("resnet18", "resnet50"))
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fractions", default="0.1,0.5,0.9", help="removed fractions (pgc percentile = 100 (1 - p))")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's)")
    ap.add_argument("--chunk", type=int, default=64, help="cambench forward chunk")
    ap.add_argument("--skip-exact", action="store_true", help="skip cambench's imputer='exact' timings")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fractions = [float(f) for f in args.fractions.split(",")]
    kept = [round(100 * (1 - f)) for f in fractions]

    import torchvision
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        AveragerAcrossThresholds,
        PerturbationConfidenceMetric,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    cb_model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # the runner's preparation
    g = torch.Generator().manual_seed(0)
    n, s = args.images, args.size
    low = torch.rand(n, 3, max(2, s // 8), max(2, s // 8), generator=g)
    x = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    sal = methods.explain(model, model.layer4, x, t, ["gradcam"])["gradcam"]
    sal = sal + 1e-6 * torch.rand(sal.shape, generator=g).to(device)  # tie-free: pgc's percentile counts apply
    keys = torch.arange(n)

    print(
        f"ROAD MoRF: {args.model} random init, {n} images {s}x{s}, fractions {fractions}, one Grad-CAM map each, "
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )

    def cambench(imputer: str):
        return lambda: road(
            cb_model,
            x.contiguous(memory_format=torch.channels_last),
            t,
            sal,
            percentages=fractions,
            order="morf",
            count_rule="percentile",
            noise_keys=keys,
            imputer=imputer,
            batch_size=args.chunk,
        )

    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in t]
    cams = sal.cpu().numpy()
    pgc_public = ROADMostRelevantFirstAverage(percentiles=kept)
    pgc_strict = AveragerAcrossThresholds(
        lambda p: (
            lambda *a: PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, NoisyLinearImputer()))(
                *a, return_diff=False
            )
        ),
        kept,
    )

    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    fns = {"cambench road, imputer=cg": cambench("cg")}
    if not args.skip_exact:
        fns["cambench road, imputer=exact"] = cambench("exact")
    fns["pytorch-grad-cam ROADMostRelevantFirstAverage"] = lambda: pgc_public(x, cams, targets, model)
    fns["pytorch-grad-cam, imputed forwards only"] = lambda: pgc_strict(x, cams, targets, model)
    x_rows = x.repeat_interleave(len(fractions), 0).contiguous(memory_format=torch.channels_last)
    fns["cambench forwards alone (the imputed batch's size)"] = lambda: cb_model(x_rows)
    with torch.no_grad():
        cambench("cg")()  # warm-up (allocator, kernels)
        rows, vals = interleaved(fns, device, args.repeats)
    val_cg, val_pgc = vals["cambench road, imputer=cg"], vals["pytorch-grad-cam, imputed forwards only"]
    val_ex = vals.get("cambench road, imputer=exact")

    # imputation alone (no forwards): the same n x fractions masks
    hw = s * s
    ks = road_removal_counts(hw, fractions, "percentile")
    ranks = order_to_rank(pixel_order(sal, descending=True))
    removed = torch.stack([(ranks[i] < k).view(s, s) for i in range(n) for k in ks.tolist()])
    imgs = x.repeat_interleave(len(fractions), 0)
    gens = lambda: [_item_generator(0, i, j) for i in range(n) for j in range(len(fractions))]
    pgc_imp = NoisyLinearImputer(noise=0.01)
    ifns = {"cambench batched cg": lambda: noisy_linear_impute_batch(imgs, removed, noise=0.01, generators=gens())}
    if not args.skip_exact:
        ifns["cambench exact (scipy, per image)"] = lambda: torch.stack(
            [
                noisy_linear_impute(imgs[i], removed[i], noise=0.01, generator=gi, imputer="exact")
                for i, gi in enumerate(gens())
            ]
        )
    ifns["pytorch-grad-cam NoisyLinearImputer"] = lambda: [
        pgc_imp(imgs[i].cpu(), (~removed[i]).float().cpu()) for i in range(len(imgs))
    ]
    with torch.inference_mode():
        imp, iouts = interleaved(ifns, device, args.repeats)
    out_cg, out_ex = iouts["cambench batched cg"], iouts.get("cambench exact (scipy, per image)")
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None

    if load0 is not None:
        print(
            f"load average (1, 5, 15 min) at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
            f"at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; repeats interleaved round-robin"
        )
    print("\n-- ROAD (imputation + forwards), seconds for the whole workload")
    for name, ts in rows.items():
        print(f"{name:48s} {fmt(ts)}")
    print("\n-- imputation alone (no forwards)")
    for name, ts in imp.items():
        print(f"{name:48s} {fmt(ts)}")
    cg = min(rows["cambench road, imputer=cg"])
    print("\n-- speed-up of cambench road (imputer=cg), by min time")
    cg_med = statistics.median(rows["cambench road, imputer=cg"])
    print(
        f"speed-up vs pytorch-grad-cam ROADMostRelevantFirstAverage: "
        f"{min(rows['pytorch-grad-cam ROADMostRelevantFirstAverage']) / cg:.2f}x "
        f"(by median: {statistics.median(rows['pytorch-grad-cam ROADMostRelevantFirstAverage']) / cg_med:.2f}x)"
    )
    print(
        f"speed-up vs pytorch-grad-cam imputed forwards only:        "
        f"{min(rows['pytorch-grad-cam, imputed forwards only']) / cg:.2f}x"
    )
    if not args.skip_exact:
        print(
            f"speed-up vs cambench imputer=exact:                       "
            f"{min(rows['cambench road, imputer=exact']) / cg:.2f}x"
        )
        print(
            f"imputation alone, cg vs exact:                            "
            f"{min(imp['cambench exact (scipy, per image)']) / min(imp['cambench batched cg']):.2f}x"
        )
    print(
        f"imputation alone, cg vs pytorch-grad-cam:                 "
        f"{min(imp['pytorch-grad-cam NoisyLinearImputer']) / min(imp['cambench batched cg']):.2f}x"
    )
    if not args.skip_exact:
        print(
            f"\nmax |cg - exact|: imputed pixels {float((out_cg - out_ex).abs().amax()):.2e}, "
            f"ROAD scores {float((val_cg - val_ex).abs().amax()):.2e}"
        )
    print(
        f"max |cambench - pytorch-grad-cam| ROAD score (different noise draws): "
        f"{float(np.abs(val_cg.cpu().numpy() - val_pgc).max()):.2e}"
    )


if __name__ == "__main__":
    main()
