"""One self-contained ``report.html``: leaderboard, figures (PNG embedded as base64), settings, versions,
timings and failures. No external CSS, JavaScript or image links: the file can be mailed or archived."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..schema import METRIC_FAMILIES
from .findings import equivalence_classes, experiment_findings, findings_html, short_names
from .tables import MEAN_RANK

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin-bottom:6px} .muted{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f6f8} td.l,th.l{text-align:left} tr:nth-child(even) td{background:#fafafa}
td.best{font-weight:700;background:#e3f4ef !important} .ci{color:#777;font-size:11px;font-weight:400}
nav#toc{background:#f6f8fa;padding:6px 14px;font-size:13px;display:inline-block;margin:0 0 6px}
nav#toc ol{margin:2px 0;padding-left:18px} table.findings td{vertical-align:top;max-width:260px}
details{margin:4px 0 8px} summary{cursor:pointer;color:#666;font-size:12px}
img{max-width:100%;border:1px solid #eee;margin:6px 0} pre{background:#f6f8fa;padding:10px;font-size:12px;overflow:auto}
.err{color:#b00020} .ok{color:#2a7d4f} .grp{color:#1d4e89;font-weight:600;font-size:11px}
td.grey,th.grey,tr.grey td{color:#aaa !important;background:#f3f3f3 !important} h4{font-size:13px;margin:10px 0 2px}
.card td{white-space:normal;max-width:380px}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _arrow(g: pd.DataFrame, metric: str) -> str:
    """The direction mark of ``metric`` in leaderboard rows ``g``: up = higher is better."""
    return "↑" if bool(g[g["metric"] == metric]["higher_is_better"].iloc[0]) else "↓"


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _seeds_html(plots: Mapping[str, Sequence[Path]]) -> str:
    """The WSSS seed section (seeds.csv, docs/wsss.md): mIoU against the background threshold."""
    if not plots.get("seeds"):
        return ""
    return (
        '<h2>WSSS seeds</h2><p class="muted">Seed mIoU (background + classes) against the background '
        "threshold, per method; the marked threshold is the one chosen on the held-out images "
        "(seed_miou); seed_miou_oracle_threshold is the optimistic best on the evaluated images. "
        "Per-class IoU, precision, recall, FP and FN ratios: seeds.csv.</p>" + "".join(_img(p) for p in plots["seeds"])
    )


def _fmt(v: float) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.3g}"


def _slug(*parts: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join(parts))


def _usable(g: pd.DataFrame) -> list[str]:
    """The metrics of leaderboard rows ``g`` with at least one finite mean (an all-NaN column says nothing)."""
    ok = g[g["metric"] != MEAN_RANK].groupby("metric")["mean"].apply(lambda s: bool(np.isfinite(s).any()))
    return [m for m in g["metric"].unique() if m != MEAN_RANK and bool(ok.get(m, False))]


def _family_table(
    g: pd.DataFrame,
    metrics: Sequence[str],
    methods: Sequence[str],
    base: set[str],
    label: Mapping[str, str],
    grey: Mapping[str, str],
) -> str:
    cell = {(r.method, r.metric): r for r in g.itertuples(index=False)}
    top = g.groupby("metric")["rank"].min().to_dict()
    head = ""
    for m in metrics:
        hib = bool(g[g["metric"] == m]["higher_is_better"].iloc[0])
        cls = f' class="grey" title="{_e(grey[m])}"' if m in grey else ""
        head += f'<th{cls}>{_e(m)}<br><span class="ci">{"↑" if hib else "↓"}</span></th>'
    rows = []
    for method in methods:
        tds = []
        for metric in metrics:
            r = cell.get((method, metric))
            if r is None:
                tds.append("<td>–</td>")
                continue
            classes = ["best"] if r.rank == top.get(metric) else []
            if metric in grey:
                classes.append("grey")
            grp = f' <span class="grp">{_e(r.group)}</span>' if isinstance(r.group, str) and r.group else ""
            ci = f'<br><span class="ci">[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}] n={int(r.n)}</span>'
            c = f' class="{" ".join(classes)}"' if classes else ""
            tds.append(f"<td{c}>{_fmt(r.mean)}{grp}{ci}</td>")
        ref = f'<i>{_e(method)}</i> <span class="ci">(reference)</span>'
        name = ref if method in base else _e(label.get(method, method))
        rows.append(f'<tr><td class="l">{name}</td>{"".join(tds)}</tr>')
    return f"<table><tr><th class=l>method</th>{head}</tr>{''.join(rows)}</table>"


def family_tables(
    g: pd.DataFrame,
    families: Mapping[str, str],
    grey: Mapping[str, str],
    classes: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """One experiment's leaderboard as one table per metric family (in METRIC_FAMILIES, so each fits the page
    width): methods sorted by mean rank, baselines last in italics (references, not ranked); a cell is
    "mean [ci] n group"; bold = best. Methods with identical maps (``classes``) share one row; metrics without
    a finite value are left out; metrics the report card flags (``grey``, why on hover) are collapsed under
    each family's table. The mean rank is its own table (:func:`mean_rank_table`)."""
    metrics_all = _usable(g)
    mr = g[g["metric"] == MEAN_RANK].set_index("method")
    base = set(g[g["baseline"].astype(bool)]["method"]) if "baseline" in g else set()
    by_rank = list(mr["mean"].sort_values().index) if len(mr) else sorted(g["method"].unique())
    ranked = [m for m in by_rank if m not in base]
    ranked += sorted(m for m in g["method"].unique() if m not in base and m not in ranked)
    hidden = {m for v in (classes or {}).values() for m in v[1:]}
    label = {v[0]: " = ".join(v) for v in (classes or {}).values()}
    methods = [m for m in ranked if m not in hidden] + sorted(base)
    fams = [f for f in METRIC_FAMILIES if any(families.get(m) == f for m in metrics_all)]
    fams += sorted({families.get(m, "other") for m in metrics_all} - set(fams))
    parts = []
    for fam in fams:
        metrics = sorted(m for m in metrics_all if families.get(m, "other") == fam)
        shown = [m for m in metrics if m not in grey]
        greyed = [m for m in metrics if m in grey]
        part = f"<h4>{_e(fam)}</h4>"
        if shown:
            part += _family_table(g, shown, methods, base, label, grey)
        if greyed:
            part += (
                f"<details><summary>{len(greyed)} {_e(fam)} metric{'s' * (len(greyed) != 1)} that cannot rank "
                f"methods here: {_e(', '.join(greyed))}</summary>"
                f"{_family_table(g, greyed, methods, base, label, grey)}</details>"
            )
        parts.append(part)
    return "\n".join(parts)


def mean_rank_table(g: pd.DataFrame, classes: Mapping[str, Sequence[str]] | None = None) -> str:
    """The mean rank over the quality metrics, once per experiment: methods best first, Nemenyi group, CD."""
    mr = g[(g["metric"] == MEAN_RANK)].sort_values("mean")
    if not len(mr):
        return ""
    hidden = {m for v in (classes or {}).values() for m in v[1:]}
    label = {v[0]: " = ".join(v) for v in (classes or {}).values()}
    cd = float(mr["cd"].iloc[0]) if "cd" in mr else float("nan")
    rows = "".join(
        f'<tr><td class="l">{_e(label.get(r.method, r.method))}</td><td>{_fmt(r.mean)}</td>'
        f'<td class="l"><span class="grp">{_e(r.group if isinstance(r.group, str) else "")}</span></td></tr>'
        for r in mr.itertuples(index=False)
        if r.method not in hidden
    )
    return (
        f'<table><tr><th class=l>method</th><th>mean rank<br><span class="ci">CD {_fmt(cd)}</span></th>'
        f"<th class=l>group</th></tr>{rows}</table>"
    )


def _few(text: str, k: int = 3) -> str:
    """A card's ``kind: name; kind: name; ...`` list as counts and at most ``k`` names per kind."""
    if not text:
        return ""
    by: dict[str, list[str]] = {}
    for item in str(text).split("; "):
        kind, _, name = item.partition(": ")
        by.setdefault(kind if name else "", []).append(name or kind)
    out = []
    for kind, names in by.items():
        more = f" +{len(names) - k}" if len(names) > k else ""
        out.append(f"{kind}: {len(names)} ({', '.join(names[:k])}{more})" if kind else ", ".join(names))
    return "; ".join(out)


def leaderboard_html(board: pd.DataFrame, families: Mapping[str, str] | None = None) -> str:
    """Every experiment's :func:`family_tables`."""
    parts = []
    for (model, dataset), g in board.groupby(["model", "dataset"], sort=True):
        parts.append(f"<h3>{_e(model)} on {_e(dataset)}</h3>{family_tables(g, families or {}, {})}")
    return "\n".join(parts) or "<p>No scores.</p>"


def frame_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    if df is None or df.empty:
        return '<p class="ok">None.</p>'
    shown = df.head(max_rows)
    head = "".join(f"<th class=l>{_e(c)}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        tds = []
        for v in row:
            if isinstance(v, float):
                tds.append(f"<td>{_fmt(v)}</td>")
            else:
                tds.append(f'<td class="l">{_e(v)}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    more = f'<p class="muted">{len(df) - max_rows} more rows in the CSV.</p>' if len(df) > max_rows else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


META_NOTE = """<p class="muted">NR, AR: MetaQuantus' meta-evaluation (Hedstrom et al., TMLR 2023), over the
suite's minor and disruptive model perturbations (multiplicative Gaussian weight noise, methods re-explained). NR
(noise resilience, 1 best): the scores and the methods' ranking stay under minor noise; AR (adversary reactivity,
1 best): they change under disruptive noise. Each is the mean of an intra-consistency (IAC: Wilcoxon p over images)
and an inter-consistency (IEC: ranks kept / scores worsened) part (on hover); docs/metrics.md, "Meta-evaluation".</p>"""


def experiment_section(
    model: str,
    dataset: str,
    board: pd.DataFrame,
    card: pd.DataFrame,
    equiv: pd.DataFrame,
    tests: pd.DataFrame,
    families: Mapping[str, str],
    plots: Mapping[str, Sequence[Path]],
    n_images: int | None = None,
    anchor: str = "",
) -> str:
    """One experiment: its critical-difference diagrams, significance groups and the metric card first,
    equivalent methods, the mean rank, then the tables grouped by family, then the other plots."""

    g = board[(board["model"] == model) & (board["dataset"] == dataset)]
    classes = equivalence_classes(equiv, model, dataset)
    c = card[(card["model"] == model) & (card["dataset"] == dataset)] if len(card) else card
    grey = {r.metric: r.verdict for r in c.itertuples(index=False) if r.verdict != "ok"} if len(c) else {}
    has_meta = "NR" in c.columns and bool(c["NR"].notna().any()) if len(c) else False
    # groups first: per metric, the methods of group "a" (not significantly different from the best)
    grows = []
    for fam in METRIC_FAMILIES + ("other",):
        for r in c.itertuples(index=False) if len(c) else []:
            if (r.family if r.family in METRIC_FAMILIES else "other") != fam:
                continue
            s = g[(g["metric"] == r.metric) & ~g["baseline"].astype(bool)].sort_values("rank")
            in_a = list(s[s["group"].astype(str).str.contains("a")]["method"])
            top = short_names(in_a)
            cls = ' class="grey"' if r.metric in grey else ""
            ngroups = len({ch for x in s["group"].astype(str) for ch in x})
            grows.append(
                f'<tr{cls}><td class="l">{_e(r.metric)}</td><td class="l">{_e(r.level)}</td><td>{ngroups}</td>'
                f'<td class="l" title="{_e(", ".join(in_a))}">{_e(top)}</td>'
                f"<td>{_fmt(r.saturated_share)}</td><td>{_fmt(r.separable)}</td>"
                f'<td>{_fmt(r.friedman_p)}</td><td class="l">{_e(r.baseline_order)}</td><td>{_e(r.beats_random)}</td>'
                f"<td>{_fmt(r.median_tau)}</td>"
                + (
                    f'<td title="IAC {_fmt(r.IAC_NR)}, IEC {_fmt(r.IEC_NR)}">{_fmt(r.NR)}</td>'
                    f'<td title="IAC {_fmt(r.IAC_AR)}, IEC {_fmt(r.IEC_AR)}">{_fmt(r.AR)}</td>'
                    if has_meta
                    else ""
                )
                + f'<td class="l">{_e(r.verdict)}'
                f"{'<br>' + _e(_few(r.violators)) if r.violators else ''}</td></tr>"
            )
    card_html = (
        (
            '<table class="card"><tr><th class=l>metric</th><th class=l>level</th><th>groups</th>'
            "<th class=l>group a (tied with the best)</th><th>saturated</th><th>separable</th><th>Friedman p</th>"
            "<th class=l>oracle ≥ methods ≥ random</th><th>beat random</th><th>median τ</th>"
            + ("<th>NR</th><th>AR</th>" if has_meta else "")
            + "<th class=l>verdict</th></tr>"
            + "".join(grows)
            + "</table>"
        )
        if grows
        else '<p class="muted">No metric card.</p>'
    )
    e = equiv[(equiv["model"] == model) & (equiv["dataset"] == dataset)] if len(equiv) else equiv
    slug = _slug(model, dataset)
    mine = {k: [p for p in v if Path(p).name.endswith(f"-{slug}.png")] for k, v in plots.items()}
    fig = lambda kind: "".join(_img(p) for p in mine.get(kind, [])) or '<p class="muted">None.</p>'
    cds = mine.get("cd", [])
    cd_top = "".join(_img(p) for p in cds if Path(p).name.startswith("cd-mean_rank-"))  # the overall one first
    cd_families = "".join(_img(p) for p in cds if not Path(p).name.startswith("cd-mean_rank-"))
    n = f" · {n_images} images" if n_images is not None else ""
    return f"""<section class="exp" id="{_e(anchor or slug)}"><h2>{_e(model)} on {_e(dataset)}</h2>
<p class="muted">{len(set(g["method"]))} methods{n}</p>{cd_top}
<h3>What this experiment can conclude</h3>
<p class="muted">Per metric: the significance groups (methods sharing a letter are not significantly different:
Wilcoxon-Holm over images for per-image metrics, a paired bootstrap over images for dataset-level ones, alpha 0.05),
the share of methods tied with the best value (saturated), the share of method pairs that differ (separable), whether
oracle ≥ methods ≥ random holds, how many methods beat random's 95% CI, and the median Kendall τ with the other
metrics. Greyed-out metrics cannot rank methods on this data (the verdict says why); baselines (random, center,
oracle) are references: never ranked, not in the mean rank.</p>
{card_html}{META_NOTE if has_meta else ""}
<h3>Equivalent methods</h3><p class="muted">Pairs whose maps are identical on every image (max |diff| ≤ 1e-6); their
scores are equal, so their rank differences are noise. The reason is given where the capture proves it.</p>
{frame_html(e.drop(columns=["model", "dataset"]) if len(e) else e)}
<h3>Leaderboard</h3>
<p class="muted">mean [95% bootstrap CI] n, with the significance group letter; dataset-level metrics (MaxBoxAccV2,
PxAP) are computed over all images. The mean rank over the quality metrics is shown with its critical difference
(Nemenyi, metrics as blocks), once per experiment in the table above: mean ranks closer than the CD are not
significantly different. Methods with identical maps share a row; metrics that cannot rank methods here are
collapsed.</p>
<h3>Mean rank</h3>{mean_rank_table(g, classes)}
{family_tables(g, families, grey, classes)}
{words_html(mine)}
<h3>Plots</h3>
<p class="muted">Critical-difference diagrams per metric family (average ranks over images; methods joined by a
bar are not significantly different), then the per-image paired differences against one method (the focused
one, else the best mean rank; a 95% bootstrap CI per pair, descriptive and not multiplicity-corrected: the
groups decide significance), and the metrics' agreement.</p>
{cd_families}{fig("forest")}{fig("kendall")}{fig("bars")}{fig("ranks")}{fig("curves")}
<p class="muted">The images where the methods' maps disagree most (largest spread of the maps over methods);
ground-truth boxes in lime, mask outlines in white; one colour scale for every map.</p>{fig("gallery")}</section>
"""


def words_html(plots: Mapping[str, Sequence[Path]]) -> str:
    """The per-token gallery (``target = "tokens"``: the caption with each word's map) or the per-query
    gallery (``"text"``) of one experiment, when it has one (:func:`benchmark.report.plots.token_gallery`)."""
    out = ""
    if plots.get("tokens"):
        out += (
            '<h3 class="words">Per-token explanations</h3><p class="muted">The generated caption of the first '
            "images, one column per word (greedy decoding, in order) and one row per method (the best by mean "
            "rank, then the oracle): the map explaining that word's logit over the image, the named object's "
            "instance mask outlined in white. Function words (<i>a</i>, <i>and</i>, &lt;eos&gt;) and object "
            "words that name no drawn object (a wrong word) have no ground truth (titled in grey): the mask "
            "metrics leave them out, TAM's Func-IoU scores the function words (an ideal map is empty).</p>"
            + "".join(_img(p) for p in plots["tokens"])
        )
    if plots.get("queries"):
        out += (
            '<h3 class="words">Per-query explanations</h3><p class="muted">The text queries present in the '
            "first images (one column each, the query as title) and one row per method (the best by mean "
            "rank, then the oracle): the map explaining the image-query similarity, the queried object's mask "
            "outlined in white.</p>" + "".join(_img(p) for p in plots["queries"])
        )
    return out


def notes_html(run: Mapping) -> str:
    """The methods' caveats recorded in ``run.json`` (``method_notes``), each with the parameters it ran
    with per experiment, e.g. the oracle's ``mask_dilation`` (docs/scenes-and-truth.md)."""
    notes = run.get("method_notes") or {}
    if not notes:
        return ""
    items = []
    for m, note in sorted(notes.items()):
        used = [
            f"{e['label']} / {e['dataset']}: "
            + (
                ", ".join(f"{k}={v}" for k, v in sorted((e.get("method_params", {}).get(m) or {}).items()))
                or "defaults"
            )
            for e in run.get("experiments", [])
            if m in e.get("methods", [])
        ]
        items.append(f'<li><b>{_e(m)}</b>: {_e(note)}<br><span class="muted">{_e("; ".join(used))}</span></li>')
    return "<h2>Notes on methods</h2><ul>" + "".join(items) + "</ul>"


def render(
    run: Mapping,
    board: pd.DataFrame,
    significance: pd.DataFrame,
    failures: pd.DataFrame,
    timings: pd.DataFrame,
    plots: Mapping[str, Sequence[Path]],
    degenerate: pd.DataFrame | None = None,
    card: pd.DataFrame | None = None,
    equivalences: pd.DataFrame | None = None,
    tests: pd.DataFrame | None = None,
    claims: str = "",
    out_dir: Path | None = None,
) -> str:
    """The report as an HTML string: a table of contents, the findings of every experiment
    (:mod:`benchmark.report.findings`, plus the claims' verdicts when the suite has claims), then per
    experiment (:func:`experiment_section`, those that conclude most first), then what applies to the whole
    run (ties with the best, failures, degenerate maps, skipped metrics, timings, settings)."""

    versions = run.get("versions", {})
    vtxt = ", ".join(f"{k} {v}" for k, v in versions.items())
    skipped = [
        (e["label"], e["dataset"], m, why)
        for e in run.get("experiments", [])
        for m, why in e.get("skipped", {}).items()
    ]
    skipped_df = pd.DataFrame(skipped, columns=["model", "dataset", "metric", "reason"])
    if timings is not None and not timings.empty:
        t = timings[timings["stage"].isin(["explain", "metric", "load"])]
        tsum = t.groupby(["model", "dataset", "stage", "name"], as_index=False)["seconds"].sum()
        tot = timings[timings["stage"] == "total"].groupby(["model", "dataset"], as_index=False)["seconds"].sum()
        tsum = tsum.sort_values(["model", "dataset", "seconds"], ascending=[True, True, False])
        total_s = float(tot["seconds"].sum())
    else:
        tsum, tot, total_s = pd.DataFrame(), pd.DataFrame(), 0.0
    n_fail = int(failures[failures["status"] == "error"]["count"].sum()) if not failures.empty else 0
    sig = significance.copy()
    if not sig.empty:
        sig = sig[sig["significant"] == False]  # noqa: E712  (methods statistically tied with the best)
    exp_rows = pd.DataFrame(
        [
            (e["label"], e["dataset"], e["n_images"], len(e["methods"]), len(e["metrics"]))
            for e in run.get("experiments", [])
        ],
        columns=["model", "dataset", "images", "methods", "metrics"],
    )
    families = run.get("families", {})
    card = card if card is not None else pd.DataFrame(columns=["model", "dataset", "metric", "verdict"])
    equivalences = equivalences if equivalences is not None else pd.DataFrame(columns=["model", "dataset"])
    tests = tests if tests is not None else pd.DataFrame()
    if "baseline" not in board:
        board = board.assign(baseline=False, group="", cd=np.nan)
    n_img = {(e["label"], e["dataset"]): e.get("n_images") for e in run.get("experiments", [])}
    found = experiment_findings(board, card, equivalences, run)
    anchors = {(f.model, f.dataset): "exp-" + _slug(f.model, f.dataset) for f in found}
    claims_html = claims  # the claims' verdicts (benchmark.report.claims.claims_html), first when present
    if found:  # the first screen shows a picture: the best-concluding experiment's mean-rank CD diagram
        first = f"cd-{_slug('mean_rank', found[0].model, found[0].dataset)}.png"
        cd = [p for p in plots.get("cd", []) if Path(p).name == first]
        caption = (
            f'<p class="muted">{_e(found[0].model)} on {_e(found[0].dataset)}: mean rank over the quality '
            "metrics; methods joined by a bar are not significantly different (Nemenyi, alpha 0.05).</p>"
        )
        claims_html += (caption + _img(cd[0])) if cd else ""
    sections = (
        "".join(
            experiment_section(
                f.model,
                f.dataset,
                board,
                card,
                equivalences,
                tests,
                families,
                plots,
                n_img.get((f.model, f.dataset)),
                anchors[(f.model, f.dataset)],
            )
            for f in found
        )
        or "<p>No scores.</p>"
    )
    toc = "".join(f'<li><a href="#{a}">{_e(m)} on {_e(d)}</a></li>' for (m, d), a in anchors.items())
    toc = (
        '<nav id="toc"><b>Contents</b><ol><li><a href="#findings">Findings</a></li>'
        f'<li>Experiments<ol>{toc}</ol></li><li><a href="#run">This run: failures, timings, settings</a></li>'
        "</ol></nav>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cambench report: {_e(run.get("suite", ""))}</title>
<style>{CSS}</style></head><body>
<h1>cambench report: suite <code>{_e(run.get("suite", ""))}</code></h1>
<p class="muted">suite hash {_e(run.get("suite_hash", ""))} · created {_e(run.get("created", ""))}
 · device {_e(run.get("device", ""))}
 · total unit time {total_s:.1f} s · {n_fail} failed score rows</p>
{toc}
{findings_html(found, anchors, claims_html)}
<h2>Experiments</h2>
{frame_html(exp_rows)}
<p class="muted">Leaderboard: mean over images (dataset-level metrics: the value over all images) with the 95%
percentile-bootstrap CI over images ({_e(run.get("bootstrap", 1000))} resamples, seeded) and n. ↑ higher is better,
↓ lower is better; bold = best (ties included). Methods sorted by mean rank over the quality metrics (cost metrics are
ranked but not averaged in).</p>
{sections}
{notes_html(run)}
{_seeds_html(plots)}
<h2 id="run">Ties with the best method</h2>
<p class="muted">Paired Wilcoxon signed-rank test against the best method per metric, Holm-corrected
(p ≥ 0.05 listed; all in significance.csv).</p>
{frame_html(sig)}
<h2>Failures</h2>{frame_html(failures)}
<h2>Degenerate maps</h2>
<p class="muted">Constant raw maps, scored as all-zero maps (degenerate = True in scores.parquet).</p>
{frame_html(degenerate if degenerate is not None else pd.DataFrame())}
<h2>Skipped metrics</h2>{frame_html(skipped_df)}
<h2>Timings</h2>{frame_html(tot)}{frame_html(tsum)}
<h2>Settings</h2><p class="muted">{_e(run.get("suite_path", ""))}</p><pre>{_e(run.get("suite_toml", ""))}</pre>
<h2>Versions</h2><p>{_e(vtxt)}</p>
</body></html>
"""
