"""Paired comparisons with verdicts: "is method A better than B on this metric, and how sure are we?".

Two methods scored on the same images are paired by construction (same images, same seeds), so every
comparison here works on the per-image differences ``d_i = s(a, i) - s(b, i)`` over the images both
methods scored (finite values only), oriented so that ``d > 0`` means *a is better* for the metric's
direction (``higher_is_better`` as the run recorded it).

Image-level metrics (:func:`paired_comparison`):

- ``mean_diff``: the mean of the oriented differences, with a seeded percentile-bootstrap 95 % CI over
  images (Efron & Tibshirani 1993, ch. 13). The resamples are *common random numbers*: one ``[R, N]``
  draw of image positions per experiment (:func:`experiment_draws`), shared by every method and pair, so
  methods with identical scores get identical intervals and the CIs of several pairs are coherent;
- ``effect``: the matched-pairs rank-biserial correlation (Kerby 2014, "The simple difference formula",
  Comprehensive Psychology 3): ``r = (T+ - T-) / (T+ + T-)`` with ``T+`` (``T-``) the sum of the ranks of
  ``|d_i|`` over the positive (negative) differences, zeros dropped; +1 when a wins on every image;
- ``p_value``: the two-sided Wilcoxon (1945) signed-rank test (``zero_method="wilcox"``), scipy's exact
  null distribution where it is exact (at most 50 non-zero differences, no tied ``|d|``), else the normal
  approximation with tie correction (:func:`benchmark.report.ranking.wilcoxon_pvalues`);
- ``p_holm``: Holm's (1979) step-down correction over the *family* of comparisons made together (every
  row of one :func:`compare_family` call: all claims of a suite, all pairs of a ``--focus`` run, all rows
  of a gate);
- ``verdict``: ``better`` when ``p_holm < alpha`` and ``mean_diff > margin``, ``worse`` when
  ``p_holm < alpha`` and ``mean_diff < -margin``, else ``no detectable difference``. With a margin
  ``m > 0`` the test is run on ``d - m`` (for "better") and ``d + m`` (for "worse"): a claim "better by at
  least m" needs the differences to sit significantly above ``m``, not only above 0;
- ``mdd``: the minimum detectable difference at this n, the mean difference the test finds with power
  0.8 at the family's strictest level ``alpha / m``, ``(z_{1 - alpha/(2m)} + z_{0.8}) * s_d / sqrt(n) *
  sqrt(pi / 3)``: the paired z-test's detectable shift (``s_d`` the SD of the differences) inflated by the
  Wilcoxon test's asymptotic relative efficiency ``3 / pi`` under normal differences (Lehmann 1975,
  Nonparametrics, ch. 2). It is ``inf`` when no outcome on n images can reach that level (the smallest
  two-sided Wilcoxon p is ``2^(1 - n)``): such a comparison cannot give a verdict, whatever the data.
  "No detectable difference" with an MDD of 0.02 says "no difference larger than about 0.02"; with an MDD
  of 0.3 it says nothing. It is NaN when every difference is equal (no spread to estimate).

Dataset-level metrics (MaxBoxAccV2, PxAP, seed mIoU: one value per dataset) have no per-image value to
rank; :func:`paired_bootstrap_comparison` recomputes the metric of both methods on the same resampled
images (the experiment's common draws), ``mean_diff`` = the difference of the full-data values, the CI the
percentile interval of the resampled differences, ``p_value`` twice the smaller share of resampled
differences on either side of 0 (floored at ``2^(1 - n)``, :func:`benchmark.report.ranking.bootstrap_p`, and at
``2 / (R + 1)``: R resamples resolve no smaller p, so a family of m claims needs ``R > 2 m / alpha``),
``effect`` the difference over its bootstrap SD (a standardised difference), ``mdd`` ``(z + z_{0.8})``
times that SD.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..schema import Claim, claim_experiments, claim_metrics
from .ranking import bootstrap_p, holm, resample_values, wilcoxon_pvalues

BETTER, WORSE, NO_DIFF = "better", "worse", "no detectable difference"
POWER = 0.8
COMPARISON_COLUMNS = [
    "test",
    "n",
    "mean_diff",
    "ci_low",
    "ci_high",
    "effect",
    "p_value",
    "p_holm",
    "mdd",
    "margin",
    "verdict",
]


@dataclass(frozen=True)
class Comparison:
    """One paired comparison (module docstring); differences are oriented: > 0 means a is better."""

    test: str
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    effect: float
    p_value: float
    sd: float  # SD of the differences (image level) or of the resampled differences (dataset level)
    margin: float = 0.0
    p_better: float = float("nan")  # p of the test on d - margin (= p_value when margin = 0)
    p_worse: float = float("nan")  # p of the test on d + margin
    n_b: int = 0  # Mann-Whitney: timings of both methods; paired bootstrap: number of resamples


def experiment_seed(seed: int, key: Sequence[object]) -> int:
    """A per-experiment seed: adding or removing experiments never changes another one's resamples."""
    h = hashlib.sha256(repr((int(seed),) + tuple(map(str, key))).encode()).hexdigest()
    return int(h[:8], 16)


def experiment_draws(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """The experiment's common bootstrap draws ``[n_boot, n_images]`` (image positions, with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(n_images, 1), size=(n_boot, n_images))


def rank_biserial(d: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of differences ``d`` (Kerby 2014): ``(T+ - T-) / (T+ + T-)``
    over the non-zero differences, ranks of ``|d|`` with ties averaged; 0 when every difference is 0."""
    x = np.asarray(d, dtype=np.float64)
    x = x[np.isfinite(x) & (x != 0)]
    if x.size == 0:
        return 0.0
    r = stats.rankdata(np.abs(x))
    total = float(r.sum())
    return float((r[x > 0].sum() - r[x < 0].sum()) / total)


def _wilcoxon(d: np.ndarray) -> float:
    if d.size == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon_pvalues(d[None])[0])


def _weighted_ci(d: np.ndarray, weights: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile CI of the resampled means ``W d / W 1`` (rows of ``weights`` = times each image is drawn)."""
    tot = weights.sum(axis=1)
    keep = tot > 0
    if not keep.any():
        return float("nan"), float("nan")
    means = (weights[keep] @ d) / tot[keep]
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def draw_weights(draws: np.ndarray, n_images: int) -> np.ndarray:
    """``W[r, i]`` = how often image ``i`` is drawn in resample ``r`` of ``draws [R, N]``."""
    r = draws.shape[0]
    return np.bincount((draws + n_images * np.arange(r)[:, None]).ravel(), minlength=r * n_images).reshape(r, n_images)


def paired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    higher_is_better: bool,
    *,
    margin: float = 0.0,
    weights: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Paired comparison of per-image scores ``a`` and ``b`` (aligned arrays, one value per image).

    Images where either value is not finite are dropped. ``weights [R, N]`` (:func:`draw_weights` of the
    experiment's :func:`experiment_draws`) are the common bootstrap resamples; without them a fresh draw
    from ``seed`` is used. See the module docstring for every field."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison needs two aligned 1-d arrays, got shapes {a.shape} and {b.shape}.")
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
    sign = 1.0 if higher_is_better else -1.0
    keep = np.isfinite(a) & np.isfinite(b)
    d = sign * (a[keep] - b[keep])
    n = int(d.size)
    if n == 0:
        nan = float("nan")
        return Comparison("wilcoxon", 0, nan, nan, nan, nan, nan, nan, margin, nan, nan)
    if weights is None:
        weights = draw_weights(experiment_draws(a.size, n_boot, seed), a.size)
    lo, hi = _weighted_ci(d, np.asarray(weights)[:, keep].astype(np.float64), level)
    p = _wilcoxon(d)
    p_b = p if margin == 0 else _wilcoxon(d - margin)
    p_w = p if margin == 0 else _wilcoxon(d + margin)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    return Comparison("wilcoxon", n, float(d.mean()), lo, hi, rank_biserial(d), p, sd, margin, p_b, p_w)


def paired_bootstrap_comparison(
    compute: Callable[[np.ndarray, list[str]], float],
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    ids: Sequence[str],
    higher_is_better: bool,
    *,
    draws: np.ndarray,
    margin: float = 0.0,
    level: float = 0.95,
) -> Comparison:
    """Paired-bootstrap comparison of a dataset-level metric: ``compute(stats, ids)`` of both methods on
    the same resampled images (``draws [R, N]``, positions into ``ids``; the rows of ``stats_a`` and
    ``stats_b`` are the same images in the same order)."""
    sign = 1.0 if higher_is_better else -1.0
    ids = list(ids)
    n = len(ids)
    if n == 0:
        nan = float("nan")
        return Comparison("paired_bootstrap", 0, nan, nan, nan, nan, nan, nan, margin, nan, nan)
    point = sign * (float(compute(stats_a, ids)) - float(compute(stats_b, ids)))
    va = resample_values(compute, stats_a, ids, draws)
    vb = resample_values(compute, stats_b, ids, draws)
    diffs = sign * (va - vb)
    diffs = diffs[np.isfinite(diffs)]
    a = (1.0 - level) / 2.0
    lo, hi = (float(x) for x in np.quantile(diffs, [a, 1.0 - a])) if diffs.size else (np.nan, np.nan)
    sd = float(diffs.std(ddof=1)) if diffs.size > 1 else 0.0
    floor = 2.0 / (diffs.size + 1)  # R resamples resolve no two-sided p below 2 / (R + 1)

    def pv(x: np.ndarray) -> float:
        q = bootstrap_p(x, n)
        return max(q, floor) if np.isfinite(q) and q < 1.0 else q

    p = pv(diffs)
    p_b = p if margin == 0 else pv(diffs - margin)
    p_w = p if margin == 0 else pv(diffs + margin)
    effect = point / sd if sd > 0 else (0.0 if point == 0 else float(np.sign(point)) * np.inf)
    return Comparison(
        "paired_bootstrap", n, point, float(lo), float(hi), float(effect), p, sd, margin, p_b, p_w, int(diffs.size)
    )


def min_detectable_difference(c: Comparison, alpha: float, family_size: int, power: float = POWER) -> float:
    """The minimum difference detectable at this n (module docstring): power ``power`` at level
    ``alpha / family_size`` (Holm's first, strictest step), ``inf`` where no outcome can reach it."""
    m = max(int(family_size), 1)
    level = alpha / m
    if c.n < 1 or not np.isfinite(c.sd):
        return float("inf")
    if c.sd == 0:  # every difference equal (e.g. all 0): no spread to size a detectable difference from
        return float("nan")
    z = float(stats.norm.ppf(1.0 - level / 2.0) + stats.norm.ppf(power))
    if c.test == "mannwhitney":  # smallest exact two-sided p: 2 / C(n_a + n_b, n_a), n = min(n_a, n_b)
        if 2.0 / math.comb(c.n_b, c.n) >= level:
            return float("inf")
        return z * c.sd * float(np.sqrt(np.pi / 3.0))
    if c.test == "wilcoxon":
        if 2.0 ** (1 - c.n) >= level:  # even n wins out of n cannot reach the level
            return float("inf")
        return z * c.sd / np.sqrt(c.n) * float(np.sqrt(np.pi / 3.0))
    # the bootstrap p is floored at 2^(1 - n) (ranking.bootstrap_p) and at 2 / (R + 1) (R = c.n_b resamples)
    if max(2.0 ** (1 - c.n), 2.0 / (c.n_b + 1)) >= level:
        return float("inf")
    return z * c.sd


def verdicts(comparisons: Sequence[Comparison], alpha: float = 0.05) -> pd.DataFrame:
    """The family's table (``COMPARISON_COLUMNS``): Holm over the family, verdict and MDD per row.

    With a margin, "better" and "worse" are two tests of each row (on ``d - m`` and ``d + m``); both enter
    Holm's family, so a family of k rows with margins has 2k hypotheses."""
    k = len(comparisons)
    if k == 0:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    with_margin = [c.margin > 0 for c in comparisons]
    ps: list[float] = []
    for c, wm in zip(comparisons, with_margin, strict=True):
        ps += [c.p_better, c.p_worse] if wm else [c.p_value]
    adj = holm(np.asarray(ps, dtype=np.float64))
    rows, pos = [], 0
    family = len([p for p in ps if np.isfinite(p)])
    for c, wm in zip(comparisons, with_margin, strict=True):
        if wm:
            pb, pw = float(adj[pos]), float(adj[pos + 1])
            pos += 2
        else:
            pb = pw = float(adj[pos])
            pos += 1
        verdict = NO_DIFF
        if np.isfinite(pb) and pb < alpha and c.mean_diff > c.margin:
            verdict = BETTER
        elif np.isfinite(pw) and pw < alpha and c.mean_diff < -c.margin:
            verdict = WORSE
        p_holm = pb if verdict == BETTER else pw if verdict == WORSE else min(pb, pw)
        row = asdict(c)
        row.update(p_holm=p_holm, mdd=min_detectable_difference(c, alpha, family), verdict=verdict)
        rows.append(row)
    return pd.DataFrame(rows)[COMPARISON_COLUMNS]


# -- cost metrics: one value per timing, not per image ----------------------------------------------------


def timing_comparison(
    a: np.ndarray, b: np.ndarray, higher_is_better: bool, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Comparison:
    """Comparison of a cost metric (latency, memory) from its *timings*, not its images.

    A cost metric measures a batch once and copies the value to every image of the batch: the per-image
    rows are copies, not independent observations. The distinct values of each method are its timings;
    the two methods' timings are independent measurements (not paired), compared with the two-sided
    Mann-Whitney U test (scipy, exact for small samples without ties), effect the rank-biserial
    ``2 U / (n_a n_b) - 1`` (Kerby 2014), the CI a seeded bootstrap of the difference of means resampling
    each method's timings, ``n`` the smaller number of timings."""
    ta = np.unique(np.asarray(a, dtype=np.float64)[np.isfinite(a)])
    tb = np.unique(np.asarray(b, dtype=np.float64)[np.isfinite(b)])
    sign = 1.0 if higher_is_better else -1.0
    if ta.size == 0 or tb.size == 0:
        nan = float("nan")
        return Comparison("mannwhitney", 0, nan, nan, nan, nan, nan, nan)
    res = stats.mannwhitneyu(ta, tb, alternative="two-sided")
    effect = sign * (2.0 * float(res.statistic) / (ta.size * tb.size) - 1.0)
    rng = np.random.default_rng(seed)
    ma = ta[rng.integers(0, ta.size, (n_boot, ta.size))].mean(axis=1)
    mb = tb[rng.integers(0, tb.size, (n_boot, tb.size))].mean(axis=1)
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(sign * (ma - mb), [q, 1.0 - q])
    se = float(np.sqrt(ta.var(ddof=1) / ta.size + tb.var(ddof=1) / tb.size)) if min(ta.size, tb.size) > 1 else 0.0
    p = float(res.pvalue)
    n = int(min(ta.size, tb.size))
    return Comparison(
        "mannwhitney",
        n,
        sign * float(ta.mean() - tb.mean()),
        float(lo),
        float(hi),
        effect,
        p,
        se,
        p_better=p,
        p_worse=p,
        n_b=int(ta.size + tb.size),
    )


# -- claims of a run ---------------------------------------------------------------------------------------

CLAIM_COLUMNS = (
    [
        "group",
        "claim",
        "model",
        "dataset",
        "metric",
        "family",
        "method",
        "than",
        "higher_is_better",
    ]
    + COMPARISON_COLUMNS
    + ["note"]
)


def _image_key(i: str) -> str:
    return str(i).split("#", 1)[0]


def claim_table(
    scores: pd.DataFrame,
    run: dict,
    stats_rows: pd.DataFrame | None = None,
    baselines: Sequence[str] = (),
    alpha: float = 0.05,
    compute_for: Callable[[str, str, str], Callable] | None = None,
) -> pd.DataFrame:
    """Every comparison the run's claims (``run.json``'s ``claims``) make, with Holm over each group.

    Image-level metrics: :func:`paired_comparison` on the images both methods scored (multi-label rows
    averaged per image first), with the experiment's common bootstrap draws; dataset-level metrics
    (``stats_rows``, ``compute_for(model, dataset, metric)`` giving the metric's ``compute``):
    :func:`paired_bootstrap_comparison`; cost metrics: :func:`timing_comparison`."""

    claims = [
        Claim(
            **{
                **c,
                "than": _tuple(c["than"]),
                "metrics": _tuple(c["metrics"]),
                "experiments": _tuple(c.get("experiments", "all")),
            }
        )
        for c in run.get("claims", [])
    ]
    if not claims or scores is None:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    directions = {str(k): bool(v) for k, v in run.get("directions", {}).items()}
    families = {str(k): str(v) for k, v in run.get("families", {}).items()}
    seed, n_boot = int(run.get("seed", 0)), int(run.get("bootstrap", 1000))
    ok = scores[(scores["status"] == "ok") & np.isfinite(pd.to_numeric(scores["value"], errors="coerce"))]
    ok = ok.assign(image=ok["image_id"].map(_image_key), value=ok["value"].astype(np.float64))
    st = stats_rows if stats_rows is not None and len(stats_rows) else None
    exps = sorted(set(map(tuple, ok[["model", "dataset"]].drop_duplicates().values)))
    if st is not None:
        exps = sorted(set(exps) | set(map(tuple, st[["model", "dataset"]].drop_duplicates().values)))
    base = set(baselines)
    comps: list[tuple[dict, Comparison]] = []
    cache: dict[tuple, tuple] = {}
    for ci, claim in enumerate(claims):
        for model, dataset in claim_experiments(claim, exps):
            sub = ok[(ok["model"] == model) & (ok["dataset"] == dataset)]
            ssub = st[(st["model"] == model) & (st["dataset"] == dataset)] if st is not None else None
            if (model, dataset) not in cache:
                images = sorted(set(sub["image"]))
                eseed = experiment_seed(seed, (model, dataset))
                w = draw_weights(experiment_draws(len(images), n_boot, eseed), len(images)) if images else None
                cache[(model, dataset)] = (images, eseed, w)
            images, eseed, w = cache[(model, dataset)]
            present = set(sub["metric"]) | (set(ssub["metric"]) if ssub is not None else set())
            methods = set(sub["method"]) | (set(ssub["method"]) if ssub is not None else set())
            if claim.method not in methods:
                continue
            others = (
                sorted(methods - {claim.method} - base)
                if claim.than == "all"
                else [m for m in claim.than if m in methods]
            )
            for metric in claim_metrics(claim, sorted(present), families):
                hib = directions.get(metric, True)
                for other in others:
                    info = dict(
                        group=claim.group,
                        claim=ci,
                        model=model,
                        dataset=dataset,
                        metric=metric,
                        family=families.get(metric, ""),
                        method=claim.method,
                        than=other,
                        higher_is_better=hib,
                        note=claim.note,
                    )
                    c = _one(
                        sub,
                        ssub,
                        metric,
                        claim,
                        other,
                        hib,
                        families,
                        images,
                        w,
                        eseed,
                        n_boot,
                        compute_for,
                        model,
                        dataset,
                    )
                    if c is not None:
                        comps.append((info, c))
    rows = []
    for group in dict.fromkeys(info["group"] for info, _ in comps):
        fam = [(info, c) for info, c in comps if info["group"] == group]
        t = verdicts([c for _, c in fam], alpha)
        for (info, _), r in zip(fam, t.to_dict("records"), strict=True):
            rows.append({**info, **r})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _tuple(v: object) -> object:
    return tuple(v) if isinstance(v, list) else v


def _one(sub, ssub, metric, claim, other, hib, families, images, w, eseed, n_boot, compute_for, model, dataset):
    """One comparison of ``claim.method`` with ``other`` on ``metric`` (None when either has no value)."""
    if ssub is not None and metric in set(ssub["metric"]):
        if compute_for is None:
            return None
        fn = compute_for(model, dataset, metric)
        ga = ssub[(ssub["metric"] == metric) & (ssub["method"] == claim.method)]
        gb = ssub[(ssub["metric"] == metric) & (ssub["method"] == other)]
        ids = sorted(set(ga["image_id"]) & set(gb["image_id"]))
        if not ids:
            return None
        sa = np.stack([np.asarray(v, dtype=np.float64) for v in ga.set_index("image_id").loc[ids, "stats"]])
        sb = np.stack([np.asarray(v, dtype=np.float64) for v in gb.set_index("image_id").loc[ids, "stats"]])
        keep = np.asarray(np.isfinite(sa).all(axis=1) & np.isfinite(sb).all(axis=1), dtype=bool)
        ids = [i for i, k in zip(ids, keep.tolist(), strict=True) if k]
        draws = experiment_draws(len(ids), n_boot, eseed)
        return paired_bootstrap_comparison(fn, sa[keep], sb[keep], ids, hib, draws=draws, margin=claim.margin)
    per = sub[sub["metric"] == metric].pivot_table(index="image", columns="method", values="value", aggfunc="mean")
    if claim.method not in per.columns or other not in per.columns:
        return None
    per = per.reindex(images)
    a, b = per[claim.method].to_numpy(np.float64), per[other].to_numpy(np.float64)
    if families.get(metric) == "cost":
        return timing_comparison(a, b, hib, n_boot=n_boot, seed=eseed)
    return paired_comparison(a, b, hib, margin=claim.margin, weights=w)


def win_tie_loss(table: pd.DataFrame) -> pd.DataFrame:
    """Per (group, method, model, dataset, family): how many comparisons are better (win), no detectable
    difference (tie) and worse (loss)."""
    cols = ["group", "method", "model", "dataset", "family", "win", "tie", "loss"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    t = table.assign(
        win=(table["verdict"] == BETTER).astype(int),
        tie=(table["verdict"] == NO_DIFF).astype(int),
        loss=(table["verdict"] == WORSE).astype(int),
    )
    return t.groupby(cols[:5], as_index=False, sort=True)[["win", "tie", "loss"]].sum()[cols]


def format_claims(table: pd.DataFrame) -> str:
    """One line per comparison: verdict, effect, CI, corrected p, n (the terminal's claims section)."""
    lines = []
    for r in table.itertuples(index=False):
        lines.append(
            f"{r.method} vs {r.than} on {r.metric} ({r.model}/{r.dataset}): {r.verdict}; "
            f"diff {r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}], effect {r.effect:+.2f}, "
            f"p_holm {r.p_holm:.3g}, n {r.n}, MDD {r.mdd:.3g}"
        )
    return "\n".join(lines)


def claims_html(table: pd.DataFrame) -> str:
    """The report's leading claims section (empty string without claims): win/tie/loss per family for a
    ``--focus`` run, then one line per comparison (verdict, effect, CI, corrected p, n, MDD)."""
    import html as _html

    if table is None or table.empty:
        return ""
    e = _html.escape
    parts = [
        '<h2>Claims</h2><p class="muted">Each line: the per-image difference (oriented: &gt; 0 means the '
        "method is better) with its 95 % bootstrap CI, the matched-pairs rank-biserial effect, the Wilcoxon "
        "signed-rank p Holm-corrected over the group of claims (dataset-level metrics: paired bootstrap; cost "
        "metrics: Mann-Whitney on the timings), n, and the minimum difference detectable at this n (MDD, "
        "power 0.8). See docs/claims.md.</p>"
    ]
    focus = table[table["group"] == "focus"]
    if len(focus):
        wtl = win_tie_loss(focus)
        rows = "".join(
            f"<tr><td>{e(r.method)}</td><td>{e(r.model)}/{e(r.dataset)}</td><td>{e(r.family)}</td>"
            f"<td>{r.win}</td><td>{r.tie}</td><td>{r.loss}</td></tr>"
            for r in wtl.itertuples(index=False)
        )
        parts.append(
            "<h3>Focus: win / tie / loss</h3><table><tr><th>method</th><th>experiment</th>"
            f"<th>family</th><th>win</th><th>tie</th><th>loss</th></tr>{rows}</table>"
        )
    body = "".join(
        f"<tr><td><b>{e(r.verdict)}</b></td><td>{e(r.method)}</td><td>{e(r.than)}</td><td>{e(r.metric)}</td>"
        f"<td>{e(r.model)}/{e(r.dataset)}</td><td>{r.mean_diff:+.4f}</td><td>[{r.ci_low:+.4f}, {r.ci_high:+.4f}]</td>"
        f"<td>{r.effect:+.2f}</td><td>{r.p_holm:.3g}</td><td>{r.n}</td><td>{r.mdd:.3g}</td></tr>"
        for r in table.itertuples(index=False)
    )
    parts.append(
        "<table><tr><th>verdict</th><th>method</th><th>than</th><th>metric</th><th>experiment</th>"
        "<th>difference</th><th>95 % CI</th><th>effect</th><th>p (Holm)</th><th>n</th><th>MDD</th></tr>"
        f"{body}</table>"
    )
    return "".join(parts)
