"""`kvbench report`: runs in, one self-contained HTML file (or the summary table as CSV / JSON) out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kvbench.errors import fail
from kvbench.fsutil import write_text_atomic

if TYPE_CHECKING:
    from kvbench.report.build import Report

FORMATS = ("html", "csv", "json")


def make_report(paths: list[Path], baseline: Path | None = None, fmt: str = "html",
                goodput: dict[str, float] | None = None) -> tuple[str, Report]:
    """Return (text, report); the heavy imports stay here so `kvbench --help` stays fast.

    ``goodput`` (SLOs in ms) re-judges every run against the same objectives, whatever each was replayed with.
    """
    from kvbench.report.build import build_report
    from kvbench.report.inputs import load_inputs
    from kvbench.report.page import render_html
    from kvbench.report.table import to_csv, to_json

    loaded = load_inputs(paths, baseline)
    if goodput:
        from kvbench.goodput import goodput_summary

        for run in loaded.runs + ([loaded.baseline] if loaded.baseline is not None else []):
            duration = run.summary.get("duration")
            duration = float(duration) if isinstance(duration, (int, float)) else float("nan")
            run.summary = {**run.summary, **goodput_summary(run.requests, goodput, duration)}
    report = build_report(loaded)
    if fmt == "html":
        return render_html(report), report
    return (to_csv(report.table) if fmt == "csv" else to_json(report.table)), report


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_command(
        paths: list[Path] = typer.Argument(
            ..., help="Run directories, or directories holding runs (searched for run.json)."),
        output: Path | None = typer.Option(
            None, "-o", "--output", help="Output file. Default: report.html for html, stdout for csv/json."),
        baseline: Path | None = typer.Option(
            None, "--baseline", help="Run to compare against; ratios cover runs of its workload."),
        fmt: str = typer.Option("html", "--format", help="html (dashboard), csv or json (summary table)."),
        goodput: str | None = typer.Option(
            None, help="Judge every run against these SLOs in ms, e.g. ttft:500,tpot:50 (default: each run's own "
                       "--goodput, if any)."),
    ) -> None:
        """Compare eviction x routing runs: a self-contained HTML dashboard, or the summary as CSV/JSON."""
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise fail(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
        from kvbench.goodput import parse_goodput

        slo = parse_goodput(goodput)
        from rich.console import Console

        err = Console(stderr=True)
        with err.status(f"reading runs and building the {fmt} report..."):
            text, report = make_report(paths, baseline, fmt, slo)
        for path, reason in report.skipped:
            err.print(f"kvbench: warning: skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
        if not report.runs:
            where = ", ".join(str(p) for p in paths)
            raise fail(f"{where}: no finished runs found (a run is a folder with run.json and requests.parquet); "
                       f"nothing written")
        if output is None and fmt != "html":
            sys.stdout.write(text)
            return
        target = output or Path("report.html")
        write_text_atomic(target, text)
        size = target.stat().st_size / 1e6
        err.print(f"wrote {target} ({len(report.runs)} runs, {len(report.charts)} charts, {size:.1f} MB)",
                  markup=False, highlight=False)
