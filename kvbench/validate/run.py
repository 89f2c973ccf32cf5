"""Plan and run a validation: the simulator once per combination, the real cluster ``repeats`` times, then
the record. Everything is checked before the first run; Ctrl-C keeps the finished runs and writes the
record over them.

Layout of the output directory::

    DIR/sim/<eviction>-<router>/            one simulated run (deterministic with its seed)
    DIR/real/<eviction>-<router>/rep<i>/    the real repeats (each starts from reset, verified caches)
    DIR/fidelity.json, DIR/fidelity.csv     the record (kvbench.validate.record)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvbench.errors import fail
from kvbench.fsutil import write_text_atomic
from kvbench.plan import make_plan
from kvbench.replay import run_replay
from kvbench.resolve import check_block_multiple, resolve
from kvbench.spec import ReplaySpec
from kvbench.results import RUN_FILE
from kvbench.validate import compare
from kvbench.validate.record import (
    FIDELITY_CSV,
    FIDELITY_FILE,
    RANKED,
    FidelityRecord,
    Setting,
    TargetConfig,
    ValidateConfig,
    to_csv,
)
from kvbench.validate.targets import Flags, ResolvedTarget, choose_profile, resolve_targets


@dataclass
class ValidateSpec:
    trace: Path
    target: str  # a cluster file, several (comma-separated, one per eviction policy), or URLs
    output: Path
    routers: list[str] = field(default_factory=lambda: ["round_robin"])
    repeats: int = 3
    profile: str | None = None  # None: the shipped CPU tiny-model profile if the cluster serves that model
    seed: int = 0
    router_params: dict[str, Any] = field(default_factory=dict)
    flags: Flags = field(default_factory=Flags)
    time_scale: float = 1.0
    max_requests: int | None = None
    warmup: int = 0
    scrape_interval_s: float | None = None  # every run, simulated and real, writes timeline.parquet
    history: str = "recorded"
    timeout_s: float = 600.0
    max_concurrency: int | None = None
    api: str = "completions"
    progress: bool = True
    overwrite: bool = False


@dataclass
class Planned:
    """One combination: its target's configuration, its simulated run and its real repeats."""

    label: str
    router: str
    target: ResolvedTarget
    sim: ReplaySpec
    real: list[ReplaySpec]

    @property
    def config(self) -> TargetConfig:
        return self.target.config


# A test hook: called as ``on_run(kind, label, index)`` before each run ("sim" or "real", the repeat index).
RunHook = Callable[[str, str, int], None]


def check_spec(spec: ValidateSpec) -> None:
    if spec.repeats < 1:
        raise fail(f"--repeats {spec.repeats}: must be at least 1 real run per combination")
    if not spec.routers:
        raise fail("--router: give at least one router")
    for flag, value in (("--cache-tokens", spec.flags.cache_tokens), ("--block-size", spec.flags.block_size),
                        ("--max-num-seqs", spec.flags.max_num_seqs),
                        ("--max-batched-tokens", spec.flags.max_batched_tokens)):
        if value is not None and value < 1:
            raise fail(f"{flag} {value}: must be positive")


def plan(spec: ValidateSpec, resolved: list[ResolvedTarget], profile: Setting) -> list[Planned]:
    """Routers x clusters (each cluster its own eviction policy)."""
    out = []
    for r in resolved:
        cfg = r.config
        for router in spec.routers:
            label = f"{cfg.eviction}-{router}"
            common: dict[str, Any] = {
                "trace": spec.trace, "router": router, "seed": spec.seed,
                "router_params": dict(spec.router_params), "block_size": int(cfg.block_size.value),
                "time_scale": spec.time_scale, "max_requests": spec.max_requests, "warmup": spec.warmup,
                "scrape_interval_s": spec.scrape_interval_s}
            sim = ReplaySpec(**common, output=spec.output / "sim" / label, target="sim",
                             eviction=cfg.sim_eviction, eviction_params=dict(cfg.eviction_params),
                             workers=cfg.workers,
                             cache_tokens=int(cfg.cache_tokens.value), profile=str(profile.value),
                             max_num_seqs=int(cfg.max_num_seqs.value),
                             max_batched_tokens=int(cfg.max_batched_tokens.value),
                             chunked_prefill=bool(cfg.chunked_prefill.value), name=f"sim/{label}",
                             progress=False)
            real = [ReplaySpec(**common, output=spec.output / "real" / label / f"rep{i}", target=r.text,
                               eviction=cfg.eviction, name=f"real/{label}/rep{i}", history=spec.history,
                               timeout_s=spec.timeout_s, max_concurrency=spec.max_concurrency,
                               reset_cache=True, model=spec.flags.model, api=spec.api, progress=spec.progress)
                    for i in range(spec.repeats)]
            out.append(Planned(label, router, r, sim, real))
    return out


def check_plan(planned: list[Planned], trace) -> None:
    """Every spec passes the checks `kvbench replay` makes, before anything runs."""
    for p in planned:
        make_plan(resolve(p.sim, trace), trace)  # its flags, block size and warm-up
        for s in p.real:
            resolve(s)
        check_block_multiple(int(p.config.block_size.value), f"{p.config.target}'s servers", trace)


def prepare_output(out: Path, overwrite: bool) -> bool:
    """Refuse a foreign or finished directory (unless ``overwrite``); returns whether ``out`` was created."""
    if out.exists() and not out.is_dir():
        raise fail(f"-o {out}: exists and is not a directory; choose a new output path")
    if out.is_dir() and any(out.iterdir()):
        if not (out / FIDELITY_FILE).exists():
            raise fail(f"-o {out}: exists and is not a kvbench validation directory (no {FIDELITY_FILE}); "
                       "choose a new output path")
        if not overwrite:
            raise fail(f"-o {out}: holds a validation ({FIDELITY_FILE}); pass --overwrite to replace it, or "
                       "choose a new -o")
        # only what a validation writes is removed: stale repeats of an earlier run must not be counted
        for sub in ("real", "sim"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in (FIDELITY_FILE, FIDELITY_CSV):
            (out / name).unlink(missing_ok=True)
        return False
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"-o {out}: cannot create the directory ({exc.strerror or exc})") from None
    return created


def _summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None when it is missing or was interrupted (left out of every statistic)."""
    try:
        config = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if config.get("interrupted") or not isinstance(config.get("summary"), dict):
        return None
    return config["summary"]


def _hygiene_notes(run_dir: Path) -> list[str]:
    try:
        config = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    records = (config.get("backend_config") or {}).get("cache_hygiene")
    if not isinstance(records, list):
        return [f"{run_dir.name}: the cache was not reset before the run ({records})"]
    bad = [r for r in records if isinstance(r, dict) and r.get("verified") is not True]
    return [f"cache reset of {r.get('url')} not verified ({r.get('action')}: {r.get('detail')}); the run may "
            "have started from a warm cache" for r in bad]


def build_record(spec: ValidateSpec, planned: list[Planned], profile: Setting, complete: bool,
                 interrupted: bool, extra_notes: list[str]) -> FidelityRecord:
    """The record from what is on disk under ``spec.output`` (complete runs only)."""
    from kvbench.results import versions
    from kvbench.trace import file_sha256

    out = spec.output
    notes = list(extra_notes)
    combos = []
    for p in planned:
        runs = compare.CombinationRuns(p.label, p.router, p.config.eviction, p.config.sim_eviction,
                                       p.config.target)
        for s in p.real:
            d = Path(s.output)
            summary = _summary(d)
            rel = str(d.relative_to(out))
            if summary is not None:
                runs.real.append((rel, summary))
                notes.extend(f"{rel}: {n}" for n in _hygiene_notes(d))
            elif (d / RUN_FILE).exists():
                notes.append(f"{rel}: interrupted, left out of the statistics")
        sim_summary = _summary(Path(p.sim.output))
        if sim_summary is not None:
            runs.sim = (str(Path(p.sim.output).relative_to(out)), sim_summary)
        combos.append(compare.combination_fidelity(runs))
    for c in combos:
        if any(c.real_failed) or c.sim_failed:
            notes.append(f"{c.label}: failed requests (real repeats: {c.real_failed}, simulator: "
                         f"{c.sim_failed}); metrics cover completed requests only")
    targets = [p.config for p in planned]
    unique = {t.target: t for t in targets}
    shapes = {(t.workers, t.cache_tokens.value, t.block_size.value) for t in unique.values()}
    if len(shapes) > 1:
        notes.append("the clusters differ in workers, KV capacity or block size; each combination is "
                     "simulated like its own cluster, but eviction policies are compared across different "
                     "hardware")
    notes.extend(t.eviction_note for t in unique.values() if t.eviction_note)
    rankings = [compare.ranking(combos, m) for m in RANKED]
    orders = compare.eviction_orders(combos)
    config = ValidateConfig(
        trace=str(spec.trace), trace_sha256=file_sha256(spec.trace) if spec.trace.exists() else None,
        routers=list(spec.routers), router_params=dict(spec.router_params), repeats=spec.repeats,
        seed=spec.seed, profile=profile, time_scale=spec.time_scale, max_requests=spec.max_requests,
        warmup=spec.warmup, history=spec.history, api=spec.api, targets=list(unique.values()))
    return FidelityRecord(complete=complete, interrupted=interrupted, config=config, combinations=combos,
                          rankings=rankings, eviction_orders=orders,
                          verdict=compare.verdict(combos, rankings, orders), notes=notes, versions=versions())


def write_record(out: Path, record: FidelityRecord) -> None:
    write_text_atomic(out / FIDELITY_CSV, to_csv(record))
    write_text_atomic(out / FIDELITY_FILE, record.to_json_text())  # last: its presence marks the directory


class _Steps:
    """One line per run on stderr ("[3/10] real lru-round_robin rep 2/3"), off with --no-progress."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console

        self.total, self.done, self.enabled = total, 0, enabled
        self.console = Console(stderr=True, highlight=False)

    def start(self, text: str) -> None:
        self.done += 1
        if self.enabled:
            self.console.print(f"validate [{self.done}/{self.total}] {text}", markup=False)


def run_validate(spec: ValidateSpec, on_run: RunHook | None = None) -> FidelityRecord:
    """Check, run and record; returns the record written to ``spec.output / fidelity.json``.

    On Ctrl-C the record of the runs finished so far is written (``complete: false``) and a
    KeyboardInterrupt whose message says what was kept is raised; nothing is kept when no run finished.
    """
    from kvbench.trace import read_trace

    check_spec(spec)
    try:
        trace = read_trace(spec.trace)
        resolved = resolve_targets(spec.target, spec.flags)
        profile = choose_profile(spec.profile, resolved)
        planned = plan(spec, resolved, profile)
        check_plan(planned, trace)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("stopped while checking the cluster; nothing written") from None
    out = Path(spec.output)
    created = prepare_output(out, spec.overwrite)
    steps = _Steps(len(planned) * (1 + spec.repeats), spec.progress)
    try:
        for p in planned:  # the simulator first: quick, and its errors surface before minutes of real runs
            steps.start(f"sim {p.label} ({p.config.sim_eviction} x {p.router}, {p.config.workers} workers)")
            if on_run is not None:
                on_run("sim", p.label, 0)
            run_replay(p.sim, trace)
        # repeat-major: every combination's repeat i runs before any repeat i + 1, so a drift of the machine
        # over time spreads over all combinations instead of biasing the last ones
        for i in range(spec.repeats):
            for p in planned:
                steps.start(f"real {p.label} rep {i + 1}/{spec.repeats} -> {p.target.text}")
                if on_run is not None:
                    on_run("real", p.label, i)
                run_replay(p.real[i], trace)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_keep_partial(spec, planned, profile, out, created)) from None
    record = build_record(spec, planned, profile, complete=True, interrupted=False, extra_notes=[])
    write_record(out, record)
    return record


def _keep_partial(spec: ValidateSpec, planned: list[Planned], profile: Setting, out: Path,
                  created: bool) -> str:
    """Write the record of the finished runs; returns what was kept, for the interrupt's one line."""
    runs = [s for p in planned for s in (p.sim, *p.real)]
    finished = [s for s in runs if _summary(Path(s.output)) is not None]
    if not finished:
        for sub in ("real", "sim"):
            shutil.rmtree(out / sub, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        return "no run had finished; nothing kept"
    record = build_record(spec, planned, profile, complete=False, interrupted=True,
                          extra_notes=["interrupted (Ctrl-C): the statistics cover the runs finished "
                                       "before it"])
    write_record(out, record)
    return (f"{len(finished)} of {len(runs)} runs finished; they and a partial {FIDELITY_FILE} "
            f"(complete: false) are in {out}")
