"""The "server state over time" chart: KV-cache usage and running/waiting requests per worker, from the
timeline.parquet of runs replayed with ``--scrape-interval``.

A menu picks the run. A server run is drawn with the simulated runs of the same combination (what
`kvbench validate` writes), so the simulator's state can be read against the server's own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
from plotly.subplots import make_subplots

from kvbench.errors import KvbenchError
from kvbench.resolve import SERVER_EVICTION
from kvbench.report.charts import Chart, _layout, plot_text
from kvbench.report.model import ReportRun
from kvbench.timeline import read_timeline

# `kvbench validate` simulates a server's own eviction as lru (kvbench/validate/targets.py)
_SIMULATED_AS = {SERVER_EVICTION: "lru"}
PANELS = (("kv_cache_usage", "KV-cache usage", "%{y:.1%}"), ("running", "running requests", "%{y:g} running"),
          ("waiting", "waiting requests", "%{y:g} waiting"))
DASH = {"server": "solid", "simulator": "dash"}


def _pair_key(run: ReportRun) -> tuple:
    """Runs that replay one combination on one setting: a server run and the simulator's model of it."""
    eviction = _SIMULATED_AS.get(run.combination.eviction, run.combination.eviction)
    return eviction, run.combination.router, run.n_workers, run.time_scale


def load_timelines(runs: list[ReportRun]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each run's timeline by run name (runs without one are left out) and notes: a damaged file is skipped
    with a note, and failed scrapes are counted."""
    found: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    for run in runs:
        try:
            df = read_timeline(run.path)
        except KvbenchError as exc:
            notes.append(f"{run.name}: timeline skipped: {exc}")
            continue
        if df is None or df.empty:
            continue
        errors = df["error"].dropna()
        if len(errors):
            notes.append(f"{run.name}: {len(errors)} of {len(df)} metric scrapes have no values "
                         f"(first: {errors.iloc[0]}); the timeline has gaps there.")
        found[run.name] = df
    return found, notes


def _views(runs: list[ReportRun], have: dict[str, pd.DataFrame]) -> list[list[ReportRun]]:
    """Menu entries: each server run with the simulated runs of its combination; simulated runs no server
    run pairs with get an entry of their own."""
    with_timeline = [r for r in runs if r.name in have]
    sims: dict[tuple, list[ReportRun]] = {}
    for run in with_timeline:
        if run.target_kind == "sim":
            sims.setdefault(_pair_key(run), []).append(run)
    paired: set[str] = set()
    views = []
    for run in with_timeline:
        if run.target_kind == "sim":
            continue
        partners = sims.get(_pair_key(run), [])
        paired.update(s.name for s in partners)
        views.append([run, *partners])
    views.extend([s] for group in sims.values() for s in group if s.name not in paired)
    return views


def timeline_chart(cid: str, runs: list[ReportRun]) -> tuple[Chart | None, list[str]]:
    """The chart (None when no run has a timeline) and the section's notes about timelines."""
    have, notes = load_timelines(runs)
    views = _views(runs, have)
    if not views:
        return None, notes
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=[plot_text(title) for _, title, _ in PANELS])
    spans: list[tuple[str, int, int]] = []
    for view in views:
        start = len(fig.data)
        for run in view:
            _add_run(fig, run, have[run.name], visible=not spans)
        spans.append((" vs ".join(r.name for r in view), start, len(fig.data)))
    title = "Server state over time: "
    buttons = [{"label": plot_text(label), "method": "update",
                "args": [{"visible": [start <= i < end for i in range(len(fig.data))]},
                         {"title.text": plot_text(title + label)}]} for label, start, end in spans]
    _layout(fig, title + spans[0][0], 640)
    fig.update_xaxes(title_text="time since the run's start (s)", row=3, col=1)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=1, col=1)
    for row in (2, 3):
        fig.update_yaxes(rangemode="tozero", row=row, col=1)
    if len(spans) > 1:
        fig.update_layout(updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right",
                                        "y": 1.1, "yanchor": "top", "showactive": True}], margin={"t": 90})
    sources = {s for df in have.values() for s in df["source"].unique()}
    note = ("Solid lines: the servers' /metrics; dashed: the simulator's state. " if len(sources) > 1 else "")
    if len(spans) > 1:
        note += "Pick a run in the menu at the top right."
    return Chart(cid, "server state over time", fig, 640, wide=True, note=note.strip()), notes


def _add_run(fig, run: ReportRun, df: pd.DataFrame, visible: bool) -> None:
    """Three lines per worker (usage, running, waiting): colour by worker, dash by source."""
    workers = sorted(int(w) for w in df["worker"].unique())
    n = max(len(run.worker_names), (workers[-1] + 1) if workers else 0, 2)
    colours = plotly.colors.sample_colorscale("Viridis", np.linspace(0.0, 0.9, n))
    for w in workers:
        mine = df[df["worker"] == w].sort_values("t_s")
        source = str(mine["source"].iloc[0])
        worker = run.worker_names[w] if w < len(run.worker_names) else f"worker {w}"
        label = plot_text(f"{worker} ({source}, {run.name})")
        for row, (column, _, hover) in enumerate(PANELS, start=1):
            fig.add_scatter(x=mine["t_s"], y=mine[column], mode="lines", name=label, legendgroup=label,
                            showlegend=row == 1, visible=visible, row=row, col=1,
                            line={"width": 1.5, "color": colours[w % len(colours)],
                                  "dash": DASH.get(source, "dot")},
                            hovertemplate="t=%{x:.2f} s: " + hover + "<extra>" + label + "</extra>")
