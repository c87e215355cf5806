"""What a reader should know before reading a ranking: equivalent methods and the metric report card.

- :func:`equivalences`: method pairs whose maps are identical on an experiment (``max |diff| <= 1e-6``
  over all its images, from the per-unit pairwise maxima the runner stores), with the reason where the
  capture proves it (``equivalences.csv``).
- :func:`kendall_taus`: the inter-metric Kendall tau of the methods' rankings (LATEC, Klein et al.
  NeurIPS 2024, Sec. 5): do the metrics agree on which method is better?
- :func:`metric_card`: per (model, dataset, metric), ``saturated``, ``separable``, ``baseline_order``,
  ``beats_random`` and a ``verdict`` (``metric_card.csv``; the report greys out what it flags); with the
  suite's ``meta_evaluation`` also MetaQuantus' IAC/IEC, noise resilience ``NR`` and adversary reactivity
  ``AR`` (:mod:`benchmark.report.meta`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .tables import MEAN_RANK

EQUIVALENCE_COLUMNS = ["model", "dataset", "method", "same_as", "max_abs_diff", "reason"]
CARD_COLUMNS = [
    "model",
    "dataset",
    "metric",
    "family",
    "level",
    "n_methods",
    "saturated_share",
    "saturated",
    "separable",
    "friedman_p",
    "baseline_order",
    "violators",
    "beats_random",
    "median_tau",
    "verdict",
]
#: two maps are "identical" when they differ by at most this much anywhere (maps are in [0, 1])
IDENTICAL = 1e-6
#: a metric separates methods when at least this share of method pairs differs significantly (Holm 0.05)
SEPARABLE_MIN = 0.1
#: a metric is saturated when at least this share of methods ties with the best value
SATURATED_MIN = 0.5
#: families whose baselines are references of the metric's scale: the oracle map is the ground truth (an
#: upper reference) and the random map a lower one. Robustness and sanity metrics re-explain under input
#: noise or a randomised model; the baselines do not read either, so an input-independent map is trivially
#: stable and never changes: there the order "oracle >= methods >= random" means nothing (n/a).
ORDERED_FAMILIES = ("faithfulness", "localization")

_WEIGHTS_EQUAL = {"gradcam", "hirescam", "xgradcam", "shapleycam"}


def _reason(a: str, b: str, facts: Mapping[str, float], method_params: Mapping[str, Mapping]) -> str:
    """Why maps ``a`` and ``b`` are identical, where the capture facts prove it (else "")."""
    pair = {a, b}
    grad_const = facts.get("grad_spatial_range", np.inf) <= 1e-6
    nonneg = facts.get("activation_min", -np.inf) >= 0
    if pair == {"layercam", "gradcamelementwise"} and nonneg:
        return (
            "non-negative activations at the target layer (min "
            f"{facts['activation_min']:.3g}): LayerCAM's relu(g)*A equals element-wise Grad-CAM's relu(g*A)"
        )
    if pair == {"gradcampp", "smoothgradcampp"}:
        p = method_params.get("smoothgradcampp", {})
        if float(p.get("std", 1.0)) == 0.0 or int(p.get("n_samples", 1)) <= 0:
            return "zero noise (smoothgradcampp std = 0 or no samples): Smooth Grad-CAM++ is Grad-CAM++"
        if grad_const:
            return (
                "gradients constant over space at the target layer (as behind a head linear in pooled "
                "activations, whose gradients do not change with input noise): the noisy gradients equal "
                "the clean ones"
            )
    if pair <= _WEIGHTS_EQUAL and grad_const:
        return (
            "gradients constant over space at the target layer: the channel weights of Grad-CAM, HiResCAM "
            "and XGrad-CAM all equal the gradient (and ShapleyCAM's)"
        )
    return ""


def _experiment_of(unit_key: str, labels: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """(model label, dataset) of a unit key ``NN-...`` (its experiment index comes first)."""
    try:
        return labels[int(unit_key.split("-", 1)[0])]
    except (ValueError, IndexError):
        return None


def equivalences(meta: Sequence[Mapping], run: Mapping, tol: float = IDENTICAL) -> pd.DataFrame:
    """Identical-map pairs per experiment from the parts' metadata (``info.map_diffs``, ``info.capture``).

    A pair is listed when its maximum absolute difference over **every** unit of the experiment is at most
    ``tol``; ``method`` is the later name, ``same_as`` the first (alphabetically)."""
    labels = [(e["label"], e["dataset"]) for e in run.get("experiments", [])]
    n_units: dict[tuple, int] = {}
    for key in run.get("units", []):
        exp = _experiment_of(key, labels)
        if exp is not None:
            n_units[exp] = n_units.get(exp, 0) + 1
    diffs: dict[tuple, float] = {}
    seen: dict[tuple, int] = {}
    facts: dict[tuple, dict] = {}
    for m in meta:
        exp = _experiment_of(m.get("unit", ""), labels)
        if exp is None:
            continue
        info = m.get("info", {})
        for pair, d in info.get("map_diffs", {}).items():
            diffs[(*exp, pair)] = max(diffs.get((*exp, pair), 0.0), float(d))
            seen[(*exp, pair)] = seen.get((*exp, pair), 0) + 1
        f = facts.setdefault(exp, {})
        for k, v in info.get("capture", {}).items():
            f[k] = max(f.get(k, -np.inf), v) if k == "grad_spatial_range" else min(f.get(k, np.inf), v)
    params = {(e["label"], e["dataset"]): e.get("method_params", {}) for e in run.get("experiments", [])}
    out = []
    for (model, dataset, pair), d in sorted(diffs.items()):
        if d > tol or seen[(model, dataset, pair)] < n_units.get((model, dataset), 0):
            continue  # different somewhere, or not measured on every unit
        a, b = pair.split("|")
        why = _reason(a, b, facts.get((model, dataset), {}), params.get((model, dataset), {}))
        out.append((model, dataset, b, a, d, why))
    return pd.DataFrame(out, columns=EQUIVALENCE_COLUMNS)


def kendall_tau_matrix(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b between the columns of ``ranks [k, M]`` (NaN = missing), pairwise complete, vectorised.

    With ``s = sign(r_i - r_j)`` over method pairs, ``tau_b(a, b) = sum s_a s_b / sqrt(sum s_a^2 sum s_b^2)``
    over the pairs present in both columns (pairs tied in a column count in neither its concordant nor its
    discordant pairs, as scipy's tau-b). Returns ``(tau [M, M], common [M, M])`` (common = methods in both)."""
    r = np.asarray(ranks, dtype=np.float64)
    k = r.shape[0]
    i, j = np.triu_indices(k, 1)
    valid = np.isfinite(r)
    s = np.nan_to_num(np.sign(r[i] - r[j]), nan=0.0)  # [P, M]
    v = (valid[i] & valid[j]).astype(np.float64)
    num = s.T @ s
    den = np.sqrt(((s * s).T @ v) * (v.T @ (s * s)))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    common = valid.astype(np.float64).T @ valid.astype(np.float64)
    return tau, common


def kendall_taus(board: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Kendall tau-b between every two metrics' method rankings per (model, dataset), baselines excluded.

    Ranks are direction-aware (1 = best), so tau > 0 means the two metrics agree on which methods are
    better. Pairs with fewer than 3 common methods, or a constant ranking, give NaN."""
    rows = []
    lb = board[(board["metric"] != MEAN_RANK) & ~board["metric"].isin(list(exclude))]
    if "baseline" in lb:
        lb = lb[~lb["baseline"].astype(bool)]
    for (model, dataset), g in lb.groupby(["model", "dataset"], sort=True):
        wide = g.pivot_table(index="method", columns="metric", values="rank")
        metrics = list(wide.columns)
        tau, common = kendall_tau_matrix(wide.to_numpy())
        for x, a in enumerate(metrics):
            for y, b in enumerate(metrics):
                t = 1.0 if a == b else (float(tau[x, y]) if common[x, y] >= 3 else float("nan"))
                rows.append((model, dataset, a, b, t))
    return pd.DataFrame(rows, columns=["model", "dataset", "metric_a", "metric_b", "tau"])


def _tied_share(means: np.ndarray, best: float, widths: np.ndarray | None = None) -> float:
    """Share of the *other* methods (the best one left out: a method never ties with itself) whose mean
    lies within a tolerance of the best mean, the tolerance relative to the metric's spread: a tenth of
    the methods' median 95 % CI width (the uncertainty of one mean on these images), at least 1e-9
    relative; rows without CIs (n = 1) fall back to ``1e-3`` (relative above 1). NaN with fewer than two
    methods."""
    if means.size < 2:
        return float("nan")
    others = np.delete(means, int(np.argmin(np.abs(means - best))))
    w = np.asarray(widths, dtype=np.float64) if widths is not None else np.array([])
    w = w[np.isfinite(w)]
    floor = 1e-9 * max(1.0, abs(best))
    tol = max(0.1 * float(np.median(w)), floor) if w.size else 1e-3 * max(1.0, abs(best))
    return float(np.mean(np.abs(others - best) <= tol))


def metric_card(
    board: pd.DataFrame,
    pairwise: pd.DataFrame,
    tests: pd.DataFrame,
    families: Mapping[str, str],
    levels: Mapping[str, str] | None = None,
    taus: pd.DataFrame | None = None,
    exclude: Sequence[str] = (),
    meta: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The metric report card (module docstring). Per (model, dataset, metric) over the ranked methods:

    - ``saturated_share``: share of the other methods whose mean ties with the best one (within a tenth of
      the methods' median 95 % CI width: ties relative to the metric's spread, :func:`_tied_share`; never
      the best with itself): all at the bound (pointing game 1.0) or all tied; ``saturated`` when >= 0.5;
    - ``separable``: share of method pairs significantly different (Holm-corrected post-hoc, 0.05);
    - ``baseline_order``: ``ok`` when oracle >= every method >= random in the metric's direction,
      ``violated`` otherwise (``violators`` lists them, e.g. ``below random: x``), ``n/a`` without both
      or outside ``ORDERED_FAMILIES`` (robustness, sanity: the baselines read neither input nor model);
    - ``beats_random``: methods whose mean is better than random's 95 % CI bound, e.g. ``12/16`` (empty
      where the order is n/a);
    - ``median_tau``: median Kendall tau with the other metrics;
    - ``verdict``: ``ok``, or why the report greys the metric out (saturated; cannot separate methods:
      fewer than 10 % of pairs differ);
    - with ``meta`` (:func:`benchmark.report.meta.meta_scores`, only when the suite ran the meta-evaluation):
      its columns ``IAC_NR`` ... ``meta_changed`` appended (NaN for metrics it did not cover)."""
    rows = []
    levels = levels or {}
    lb = board[(board["metric"] != MEAN_RANK) & ~board["metric"].isin(list(exclude))]
    base = lb["baseline"].astype(bool) if "baseline" in lb else pd.Series(False, index=lb.index)
    tmap = tests.set_index(["model", "dataset", "metric"]) if len(tests) else None
    for (model, dataset, metric), g in lb.groupby(["model", "dataset", "metric"], sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        gb = base.loc[g.index]
        meth = g[~gb]
        means = meth["mean"].to_numpy(dtype=float)
        sign = 1.0 if hib else -1.0
        best = float(np.nanmax(sign * means)) * sign if means.size else float("nan")
        fin = np.isfinite(means)
        widths = (meth["ci_high"] - meth["ci_low"]).to_numpy(dtype=float) if "ci_high" in meth else None
        share = _tied_share(means[fin], best, None if widths is None else widths[fin]) if np.isfinite(best) else np.nan
        pw = pairwise[(pairwise["model"] == model) & (pairwise["dataset"] == dataset) & (pairwise["metric"] == metric)]
        sep = float(pw["significant"].astype(bool).mean()) if len(pw) else float("nan")
        ref = g[gb].set_index("method")
        if families.get(metric, "") not in ORDERED_FAMILIES:
            ref = ref.iloc[0:0]  # baselines are no reference on this scale (ORDERED_FAMILIES)
        order, viol = "n/a", []
        if "random" in ref.index:
            r = float(ref.loc["random", "mean"])
            viol += [f"below random: {m}" for m, v in zip(meth["method"], means, strict=True) if sign * (v - r) < 0]
        if "oracle" in ref.index:
            o = float(ref.loc["oracle", "mean"])
            viol += [f"above oracle: {m}" for m, v in zip(meth["method"], means, strict=True) if sign * (v - o) > 0]
        if "random" in ref.index and "oracle" in ref.index:
            order = "violated" if viol or sign * (o - r) < 0 else "ok"
            if sign * (o - r) < 0:
                viol.insert(0, "oracle below random")
        beats = ""
        if "random" in ref.index:
            bound = ref.loc["random", "ci_high" if hib else "ci_low"]
            bound = float(ref.loc["random", "mean"]) if not np.isfinite(bound) else float(bound)
            beats = f"{int(np.sum(sign * (means - bound) > 0))}/{len(means)}"
        tau = float("nan")
        if taus is not None and len(taus):
            t = taus[
                (taus["model"] == model)
                & (taus["dataset"] == dataset)
                & (taus["metric_a"] == metric)
                & (taus["metric_b"] != metric)
            ]["tau"]
            tau = float(t.median()) if t.notna().any() else float("nan")
        fp = (
            float(tmap.loc[(model, dataset, metric), "friedman_p"])
            if tmap is not None and (model, dataset, metric) in tmap.index
            else float("nan")
        )
        saturated = bool(np.isfinite(share) and share >= SATURATED_MIN and len(means) > 1)
        why = []
        if saturated:
            why.append(f"saturated: {share:.0%} of methods tie with the best value")
        if np.isfinite(sep) and sep < SEPARABLE_MIN:
            why.append(f"cannot separate methods: {sep:.0%} of pairs differ significantly (Holm 0.05)")
        rows.append(
            (
                model,
                dataset,
                metric,
                families.get(metric, ""),
                levels.get(metric, "image"),
                len(means),
                share,
                saturated,
                sep,
                fp,
                order,
                "; ".join(viol),
                beats,
                tau,
                "; ".join(why) or "ok",
            )
        )
    card = pd.DataFrame(rows, columns=CARD_COLUMNS)
    if meta is not None and len(meta):
        from .meta import META_COLUMNS

        card = card.merge(
            meta[["model", "dataset", "metric", *META_COLUMNS]], on=["model", "dataset", "metric"], how="left"
        )
    return card


#: The sanity verdict's bound: a method passes the model-randomisation check (Adebayo et al. 2018) when the
#: upper end of the 95 % CI of its similarity (Spearman rho or SSIM between the maps of the trained and the
#: fully randomised model) lies below it: on average its maps keep less than half of their structure once the
#: weights carry no information. An edge detector (a map computed from the input alone) keeps all of it
#: (similarity about 1) and fails.
SANITY_BOUND = 0.5
SANITY_COLUMNS = ["model", "dataset", "method", "metric", "mean", "ci_low", "ci_high", "n", "bound", "verdict"]


def sanity_verdicts(board: pd.DataFrame, families: Mapping[str, str], bound: float = SANITY_BOUND) -> pd.DataFrame:
    """Per method and sanity-family metric (similarity after model randomisation, lower is better):
    ``pass`` when ``ci_high < bound``, ``fail`` when ``ci_low >= bound``, else ``inconclusive`` (the CI
    straddles the bound: more images decide). Higher-is-better sanity metrics (Quantus' EfficientMPRT, a
    complexity ratio) have no such bound and are left out."""
    sel = board["metric"].map(lambda m: families.get(m) == "sanity") & ~board["higher_is_better"].astype(bool)
    if "baseline" in board.columns:
        sel &= ~board["baseline"].astype(bool)
    t = board[sel][["model", "dataset", "method", "metric", "mean", "ci_low", "ci_high", "n"]].copy()
    t["bound"] = float(bound)
    hi, lo = t["ci_high"].astype(float), t["ci_low"].astype(float)
    t["verdict"] = np.where(hi < bound, "pass", np.where(lo >= bound, "fail", "inconclusive"))
    t.loc[~np.isfinite(hi) | ~np.isfinite(lo), "verdict"] = "undefined"
    return t.reset_index(drop=True)[SANITY_COLUMNS]
