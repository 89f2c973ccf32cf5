"""Assemble the single HTML file: plotly.js once, the figures as JSON, tables and notes.

Two escaping rules keep text from runs, traces and configs inert:
- text in HTML goes through ``html.escape`` (:func:`esc`);
- JSON inside ``<script>`` has ``<``, ``>``, ``&`` (and the JavaScript line separators) written as
  ``\\u003c``-style escapes (:func:`script_json`), so no string can close the script element or open a comment.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.io as pio
import plotly.offline

import kvbench
from kvbench.report.build import Report
from kvbench.report.model import ReportRun
from kvbench.report.table import RATIOS

_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SCRIPT_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")
_HEX_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendDataToCloud"]}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def script_json(obj: Any) -> str:
    text = pio.json.to_json_plotly(obj)
    return _SCRIPT_ESCAPE_RE.sub(lambda m: _SCRIPT_ESCAPES[m.group(0)], text)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _pct(v: Any) -> str:
    return "n/a" if _missing(v) else f"{float(v):.1%}"


def _ms(v: Any) -> str:
    return "n/a" if _missing(v) else f"{float(v):,.1f}"


def _rate(v: Any) -> str:
    return "n/a" if _missing(v) else f"{float(v):,.3g}" if float(v) < 1000 else f"{float(v):,.0f}"


def _plain(v: Any) -> str:
    if _missing(v):
        return "n/a"
    if isinstance(v, float) and v.is_integer():
        return f"{int(v):,}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _cv(v: Any) -> str:
    return "n/a" if _missing(v) else f"{float(v):.3f}"


def _cache(v: Any) -> str:
    return "unbounded" if _missing(v) else f"{int(v):,}"


# (column, header, tooltip, formatter)
_COLUMNS: list[tuple[str, str, str, Callable[[Any], str]]] = [
    ("workload", "workload", "trace generator and its shape parameters", str),
    ("target", "target", "sim = built-in simulator, http = real workers", str),
    ("workers", "workers", "number of workers", _plain),
    ("cache_tokens", "cache (tokens)", "KV cache per worker, in tokens", _cache),
    ("eviction", "eviction", "eviction policy", str),
    ("router", "router", "routing policy", str),
    ("completed", "ok", "completed requests", _plain),
    ("failed", "failed", "failed or cancelled requests", _plain),
    ("hit_rate", "hit rate", "primary hit rate: per-request cached tokens, else server counters", _pct),
    ("hit_rate_server_counters", "hit rate (server)", "delta of vLLM prefix-cache counters", _pct),
    ("hit_rate_cache_counters", "hit rate (cache)", "the cache's own hit/query counters", _pct),
    ("hit_rate_ideal", "hit rate (ideal)", "infinite cache, one node", _pct),
    ("mean_ttft_ms", "TTFT mean", "ms", _ms),
    ("median_ttft_ms", "TTFT p50", "ms", _ms),
    ("p99_ttft_ms", "TTFT p99", "ms", _ms),
    ("mean_e2el_ms", "e2e mean", "ms", _ms),
    ("median_e2el_ms", "e2e p50", "ms", _ms),
    ("p99_e2el_ms", "e2e p99", "ms", _ms),
    ("request_throughput", "req/s", "completed requests per second", _rate),
    ("total_token_throughput", "tok/s", "input + output tokens per second", _rate),
    ("requests_cv", "CV req", "load balance: coefficient of variation of requests per worker", _cv),
    ("tokens_cv", "CV tok", "load balance: coefficient of variation of tokens per worker", _cv),
    ("request_goodput", "goodput", "requests per second that met every --goodput SLO", _rate),
    ("goodput_attainment", "SLO met", "share of requests that met every --goodput SLO", _pct),
]
_OPTIONAL = ("request_goodput", "goodput_attainment", "vs_baseline_request_goodput")  # shown when some run has it
_RATIO_HEADERS = {
    "vs_baseline_hit_rate": "hit rate", "vs_baseline_mean_ttft": "TTFT mean", "vs_baseline_p99_ttft": "TTFT p99",
    "vs_baseline_mean_e2el": "e2e mean", "vs_baseline_request_throughput": "req/s",
    "vs_baseline_token_throughput": "tok/s", "vs_baseline_request_goodput": "goodput",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:16px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9cfda;font-size:13px}
nav{padding:8px 28px;background:#e9ecf1;font-size:13px}nav a{margin-right:14px;color:#24459a}
main{padding:8px 28px 40px}section{margin-top:18px}h2{font-size:18px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
.notes{background:#fff8e1;border-left:4px solid #f0b429;padding:8px 14px;margin:10px 0;font-size:14px}
.notes p{margin:4px 0}.ok{background:#eaf7ee;border-left-color:#3bb273}
.tablewrap{overflow-x:auto;background:#fff;border:1px solid #d5d9e0}
table{border-collapse:collapse;font-size:12.5px;white-space:nowrap}
th,td{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:right}
th{background:#f0f2f5;position:sticky;top:0;font-weight:600}td.t,th.t{text-align:left}
tr.base td{background:#eef3ff}tr.wl td{background:#fafbfc;font-weight:600;text-align:left;color:#3a4252}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:middle}
.better{color:#17803d}.worse{color:#b42318}
.flag{background:#fde8e8;color:#b42318;border-radius:3px;padding:0 4px;font-size:11px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.chart{background:#fff;border:1px solid #d5d9e0;padding:4px}.chart.wide{grid-column:1/-1}
.chart p{margin:2px 8px 6px;font-size:12px;color:#5a6272}
details{background:#fff;border:1px solid #d5d9e0;margin:6px 0;padding:6px 10px}
p.desc{color:#5a6272;font-style:italic;margin:4px 0}
summary{cursor:pointer;font-weight:600}pre{font-size:12px;overflow-x:auto;max-height:480px}
"""

RENDER_JS = """
(function () {
  var rendered = 0;
  document.body.setAttribute("data-charts-rendered", "0");
  KVB_CHARTS.forEach(function (chart) {
    var layout = chart.figure.layout || {};
    layout.template = KVB_TEMPLATE;
    Plotly.newPlot(document.getElementById(chart.id), chart.figure.data, layout, KVB_CONFIG).then(function () {
      rendered += 1;
      document.body.setAttribute("data-charts-rendered", String(rendered));
      if (rendered === KVB_CHARTS.length) {
        document.body.setAttribute("data-render-ms", String(Math.round(performance.now())));
      }
    });
  });
})();
"""


def _ratio_cell(value: Any, higher_better: bool) -> str:
    if _missing(value):
        return '<td>n/a</td>'
    v = float(value)
    cls = ""
    if abs(v - 1.0) > 0.02:
        cls = "better" if (v > 1.0) == higher_better else "worse"
    return f'<td class="{cls}">×{v:.2f}</td>'


def _swatch(colour: str) -> str:
    colour = colour if _HEX_COLOUR.match(colour) else "#777777"
    return f'<span class="sw" style="background:{colour}"></span>'


def summary_table_html(report: Report) -> str:
    df = report.table
    if df.empty:
        return '<div class="notes"><p>No runs to summarise.</p></div>'
    columns = [c for c in _COLUMNS if c[0] in df.columns]
    # Hit-rate sources no run reports are left out rather than shown as a column of n/a.
    columns = [c for c in columns if not (c[0].startswith("hit_rate_") or c[0] in _OPTIONAL)
               or df[c[0]].notna().any()]
    ratios = [r for r in RATIOS if r[0] in df.columns and (r[0] not in _OPTIONAL or df[r[0]].notna().any())]
    head = ['<th class="t">run</th>'] + [
        f'<th class="{"t" if fmt is str else ""}" title="{esc(tip)}">{esc(label)}</th>'
        for _, label, tip, fmt in columns if _ != "workload"]
    head += [f'<th title="run / baseline">{esc(_RATIO_HEADERS[c])} vs base</th>' for c, _, _ in ratios]
    rows = []
    by_name = {r.name: r for r in report.runs}
    last_workload = None
    for rec in df.to_dict(orient="records"):
        if rec["workload"] != last_workload:
            last_workload = rec["workload"]
            rows.append(f'<tr class="wl"><td colspan="{len(head)}">workload: {esc(rec["workload"])}</td></tr>')
        run = by_name[rec["run"]]
        marker = " (baseline)" if rec.get("baseline") else ""
        flag = (f' <span class="flag" title="the numbers cover completed requests only">{esc(rec["flags"])}</span>'
                if rec.get("flags") else "")
        cells = [f'<td class="t">{_swatch(report.palette(run.combination))}{esc(rec["run"])}{marker}{flag}</td>']
        for col, _, _, fmt in columns:
            if col == "workload":
                continue
            cells.append(f'<td class="{"t" if fmt is str else ""}">{esc(fmt(rec.get(col)))}</td>')
        cells += [_ratio_cell(rec.get(c), hb) for c, _, hb in ratios]
        rows.append(f'<tr class="{"base" if rec.get("baseline") else ""}">{"".join(cells)}</tr>')
    return (f'<div class="tablewrap"><table id="summary-table"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def seeds_table_html(runs: list[ReportRun], baseline: ReportRun | None) -> str:
    """Mean ± 95% confidence half-width over seeds, and paired ratios against the baseline's configuration."""
    from kvbench.report.seeds import METRICS, seed_groups

    groups = seed_groups(runs, baseline)
    if not groups:
        return ""
    metrics = [m for m in METRICS if any(g.stats[m[0]].n for g in groups)]
    ratio_metrics = [m for m in metrics if any(m[0] in g.vs_baseline and g.vs_baseline[m[0]].n for g in groups)]
    fmt = {"hit_rate": lambda v: f"{v:.3f}", "request_throughput": lambda v: f"{v:.3g}",
           "request_goodput": lambda v: f"{v:.3g}"}

    def cell(st, f) -> str:
        if st is None or st.mean is None:
            return "<td>n/a</td>"
        ci = "" if st.ci95 is None else f" ± {f(st.ci95)}"
        return f"<td>{esc(f(st.mean) + ci)}</td>"

    head = ['<th class="t">configuration</th>', "<th>seeds</th>"]
    head += [f"<th>{esc(label)}</th>" for _, label, _ in metrics]
    head += [f'<th title="per-seed ratio to the baseline, mean ± 95% CI">{esc(label)} vs base</th>'
             for _, label, _ in ratio_metrics]
    rows = []
    for g in groups:
        cells = [f'<td class="t">{esc(g.label)}</td>', f"<td>{len(g.runs)}</td>"]
        cells += [cell(g.stats[m], fmt.get(m, lambda v: f"{v:.1f}")) for m, _, _ in metrics]
        cells += [cell(g.vs_baseline.get(m), lambda v: f"{v:.3f}") for m, _, _ in ratio_metrics]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return ('<h3>Across seeds</h3><p class="desc">Mean ± half-width of the 95% confidence interval (Student\'s t '
            'over seeds); ratios pair each seed with the baseline configuration\'s run of the same seed.</p>'
            f'<div class="tablewrap"><table class="seeds"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _notes(lines: list[str], cls: str = "") -> str:
    if not lines:
        return ""
    return f'<div class="notes {cls}">' + "".join(f"<p>{esc(x)}</p>" for x in lines) + "</div>"


def _failures_html(runs: list[ReportRun]) -> str:
    failing = [r for r in runs if r.n_failed]
    if not failing:
        return _notes(["No failed or cancelled requests in any run."], "ok")
    rows = []
    for run in failing:
        bad = run.requests[run.requests["status"] != "ok"]
        statuses = Counter(bad["status"].astype(str))
        messages = Counter(str(m) if m is not None else "(no message)" for m in bad["error"])
        top = "; ".join(f"{m[:160]} (x{n})" for m, n in messages.most_common(3))
        rows.append(f'<tr><td class="t">{esc(run.name)}</td><td>{len(run.requests):,}</td>'
                    f'<td>{statuses.get("error", 0):,}</td><td>{statuses.get("cancelled", 0):,}</td>'
                    f'<td class="t">{esc(top)}</td></tr>')
    return ('<div class="tablewrap"><table id="failures-table"><thead><tr><th class="t">run</th><th>requests</th>'
            '<th>error</th><th>cancelled</th><th class="t">most common errors</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _configs_html(runs: list[ReportRun]) -> str:
    if not runs:
        return ""
    parts = []
    for run in runs:
        text = json.dumps(run.config, indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>{esc(run.name)} <small>({esc(run.path)})</small></summary>"
                     f"<pre>{esc(text)}</pre></details>")
    return "".join(parts)


def _skipped_html(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    lines = [f"Skipped {path}: {reason}" for path, reason in skipped]
    return '<section id="skipped"><h2>Inputs without runs</h2>' + _notes(lines) + "</section>"


def render_html(report: Report) -> str:
    n_charts = len(report.charts)
    from kvbench.report.fidelity import fidelity_html

    nav = ['<a href="#summary">Summary</a>'] + (['<a href="#fidelity">Simulator fidelity</a>'] if report.fidelity
                                                else []) + [
        f'<a href="#w{i}">{esc(s.label if len(s.label) <= 48 else s.label[:45] + "...")}</a>'
        for i, s in enumerate(report.sections)] + ['<a href="#failures">Failed requests</a>',
                                                   '<a href="#configs">Configurations</a>']
    body = [
        (f'<header><h1>kvbench report</h1><p>{len(report.runs)} run(s), {len(report.sections)} workload(s), '
         f'{n_charts} chart(s) · kvbench {esc(kvbench.__version__)}</p></header>'),
        f'<nav>{"".join(nav)}</nav><main>',
        _notes(report.notes),
        _skipped_html(report.skipped),
        f'<section id="summary"><h2>Summary</h2>{summary_table_html(report)}</section>',
        fidelity_html(report.fidelity),
    ]
    figures = []
    for i, section in enumerate(report.sections):
        body.append(f'<section id="w{i}" class="workload"><h2>Workload: {esc(section.label)}</h2>')
        if section.description:
            body.append(f'<p class="desc">{esc(section.description)}</p>')
        body.append(f'<p>{len(section.runs)} run(s): {esc(", ".join(r.name for r in section.runs))}</p>')
        body.append(_notes(section.notes))
        body.append(seeds_table_html(section.runs, report.baseline))
        body.append('<div class="grid">')
        for chart in section.charts:
            note = f"<p>{esc(chart.note)}</p>" if chart.note else ""
            body.append(f'<div class="chart{" wide" if chart.wide else ""}"><div id="{esc(chart.id)}" '
                        f'class="kvb-chart" style="height:{int(chart.height)}px"></div>{note}</div>')
            figures.append({"id": chart.id, "figure": chart.figure.to_plotly_json()})
        body.append("</div></section>")
    body.append(f'<section id="failures"><h2>Failed requests</h2>{_failures_html(report.runs)}</section>')
    body.append(f'<section id="configs"><h2>Configurations</h2>{_configs_html(report.runs)}</section></main>')
    template = pio.templates["plotly_white"].to_plotly_json()
    script = (f"var KVB_TEMPLATE = {script_json(template)};\nvar KVB_CONFIG = {script_json(PLOTLY_CONFIG)};\n"
              f"var KVB_CHARTS = {script_json(figures)};\n{RENDER_JS}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>kvbench report ({len(report.runs)} runs)</title><style>{CSS}</style>\n"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n'
        f'</head><body data-chart-count="{n_charts}">{"".join(body)}\n<script>{script}</script>\n</body></html>\n'
    )
