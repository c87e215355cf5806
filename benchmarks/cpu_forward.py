"""Benchmark: per-image inference forward time on CPU by batch size and memory format.

    python benchmarks/cpu_forward.py                               # resnet50 and resnet18 at 224, resnet18 at 64
    python benchmarks/cpu_forward.py --model resnet50 --size 224 --batches 1,4,16,64

The evidence behind two CPU defaults of the engine (``benchmark.forward.CPU_CHUNK_PIXELS``: at most
2**18 input pixels per extra forward; channels_last for CNNs, ``benchmark.runner``): large batches of large
images are slower per image on a CPU (the activations spill out of the caches), and channels_last is
faster. Prints ms per image for each (memory format, batch), the engine's chosen chunk, and the ratio of
the engine's setting against the peers' (pytorch-grad-cam / Quantus: NCHW at batch 1 and at batch 64).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
import torchvision

from benchmark.forward import forward_chunk


def per_image_ms(model: torch.nn.Module, size: int, batch: int, channels_last: bool, repeats: int) -> float:
    x = torch.randn(batch, 3, size, size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    with torch.inference_mode():
        model(x)  # warm-up (oneDNN primitive creation)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return best / batch * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a torchvision model (default: the three standard cases)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cases = [(args.model, args.size)] if args.model else [("resnet50", 224), ("resnet18", 224), ("resnet18", 64)]
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"# cpu_forward: torch {torch.__version__}, {torch.get_num_threads()} threads; ms per image, best of "
        f"{args.repeats}"
    )
    for name, size in cases:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        chunk = forward_chunk(max(batches + [64]), torch.empty(1, 3, size, size))
        row = {}
        for cl in (False, True):
            for b in sorted(set(batches + [chunk])):
                row[(cl, b)] = per_image_ms(model, size, b, cl, args.repeats)
        cells = "  ".join(f"{'CL' if cl else 'NCHW'} b{b}: {ms:6.1f}" for (cl, b), ms in row.items())
        ours = row[(True, chunk)]
        print(f"{name} {size}x{size}: {cells}")
        print(
            f"  engine chunk {chunk} channels_last: {ours:.1f} ms/img; vs NCHW b1 {row[(False, 1)] / ours:.2f}x"
            + (f", vs NCHW b64 {row[(False, 64)] / ours:.2f}x" if (False, 64) in row else "")
        )


if __name__ == "__main__":
    main()
