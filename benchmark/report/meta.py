"""MetaQuantus meta-evaluation of the metrics (Hedstrom et al., TMLR 2023, "The Meta-Evaluation Problem in
Explainable AI: Identifying Reliable Estimators with MetaQuantus", Sec. 4; docs/metrics.md, "Meta-evaluation").

The runner re-scores every image-level metric under K *minor* and K *disruptive* model perturbations
(multiplicative N(1, std) weight noise, methods re-explained with the perturbed model). Per experiment and
metric, over the L ranked methods (baselines left out) and the N images:

- intra-consistency, one Wilcoxon signed-rank test per (method, perturbation) between the unperturbed
  scores q and the perturbed ones q_hat (two-sided, zeros split): ``IAC_NR`` = mean p over methods and the K
  minor perturbations (high: the scores keep their distribution), ``IAC_AR`` = mean (1 - p) over the
  disruptive ones (high: the scores move);
- inter-consistency: ``IEC_NR`` = share of (image, method) whose rank among the methods is the same
  unperturbed and perturbed (mean over the K minor perturbations), ``IEC_AR`` = share of (image, method)
  scored worse under a disruptive perturbation than unperturbed (in the metric's direction);
- ``NR`` = (IAC_NR + IEC_NR) / 2 (noise resilience), ``AR`` = (IAC_AR + IEC_AR) / 2 (adversary reactivity),
  ``MC`` = mean of the four (the meta-consistency score, in [0, 1], 1 best).

As in MetaQuantus, a minor perturbation is read on the images whose prediction it keeps, a disruptive one
on the images whose prediction it changes (``pred_same`` in the runner's rows); without such images the
corresponding scores are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

META_COLUMNS = ["IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "NR", "AR", "MC", "meta_k", "meta_kept", "meta_changed"]


def wilcoxon_p(q: np.ndarray, q_hat: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired scores (zeros split between the signs, MetaQuantus'
    choice): 1.0 when every pair is equal (identical distributions), NaN without pairs."""
    q, q_hat = np.asarray(q, dtype=np.float64), np.asarray(q_hat, dtype=np.float64)
    if q.size == 0:
        return float("nan")
    d = q - q_hat
    if np.all(np.abs(d) <= 1e-12 * np.maximum(1.0, np.abs(q))):
        return 1.0
    return float(_st.wilcoxon(q, q_hat, zero_method="zsplit", alternative="two-sided").pvalue)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Per column (image), the rank of each row (method) in ascending order, ties broken by row index."""
    order = np.argsort(values, axis=0, kind="stable")
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.arange(values.shape[0])[:, None].repeat(values.shape[1], 1), axis=0)
    return r


def iec_resilience(q: np.ndarray, q_hat: np.ndarray) -> float:
    """Share of (method, image) entries of ``q [L, N]`` whose rank among the methods stays under ``q_hat``
    (MetaQuantus' U for noise resilience); NaN without images."""
    if q.shape[1] == 0:
        return float("nan")
    return float(np.mean(_ranks(q) == _ranks(q_hat)))


def iec_adversary(q: np.ndarray, q_hat: np.ndarray, higher_is_better: bool) -> float:
    """Share of (method, image) entries scored strictly worse under the disruptive perturbation (MetaQuantus'
    U for adversary reactivity); NaN without images."""
    if q.size == 0:
        return float("nan")
    worse = q > q_hat if higher_is_better else q < q_hat
    return float(np.mean(worse))


def meta_consistency(
    q: np.ndarray,
    minor: np.ndarray,
    disruptive: np.ndarray,
    kept: np.ndarray,
    changed: np.ndarray,
    higher_is_better: bool = True,
) -> dict[str, float]:
    """IAC/IEC/NR/AR/MC (module docstring) of unperturbed scores ``q [L, N]`` and perturbed ones
    ``minor [K, L, N]``, ``disruptive [K, L, N]``; ``kept [K, N]`` (``changed [K, N]``): the images whose
    prediction the k-th minor perturbation keeps (the k-th disruptive one changes). NaN entries are left out."""
    iac_nr: list[float] = []
    iec_nr: list[float] = []
    iac_ar: list[float] = []
    iec_ar: list[float] = []
    runs = [(m, s, True) for m, s in zip(minor, kept, strict=True)] + [
        (d, s, False) for d, s in zip(disruptive, changed, strict=True)
    ]
    for qh, sel, nr in runs:
        ok = np.asarray(sel, dtype=bool) & np.all(np.isfinite(q) & np.isfinite(qh), axis=0)
        for lq, lh in zip(q, qh, strict=True):
            fin = np.asarray(sel, dtype=bool) & np.isfinite(lq) & np.isfinite(lh)
            p = wilcoxon_p(lq[fin], lh[fin])
            if np.isfinite(p):
                (iac_nr if nr else iac_ar).append(p if nr else 1.0 - p)
        if ok.any():
            if nr:
                iec_nr.append(iec_resilience(q[:, ok], qh[:, ok]))
            else:
                iec_ar.append(iec_adversary(q[:, ok], qh[:, ok], higher_is_better))
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")
    out = {"IAC_NR": mean(iac_nr), "IAC_AR": mean(iac_ar), "IEC_NR": mean(iec_nr), "IEC_AR": mean(iec_ar)}
    out["NR"] = (out["IAC_NR"] + out["IEC_NR"]) / 2
    out["AR"] = (out["IAC_AR"] + out["IEC_AR"]) / 2
    out["MC"] = (out["IAC_NR"] + out["IAC_AR"] + out["IEC_NR"] + out["IEC_AR"]) / 4
    return out


def meta_scores(
    scores: pd.DataFrame,
    perturbed: pd.DataFrame,
    directions: Mapping[str, bool],
    baselines: Sequence[str] = (),
) -> pd.DataFrame:
    """Per (model, dataset, metric) of the perturbed rows: :func:`meta_consistency` over the non-baseline
    methods and the images of the unperturbed ``ok`` scores, with ``meta_k`` (perturbations per kind) and the
    share of images whose prediction the minor perturbations keep (``meta_kept``) and the disruptive ones
    change (``meta_changed``)."""
    cols = ["model", "dataset", "metric", *META_COLUMNS]
    if perturbed is None or not len(perturbed):
        return pd.DataFrame(columns=cols)
    base = set(baselines)
    ok = scores[(scores["status"] == "ok") & ~scores["method"].isin(base)]
    pert = perturbed[~perturbed["method"].isin(base)]
    rows = []
    for (model, dataset, metric), g in pert.groupby(["model", "dataset", "metric"], sort=True):
        s = ok[(ok["model"] == model) & (ok["dataset"] == dataset) & (ok["metric"] == metric)]
        methods = sorted(set(s["method"]) & set(g["method"]))
        images = sorted(set(s["image_id"]) & set(g["image_id"]))
        if not methods or not images:
            continue
        q = s.pivot_table(index="method", columns="image_id", values="value").reindex(index=methods, columns=images)
        ks = sorted(set(g["k"]))
        arr, sel = {}, {}
        for kind in ("minor", "disruptive"):
            gk = g[g["perturbation"] == kind]
            arr[kind] = np.stack(
                [
                    gk[gk["k"] == k]
                    .pivot_table(index="method", columns="image_id", values="value")
                    .reindex(index=methods, columns=images)
                    .to_numpy(dtype=float)
                    for k in ks
                ]
            )
            same = gk.drop_duplicates(["k", "image_id"]).pivot_table(index="k", columns="image_id", values="pred_same")
            same = same.reindex(index=ks, columns=images).to_numpy(dtype=float)
            sel[kind] = same == 1.0 if kind == "minor" else same == 0.0
        m = meta_consistency(
            q.to_numpy(dtype=float),
            arr["minor"],
            arr["disruptive"],
            sel["minor"],
            sel["disruptive"],
            bool(directions.get(metric, True)),
        )
        rows.append(
            (
                model,
                dataset,
                metric,
                *(m[c] for c in META_COLUMNS[:7]),
                len(ks),
                float(np.mean(sel["minor"])),
                float(np.mean(sel["disruptive"])),
            )
        )
    return pd.DataFrame(rows, columns=cols)
