"""Report figures (matplotlib Agg + seaborn, PNG): metric bars with CIs, curves, rank heatmap, gallery."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..schema import METRIC_FAMILIES
from .tables import MEAN_RANK

DPI = 90


def _slug(*parts: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join(parts))


def _save(fig: plt.Figure, path: Path, tight: bool = True, dpi: int = DPI) -> Path:
    """Write ``fig`` as a 256-colour PNG (a figure's flat colours survive; the report embeds every figure, so
    this keeps ``report.html`` a few MB instead of tens)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None, pad_inches=0.05)  # "tight" draws twice
    plt.close(fig)
    with Image.open(tmp) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)
    return path


#: Distinct colours for up to 28 methods (tab20's pairs then Dark2): neighbours in the list differ in hue.
_PALETTE = [matplotlib.colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))] + [
    matplotlib.colormaps["Dark2"](i) for i in range(8)
]
BASELINES = ("random", "center", "oracle")


def method_styles(methods: Sequence[str]) -> dict[str, tuple[tuple, str]]:
    """A colour and a line style per method, the same in every figure of a run: distinct colours for up to
    28 methods (then the colours repeat with another line style); baselines grey, dashed."""
    out: dict[str, tuple[tuple, str]] = {}
    ranked = [m for m in sorted(set(methods)) if m not in BASELINES]
    for i, m in enumerate(ranked):
        out[m] = (_PALETTE[i % len(_PALETTE)], ("-", "--", ":")[(i // len(_PALETTE)) % 3])
    for j, m in enumerate(b for b in BASELINES if b in set(methods)):
        out[m] = ((0.25 + 0.2 * j,) * 3 + (1.0,), "--")
    return out


def _style() -> None:
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")


def metric_bars(board: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One figure per (model, dataset): a bar chart per metric, methods sorted best first, 95 % CI bars."""
    _style()
    paths = []
    lb = board[board["metric"] != MEAN_RANK]
    for (model, dataset), g in lb.groupby(["model", "dataset"], sort=True):
        metrics = sorted(g["metric"].unique())
        ncol = min(3, len(metrics))
        nrow = int(np.ceil(len(metrics) / ncol))
        n_methods = g["method"].nunique()
        size = (4.2 * ncol, max(2.2, 0.22 * n_methods + 1.0) * nrow)
        fig, axes = plt.subplots(nrow, ncol, figsize=size, squeeze=False, layout="constrained")
        for ax, metric in zip(axes.flat, metrics, strict=False):  # the grid may have spare axes
            s = g[g["metric"] == metric].sort_values("rank")
            y = np.arange(len(s))
            err = np.vstack(
                [(s["mean"] - s["ci_low"]).clip(lower=0).fillna(0), (s["ci_high"] - s["mean"]).clip(lower=0).fillna(0)]
            )
            colors = ["#2a9d8f" if r == 1 else "#8da0cb" if np.isfinite(r) else "#bbbbbb" for r in s["rank"]]
            ax.barh(y, s["mean"], xerr=err, color=colors, ecolor="#333333", capsize=2)
            ax.set_yticks(y, s["method"])
            ax.invert_yaxis()
            arrow = "higher is better" if bool(s["higher_is_better"].iloc[0]) else "lower is better"
            ax.set_title(f"{metric} ({arrow})", fontsize=9)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        fig.suptitle(f"{model} on {dataset}: mean over images, 95% bootstrap CI", fontsize=10)
        paths.append(_save(fig, out_dir / f"bars-{_slug(model, dataset)}.png", dpi=72))
    return paths


def curve_plots(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One figure per (model, dataset): a panel per curve metric (deletion, insertion...), a line per method."""
    _style()
    paths: list[Path] = []
    if curves is None or curves.empty:
        return paths
    for (model, dataset), g in curves.groupby(["model", "dataset"], sort=True):
        metrics = sorted(g["metric"].unique())
        styles = method_styles(list(g["method"].unique()))
        ncol = min(3, len(metrics))
        nrow = int(np.ceil(len(metrics) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.2 * nrow), squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):  # the grid may have spare axes
            s = g[g["metric"] == metric]
            for method, c in s.groupby("method", sort=True):
                c = c.sort_values("step")
                color, ls = styles[method]
                few = c["x"].nunique() <= 3  # e.g. ROAD at one fraction: points at their measured x
                ax.plot(c["x"], c["value"], ls, color=color, lw=1.2, label=method, marker="o" if few else None, ms=3)
            xs = s["x"].to_numpy(dtype=float)
            if xs.size and np.isfinite(xs).any():
                lo, hi = min(0.0, float(np.nanmin(xs))), max(1.0, float(np.nanmax(xs)))
                ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("fraction of pixels perturbed", fontsize=8)
            ax.set_ylabel("score of the target class", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        ncols = 1 + len(labels) // 30
        fig.legend(handles, labels, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=ncols)
        fig.suptitle(f"{model} on {dataset}: mean curves", fontsize=10)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"curves-{_slug(model, dataset)}.png"))
    return paths


def rank_heatmap(board: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One heatmap per (model, dataset): methods (sorted by mean rank) x metrics, cells = rank (1 = best)."""
    import seaborn as sns

    _style()
    paths = []
    for (model, dataset), g in board.groupby(["model", "dataset"], sort=True):
        wide = g.pivot_table(index="method", columns="metric", values="rank")
        if MEAN_RANK in wide.columns:
            wide = wide.sort_values(MEAN_RANK)
            wide = wide[[c for c in wide.columns if c != MEAN_RANK] + [MEAN_RANK]]
        fig, ax = plt.subplots(figsize=(0.7 * wide.shape[1] + 2.5, 0.32 * wide.shape[0] + 1.4))
        sns.heatmap(
            wide,
            annot=True,
            fmt=".1f",
            cmap="viridis_r",
            cbar_kws={"label": "rank (1 = best)"},
            ax=ax,
            annot_kws={"fontsize": 7},
        )
        ax.set_title(f"{model} on {dataset}: ranks", fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize=7)
        paths.append(_save(fig, out_dir / f"ranks-{_slug(model, dataset)}.png"))
    return paths


def disagreement(maps: np.ndarray, keep: Sequence[int] | None = None) -> np.ndarray:
    """Per image, how much the methods' maps disagree: the standard deviation over methods, averaged over
    the pixels (voxels) of ``maps [N, M, ...]``; ``keep`` selects the methods that count (not the baselines)."""
    m = np.asarray(maps, dtype=np.float32)
    if keep is not None:
        m = m[:, list(keep)]
    if m.shape[1] < 2:
        return np.zeros(m.shape[0])
    return m.std(axis=1).reshape(m.shape[0], -1).mean(axis=1)


GALLERY_COLUMNS = 12  # image + 11 maps per row of the grid: a 22-method gallery wraps instead of 3000 px wide


def gallery(samples: Sequence[dict[str, np.ndarray]], out_dir: Path, max_images: int = 4) -> list[Path]:
    """One figure per experiment: the stored images on which the methods' maps disagree most
    (:func:`disagreement`, baselines left out) first; per image the image then each method's map overlaid,
    wrapped after ``GALLERY_COLUMNS`` columns; one colour bar for every map (all are in [0, 1]).

    Ground-truth boxes are drawn in lime, mask outlines in white.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    paths = []
    by_exp: dict[tuple[str, str], list[dict]] = {}
    for s in samples:
        by_exp.setdefault(tuple(s["experiment"].tolist()), []).append(s)
    for (model, dataset), parts in sorted(by_exp.items()):
        methods = list(parts[0]["methods"])
        keep = [c for c, m in enumerate(methods) if m not in BASELINES]
        cand: list = []
        for p in parts:
            if list(p["methods"]) != methods:
                continue
            spread = disagreement(p["maps"], keep)
            cand += [(-float(spread[i]), len(cand), p, i) for i in range(len(p["ids"]))]
        rows = [(p, i) for _, _, p, i in sorted(cand, key=lambda t: (t[0], t[1]))[:max_images]]
        if not rows:
            continue
        if rows[0][0]["images"].ndim == 5:  # volumes and clips [N,T,H,W,3]: strips of slices / frames
            paths.append(slice_gallery(rows, methods, model, dataset, out_dir))
            continue
        per = GALLERY_COLUMNS - 1
        chunks = [list(range(c, min(c + per, len(methods)))) for c in range(0, len(methods), per)]
        ncol = min(len(methods), per) + 1
        nrow = len(rows) * len(chunks)
        fig, axes = plt.subplots(nrow, ncol, figsize=(1.1 * ncol + 0.6, 1.15 * nrow + 0.3), squeeze=False)
        for r, (p, i) in enumerate(rows):
            img = p["images"][i]
            title = str(p["target_names"][i]) if "target_names" in p else f"class {int(p['targets'][i])}"
            for q, chunk in enumerate(chunks):
                row = r * len(chunks) + q
                for c in range(ncol):
                    ax = axes[row, c]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if (c == 0 and q > 0) or (c > 0 and c - 1 >= len(chunk)):
                        ax.axis("off")
                        continue
                    ax.imshow(img)
                    if c > 0:
                        mi = chunk[c - 1]
                        ax.imshow(p["maps"][i, mi].astype(np.float32), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                        ax.set_title(methods[mi], fontsize=6, pad=2)
                    if "masks" in p and p["masks"][i].any():
                        ax.contour(p["masks"][i].astype(float), levels=[0.5], colors="white", linewidths=0.6)
                    if "boxes" in p:
                        for x0, y0, x1, y1 in p["boxes"][i]:
                            if np.isfinite(x0):
                                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=0.9))
                if q == 0:
                    axes[row, 0].set_title("image", fontsize=6, pad=2)
                    axes[row, 0].set_ylabel(f"{p['ids'][i]}\n{title}", fontsize=6)
        fig.colorbar(
            ScalarMappable(Normalize(0, 1), cmap="jet"),
            ax=axes,
            fraction=0.02,
            pad=0.01,
            label="map value (each map scaled to [0, 1])",
        )
        fig.suptitle(f"{model} on {dataset}: the images where the maps disagree most", fontsize=9)
        paths.append(_save(fig, out_dir / f"gallery-{_slug(model, dataset)}.png", dpi=72))
    return paths


def _best_methods(methods: Sequence[str], board: pd.DataFrame | None, model: str, dataset: str, k: int) -> list[str]:
    """Up to ``k`` non-baseline ``methods`` best first by the experiment's mean rank (stored order without a
    board), then the oracle when stored: what a per-token gallery shows."""
    ranked = [m for m in methods if m not in BASELINES]
    if board is not None and len(board) and "model" in board:
        mr = board[(board["model"] == model) & (board["dataset"] == dataset) & (board["metric"] == MEAN_RANK)]
        order = {m: i for i, m in enumerate(mr.sort_values("mean")["method"])}
        ranked = sorted(ranked, key=lambda m: (order.get(m, len(order)), ranked.index(m)))
    return ranked[:k] + [m for m in ("oracle",) if m in methods]


def token_gallery(
    samples: Sequence[dict[str, np.ndarray]],
    out_dir: Path,
    board: pd.DataFrame | None = None,
    max_images: int = 3,
    max_methods: int = 5,
) -> list[Path]:
    """Per-token (``target = "tokens"``) and per-query (``"text"``) galleries, one figure per experiment whose
    stored gallery has whole images (``words`` and ``image_ids``, :class:`benchmark.runner.unit.Gallery`):
    for each of the first ``max_images`` images, one row per method (the ``max_methods`` best by mean rank,
    then the oracle) and one column per generated word (or text query), its map over the image; the
    named object's mask outlined in white. A word without ground truth (a function word, ``<eos>``, or an
    object word naming no drawn object) is titled in grey with the reason. Thumbnails (64 px panels at 60
    dpi), so the report stays small. Files ``tokens-<model>-<dataset>.png`` / ``queries-...``."""
    paths = []
    by_exp: dict[tuple[str, str], list[dict]] = {}
    for s in samples:
        if "words" in s and "image_ids" in s:
            by_exp.setdefault(tuple(s["experiment"].tolist()), []).append(s)
    for (model, dataset), parts in sorted(by_exp.items()):
        methods = list(parts[0]["methods"])
        shown = _best_methods(methods, board, model, dataset, max_methods)
        cols = [methods.index(m) for m in shown]
        blocks: dict[str, list[tuple[dict, int]]] = {}
        for p in parts:
            if list(p["methods"]) != methods:
                continue
            for i, image in enumerate(p["image_ids"].tolist()):
                if image in blocks or len(blocks) < max_images:
                    blocks.setdefault(image, []).append((p, i))
        if not blocks or not cols:
            continue
        tokens = "positions" in parts[0]
        for rows in blocks.values():
            if tokens:
                rows.sort(key=lambda pi: int(pi[0]["positions"][pi[1]]))
        width = max(len(r) for r in blocks.values())
        nrow, ncol = len(blocks) * len(cols), width + 1
        height = 0.9 * nrow + 0.5
        fig, axes = plt.subplots(nrow, ncol, figsize=(0.78 * ncol + 0.9, height), squeeze=False)
        fig.subplots_adjust(left=0.1, right=0.99, bottom=0.01, top=1 - 0.45 / height, wspace=0.06, hspace=0.32)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("off")
        for b, (image, rows) in enumerate(blocks.items()):
            p0, i0 = rows[0]
            for r, (mname, mi) in enumerate(zip(shown, cols, strict=True)):
                row = b * len(cols) + r
                ax = axes[row, 0]
                ax.axis("on")
                ax.imshow(p0["images"][i0])
                ax.set_ylabel(mname, fontsize=6, rotation=0, ha="right", va="center")
                if r == 0:
                    ax.set_title(f"image {image.rpartition('-')[2]}", fontsize=6, pad=2)
                for c, (p, i) in enumerate(rows):
                    ax = axes[row, c + 1]
                    ax.axis("on")
                    ax.imshow(p["images"][i])
                    ax.imshow(p["maps"][i, mi].astype(np.float32), cmap="jet", alpha=0.55, vmin=0, vmax=1)
                    if "masks" in p and p["masks"][i].any():
                        ax.contour(p["masks"][i].astype(float), levels=[0.5], colors="white", linewidths=0.6)
                    if r == 0:
                        title, colour = str(p["words"][i]), "black"
                        if tokens and bool(p["function_word"][i]):
                            title, colour = f"{title}\n(no truth)", "#888888"
                        elif tokens and not bool(p["has_truth"][i]):
                            title, colour = f"{title}\n(wrong word)", "#888888"
                        ax.set_title(title, fontsize=6, pad=2, color=colour)
            for ax in axes[b * len(cols) : (b + 1) * len(cols), 0]:
                for side in ax.spines.values():
                    side.set_visible(False)
        kind = "tokens" if tokens else "queries"
        what = "each generated word" if tokens else "each text query"
        fig.suptitle(
            f"{model} on {dataset}: {what} with its map (rows: methods, best mean rank first; white: the named "
            "object's mask)",
            fontsize=7,
            y=1 - 0.1 / height,
        )
        paths.append(_save(fig, out_dir / f"{kind}-{_slug(model, dataset)}.png", dpi=60))
    return paths


def _cd_panel(ax: plt.Axes, ranks: pd.Series, groups: pd.Series, cd: float, title: str) -> None:
    """One critical-difference diagram (Demsar 2006, Fig. 1): average ranks on an axis (best left), the CD
    as a bar, and a thick line under every group of methods that are not significantly different."""
    ranks = ranks.dropna().sort_values()
    k = len(ranks)
    lo, hi = 1.0, max(float(k), 2.0)
    ax.set_xlim(lo - 0.3, hi + 0.3)
    ax.hlines(0, lo, hi, color="#333", lw=1)
    for t in range(1, int(hi) + 1):
        ax.vlines(t, -0.06, 0.06, color="#333", lw=0.8)
        ax.text(t, 0.12, str(t), ha="center", va="bottom", fontsize=7)
    from matplotlib.collections import LineCollection

    half = (k + 1) // 2
    segs = []
    for i, (m, r) in enumerate(ranks.items()):
        left = i < half
        y = -0.35 - 0.22 * (i if left else k - 1 - i)
        x_text = lo - 0.25 if left else hi + 0.25
        segs.append([(r, 0), (r, y), (x_text, y)])
        ax.text(x_text, y, f"{m} ({r:.2f})", ha="right" if left else "left", va="center", fontsize=7)
    ax.add_collection(LineCollection(segs, colors="#555", linewidths=0.7))
    letters = sorted({c for g in groups.dropna() for c in str(g)})
    for j, letter in enumerate(letters):
        members = [m for m in ranks.index if letter in str(groups.get(m, ""))]
        if len(members) > 1:
            a, b = ranks[members].min(), ranks[members].max()
            ax.hlines(-0.12 - 0.07 * j, a - 0.03, b + 0.03, color="black", lw=2.5)
    if np.isfinite(cd):
        ax.hlines(0.45, lo, lo + cd, color="#b00020", lw=2)
        ax.text(lo + cd / 2, 0.5, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=7, color="#b00020")
    ax.set_ylim(-0.45 - 0.22 * half, 0.75)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def cd_diagrams(board: pd.DataFrame, families: dict, out_dir: Path) -> list[Path]:
    """Critical-difference diagrams per (model, dataset, metric family): one panel per image-level metric
    (average ranks over images, Nemenyi CD, Wilcoxon-Holm groups) and one figure for the mean rank over
    metrics (CD with the metrics as blocks). Baselines are not ranked and not shown."""
    paths = []
    lb = board[~board["baseline"].astype(bool)] if "baseline" in board else board
    for (model, dataset), g in lb.groupby(["model", "dataset"], sort=True):
        by_family: dict[str, list[str]] = {}
        for metric in sorted(g["metric"].unique()):
            if metric == MEAN_RANK:
                continue
            if g[g["metric"] == metric]["avg_rank"].notna().any():
                by_family.setdefault(families.get(metric, "other"), []).append(metric)
        panels = [(f, ms) for f, ms in by_family.items()] + [("mean_rank", [MEAN_RANK])]
        for family, metrics in panels:
            n = len(metrics)
            k = g[g["metric"].isin(metrics)]["method"].nunique()
            ncol = 1  # one panel per row: the method labels stick out left and right of the axis
            nrow = n
            fig, axes = plt.subplots(nrow, ncol, figsize=(6.0, (1.0 + 0.13 * k) * nrow + 0.4), squeeze=False)
            for ax, metric in zip(axes.flat, metrics, strict=False):
                s = g[g["metric"] == metric].set_index("method")
                col = "mean" if metric == MEAN_RANK else "avg_rank"
                cd = float(s["cd"].iloc[0]) if len(s) else float("nan")
                what = "mean rank over metrics" if metric == MEAN_RANK else f"{metric}: average rank over images"
                _cd_panel(ax, s[col], s["group"], cd, what)
            for ax in list(axes.flat)[n:]:
                ax.axis("off")
            fig.suptitle(f"{model} on {dataset}: {family} (critical differences, alpha = 0.05)", fontsize=9)
            fig.subplots_adjust(left=0.2, right=0.8, hspace=0.45, top=1 - 0.9 / fig.get_figheight())
            # "tight": the saved area grows to every label, however long (nothing is clipped)
            paths.append(_save(fig, out_dir / f"cd-{_slug(family, model, dataset)}.png"))
    return paths


def kendall_matrix(taus: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The inter-metric Kendall tau matrix of the method rankings per (model, dataset) (LATEC, Klein et al.
    NeurIPS 2024): how far the metrics agree on which method is better. ``taus``: long rows
    (model, dataset, metric_a, metric_b, tau)."""
    _style()
    import seaborn as sns

    paths = []
    for (model, dataset), g in taus.groupby(["model", "dataset"], sort=True):
        mat = g.pivot(index="metric_a", columns="metric_b", values="tau")
        n = len(mat)
        fig, ax = plt.subplots(figsize=(0.42 * n + 2.5, 0.38 * n + 1.5))
        sns.heatmap(
            mat,
            ax=ax,
            cmap="RdBu",
            vmin=-1,
            vmax=1,
            annot=n <= 24,
            fmt=".1f",
            annot_kws={"fontsize": 6},
            cbar_kws={"label": "Kendall tau"},
        )
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_title(f"{model} on {dataset}: agreement of the metrics' method rankings", fontsize=9)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"kendall-{_slug(model, dataset)}.png"))
    return paths


def strip_slices(n_slices: int, mask: np.ndarray | None, count: int = 3) -> list[int]:
    """``count`` slice (frame) indices of a ``[T,H,W]`` volume to show: spread evenly over the slices that
    hold the object when a mask says where it is, else over the whole depth."""
    hold = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)) if mask is not None else np.zeros(0, int)
    pool = hold if hold.size else np.arange(n_slices)
    k = min(count, pool.size)
    return [int(pool[int(j)]) for j in np.floor((np.arange(k) + 0.5) * pool.size / k)]


def slice_gallery(
    rows: Sequence[tuple[dict, int]],
    methods: Sequence[str],
    model: str,
    dataset: str,
    out_dir: Path,
    max_volumes: int = 2,
    count: int = 3,
) -> Path:
    """Gallery of volumes and clips: per volume a strip of ``count`` slices (frames) through the object,
    rows = slices, columns = the slice then each method's map on it; mask outlines in white, the 3-D
    boxes' cross-sections (``x0,y0,t0,x1,y1,t1``) in lime on the slices they cross."""
    strips = []
    for p, i in rows[:max_volumes]:
        mask = p["masks"][i] if "masks" in p else None
        strips += [(p, i, t) for t in strip_slices(p["images"][i].shape[0], mask, count)]
    ncol = len(methods) + 1
    fig, axes = plt.subplots(len(strips), ncol, figsize=(1.45 * ncol, 1.5 * len(strips)), squeeze=False)
    for r, (p, i, t) in enumerate(strips):
        img = p["images"][i][t]
        title = str(p["target_names"][i]) if "target_names" in p else f"class {int(p['targets'][i])}"
        for c in range(ncol):
            ax = axes[r, c]
            ax.imshow(img)
            if c > 0:
                ax.imshow(p["maps"][i, c - 1][t].astype(np.float32), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if "masks" in p and p["masks"][i][t].any():
                ax.contour(p["masks"][i][t].astype(float), levels=[0.5], colors="white", linewidths=0.6)
            if "boxes" in p and p["boxes"].shape[-1] == 6:
                for x0, y0, t0, x1, y1, t1 in p["boxes"][i]:
                    if np.isfinite(x0) and t0 <= t < t1:
                        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=0.9))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("slice" if c == 0 else methods[c - 1], fontsize=7)
        axes[r, 0].set_ylabel(f"{p['ids'][i]}\n{title}\nslice {t}", fontsize=6)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap="jet"), ax=axes, fraction=0.02, pad=0.01, label="map value (in [0, 1])"
    )
    fig.suptitle(f"{model} on {dataset} (slices / frames where the maps disagree most)", fontsize=9)
    return _save(fig, out_dir / f"gallery-{_slug(model, dataset)}.png", dpi=72)


def paired_differences(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the paired per-image differences ``a - b`` and its 95 % percentile-bootstrap CI over images
    (Efron & Tibshirani 1993, ch. 13; the same resampled images for both methods)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    boot = d[idx].mean(axis=1)
    return float(d.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def forest_plots(
    scores: pd.DataFrame,
    board: pd.DataFrame,
    families: dict,
    out_dir: Path,
    focus: str | None = None,
    max_panels: int = 6,
) -> list[Path]:
    """Forest plots per experiment: for one metric per family (image-level, not cost), the mean paired
    per-image difference between the focused method (``focus``, else the best mean rank) and every other
    method, signed so that > 0 means the focused method is better, with its 95 % bootstrap CI over images;
    green: CI above 0, red: below, grey: the CI holds 0."""
    paths: list[Path] = []
    if scores is None or scores.empty or "higher_is_better" not in board:
        return paths
    ok = scores[(scores["status"] == "ok") & np.isfinite(scores["value"].astype(float))]
    ranked = board[~board["baseline"].astype(bool)] if "baseline" in board else board
    for (model, dataset), g in ranked.groupby(["model", "dataset"], sort=True):
        mr = g[g["metric"] == MEAN_RANK].sort_values("mean")
        methods = list(mr["method"]) or sorted(g["method"].unique())
        if len(methods) < 2:
            continue
        f = focus if focus in methods else methods[0]
        sc = ok[(ok["model"] == model) & (ok["dataset"] == dataset) & ok["method"].isin(methods)]
        present = set(sc["metric"])
        picked: list[str] = []

        for fam in (*METRIC_FAMILIES, "other"):
            cands = sorted(m for m in present if families.get(m, "other") == fam and fam != "cost")
            picked += cands[:1]
        picked = picked[:max_panels]
        if not picked:
            continue
        hib = g.groupby("metric")["higher_is_better"].first().to_dict()
        others = [m for m in methods if m != f]
        fig, axes = plt.subplots(
            1, len(picked), figsize=(2.6 * len(picked) + 1.2, 0.2 * len(others) + 1.2), squeeze=False, sharey=True
        )
        for ax, metric in zip(axes.flat, picked, strict=True):
            wide = sc[sc["metric"] == metric].pivot_table(index="image_id", columns="method", values="value")
            sign = 1.0 if bool(hib.get(metric, True)) else -1.0
            for y, other in enumerate(others):
                if f not in wide or other not in wide:
                    continue
                pair = wide[[f, other]].dropna()
                mean, lo, hi = paired_differences(sign * pair[f].to_numpy(), sign * pair[other].to_numpy())
                color = "#2a7d4f" if lo > 0 else "#b00020" if hi < 0 else "#888888"
                ax.errorbar(mean, y, xerr=[[mean - lo], [hi - mean]], fmt="o", color=color, ms=3, capsize=2, lw=1)
            ax.axvline(0.0, color="#333", lw=0.8)
            ax.set_title(f"{metric}", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0, 0].set_yticks(range(len(others)), others)
        axes[0, 0].invert_yaxis()
        fig.suptitle(
            f"{model} on {dataset}: {f} minus each method, per-image paired difference (> 0: {f} better), 95% CI",
            fontsize=9,
        )
        paths.append(_save(fig, out_dir / f"forest-{_slug(model, dataset)}.png", dpi=72))
    return paths


def all_plots(
    board: pd.DataFrame,
    curves: pd.DataFrame,
    samples: Sequence[dict],
    out_dir: Path,
    families: dict | None = None,
    taus: pd.DataFrame | None = None,
    scores: pd.DataFrame | None = None,
    focus: str | None = None,
) -> dict[str, list[Path]]:
    """Every figure of the report, by kind (``forest`` only with the per-image ``scores``)."""
    out_dir = Path(out_dir)
    figs = {
        "bars": metric_bars(board, out_dir),
        "ranks": rank_heatmap(board, out_dir),
        "curves": curve_plots(curves, out_dir),
        "gallery": gallery(samples, out_dir),
    }
    words = token_gallery(samples, out_dir, board)
    figs["tokens"] = [p for p in words if p.name.startswith("tokens-")]
    figs["queries"] = [p for p in words if p.name.startswith("queries-")]
    if "avg_rank" in board:
        figs["cd"] = cd_diagrams(board, families or {}, out_dir)
    if scores is not None and len(scores):
        figs["forest"] = forest_plots(scores, board, families or {}, out_dir, focus=focus)
    if taus is not None and len(taus):
        figs["kendall"] = kendall_matrix(taus, out_dir)
    return figs
