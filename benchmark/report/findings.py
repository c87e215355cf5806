"""What a run concludes, per experiment, in one line: the report's first section and the terminal summary's
last lines (issue 29, "findings first").

Per experiment (model, dataset), from the leaderboard, the metric card and the equivalent-map pairs:

- per metric family, the **best significance group**: the methods in group ``a`` (not significantly different
  from the best method: Wilcoxon-Holm over images, paired bootstrap for dataset-level metrics, alpha 0.05) on
  the most of the family's metrics that can rank methods here (metric card verdict ``ok``);
- the metrics that **cannot separate** methods on this data (saturated, or too few significant pairs), counted
  with the reason, and the smallest ``n`` at which the test could separate any pair at all
  (:func:`min_n_to_separate`);
- methods whose maps are identical on every image (``equivalences.csv``) collapsed into one name;
- experiments ordered by what they can conclude (metrics able to rank methods, then their separable share).

Names: at most three per cell, then ``+k``; the full lists are in ``leaderboard.csv`` / ``metric_card.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..schema import METRIC_FAMILIES
from .tables import COST_FAMILY, MEAN_RANK

#: families left out of the findings: cost metrics measure the machine, not the maps (their own table says it)
SKIP_FAMILIES = (COST_FAMILY,)


def min_n_to_separate(k: int, alpha: float = 0.05) -> int:
    """The smallest number of images at which the exact two-sided Wilcoxon signed-rank test, Holm-corrected
    over the ``k (k - 1) / 2`` pairs of ``k`` methods, can reach ``p < alpha`` for any pair at all.

    With ``n`` paired differences the smallest exact two-sided p is ``2 / 2**n`` (every difference of one
    sign; Wilcoxon 1945); Holm's first step compares the smallest p with ``alpha / m``. So the answer is the
    least ``n`` with ``2**(1 - n) < alpha / m``. Below it, "cannot separate methods" is a matter of ``n``,
    not of the methods."""
    m = k * (k - 1) // 2
    if m < 1:
        return 0
    n = 1
    while 2.0 ** (1 - n) >= alpha / m:
        n += 1
    return n


def short_names(names: Sequence[str], k: int = 3) -> str:
    """At most ``k`` names, then ``+N`` for the rest: ``a, b, c +4``."""
    names = list(names)
    head = ", ".join(names[:k])
    return head + (f" +{len(names) - k}" if len(names) > k else "")


def equivalence_classes(equiv: pd.DataFrame | None, model: str, dataset: str) -> dict[str, list[str]]:
    """Methods with identical maps on an experiment, as ``{first name: [it and its equals, sorted]}``
    (union of the ``equivalences.csv`` pairs); methods without an equal are absent."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    if equiv is not None and len(equiv):
        e = equiv[(equiv["model"] == model) & (equiv["dataset"] == dataset)]
        for a, b in zip(e["method"], e["same_as"], strict=True):
            ra, rb = find(str(a)), find(str(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    classes: dict[str, list[str]] = {}
    for x in list(parent):
        classes.setdefault(find(x), []).append(x)
    return {min(v): sorted(v) for v in classes.values() if len(v) > 1}


def collapse(names: Sequence[str], classes: Mapping[str, Sequence[str]]) -> list[str]:
    """``names`` with each class of identical-map methods shown once, as ``first (=second, third)``, at the
    place of its first member; order kept."""
    of = {m: rep for rep, members in classes.items() for m in members}
    out, seen = [], set()
    for n in names:
        rep = of.get(n)
        if rep is None:
            out.append(n)
        elif rep not in seen:
            seen.add(rep)
            members = [m for m in names if of.get(m) == rep]
            out.append(members[0] + (f" (={', '.join(members[1:])})" if len(members) > 1 else ""))
    return out


@dataclass
class FamilyBest:
    family: str
    names: list[str]  # the best group, equivalents collapsed, best average rank first
    in_a: int  # on how many of the family's rankable metrics they are all in group a
    rankable: int  # the family's metrics that can rank methods here
    metrics: int  # the family's metrics


@dataclass
class Finding:
    model: str
    dataset: str
    n: int | None  # images
    k: int  # ranked methods
    best: list[FamilyBest] = field(default_factory=list)
    cannot: dict[str, list[str]] = field(default_factory=dict)  # reason -> metrics
    n_needed: int = 0
    separable: float = float("nan")  # mean separable share of the rankable metrics
    equal: list[str] = field(default_factory=list)  # collapsed classes of identical maps

    @property
    def rankable(self) -> int:
        return sum(b.rankable for b in self.best)

    @property
    def n_cannot(self) -> int:
        return len({m for ms in self.cannot.values() for m in ms})


def _reason(verdict: str) -> str:
    """A card verdict in two words (the card keeps the full sentence)."""
    if verdict.startswith("saturated"):
        return "saturated"
    if "cannot separate" in verdict:
        return "too few pairs differ"
    return verdict.split(":")[0]


def experiment_findings(
    board: pd.DataFrame,
    card: pd.DataFrame | None,
    equiv: pd.DataFrame | None,
    run: Mapping,
) -> list[Finding]:
    """One :class:`Finding` per experiment of ``board``, the experiments that conclude most first."""
    families = {str(k): str(v) for k, v in run.get("families", {}).items()}
    n_img = {(e["label"], e["dataset"]): e.get("n_images") for e in run.get("experiments", [])}
    if "baseline" not in board:
        board = board.assign(baseline=False, group="")
    out = []
    for (model, dataset), g in board.groupby(["model", "dataset"], sort=True):
        g = g[~g["baseline"].astype(bool) & (g["metric"] != MEAN_RANK)]
        g = g[~g["metric"].map(lambda m: families.get(m, "other") in SKIP_FAMILIES)]
        g = g[g.groupby("metric")["mean"].transform(lambda s: s.notna().any())]  # all-NaN metrics say nothing
        c = card[(card["model"] == model) & (card["dataset"] == dataset)] if card is not None and len(card) else None
        verdict = dict(zip(c["metric"], c["verdict"], strict=True)) if c is not None else {}
        sep = dict(zip(c["metric"], c["separable"], strict=True)) if c is not None else {}
        classes = equivalence_classes(equiv, model, dataset)
        n = n_img.get((model, dataset))
        if n is None and len(g):
            n = int(np.nanmax(g["n"].to_numpy(dtype=float))) if g["n"].notna().any() else None
        k = int(g["method"].nunique())
        f = Finding(model, dataset, n, k, n_needed=min_n_to_separate(k))
        f.equal = [collapse(v, classes)[0] for v in classes.values()]
        fams = [x for x in METRIC_FAMILIES if x in {families.get(m, "other") for m in g["metric"]}]
        fams += sorted({families.get(m, "other") for m in g["metric"]} - set(fams))
        seps = []
        for fam in fams:
            metrics = sorted(m for m in g["metric"].unique() if families.get(m, "other") == fam)
            ok = [m for m in metrics if verdict.get(m, "ok") == "ok"]
            for m in metrics:
                if m not in ok:
                    f.cannot.setdefault(_reason(str(verdict[m])), []).append(m)
            seps += [float(sep[m]) for m in ok if m in sep and np.isfinite(sep[m])]
            names: list[str] = []
            top = 0
            if ok:
                s = g[g["metric"].isin(ok)]
                in_a = s.assign(a=s["group"].astype(str).str.contains("a")).groupby("method")["a"].sum()
                top = int(in_a.max()) if len(in_a) else 0
                if top > 0:
                    order = s.groupby("method")["rank"].mean().sort_values()
                    names = collapse([m for m in order.index if in_a.get(m, 0) == top], classes)
            f.best.append(FamilyBest(fam, names, top, len(ok), len(metrics)))
        f.separable = float(np.mean(seps)) if seps else float("nan")
        out.append(f)
    out.sort(key=lambda f: (-f.rankable, -(f.separable if np.isfinite(f.separable) else -1), f.model, f.dataset))
    return out


def _family_words(b: FamilyBest) -> str:
    if not b.rankable:
        return f"{b.family}: nothing ({b.metrics} metric{'s' * (b.metrics != 1)} cannot rank)"
    if not b.names:
        return f"{b.family}: no group"
    return f"{b.family}: {short_names(b.names)} (a on {b.in_a}/{b.rankable})"


def _cannot_words(f: Finding) -> str:
    if not f.n_cannot:
        return ""
    why = ", ".join(f"{len(ms)} {r}" for r, ms in sorted(f.cannot.items()))
    few = f" (n = {f.n} < {f.n_needed}: too few images to separate any pair)" if (f.n or 0) < f.n_needed else ""
    return f"{f.n_cannot} metric{'s' * (f.n_cannot != 1)} cannot separate methods: {why}{few}"


def finding_text(f: Finding) -> str:
    """One experiment's finding as one line (two when something cannot be concluded)."""
    head = f"{f.model} on {f.dataset} (n = {f.n if f.n is not None else '?'}, {f.k} methods)"
    parts = [_family_words(b) for b in f.best if b.rankable] or ["no metric can rank methods here"]
    line = f"{head}: " + "; ".join(parts)
    more = _cannot_words(f)
    return line + (f"\n    {more}" if more else "")


def findings_text(findings: Sequence[Finding], claims: str = "") -> str:
    """The terminal summary's findings: one line per experiment, best-concluding first, then the claims'
    verdicts when the suite has claims."""
    if not findings:
        return ""
    lines = [
        "Findings (best group per metric family: methods not significantly different from the best on most of "
        "the family's metrics, Wilcoxon-Holm 0.05; full tables in report.html and leaderboard.csv):"
    ]
    lines += [f"  {finding_text(f)}" for f in findings]
    if claims:
        lines += [claims.rstrip()]
    return "\n".join(lines)


def _h(x: object) -> str:
    import html

    return html.escape(str(x))


def findings_html(findings: Sequence[Finding], anchors: Mapping[tuple[str, str], str], claims: str = "") -> str:
    """The report's first section: one row per experiment (best-concluding first), linking to its section."""
    if not findings:
        return '<section id="findings"><h2>Findings</h2><p>No scores.</p></section>'
    fams = [x for x in (*METRIC_FAMILIES, "other") if any(b.family == x for f in findings for b in f.best)]
    head = "".join(f"<th class=l>{_h(x)}</th>" for x in fams)
    rows = []
    for f in findings:
        by = {b.family: b for b in f.best}
        tds = []
        for fam in fams:
            b = by.get(fam)
            if b is None:
                tds.append('<td class="l muted">–</td>')
            elif not b.rankable:
                tds.append(f'<td class="l grey">cannot rank ({b.metrics})</td>')
            else:
                full = ", ".join(b.names)
                tds.append(
                    f'<td class="l" title="{_h(full)}">{_h(short_names(b.names)) or "no group"}'
                    f'<br><span class="ci">a on {b.in_a}/{b.rankable} metrics</span></td>'
                )
        cannot = _cannot_words(f)
        eq = f"<br>identical maps: {_h(short_names(f.equal))}" if f.equal else ""
        link = anchors.get((f.model, f.dataset), "")
        rows.append(
            f'<tr><td class="l"><a href="#{_h(link)}">{_h(f.model)} on {_h(f.dataset)}</a>'
            f'<br><span class="ci">n = {_h(f.n)} · {f.k} methods</span></td>{"".join(tds)}'
            f'<td class="l">{_h(cannot) or "–"}{eq}</td></tr>'
        )
    return (
        '<section id="findings"><h2>Findings</h2><p class="muted">Per experiment (those that can conclude most '
        "first) and metric family: the methods in significance group a (not significantly different from the "
        "best: Wilcoxon-Holm over images, paired bootstrap for dataset-level metrics, alpha 0.05) on the most of "
        "the family's metrics that can rank methods here; methods with identical maps are shown once. Hover a "
        "cell for every name; full lists in leaderboard.csv and metric_card.csv.</p>"
        f'<table class="findings"><tr><th class=l>experiment</th>{head}<th class=l>cannot conclude</th></tr>'
        f"{''.join(rows)}</table>{claims}</section>"
    )
