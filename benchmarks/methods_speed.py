"""Benchmark: all gradient CAM methods from ONE capture vs pytorch-grad-cam running them one by one.

    python benchmarks/methods_speed.py                 # resnet50, batch 8, 224x224 (issue #2 setting)
    python benchmarks/methods_speed.py --model resnet18 --batch 4 --repeats 2
    python benchmarks/methods_speed.py --device cuda

Prints the time of our single Grad-CAM, of our eight gradient methods together, of pytorch-grad-cam's
same methods one by one, and the ratios. Random-init weights (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
import torchvision

from benchmark import methods

OURS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam", "cfcam"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    targets = torch.arange(args.batch, device=device) % 1000
    layer = methods.resolve_layer(model, args.layer)

    t_fb = timed(lambda: methods.capture(model, layer, x, targets), device, args.repeats)
    t_one = timed(lambda: methods.explain(model, layer, x, targets, ["gradcam"]), device, args.repeats)
    t_all = timed(lambda: methods.explain(model, layer, x, targets, OURS), device, args.repeats)
    t_all7 = timed(lambda: methods.explain(model, layer, x, targets, OURS[:-1]), device, args.repeats)

    peers = {
        "gradcam": pgc.GradCAM,
        "gradcampp": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "hirescam": pgc.HiResCAM,
        "layercam": pgc.LayerCAM,
        "eigencam": pgc.EigenCAM,
        "eigengradcam": pgc.EigenGradCAM,
    }
    tg = [ClassifierOutputTarget(int(t)) for t in targets]

    def run_peers() -> None:
        for cls in peers.values():
            with cls(model=model, target_layers=[layer]) as cam:
                cam(input_tensor=x, targets=tg)

    t_peer = timed(run_peers, device, args.repeats)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"device {device}; {args.model} {args.layer}, batch {args.batch}, {args.size}x{args.size}"
    )
    print(f"one capture (forward+backward)              {t_fb * 1000:9.1f} ms")
    print(f"cambench gradcam alone                      {t_one * 1000:9.1f} ms")
    print(f"cambench 7 pgc-shared gradient methods      {t_all7 * 1000:9.1f} ms")
    print(f"cambench 8 gradient methods (+ CF-CAM)      {t_all * 1000:9.1f} ms")
    print(f"pytorch-grad-cam same 7 methods, one by one {t_peer * 1000:9.1f} ms")
    print(f"ratio  8 methods / our gradcam              {t_all / t_one:9.2f}x   (target <= 1.5x)")
    print(f"ratio  pgc 7 methods / our 7 methods        {t_peer / t_all7:9.2f}x   (target >= 10x)")
    print(f"ratio  pgc 7 methods / our 8 methods        {t_peer / t_all:9.2f}x")


if __name__ == "__main__":
    main()
