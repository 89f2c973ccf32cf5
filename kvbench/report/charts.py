"""Plotly figures for one workload's runs.

Every string that reaches a figure (run names, combination names, workload labels, worker names) goes
through :func:`plot_text`: plotly.js reads a subset of HTML in text, so a name is entity-escaped and shows
literally instead of being parsed as markup. Colours come from one :class:`Palette` per report so a
combination looks the same in every chart and every workload.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvbench.report import series
from kvbench.report.model import Combination, ReportRun
from kvbench.report.sweeps import Sweep

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
# Hit-rate sources drawn as markers over the bars (the bars show the primary source: per-request cached
# tokens, else server counters).
SOURCE_MARKERS = {  # source -> (legend label, marker symbol)
    "server_counters": ("server counters", "diamond"),
    "cache_counters": ("cache counters", "x-thin-open"),
    "ideal": ("ideal (infinite cache, one node)", "line-ew-open"),
}


def plot_text(text: object) -> str:
    return html.escape(str(text), quote=True)


class Palette:
    """Combination -> colour, fixed for the whole report in first-seen order."""

    COLOURS = tuple(plotly.colors.qualitative.D3) + tuple(plotly.colors.qualitative.Dark24)

    def __init__(self, combinations: list[Combination]):
        self._colour: dict[Combination, str] = {}
        for combination in combinations:
            if combination not in self._colour:
                self._colour[combination] = self.COLOURS[len(self._colour) % len(self.COLOURS)]

    def __call__(self, combination: Combination) -> str:
        return self._colour.get(combination, "#777777")


@dataclass
class Chart:
    id: str
    title: str
    figure: go.Figure
    height: int = 380
    wide: bool = False
    note: str = ""  # plain text shown under the chart (escaped by the HTML writer)


def _layout(fig: go.Figure, title: str, height: int, **kw) -> go.Figure:
    fig.update_layout(
        title={"text": plot_text(title), "x": 0.01, "xanchor": "left"},
        height=height, margin={"l": 60, "r": 20, "t": 50, "b": 60},
        legend={"font": {"size": 11}}, hovermode="closest", template="none", **kw,
    )
    return fig


def short_names(names: list[str], width: int = 28) -> list[str]:
    """Tick labels that stay readable with many runs: the path parts all names share are dropped (an
    experiment's name, a common "/seed0"), and what is left is shortened in the middle to ``width``."""
    parts = [n.split("/") for n in names]
    if len(parts) > 1:
        while all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
            parts = [p[1:] for p in parts]
        while all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
            parts = [p[:-1] for p in parts]
    out = []
    for p in parts:
        text = "/".join(p)
        if len(text) > width:
            keep = width - 1
            text = text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]
        out.append(text)
    return out


def _run_axis(runs: list[ReportRun]) -> dict:
    names = [plot_text(r.name) for r in runs]
    axis = {"type": "category", "categoryorder": "array", "categoryarray": names,
            "tickangle": -30 if len(runs) > 4 else 0, "automargin": True}
    short = [plot_text(s) for s in short_names([r.name for r in runs])]
    if short != names:  # hover still shows the full name (the category itself)
        axis.update(tickmode="array", tickvals=names, ticktext=short)
    if len(runs) > 12:
        axis.update(tickangle=-60, tickfont={"size": 10})
    return axis


def _by_combination(runs: list[ReportRun]) -> dict[Combination, list[ReportRun]]:
    out: dict[Combination, list[ReportRun]] = {}
    for run in runs:
        out.setdefault(run.combination, []).append(run)
    return out


def _value(v: float | None, scale: float = 1.0) -> float | None:
    return None if v is None else v * scale


def hit_rate_chart(cid: str, runs: list[ReportRun], palette: Palette) -> Chart | None:
    if all(r.hit_rate() is None for r in runs):
        return None
    fig = go.Figure()
    for combination, members in _by_combination(runs).items():
        fig.add_bar(x=[plot_text(r.name) for r in members], y=[_value(r.hit_rate()) for r in members],
                    name=plot_text(combination.label), marker_color=palette(combination),
                    legendgroup=plot_text(combination.label),
                    hovertemplate="%{x}<br>hit rate %{y:.1%}<extra>" + plot_text(combination.label) + "</extra>")
    for source, (label, symbol) in SOURCE_MARKERS.items():
        values = [r.hit_rate(source) for r in runs]
        if all(v is None for v in values):
            continue
        fig.add_scatter(x=[plot_text(r.name) for r in runs], y=values, mode="markers", name=plot_text(label),
                        marker={"symbol": symbol, "size": 12, "color": "#222", "line": {"width": 2}},
                        hovertemplate="%{x}<br>" + plot_text(label) + " %{y:.1%}<extra></extra>")
    _layout(fig, "Prefix-cache hit rate per run (bars: primary source)", 400, barmode="overlay",
            xaxis=_run_axis(runs), yaxis={"title": "hit rate", "tickformat": ".0%", "rangemode": "tozero"})
    return Chart(cid, "hit rate", fig, 400, wide=len(runs) > 8)


def ttft_chart(cid: str, runs: list[ReportRun], palette: Palette) -> Chart | None:
    have = [r for r in runs if r.summary.get("mean_ttft_ms") is not None]
    if not have:
        return None
    fig = go.Figure()
    for combination, members in _by_combination(have).items():
        fig.add_bar(x=[plot_text(r.name) for r in members], y=[r.summary.get("mean_ttft_ms") for r in members],
                    name=plot_text(combination.label), marker_color=palette(combination),
                    legendgroup=plot_text(combination.label),
                    hovertemplate="%{x}<br>mean TTFT %{y:.1f} ms<extra></extra>")
    for key, label, symbol in (("median_ttft_ms", "p50", "circle"), ("p99_ttft_ms", "p99", "triangle-up")):
        fig.add_scatter(x=[plot_text(r.name) for r in have], y=[r.summary.get(key) for r in have],
                        mode="markers", name=label, marker={"symbol": symbol, "size": 10, "color": "#222"},
                        hovertemplate="%{x}<br>" + label + " TTFT %{y:.1f} ms<extra></extra>")
    _layout(fig, "Time to first token per run (bars: mean)", 400, barmode="overlay", xaxis=_run_axis(have),
            yaxis={"title": "TTFT (ms)", "rangemode": "tozero"})
    return Chart(cid, "TTFT", fig, 400, wide=len(have) > 8)


def throughput_chart(cid: str, runs: list[ReportRun], palette: Palette) -> Chart | None:
    have = [r for r in runs if r.summary.get("request_throughput") is not None]
    if not have:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("requests/s", "tokens/s (input + output)"),
                        horizontal_spacing=0.12)
    for combination, members in _by_combination(have).items():
        names = [plot_text(r.name) for r in members]
        for col, key in ((1, "request_throughput"), (2, "total_token_throughput")):
            fig.add_bar(x=names, y=[r.summary.get(key) for r in members], name=plot_text(combination.label),
                        marker_color=palette(combination), legendgroup=plot_text(combination.label),
                        showlegend=col == 1, row=1, col=col,
                        hovertemplate="%{x}<br>%{y:.3g}<extra></extra>")
    _layout(fig, "Throughput per run", 400, barmode="overlay")
    fig.update_xaxes(**_run_axis(have))
    fig.update_yaxes(rangemode="tozero")
    return Chart(cid, "throughput", fig, 400, wide=len(have) > 8)


def goodput_chart(cid: str, runs: list[ReportRun], palette: Palette) -> Chart | None:
    """Good requests per second and the share of requests meeting every SLO (runs replayed or reported
    with --goodput)."""
    have = [r for r in runs if r.summary.get("request_goodput") is not None]
    if not have:
        return None
    slo = have[0].summary.get("goodput_slo_ms") or {}
    what = ", ".join(f"{k} <= {v:g} ms" for k, v in slo.items()) if isinstance(slo, dict) else ""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("good requests/s", "requests meeting every SLO"),
                        horizontal_spacing=0.12)
    for combination, members in _by_combination(have).items():
        names = [plot_text(r.name) for r in members]
        for col, key, fmt in ((1, "request_goodput", ".3g"), (2, "goodput_attainment", ".1%")):
            fig.add_bar(x=names, y=[r.summary.get(key) for r in members], name=plot_text(combination.label),
                        marker_color=palette(combination), legendgroup=plot_text(combination.label),
                        showlegend=col == 1, row=1, col=col,
                        hovertemplate="%{x}<br>%{y:" + fmt + "}<extra></extra>")
    _layout(fig, f"Goodput per run ({what})" if what else "Goodput per run", 400, barmode="overlay")
    fig.update_xaxes(**_run_axis(have))
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05], row=1, col=2)
    return Chart(cid, "goodput", fig, 400, wide=len(have) > 8)


HEATMAP_METRICS = (("hit rate", lambda r: r.hit_rate(), ".1%"),
                   ("mean TTFT (ms)", lambda r: r.summary.get("mean_ttft_ms"), ".1f"),
                   ("goodput (req/s)", lambda r: r.summary.get("request_goodput"), ".3g"))


def heatmap_chart(cid: str, title: str, runs: list[ReportRun]) -> Chart | None:
    """Eviction x router, coloured by one metric at a time (a menu switches it): the mission's view.

    ``runs`` share every other setting, so a cell averages only seeds (replicates)."""
    evictions = list(dict.fromkeys(r.combination.eviction for r in runs))
    routers = list(dict.fromkeys(r.combination.router for r in runs))
    if len(evictions) < 2 and len(routers) < 2:
        return None
    fig = go.Figure()
    buttons = []
    shown = [m for m in HEATMAP_METRICS if any(m[1](r) is not None for r in runs)]
    for k, (label, metric, fmt) in enumerate(shown):
        z, text = [], []
        for ev in evictions:
            row, row_text = [], []
            for rt in routers:
                value = _mean([metric(r) for r in runs if r.combination == Combination(ev, rt)])
                row.append(value)
                row_text.append("" if value is None else format(value, fmt))
            z.append(row)
            text.append(row_text)
        lower_better = "TTFT" in label
        fig.add_heatmap(z=z, x=[plot_text(r) for r in routers], y=[plot_text(e) for e in evictions], text=text,
                        texttemplate="%{text}", colorscale="RdYlGn_r" if lower_better else "RdYlGn",
                        visible=k == 0, colorbar={"title": {"text": plot_text(label)}},
                        hovertemplate="%{y} × %{x}<br>" + plot_text(label) + " %{text}<extra></extra>")
        buttons.append({"label": plot_text(label), "method": "update",
                        "args": [{"visible": [j == k for j in range(len(shown))]}]})
    height = max(300, 80 + 44 * len(evictions))
    _layout(fig, title, height, xaxis={"title": "router", "type": "category"},
            yaxis={"title": "eviction", "type": "category", "autorange": "reversed"})
    if len(buttons) > 1:
        fig.update_layout(updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right",
                                        "y": 1.18, "yanchor": "top", "showactive": True}], margin={"t": 80})
    return Chart(cid, "heatmap", fig, height, wide=len(routers) > 6,
                 note="Each cell is the mean over seeds; pick the metric in the menu at the top right.")


def _line_style(runs: list[ReportRun], palette: Palette) -> dict[str, dict]:
    """Colour by combination; runs sharing a combination differ in dash."""
    style, count = {}, {}
    for run in runs:
        i = count.get(run.combination, 0)
        count[run.combination] = i + 1
        style[run.name] = {"color": palette(run.combination), "dash": DASHES[i % len(DASHES)], "width": 2}
    return style


def _curves(runs: list[ReportRun], palette: Palette, curve_of, hover: str) -> go.Figure:
    """One line per run, coloured by its combination; runs without a curve are left out."""
    fig = go.Figure()
    style = _line_style(runs, palette)
    for run in runs:
        curve = curve_of(run)
        if curve is None:
            continue
        fig.add_scatter(x=curve.x, y=curve.y, mode="lines", name=plot_text(run.name), line=style[run.name],
                        legendgroup=plot_text(run.combination.label),
                        hovertemplate=hover + "<extra>" + plot_text(run.name) + "</extra>")
    return fig


def cdf_chart(cid: str, runs: list[ReportRun], palette: Palette, column: str, what: str) -> Chart | None:
    fig = _curves(runs, palette, lambda run: series.cdf(run.ok[column].to_numpy(dtype=float) * 1000.0),
                  "%{x:.1f} ms: %{y:.1%}")
    if not fig.data:
        return None
    _layout(fig, f"{what} distribution (completed requests)", 400,
            xaxis={"title": f"{what} (ms, log scale)", "type": "log"},
            yaxis={"title": "fraction of requests", "tickformat": ".0%", "range": [0, 1.02]})
    return Chart(cid, f"{what} CDF", fig, 400)


def hit_rate_over_time_chart(cid: str, runs: list[ReportRun], palette: Palette) -> Chart | None:
    fig = _curves(runs, palette, lambda run: series.rolling_hit_rate(run.requests), "t=%{x:.1f} s: %{y:.1%}")
    if not fig.data:
        return None
    _layout(fig, "Hit rate over time (rolling window of about 1/40 of the requests)", 400,
            xaxis={"title": "time since the first arrival (s)"},
            yaxis={"title": "hit rate", "tickformat": ".0%", "range": [0, 1.02]})
    return Chart(cid, "hit rate over time", fig, 400, wide=True)


def worker_load_chart(cid: str, runs: list[ReportRun]) -> Chart | None:
    """One line per worker; a menu picks the run, so 20 runs still make one readable chart."""
    fig = go.Figure()
    spans: list[tuple[ReportRun, int, int]] = []
    for run in runs:
        load = series.outstanding_per_worker(run.requests, run.n_workers or 0)
        if load is None:
            continue
        grid, per_worker = load
        start = len(fig.data)
        colours = plotly.colors.sample_colorscale("Viridis", np.linspace(0.0, 0.9, max(len(per_worker), 2)))
        for w, values in enumerate(per_worker):
            label = run.worker_names[w] if w < len(run.worker_names) else f"worker {w}"
            fig.add_scatter(x=grid, y=values, mode="lines", name=plot_text(label), visible=not spans,
                            line={"width": 1.5, "color": colours[w], "shape": "hv"},
                            hovertemplate="t=%{x:.1f} s: %{y} in flight<extra>" + plot_text(label) + "</extra>")
        spans.append((run, start, len(fig.data)))
    if not spans:
        return None
    title = "Requests in flight per worker: "
    buttons = []
    for run, start, end in spans:
        visible = [start <= i < end for i in range(len(fig.data))]
        buttons.append({"label": plot_text(run.name), "method": "update",
                        "args": [{"visible": visible}, {"title.text": plot_text(title + run.name)}]})
    _layout(fig, title + spans[0][0].name, 420, xaxis={"title": "time since the first arrival (s)"},
            yaxis={"title": "requests in flight", "rangemode": "tozero"})
    if len(spans) > 1:
        fig.update_layout(updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right",
                                        "y": 1.15, "yanchor": "top", "showactive": True}],
                          margin={"t": 80})
    return Chart(cid, "worker load", fig, 420, wide=True,
                 note="Pick a run in the menu at the top right." if len(spans) > 1 else "")


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _tick(x: float) -> str:
    """Short axis labels for swept values: 50000 -> 50k, 16384 -> 16k, 1048576 -> 1M (exact on hover)."""
    for div, unit, step in ((1_000_000, "M", 1_000_000), (1000, "k", 1000),  # decimal sizes first
                            (1 << 20, "M", 1 << 18), (1 << 10, "k", 1 << 8)):  # then binary ones
        if abs(x) >= div and x % step == 0:
            return f"{x / div:g}{unit}"
    return f"{x:g}"


def sweep_chart(cid: str, sweep: Sweep, palette: Palette) -> Chart:
    panels = [("hit rate", lambda r: r.hit_rate()), ("mean TTFT (ms)", lambda r: r.summary.get("mean_ttft_ms")),
              ("requests/s", lambda r: r.summary.get("request_throughput"))]
    if any(r.summary.get("request_goodput") is not None for line in sweep.lines for _, rs in line.points for r in rs):
        panels.append(("goodput (req/s)", lambda r: r.summary.get("request_goodput")))  # where SLOs break
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.08 if len(panels) == 3 else 0.06)
    dash_count: dict[Combination, int] = {}
    for line in sweep.lines:
        i = dash_count.get(line.combination, 0)
        dash_count[line.combination] = i + 1
        name = line.combination.label + (f" ({line.suffix})" if line.suffix else "")
        xs = [x for x, _ in line.points]
        for col, (_, metric) in enumerate(panels, start=1):
            ys = [_mean([metric(r) for r in members]) for _, members in line.points]
            fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=plot_text(name), showlegend=col == 1,
                            legendgroup=plot_text(name),
                            line={"color": palette(line.combination), "dash": DASHES[i % len(DASHES)]},
                            row=1, col=col, hovertemplate="%{x}: %{y:.3g}<extra>" + plot_text(name) + "</extra>")
    _layout(fig, f"Across {sweep.param.label}", 420)
    ticks = sorted({x for line in sweep.lines for x, _ in line.points})
    fig.update_xaxes(title_text=plot_text(sweep.param.label), type="log" if sweep.param.log_x else "linear",
                     tickvals=ticks if len(ticks) <= 12 else None,
                     ticktext=[_tick(x) for x in ticks] if len(ticks) <= 12 else None)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=1, col=1)
    for col in range(2, len(panels) + 1):
        fig.update_yaxes(rangemode="tozero", row=1, col=col)
    replicates = any(len(members) > 1 for line in sweep.lines for _, members in line.points)
    return Chart(cid, f"sweep {sweep.param.key}", fig, 420, wide=True,
                 note="Points with several runs show their mean." if replicates else "")
