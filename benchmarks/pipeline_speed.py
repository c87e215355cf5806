"""Benchmark: the whole quick-suite workload, cambench vs the peer pipeline a user writes today.

    python benchmarks/pipeline_speed.py --quick                       # resnet18, 64x64, 2 images (CPU: minutes)
    python benchmarks/pipeline_speed.py --model resnet50 --size 224 --images 32 --device cuda
    python benchmarks/pipeline_speed.py --model resnet50 --size 224 --images 32 --device cuda \\
        --precision bf16 --gpu-util

Workload (same model, images, targets, step counts and sample counts on both sides):

* methods: every registered CAM method that pytorch-grad-cam also implements (gradcam, gradcampp,
  xgradcam, hirescam, layercam, scorecam, ablationcam, eigencam, eigengradcam);
* metrics: deletion AUC (zero substrate), insertion AUC (blurred start), pointing game (a ground-truth box
  per image) and max-sensitivity (``--samples`` uniform-noise samples of radius 0.2, re-explaining).

(a) **cambench**: ``methods.explain`` (one capture per batch for all gradient methods) and
``metrics.compute_metrics`` on batches of ``--batch`` images (methods, images and steps stacked into
chunked forwards of ``--chunk`` inputs).

(b) **peer**: pytorch-grad-cam for each method and Quantus for each metric, image by image:
``quantus.PixelFlipping`` for deletion (``features_in_step`` chosen for the same step count),
``quantus.PointingGame``, ``quantus.MaxSensitivity`` with pytorch-grad-cam as ``explain_func``.
Quantus 0.6 has no insertion metric, so insertion is the loop of the RISE reference code (one forward
per step of one image, blurred start). pytorch-grad-cam's Score-CAM and Ablation-CAM run with the same
forward batch size (``--chunk``) as cambench.

Each side gets the model the way its tools prepare it: cambench the runner's default (channels_last for
CNNs, on every device), the peer the model as the user built it (``--peer-channels-last`` converts it too).

Prints images/second of both pipelines, the ratio, the model forwards each one made per image (counted by
a hook), and the *floor*: forward-equivalents per image (a forward with gradients counts 3: forward +
backward) x the per-image time of one large inference batch. Timing depends on the machine: both sides run
one after the other in this process on the same device.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import methods
from benchmark.forward import PRECISIONS, cudnn_autotune, forward_compile, forward_precision
from benchmark.metrics import MetricContext, compute_metrics
from benchmark.metrics.functional.faithfulness import rise_blur
from benchmark.metrics.perturbation import order_to_rank, pixel_order, step_counts
from benchmark.types import Batch

PGC = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
METRICS = ["deletion_auc", "insertion_auc", "pointing_game", "max_sensitivity"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardCounter:
    """Counts images through the model: without gradients, and with gradients (forward + backward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.plain = self.grad = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs) -> None:
        n = int(inputs[0].shape[0])
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.grad += n
        else:
            self.plain += n

    def reset(self) -> None:
        self.plain = self.grad = 0

    @property
    def equivalents(self) -> int:
        return self.plain + 3 * self.grad


class GpuSampler:
    """Mean GPU utilisation (%) sampled every ``period`` s in a thread (``torch.cuda.utilization``, NVML)."""

    def __init__(self, device: torch.device, period: float = 0.1) -> None:
        self.device, self.period, self.samples = device, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:
                return
            time.sleep(self.period)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else float("nan")


def build_model(name: str, device: torch.device, weights: str = "random"):
    """(model, target layer, mean, std, handle): seeded random weights, or a registry model's ``weights``."""
    torch.manual_seed(0)
    if name in ("resnet18", "resnet50") and weights == "random":
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        return model.eval().to(device), model.layer4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None
    from benchmark.models import create_model

    handle = create_model(name, weights=weights, device=device)
    layer = methods.resolve_layer(handle.model, handle.target_layer)
    return handle.model, layer, handle.mean, handle.std, handle


def photo_inputs(n: int, handle, device: torch.device):
    """The first ``n`` objects of the ``photos`` data set (skimage photos, hand-drawn object masks), resized
    and normalised for ``handle``'s model."""
    from benchmark.data import create_dataset
    from benchmark.data.transforms import make_batches

    batch = next(iter(make_batches(create_dataset("photos"), handle, n, indices=list(range(n)))))
    return batch.images.to(device), batch.masks.to(device)


def make_inputs(n: int, size: int, mean, std, device: torch.device, seed: int = 0):
    """Seeded smooth random images (normalised) and one ground-truth box mask per image."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size // 8), max(2, size // 8), generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        h, w = (torch.randint(size // 4, size // 2 + 1, (2,), generator=g)).tolist()
        y0, x0 = (
            torch.randint(0, size - h + 1, (1,), generator=g).item(),
            torch.randint(0, size - w + 1, (1,), generator=g).item(),
        )
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return x.to(device), masks.to(device)


# -- (a) cambench -----------------------------------------------------------------------------------


def run_cambench(model, layer, x, targets, masks, names, args) -> dict:
    def explain_fn(model_, images, tg, ns, *, gradient_noise=None):
        return methods.explain(
            model_, layer, images, tg, ns, forward_batch_size=args.chunk, gradient_noise=gradient_noise
        )

    params = {
        "deletion_auc": {"n_steps": args.steps, "step": None},
        "insertion_auc": {"n_steps": args.steps, "step": None},
        "max_sensitivity": {"n_samples": args.samples, "radius": 0.2},
    }
    out: dict = {"maps": 0.0, "metrics": 0.0, "values": {}}
    with forward_precision(args.precision), forward_compile(args.compile), cudnn_autotune(args.compile):
        for s in range(0, x.shape[0], args.batch):
            xb, tb, mb = x[s : s + args.batch], targets[s : s + args.batch], masks[s : s + args.batch]
            _sync(x.device)
            t0 = time.perf_counter()
            maps = methods.explain(model, layer, xb, tb, names, forward_batch_size=args.chunk)
            _sync(x.device)
            t1 = time.perf_counter()
            ctx = MetricContext(
                model=model,
                batch=Batch(xb, tb, [str(i) for i in range(s, s + len(xb))], mb),
                saliency=maps,
                explain=explain_fn,
                seed=0,
                forward_batch_size=args.chunk,
            )
            res = compute_metrics(ctx, METRICS, params)
            _sync(x.device)
            out["maps"] += t1 - t0
            out["metrics"] += time.perf_counter() - t1
            for metric, per in res.items():
                for m, v in per.items():
                    out["values"].setdefault((m, metric), []).append(v.float().cpu())
    out["values"] = {k: torch.cat(v).numpy() for k, v in out["values"].items()}
    return out


# -- (b) pytorch-grad-cam + Quantus, image by image -------------------------------------------------


class AutocastForwards(torch.nn.Module):
    """The peer's model under cambench's precision rule: forwards without gradients (Quantus' metric
    forwards, pgc's Score-/Ablation-CAM batches, the insertion loop) autocast to ``dtype`` and return float32
    (numpy-convertible) outputs; forwards with gradients (pgc's capture) stay fp32, as cambench's capture."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.model(x)
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x).float()


def run_peer(model, layer, x, targets, masks, names, args) -> dict:
    import pytorch_grad_cam as pgc
    import quantus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not hasattr(np, "trapz"):  # Quantus 0.6.0 calls np.trapz (removed in NumPy 2.4)
        np.trapz = np.trapezoid
    device = x.device
    n, _, h, w = x.shape
    hw = h * w
    fis = 3 * hw // args.steps  # PixelFlipping: features_in_step over C*H*W -> args.steps steps

    def make_cam(name):
        cls = getattr(pgc, PGC[name])
        if name == "ablationcam":
            return cls(model=model, target_layers=[layer], batch_size=args.chunk)
        cam = cls(model=model, target_layers=[layer])
        if name == "scorecam":
            cam.batch_size = args.chunk
        return cam

    def pgc_explain(model, inputs, targets, **kw):
        xs = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
        with make_cam(kw["method"]) as cam:
            return cam(input_tensor=xs, targets=[ClassifierOutputTarget(int(t)) for t in np.atleast_1d(targets)])[
                :, None
            ]

    deletion = quantus.PixelFlipping(
        features_in_step=fis, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    pointing = quantus.PointingGame(disable_warnings=True)
    sensitivity = quantus.MaxSensitivity(
        nr_samples=args.samples, lower_bound=0.2, disable_warnings=True, return_nan_when_prediction_changes=False
    )
    blurred = rise_blur(x, 11, 5.0)
    k = step_counts(hw, n_steps=args.steps).tolist()
    out: dict = {"maps": 0.0, "metrics": 0.0, "values": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            for i in range(n):
                xi, ti = x[i : i + 1], int(targets[i])
                _sync(device)
                t0 = time.perf_counter()
                with make_cam(name) as cam:
                    a = cam(input_tensor=xi, targets=[ClassifierOutputTarget(ti)])[:, None]  # [1,1,H,W]
                if not np.any(a):  # Quantus refuses all-zero maps; a raster ramp keeps the same work
                    a = (np.arange(hw, 0, -1, dtype=np.float32).reshape(1, 1, h, w) / hw) * 1e-6
                _sync(device)
                t1 = time.perf_counter()
                x_np, y_np, s_np = (
                    xi.cpu().numpy(),
                    np.array([ti]),
                    masks[i : i + 1, None].cpu().numpy().astype(np.float32),
                )
                curve = np.asarray(
                    deletion(
                        model=model,
                        x_batch=x_np,
                        y_batch=y_np,
                        a_batch=a,
                        device=str(device),
                        softmax=True,
                        channel_first=True,
                    )
                )
                vals = {"deletion_auc": np.trapezoid(curve, dx=1 / (curve.shape[1] - 1), axis=1)}
                # insertion (RISE reference loop: one forward per step, blurred start)
                rank = order_to_rank(pixel_order(torch.from_numpy(a[:, 0]).to(device)))[0].view(h, w)
                probs = []
                with torch.no_grad():
                    for kk in k:
                        xin = torch.where(rank < kk, xi, blurred[i : i + 1])
                        probs.append(float(torch.softmax(model(xin), 1)[0, ti]))
                vals["insertion_auc"] = np.array([np.trapezoid(probs, dx=1 / (len(probs) - 1))])
                vals["pointing_game"] = np.asarray(
                    pointing(model=model, x_batch=x_np, y_batch=y_np, a_batch=a, s_batch=s_np, device=str(device)),
                    dtype=float,
                )
                vals["max_sensitivity"] = np.asarray(
                    sensitivity(
                        model=model,
                        x_batch=x_np,
                        y_batch=y_np,
                        a_batch=a,
                        device=str(device),
                        explain_func=pgc_explain,
                        explain_func_kwargs={"method": name},
                    ),
                    dtype=float,
                )
                _sync(device)
                out["maps"] += t1 - t0
                out["metrics"] += time.perf_counter() - t1
                for metric, v in vals.items():
                    out["values"].setdefault((name, metric), []).append(np.asarray(v, dtype=float).reshape(-1))
    out["values"] = {kk: np.concatenate(v) for kk, v in out["values"].items()}
    return out


def forward_time(model, size: int, device: torch.device, batch: int, precision: str, channels_last: bool) -> float:
    """Seconds per image of one large inference batch (the floor's unit cost)."""
    xb = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), forward_precision(precision):
        from benchmark.forward import forward_autocast

        with forward_autocast(device):
            model(xb[: min(batch, 8)])
            _sync(device)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                model(xb)
                _sync(device)
                best = min(best, time.perf_counter() - t0)
    return best / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="resnet50",
        help="resnet18 | resnet50 | any registry model (efficientnet_lite0, shapes_cnn, ...)",
    )
    ap.add_argument(
        "--weights",
        default="random",
        help="random (seeded) | default (a registry model's packaged weights, e.g. efficientnet_lite0)",
    )
    ap.add_argument(
        "--data",
        choices=("synthetic", "photos"),
        default="synthetic",
        help="smooth random images with a random box, or the skimage photos with object masks "
        "(at most 7; needs a registry model)",
    )
    ap.add_argument("--size", type=int, default=224, help="image side (default 224)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=24, help="deletion/insertion steps (a multiple of 3 for Quantus)")
    ap.add_argument("--samples", type=int, default=4, help="max-sensitivity noise samples")
    ap.add_argument("--batch", type=int, default=8, help="cambench images per batch")
    ap.add_argument("--chunk", type=int, default=64, help="forward batch of the extra forwards (both sides)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="perturbation forwards (no-gradient forwards) of both sides; the capture stays fp32",
    )
    ap.add_argument(
        "--peer-precision",
        choices=("same", "fp32"),
        default="same",
        help="same: the peer's no-gradient forwards autocast like cambench's (a fair ratio); "
        "fp32: the peer as the user runs it",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="cambench side: torch.compile the perturbation forwards (CUDA graphs on CUDA) and "
        "cuDNN autotuning (the runner's --compile); the warm-up pays the compile",
    )
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    ap.add_argument("--gpu-util", action="store_true", help="sample GPU utilisation (needs pynvml)")
    ap.add_argument(
        "--floor-batch",
        type=int,
        default=None,
        help="batch of the floor measurement (default 256 on CUDA; on CPU the engine's CPU chunk)",
    )
    ap.add_argument(
        "--channels-last",
        choices=("on", "off"),
        default="on",
        help="cambench side: channels_last model and inputs (the runner's default for CNNs)",
    )
    ap.add_argument(
        "--peer-channels-last",
        action="store_true",
        help="give the peer the channels_last model too (pgc and Quantus do not convert it)",
    )
    ap.add_argument("--skip-peer", action="store_true", help="cambench only (e.g. for a large GPU run)")
    ap.add_argument("--quick", action="store_true", help="resnet18, 64x64, 2 images, 24 steps, 2 samples")
    args = ap.parse_args()
    if args.quick:
        args.model, args.size, args.images, args.steps, args.samples = "resnet18", 64, 2, 24, 2
    from benchmark.methods import METHODS

    names = [m for m in PGC if m in METHODS] if args.methods is None else args.methods.split(",")
    device = torch.device(args.device)
    model, layer, mean, std, handle = build_model(args.model, device, args.weights)
    if args.data == "photos":
        if handle is None:
            raise SystemExit("--data photos needs a registry model (e.g. --model resnet50 --weights default).")
        x, masks = photo_inputs(args.images, handle, device)
        args.size = int(x.shape[-1])
    else:
        x, masks = make_inputs(args.images, args.size, mean, std, device)
    hw = args.size * args.size
    if args.steps % 3 or hw % (3 * hw // args.steps):
        raise SystemExit(
            f"--steps must be a multiple of 3 with 3*H*W/steps dividing H*W={hw} (a Quantus "
            "PixelFlipping constraint); e.g. 24."
        )
    with torch.inference_mode():
        pred = model(x).argmax(1)
    targets = pred.clone()  # a normal tensor (inference tensors cannot enter autograd)
    layer_name = next(n for n, m in model.named_modules() if m is layer)
    ours_cl, peer_cl = args.channels_last == "on", args.peer_channels_last
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)
    model_ours = copy.deepcopy(model)
    if ours_cl:
        model_ours = model_ours.to(memory_format=torch.channels_last)
    if peer_cl:
        model = model.to(memory_format=torch.channels_last)
    peer_precision = args.precision if args.peer_precision == "same" else "fp32"
    if PRECISIONS[peer_precision] is not None:
        model = AutocastForwards(model, PRECISIONS[peer_precision])
    setups = {  # side -> (runner, model, layer, images)
        "cambench": (run_cambench, model_ours, methods.resolve_layer(model_ours, layer_name), cl(x) if ours_cl else x),
        "peer (pgc + Quantus)": (run_peer, model, layer, cl(x) if peer_cl else x),
    }
    counters = {side: ForwardCounter(m) for side, (_, m, _, _) in setups.items()}

    print(
        f"# pipeline_speed: {args.model} weights={args.weights}, data={args.data}, "
        f"{args.images} images {args.size}x{args.size}, "
        f"{len(names)} methods ({', '.join(names)}), metrics {', '.join(METRICS)}, {args.steps} steps, "
        f"{args.samples} sensitivity samples, chunk {args.chunk}, device={device}, precision={args.precision} "
        f"(peer {peer_precision}), compile={args.compile}, "
        f"channels_last cambench={ours_cl} peer={peer_cl}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
    )

    # warm-up (cudnn autotuning, allocator, lazy imports; with --compile the compile of each chunk shape) on
    # one batch, not timed
    _, m0, l0, x0 = setups["cambench"]
    warm = min(args.batch, x0.shape[0]) if args.compile else 1
    run_cambench(m0, l0, x0[:warm], targets[:warm], masks[:warm], names if args.compile else names[:1], args)
    from benchmark.forward import forward_chunk

    # the floor's unit cost first, so that a run cut short still prints it with the sides that finished
    fb = args.floor_batch or (256 if device.type == "cuda" else forward_chunk(256, x))
    t_img = forward_time(model_ours, args.size, device, fb, args.precision, ours_cl)
    n = args.images
    header = (
        f"{'pipeline':26s} {'total s':>9s} {'img/s':>8s} {'maps s':>8s} {'metrics s':>9s} "
        f"{'fwd/img':>9s} {'grad/img':>8s} {'floor s':>8s} {'x floor':>8s} {'GPU %':>6s}"
    )

    def row(side: str, r: dict) -> str:
        plain, grad, eq = r["fwd"]
        floor = eq * t_img
        return (
            f"{side:26s} {r['total']:9.2f} {n / r['total']:8.3f} {r['maps']:8.2f} {r['metrics']:9.2f} "
            f"{plain / n:9.0f} {grad / n:8.1f} {floor:8.2f} {r['total'] / floor:8.2f} {r['util']:6.1f}"
        )

    sides = {}
    for side, (fn, m, lay, xs) in setups.items():
        if args.skip_peer and fn is run_peer:
            continue
        counter = counters[side]
        counter.reset()
        sampler = GpuSampler(device) if args.gpu_util and device.type == "cuda" else None
        _sync(device)
        t0 = time.perf_counter()
        if sampler:
            with sampler:
                res = fn(m, lay, xs, targets, masks, names, args)
        else:
            res = fn(m, lay, xs, targets, masks, names, args)
        _sync(device)
        res["total"] = time.perf_counter() - t0
        res["fwd"] = (counter.plain, counter.grad, counter.equivalents)
        res["util"] = sampler.mean if sampler else float("nan")
        sides[side] = res
        print(f"done: {row(side, res)}", flush=True)
    for c in counters.values():
        c.handle.remove()
    print(header)
    for side, r in sides.items():
        print(row(side, r))
    print(
        f"floor unit: {t_img * 1e3:.3f} ms per image-forward (best of 3 inference batches of {fb}); a forward "
        "with gradients counts 3"
    )
    if len(sides) == 2:
        a, b = sides["cambench"], sides["peer (pgc + Quantus)"]
        print(
            f"speed-up cambench vs peer: {b['total'] / a['total']:.2f}x  "
            f"(maps {b['maps'] / max(a['maps'], 1e-9):.2f}x, metrics {b['metrics'] / max(a['metrics'], 1e-9):.2f}x)"
        )
        # agreement where the two pipelines share a definition (sanity, not a parity test)
        for metric in ("deletion_auc", "max_sensitivity"):
            ours = np.concatenate([a["values"][(m, metric)] for m in names])
            theirs = np.concatenate([b["values"][(m, metric)] for m in names])
            ok = np.isfinite(ours) & np.isfinite(theirs)
            r = (
                np.corrcoef(ours[ok], theirs[ok])[0, 1]
                if ok.sum() > 2 and ours[ok].std() > 0 and theirs[ok].std() > 0
                else float("nan")
            )
            print(f"Pearson r of {metric} (cambench vs peer, {ok.sum()} method x image values): {r:.3f}")


if __name__ == "__main__":
    main()
