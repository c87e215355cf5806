"""One self-contained ``report.html``: leaderboard, figures (PNG embedded as base64), settings, versions,
timings and failures. No external CSS, JavaScript or image links: the file can be mailed or archived."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .tables import MEAN_RANK

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin-bottom:6px} .muted{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f6f8} td.l,th.l{text-align:left} tr:nth-child(even) td{background:#fafafa}
td.best{font-weight:700;background:#e3f4ef !important} .ci{color:#777;font-size:11px}
img{max-width:100%;border:1px solid #eee;margin:6px 0} pre{background:#f6f8fa;padding:10px;font-size:12px;overflow:auto}
.err{color:#b00020} .ok{color:#2a7d4f}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _arrow(g: pd.DataFrame, metric: str) -> str:
    """The direction mark of ``metric`` in leaderboard rows ``g``: up = higher is better."""
    return "↑" if bool(g[g["metric"] == metric]["higher_is_better"].iloc[0]) else "↓"


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _fmt(v: float) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.3g}"


def leaderboard_html(board: pd.DataFrame) -> str:
    """Per (model, dataset): methods (by mean rank) x metrics, "mean [ci]", best per metric in bold."""
    parts = []
    for (model, dataset), g in board.groupby(["model", "dataset"], sort=True):
        metrics = sorted(m for m in g["metric"].unique() if m != MEAN_RANK)
        mr = g[g["metric"] == MEAN_RANK].set_index("method")["mean"]
        methods = list(mr.sort_values().index) if len(mr) else sorted(g["method"].unique())
        cell = {(r.method, r.metric): r for r in g.itertuples(index=False)}
        top = g.groupby("metric")["rank"].min().to_dict()  # best (ties share it)
        head = "".join(
            f'<th>{_e(m)}<br><span class="ci">{_arrow(g, m)}</span></th>'
            for m in metrics
        )
        rows = []
        for method in methods:
            tds = []
            for metric in metrics:
                r = cell.get((method, metric))
                if r is None:
                    tds.append("<td>–</td>")
                    continue
                cls = ' class="best"' if r.rank == top[metric] else ""
                ci = f'<br><span class="ci">[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}] n={int(r.n)}</span>'
                tds.append(f"<td{cls}>{_fmt(r.mean)}{ci}</td>")
            rank = _fmt(mr.get(method, np.nan))
            rows.append(f'<tr><td class="l">{_e(method)}</td>{"".join(tds)}<td>{rank}</td></tr>')
        parts.append(
            f"<h3>{_e(model)} on {_e(dataset)}</h3><table><tr><th class=l>method</th>{head}"
            f"<th>mean rank</th></tr>{''.join(rows)}</table>"
        )
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


def render(
    run: Mapping,
    board: pd.DataFrame,
    significance: pd.DataFrame,
    failures: pd.DataFrame,
    timings: pd.DataFrame,
    plots: Mapping[str, Sequence[Path]],
    degenerate: pd.DataFrame | None = None,
) -> str:
    """The report as an HTML string."""
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
    fig = lambda kind: "".join(_img(p) for p in plots.get(kind, [])) or '<p class="muted">None.</p>'
    exp_rows = pd.DataFrame(
        [(e["label"], e["dataset"], e["n_images"], len(e["methods"]), len(e["metrics"]))
         for e in run.get("experiments", [])],
        columns=["model", "dataset", "images", "methods", "metrics"],
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cambench report: {_e(run.get('suite', ''))}</title>
<style>{CSS}</style></head><body>
<h1>cambench report: suite <code>{_e(run.get('suite', ''))}</code></h1>
<p class="muted">suite hash {_e(run.get('suite_hash', ''))} · created {_e(run.get('created', ''))}
 · device {_e(run.get('device', ''))}
 · total unit time {total_s:.1f} s · {n_fail} failed score rows</p>
{frame_html(exp_rows)}
<h2>Leaderboard</h2>
<p class="muted">Mean over images with the 95% percentile-bootstrap CI ({_e(run.get('bootstrap', 1000))} resamples,
seeded) and n. ↑ higher is better, ↓ lower is better; bold = best (ties included).
Methods sorted by mean rank over the quality metrics (cost metrics are ranked but not averaged in).</p>
{leaderboard_html(board)}
<h2>Metrics</h2>{fig('bars')}
<h2>Ranks</h2>{fig('ranks')}
<h2>Deletion / insertion curves</h2>{fig('curves')}
<h2>CAM gallery</h2><p class="muted">Ground-truth boxes in green, mask outlines in white.</p>{fig('gallery')}
<h2>Ties with the best method</h2>
<p class="muted">Paired Wilcoxon signed-rank test against the best method per metric, Holm-corrected
(p ≥ 0.05 listed; all in significance.csv).</p>
{frame_html(sig)}
<h2>Failures</h2>{frame_html(failures)}
<h2>Degenerate maps</h2>
<p class="muted">Constant raw maps, scored as all-zero maps (degenerate = True in scores.parquet).</p>
{frame_html(degenerate if degenerate is not None else pd.DataFrame())}
<h2>Skipped metrics</h2>{frame_html(skipped_df)}
<h2>Timings</h2>{frame_html(tot)}{frame_html(tsum)}
<h2>Settings</h2><p class="muted">{_e(run.get('suite_path', ''))}</p><pre>{_e(run.get('suite_toml', ''))}</pre>
<h2>Versions</h2><p>{_e(vtxt)}</p>
</body></html>
"""
