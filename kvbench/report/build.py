"""From loaded runs to everything the report shows: sections per workload, charts, notes, the table."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from kvbench.report import charts
from kvbench.report.inputs import LoadedInputs
from kvbench.report.model import ReportRun, workload_description
from kvbench.report.sweeps import find_sweeps
from kvbench.report.table import ordered_runs, summary_table
from kvbench.report.timeline_chart import timeline_chart


@dataclass
class WorkloadSection:
    key: str
    label: str
    runs: list[ReportRun]
    charts: list[charts.Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class Report:
    runs: list[ReportRun]
    table: pd.DataFrame
    sections: list[WorkloadSection]
    notes: list[str]
    skipped: list[tuple[str, str]]
    baseline: ReportRun | None
    palette: charts.Palette
    fidelity: list = field(default_factory=list)  # kvbench.report.fidelity.FidelityInput

    @property
    def charts(self) -> list[charts.Chart]:
        return [c for s in self.sections for c in s.charts]


def _heatmaps(runs: list[ReportRun]) -> list:
    """The eviction x router heatmap of the setting (workers, cache, load, target) with the most combinations;
    other settings are compared in the sweep charts."""
    from kvbench.report.seeds import setting_groups

    groups = [g for g in setting_groups(runs) if len({r.combination for r in g[1]}) > 1]
    if not groups:
        return []
    label, members = max(groups, key=lambda g: len({r.combination for r in g[1]}))
    title = "Eviction × router" + (f" ({label})" if len(setting_groups(runs)) > 1 and label else "")
    return [lambda cid: charts.heatmap_chart(cid, title, members)]


def _section(index: int, key: str, runs: list[ReportRun], palette: charts.Palette) -> WorkloadSection:
    section = WorkloadSection(key, runs[0].workload_label, runs, description=workload_description(runs[0].config))
    prefix = f"w{index}"
    completed = [r for r in runs if not r.ok.empty]
    partial = [r for r in runs if r.n_failed and not r.ok.empty]
    for run in runs:
        if run.ok.empty:
            section.notes.append(f"{run.name}: no completed requests ({len(run.requests)} rows, "
                                 f"{run.n_failed} failed or cancelled); it has no latency curves.")
        elif run.n_failed and len(partial) <= 3:
            section.notes.append(f"{run.name}: {run.n_failed} of {len(run.requests)} requests failed or were "
                                 "cancelled; latencies cover completed requests only (see Failed requests).")
        for note in run.notes:
            section.notes.append(f"{run.name}: {note}")
    section.notes.extend(_belady_below_online(runs))
    if len(partial) > 3:
        worst = max(partial, key=lambda r: r.n_failed / len(r.requests))
        section.notes.append(f"{len(partial)} runs have failed or cancelled requests (at most {worst.n_failed} of "
                             f"{len(worst.requests)}, in {worst.name}); latencies cover completed requests only "
                             "(see Failed requests).")
    makers = [*_heatmaps(runs),
        lambda cid: charts.hit_rate_chart(cid, runs, palette),
        lambda cid: charts.ttft_chart(cid, runs, palette),
        lambda cid: charts.throughput_chart(cid, runs, palette),
        lambda cid: charts.goodput_chart(cid, runs, palette),
        lambda cid: charts.cdf_chart(cid, completed, palette, "ttft_s", "TTFT"),
        lambda cid: charts.cdf_chart(cid, completed, palette, "e2e_s", "end-to-end latency"),
        lambda cid: charts.hit_rate_over_time_chart(cid, runs, palette),
        lambda cid: charts.worker_load_chart(cid, runs),
    ]
    for make in makers:
        chart = make(f"{prefix}-c{len(section.charts)}")
        if chart is not None:
            section.charts.append(chart)
    state, state_notes = timeline_chart(f"{prefix}-c{len(section.charts)}", runs)  # --scrape-interval runs
    section.charts.extend([state] if state is not None else [])
    section.notes.extend(state_notes)
    if not any(c.title == "hit rate over time" for c in section.charts):
        section.notes.append("No run reports per-request cached tokens, so there is no hit rate over time.")
    for sweep in find_sweeps(runs):
        section.charts.append(charts.sweep_chart(f"{prefix}-c{len(section.charts)}", sweep, palette))
    return section


def _belady_below_online(runs: list[ReportRun]) -> list[str]:
    """Where the offline policy's hit rate is below an online policy's under the same router and settings,
    say so and why: belady bounds a policy only under the same routing (see docs/belady.md)."""
    groups: dict[tuple, list[ReportRun]] = {}
    for run in runs:
        key = (run.combination.router, run.cache_tokens, run.n_workers, run.config.get("block_size"),
               run.config.get("seed"), run.time_scale)
        groups.setdefault(key, []).append(run)
    notes = []
    for members in groups.values():
        offline = [r for r in members if r.combination.eviction == "belady" and r.hit_rate() is not None]
        online = [r for r in members if r.combination.eviction != "belady" and r.hit_rate() is not None]
        for b in offline:
            best = max(online, key=lambda r: r.hit_rate(), default=None)
            if best is not None and best.hit_rate() > b.hit_rate() + 1e-9:
                notes.append(
                    f"{b.name}: the offline policy belady ({b.hit_rate():.4f}) is below {best.name} "
                    f"({best.hit_rate():.4f}) under the same router. belady is an upper bound for one cache in "
                    f"replay order and, with several workers, for the routing it planned its futures on; here the "
                    f"router sent requests elsewhere than under {best.combination.eviction} (docs/belady.md).")
    return notes


def build_report(loaded: LoadedInputs) -> Report:
    runs = ordered_runs(loaded.runs)
    palette = charts.Palette([r.combination for r in runs])
    groups: dict[str, list[ReportRun]] = {}
    for run in runs:
        groups.setdefault(run.workload_key, []).append(run)
    sections = [_section(i, key, members, palette) for i, (key, members) in enumerate(groups.items())]
    notes = []
    if not runs:
        notes.append("No runs found: none of the inputs holds a run.json with its requests.parquet. "
                     "Produce runs with `kvbench replay` and pass their directories.")
    if len(sections) > 1:
        notes.append(f"These {len(runs)} runs replay {len(sections)} different workloads; each has its own "
                     "section below, and runs are only compared within a workload.")
    if loaded.baseline is not None:
        others = sum(1 for r in runs if r.workload_key != loaded.baseline.workload_key)
        note = f"Ratios are against the baseline run {loaded.baseline.name}."
        if others:
            note += f" {others} run(s) of other workloads have no ratios."
        notes.append(note)
    return Report(runs=runs, table=summary_table(runs, loaded.baseline), sections=sections, notes=notes,
                  skipped=loaded.skipped, baseline=loaded.baseline, palette=palette, fidelity=loaded.fidelity)
