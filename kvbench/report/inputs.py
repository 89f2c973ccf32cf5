"""Turn the paths on the command line into runs, keeping a note for every path that gave none.

A path may be a run directory, its run.json, or any directory holding runs (a sweep's output), which is
searched for run.json. An empty or unreadable input becomes a labelled line in the report, never a crash:
the other runs are still worth seeing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.errors import KvbenchError, fail
from kvbench.report.model import ReportRun, report_run
from kvbench.results import REQUESTS_FILE, RUN_FILE, read_run


@dataclass
class LoadedInputs:
    runs: list[ReportRun]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    baseline: ReportRun | None = None
    fidelity: list = field(default_factory=list)  # kvbench.report.fidelity.FidelityInput: `kvbench validate`


def _hidden(path: Path, root: Path) -> bool:
    """Temporary siblings written by atomic_dir start with '.'; never report half-written runs."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_run_dirs(path: Path) -> list[Path]:
    if path.is_file():
        return [path.parent] if path.name == RUN_FILE else []
    if (path / RUN_FILE).is_file():
        return [path]
    found = [p.parent for p in path.rglob(RUN_FILE) if not _hidden(p.parent, path)]
    return sorted(set(found), key=_natural)


def _natural(path: Path) -> list:
    """Sort lru-16384 before lru-131072: a sweep's runs come out in the order of the swept value."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", str(path))]


def _disambiguate(runs: list[ReportRun]) -> None:
    """Runs of one sweep per directory share names (lru-round_robin in every cache size); tell them apart
    by their parent directory, and by a counter if that is not enough."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.name} ({run.path.parent.name})"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"


def load_inputs(paths: list[Path], baseline: Path | None = None) -> LoadedInputs:
    loaded = LoadedInputs(runs=[])
    by_dir: dict[Path, ReportRun] = {}
    for raw in paths:
        if not raw.exists():
            raise fail(f"{raw}: no such file or directory; pass result directories written by `kvbench replay`")
        dirs = find_run_dirs(raw)
        if not dirs:
            loaded.skipped.append((str(raw), f"no runs found (no {RUN_FILE} below it)"))
            continue
        for d in dirs:
            key = d.resolve()
            if key in by_dir:
                continue
            if not (d / REQUESTS_FILE).exists():
                loaded.skipped.append((str(d), f"incomplete run: {RUN_FILE} without {REQUESTS_FILE}"))
                continue
            try:
                result = read_run(d)
            except KvbenchError as exc:
                loaded.skipped.append((str(d), str(exc)))
                continue
            run = report_run(result)
            by_dir[key] = run
            loaded.runs.append(run)
    if baseline is not None:
        loaded.baseline = _baseline(baseline, by_dir, loaded)
    _disambiguate(loaded.runs)
    from kvbench.report.fidelity import find_fidelity

    loaded.fidelity, unreadable = find_fidelity(paths)
    loaded.skipped.extend(unreadable)
    return loaded


def _baseline(path: Path, by_dir: dict[Path, ReportRun], loaded: LoadedInputs) -> ReportRun:
    dirs = find_run_dirs(path) if path.exists() else []
    if len(dirs) != 1:
        what = "no run" if not dirs else f"{len(dirs)} runs"
        raise fail(f"--baseline {path}: found {what}; pass exactly one run directory (with {RUN_FILE})")
    key = dirs[0].resolve()
    if key in by_dir:
        return by_dir[key]
    try:
        result = read_run(dirs[0])
    except KvbenchError as exc:
        raise fail(f"--baseline {path}: {exc}") from None
    run = report_run(result)
    by_dir[key] = run
    loaded.runs.insert(0, run)
    return run
