"""Report pieces of the WSSS seed metrics: the per-class ``seeds.csv`` table and mIoU-vs-threshold curves.

Both read the stored per-image statistics of ``seed_miou`` / ``seed_miou_oracle_threshold``
(``OUT/stats`` parts: one row per (model, dataset, method, metric, image_id) with a ``stats`` vector; see
``benchmark/metrics/seeds.py`` for its layout: per threshold, the true-positive, ground-truth and
predicted pixel counts of every class). Everything is recomputed from the summed counts, so the numbers
are exactly the dataset-level ones.

Per class ``c`` (background = 0) at the variant's threshold: ``IoU = TP/(TP+FP+FN)``, ``precision =
TP/(TP+FP)``, ``recall = TP/(TP+FN)``, and the FP and FN ratios ``FP/(TP+FP+FN)`` and
``FN/(TP+FP+FN)``: the shares of the union that are false positives and false negatives, so that
``IoU + fp_ratio + fn_ratio = 1`` (how much of a class's error is over- and how much under-activation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.transforms import image_key
from ..metrics.seeds import DEFAULTS, held_out, miou_curve, reshape_stats, thresholds
from ..store import atomic_write_text

SEED_METRICS = ("seed_miou", "seed_miou_oracle_threshold")
KEYS = ["model", "dataset", "method"]
TABLE_COLUMNS = [
    "model",
    "dataset",
    "method",
    "variant",
    "threshold",
    "n_images",
    "class",
    "iou",
    "precision",
    "recall",
    "fp_ratio",
    "fn_ratio",
    "gt_pixels",
    "pred_pixels",
]
CURVE_COLUMNS = ["model", "dataset", "method", "threshold", "miou", "miou_selection", "miou_evaluation"]


def _seed_rows(stats: pd.DataFrame) -> pd.DataFrame:
    """The statistics rows of one seed metric per (model, dataset, method) (both metrics store the same)."""
    if stats is None or not len(stats) or "metric" not in stats:
        return pd.DataFrame(columns=[*KEYS, "metric", "image_id", "stats"])
    s = stats[stats["metric"].isin(SEED_METRICS)]
    if not len(s):
        return s
    first = s.groupby(KEYS, sort=False)["metric"].transform(lambda m: sorted(set(m))[0])
    return s[s["metric"] == first]


def _matrix(rows: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float64) for v in rows["stats"]])


def _class_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """``counts [3, C]`` (TP, GT, PRED) -> IoU, precision, recall, FP and FN ratios per class (NaN: 0/0)."""
    tp, gt, pred = counts
    fp, fn = pred - tp, gt - tp
    union = tp + fp + fn

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)

    return {
        "iou": div(tp, union),
        "precision": div(tp, pred),
        "recall": div(tp, gt),
        "fp_ratio": div(fp, union),
        "fn_ratio": div(fn, union),
        "gt_pixels": gt,
        "pred_pixels": pred,
    }


def seeds_table(
    stats: pd.DataFrame,
    class_names: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """``seeds.csv``: per (model, dataset, method, variant) and class, IoU, precision, recall, FP / FN ratios.

    ``variant = "held_out"``: at the threshold chosen on the held-out split, over the other images (what
    ``seed_miou`` reports); ``variant = "oracle"``: at the best threshold on all images (optimistic, what
    ``seed_miou_oracle_threshold`` reports). ``class_names``: the dataset's K classes (background is
    prepended); ``params``: the seed metrics' parameters (``n_thresholds``, ``threshold_split``).
    A class row ``"mean"`` holds the mean over classes with a defined IoU (= the metric's value).
    """
    p = {**DEFAULTS, **dict(params or {})}
    t_n, share = int(p["n_thresholds"]), float(p["threshold_split"])
    grid = thresholds(t_n)
    out = []
    for key, rows in _seed_rows(stats).groupby(KEYS, sort=False):
        arr = _matrix(rows)
        ids = [str(i) for i in rows["image_id"]]
        c = reshape_stats(arr, t_n).shape[-1]
        names = ["background", *(class_names or [f"class_{k}" for k in range(c - 1)])]
        if len(names) != c:
            raise ValueError(
                f"{key}: the statistics hold {c - 1} classes + background, but {len(names) - 1} class names were given."
            )
        held = held_out(ids, share)
        everything = np.ones(len(ids), dtype=bool)
        variants = [("held_out", held, ~held)] if held.any() and not held.all() else []
        variants.append(("oracle", everything, everything))
        for variant, select, evaluate in variants:
            curve = miou_curve(arr[select], t_n)
            if not np.isfinite(curve).any():
                continue
            t = int(np.nanargmax(curve))
            n_img = len({image_key(i) for i, k in zip(ids, evaluate, strict=True) if k})
            m = _class_metrics(reshape_stats(arr[evaluate], t_n).sum(0)[t])
            for k, name in enumerate(names):
                out.append([*key, variant, float(grid[t]), n_img, name, *(float(m[f][k]) for f in TABLE_COLUMNS[7:])])
            iou = m["iou"]
            out.append(
                [
                    *key,
                    variant,
                    float(grid[t]),
                    n_img,
                    "mean",
                    float(np.nanmean(iou)) if np.isfinite(iou).any() else np.nan,
                    *(np.nan for _ in TABLE_COLUMNS[8:]),
                ]
            )
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def seed_curves(stats: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """mIoU at every background threshold per (model, dataset, method): on all images (``miou``), on the
    held-out selection split and on the evaluation split (the curves behind both seed metrics)."""
    p = {**DEFAULTS, **dict(params or {})}
    t_n, share = int(p["n_thresholds"]), float(p["threshold_split"])
    grid = thresholds(t_n)
    out = []
    for key, rows in _seed_rows(stats).groupby(KEYS, sort=False):
        arr = _matrix(rows)
        held = held_out([str(i) for i in rows["image_id"]], share)
        nan = np.full(t_n, np.nan)
        sel = miou_curve(arr[held], t_n) if held.any() else nan
        ev = miou_curve(arr[~held], t_n) if (~held).any() else nan
        for t, (a, b, c) in enumerate(zip(miou_curve(arr, t_n), sel, ev, strict=True)):
            out.append([*key, float(grid[t]), float(a), float(b), float(c)])
    return pd.DataFrame(out, columns=CURVE_COLUMNS)


def plot_seed_curves(curves: pd.DataFrame, path: str | Path) -> Path | None:
    """One panel per (model, dataset): mIoU vs background threshold, a line per method (all images), the
    threshold chosen on the held-out split marked. Returns the PNG path (None when there is nothing)."""
    if curves is None or not len(curves):
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = list(curves.groupby(["model", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, ((model, dataset), g) in zip(axes[0], groups, strict=True):
        for method, c in g.groupby("method", sort=False):
            (line,) = ax.plot(c["threshold"], c["miou"], label=method)
            sel = c["miou_selection"].to_numpy()
            if np.isfinite(sel).any():
                t = c["threshold"].to_numpy()[int(np.nanargmax(sel))]
                ax.axvline(t, color=line.get_color(), lw=0.6, ls=":")
        ax.set_title(f"{model} on {dataset}", fontsize=9)
        ax.set_xlabel("background threshold")
        ax.set_ylabel("seed mIoU (all images)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_seed_report(
    stats: pd.DataFrame,
    out: str | Path,
    class_names: Mapping[tuple[str, str], Sequence[str]] | None = None,
    params: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``OUT/seeds.csv``, ``OUT/seed_curves.csv`` (atomically) and, with ``plots``,
    ``OUT/plots/seed_miou_vs_threshold.png``; ``class_names`` maps ``(model, dataset)`` to the dataset's class
    names. Returns what was written."""
    out = Path(out)
    rows = _seed_rows(stats)
    if not len(rows):
        return {}
    tables = []
    for (model, dataset), g in rows.groupby(["model", "dataset"], sort=False):
        tables.append(seeds_table(g, (class_names or {}).get((model, dataset)), params))
    written = {"seeds": out / "seeds.csv", "curves": out / "seed_curves.csv"}
    atomic_write_text(written["seeds"], pd.concat(tables, ignore_index=True).to_csv(index=False))
    curves = seed_curves(rows, params)
    atomic_write_text(written["curves"], curves.to_csv(index=False))
    if plots:
        png = plot_seed_curves(curves, out / "plots" / "seed_miou_vs_threshold.png")
        if png is not None:
            written["plot"] = png
    return written


__all__ = ["plot_seed_curves", "seed_curves", "seeds_table", "write_seed_report"]
