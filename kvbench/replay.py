"""`kvbench replay`: one trace x one (eviction, router) combination against a target.

The target is the simulator (``sim``), comma-separated OpenAI-compatible URLs, or a cluster.json written by
``kvbench cluster up``. Both backends return rows in the result schema; this module adds the shared
configuration, computes the summary once and writes the run atomically. Comma lists of ``--eviction`` and
``--router`` run the cross product as a sweep (one result directory per combination, in parallel processes
for the simulator).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import typer

from kvbench.errors import KvbenchError, fail, interrupted
from kvbench.params import parse_key_values


MAX_SIM_WORKERS = 1024


@dataclass
class ReplaySpec:
    trace: Path
    output: Path
    target: str = "sim"  # "sim" | "http://a,http://b" | path/to/cluster.json
    eviction: str | None = None  # None: the target's own (simulator: lru; a real cluster: what it runs)
    router: str = "round_robin"
    seed: int = 0
    workers: int = 4  # simulator only; the HTTP path uses one worker per URL
    cache_tokens: int | None = None  # per-worker KV capacity in tokens; None = unbounded (simulator)
    block_size: int = 16
    router_params: dict[str, Any] = field(default_factory=dict)
    eviction_params: dict[str, Any] = field(default_factory=dict)
    profile: str = "default"  # simulator latency profile: built-in name or a TOML path
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    time_scale: float = 1.0  # multiply trace arrival times (0.5 = twice as fast)
    max_requests: int | None = None
    # the first requests (whole sessions, see trace.warmup_mask) run before a barrier and are in no metric;
    # they count towards max_requests
    warmup: int = 0
    name: str | None = None
    # HTTP path
    history: str = "recorded"  # recorded | generated (closed-loop sessions)
    timeout_s: float = 600.0
    max_concurrency: int | None = None
    reset_cache: bool = True
    model: str | None = None
    api: str = "completions"  # completions | chat
    progress: bool = True
    chunked_prefill: bool = True  # simulator: split long prompts across steps (vLLM v1's default)
    goodput: dict[str, float] = field(default_factory=dict)  # SLOs in ms: ttft, tpot, e2el
    headers: dict[str, str] = field(default_factory=dict)  # HTTP: sent with every request
    api_key: str | None = None  # HTTP: sent as "Authorization: Bearer KEY"
    extra_body: dict[str, Any] = field(default_factory=dict)  # HTTP: merged into every request body
    scrape_interval_s: float | None = None  # write timeline.parquet: server (or simulated) state every N s

    @property
    def is_sim(self) -> bool:
        return self.target == "sim"

    def to_config(self) -> dict[str, Any]:
        from kvbench.http.request_options import redacted

        d = asdict(self)
        d["trace"] = str(self.trace)
        d["output"] = str(self.output)
        d.pop("progress", None)
        d.update(redacted(self.headers, self.api_key))  # names only: secrets never reach run.json
        return d


@dataclass
class BackendResult:
    """What a backend hands back: rows in the result schema, worker names, extra config and hit rates."""

    rows: pd.DataFrame
    workers: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    hit_rates: dict[str, float | None] = field(default_factory=dict)
    interrupted: bool = False
    block_size: int | None = None  # the block size the backend really used (a server's own), if known
    timeline: pd.DataFrame | None = None  # --scrape-interval: rows of kvbench.timeline.TIMELINE_SCHEMA




# ----------------------------------------------------------------------------------------- validation
def validate_spec(spec: ReplaySpec) -> None:
    """Check every value against its flag before any work starts (one line naming the flag)."""
    from kvbench.cache import POLICIES
    from kvbench.routing import ROUTERS, RouterConfig, make_router

    checks = [
        (spec.block_size >= 1, f"--block-size {spec.block_size}: must be a positive number of tokens"),
        (spec.cache_tokens is None or spec.cache_tokens >= spec.block_size,
         f"--cache-tokens {spec.cache_tokens}: must hold at least one block ({spec.block_size} tokens); "
         f"omit it for an unbounded cache"),
        (spec.max_batched_tokens >= 1, f"--max-batched-tokens {spec.max_batched_tokens}: must be >= 1"),
        (spec.max_num_seqs >= 1, f"--max-num-seqs {spec.max_num_seqs}: must be >= 1"),
        (spec.time_scale > 0, f"--time-scale {spec.time_scale}: must be > 0 (0.5 replays twice as fast)"),
        (spec.max_requests is None or spec.max_requests >= 1, f"--max-requests {spec.max_requests}: must be >= 1"),
        (spec.warmup >= 0, f"--warmup {spec.warmup}: must be >= 0 (the number of warm-up requests)"),
        (spec.history in ("recorded", "generated"), f"--history {spec.history}: use 'recorded' or 'generated'"),
        (spec.api in ("completions", "chat"), f"--api {spec.api}: use 'completions' or 'chat'"),
        (spec.timeout_s > 0, f"--timeout {spec.timeout_s}: must be positive"),
        (spec.max_concurrency is None or spec.max_concurrency >= 1,
         f"--max-concurrency {spec.max_concurrency}: must be at least 1"),
    ]
    if spec.is_sim:
        checks.append((not spec.headers and not spec.extra_body,
                       "--header/--extra-body: the simulator sends no requests; use them with a real --target"))
        checks.append((spec.workers >= 1, f"--workers {spec.workers}: the simulator needs at least one worker"))
        checks.append((spec.workers <= MAX_SIM_WORKERS,
                       f"--workers {spec.workers}: the simulator takes at most {MAX_SIM_WORKERS} workers"))
    for ok, message in checks:
        if not ok:
            raise fail(message)
    from kvbench.goodput import check_goodput
    from kvbench.http.request_options import check_extra_body, check_headers

    check_goodput(spec.goodput)
    from kvbench.timeline import check_interval

    check_interval(spec.scrape_interval_s)
    check_headers(spec.headers)
    check_extra_body(spec.extra_body)
    if spec.router not in ROUTERS:
        raise fail(f"--router {spec.router}: unknown router (known: {', '.join(ROUTERS)})")
    if spec.eviction not in POLICIES and (spec.is_sim or spec.eviction != SERVER_EVICTION):
        raise fail(f"--eviction {spec.eviction}: unknown eviction policy (known: {', '.join(POLICIES)})")
    make_router(spec.router, RouterConfig(workers=max(spec.workers, 1), block_size=spec.block_size,
                                          seed=spec.seed, params=dict(spec.router_params)))
    if spec.is_sim:
        from kvbench.cache import make_policy, policy_params
        from kvbench.sim.latency import load_profile

        params = policy_params(spec.eviction, spec.eviction_params)  # errors name the flag and parameter
        make_policy(spec.eviction, seed=spec.seed, future=[[]], **params)
        load_profile(spec.profile)


def check_cache_fits(spec: ReplaySpec, trace) -> None:
    """Refuse a simulated cache that cannot hold the largest request: every such request would fail."""
    import numpy as np

    from kvbench.trace import replay_order

    if not spec.is_sim or spec.cache_tokens is None:
        return
    df = trace.df if spec.max_requests is None else trace.df.iloc[replay_order(trace.df)[: spec.max_requests]]
    # KV slots as vLLM allocates them: the prompt and every generated token but the last
    slots = df["input_tokens"].to_numpy() + np.maximum(df["output_tokens"].to_numpy(), 1) - 1
    need = -(-slots // spec.block_size) * spec.block_size
    # vLLM (and the simulator) set one block aside as the null block
    capacity = (spec.cache_tokens // spec.block_size - 1) * spec.block_size
    too_big = int((need > capacity).sum())
    if not too_big:
        return
    fits_all = int(need.max()) + spec.block_size
    hint = (f"the largest needs {int(need.max())} tokens of KV cache plus vLLM's null block "
            f"(use --cache-tokens {fits_all} or more to fit all)")
    if too_big == len(df):
        raise fail(f"--cache-tokens {spec.cache_tokens}: no request fits a worker's KV cache; {hint}")
    # A few oversized requests are what a server with max_model_len = its KV capacity would refuse: they are
    # replayed as failures, said here, in the run's last line and in the report.
    print(f"kvbench: warning: --cache-tokens {spec.cache_tokens}: {too_big} of {len(df)} requests need more KV "
          f"cache than a worker holds and will fail; {hint}", file=sys.stderr)


def replayed_warmup(spec: ReplaySpec, trace):
    """The warm-up mask over the replayed rows (``_sub_trace``'s order); refuses a warm-up that leaves
    nothing to measure."""
    from kvbench.trace import warmup_mask

    replayed = _sub_trace(trace, spec)
    mask = warmup_mask(replayed.df, spec.warmup)
    if spec.warmup and mask.all():
        n = len(replayed)
        what = f"the trace has {n} requests" if spec.max_requests is None else f"--max-requests replays {n}"
        if spec.warmup < n:
            what += f", and the sessions of its first {spec.warmup} (warm-up takes whole sessions) hold all"
        raise fail(f"--warmup {spec.warmup}: {what}; use a smaller --warmup so some requests are measured")
    return mask


def check_block_size(spec: ReplaySpec, trace) -> None:
    """The simulator re-blocks the trace's hash ids, so its block size must be a multiple of the trace's."""
    if spec.is_sim and spec.block_size % trace.block_size:
        raise fail(f"--block-size {spec.block_size}: must be a multiple of the trace's block size "
                   f"{trace.block_size} ({spec.trace}); use e.g. --block-size {trace.block_size}")


SERVER_EVICTION = "vllm"  # a real server's built-in eviction (no kvbench plugin installed)


def resolve_evictions(eviction: str | None, target: str) -> list[str]:
    """The eviction label(s) of a replay. A real cluster's policy is fixed when it starts, so the HTTP path
    takes it from cluster.json (or 'vllm', the server's own, for bare URLs) and refuses a contradiction."""
    if target == "sim":
        return split_list(eviction or "lru", "--eviction")
    from kvbench.http.targets import parse_target

    running = parse_target(target).eviction or SERVER_EVICTION
    if eviction is None:
        return [running]
    asked = split_list(eviction, "--eviction")
    if len(asked) > 1:
        raise fail(f"--eviction {eviction}: a real cluster runs one policy, chosen at `kvbench cluster up`; "
                   f"start one cluster per policy")
    if "://" not in target and asked[0] != running:
        raise fail(f"--eviction {asked[0]}: {target} runs '{running}'; omit --eviction or start a cluster with it")
    return asked


# ------------------------------------------------------------------------------------- one replay
def _sub_trace(trace, spec: ReplaySpec):
    """The trace restricted to the requests replayed (``--max-requests`` keeps the first in replay order)."""
    from kvbench.trace import Trace, replay_order

    if spec.max_requests is None or spec.max_requests >= len(trace):
        return trace
    keep = replay_order(trace.df)[: spec.max_requests]
    return Trace(df=trace.df.iloc[sorted(keep.tolist())].reset_index(drop=True), meta=trace.meta, path=trace.path)


def run_backend(spec: ReplaySpec, trace) -> BackendResult:
    if spec.is_sim:
        from kvbench.sim.run import run_sim

        return run_sim(spec, trace)
    try:
        from kvbench.http.replay import run_http
    except ImportError as exc:
        raise fail(f"--target {spec.target}: the HTTP backend cannot be loaded ({exc})") from None
    return run_http(spec, trace)


def assemble_config(spec: ReplaySpec, trace, result: BackendResult, summary: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to reproduce and compare the run; no wall-clock values, so equal seeds give equal
    files."""
    from kvbench.results import versions
    from kvbench.trace import file_sha256

    trace_info: dict[str, Any] = {"path": str(spec.trace), "meta": asdict(trace.meta), "requests": len(trace)}
    trace_info["sha256"] = file_sha256(spec.trace) if Path(spec.trace).exists() else None
    return {
        **spec.to_config(),
        "name": spec.name or Path(spec.output).name,
        "trace_file": trace_info,
        "workers": list(result.workers),
        "versions": versions(),
        "backend": "sim" if spec.is_sim else "http",
        "backend_config": result.config,
        "interrupted": bool(result.interrupted),
        "summary": summary,
    }


def _check_output(out: Path) -> None:
    """Refuse a foreign directory and create the output directory now, so a bad path fails before the run."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "run.json").exists()
                                              and not (out / "requests.parquet").exists())):
        raise fail(f"-o {out}: exists and is not a kvbench result directory; choose a new output path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"-o {out}: cannot create the result directory ({exc.strerror or exc})") from None


def run_replay(spec: ReplaySpec, trace=None) -> Path:
    """Run one combination and write ``requests.parquet`` + ``run.json`` into ``spec.output``.

    On Ctrl-C the rows gathered so far are written (unfinished requests as ``cancelled``) and the
    interrupt is re-raised once the files are in place.
    """
    from kvbench.results import compute_summary, write_run
    from kvbench.trace import ideal_hit_rate, read_trace

    if spec.eviction is None:
        spec = replace(spec, eviction="lru" if spec.is_sim else resolve_evictions(None, spec.target)[0])
    if not spec.is_sim and spec.eviction_params:
        # a real server's policy and its parameters are fixed when it starts: taking them here would record
        # parameters that never ran
        raise fail("--eviction-param: a real cluster's eviction parameters are set when it starts "
                   "(`kvbench cluster up --eviction-param ...`); drop them here")
    validate_spec(spec)
    if spec.is_sim:  # record the parameters the policy really ran with (typed like its defaults)
        from kvbench.cache import policy_params

        spec = replace(spec, eviction_params=policy_params(spec.eviction, spec.eviction_params))
    if trace is None:
        trace = read_trace(spec.trace)
    check_block_size(spec, trace)
    check_cache_fits(spec, trace)
    warm = replayed_warmup(spec, trace)
    out = Path(spec.output)
    created = not out.exists()
    _check_output(out)
    try:
        result = run_backend(spec, trace)
    except BaseException:
        if created:  # leave nothing behind for a run that produced nothing
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    replayed = _sub_trace(trace, spec)
    ideal_bs = result.block_size or spec.block_size
    ideal_note = None
    if ideal_bs % replayed.block_size:
        ideal = None
        ideal_note = (f"ideal hit rate not computed: the block size used ({ideal_bs}) is not a multiple of the "
                      f"trace's ({replayed.block_size})")
    else:
        ideal = ideal_hit_rate(replayed, ideal_bs, warm)
    extra: dict[str, float | None] = {"ideal": ideal, "server_counters": None, "cache_counters": None}
    extra.update(result.hit_rates)
    rows = result.rows.reset_index(drop=True)
    summary = compute_summary(rows, len(result.workers), extra, spec.goodput)
    config = assemble_config(spec, replayed, result, summary)
    if result.block_size and result.block_size != spec.block_size:
        # the servers' own block size is what ran; reports group runs by this value
        config["requested_block_size"] = spec.block_size
        config["block_size"] = result.block_size
    config["ideal_block_size"] = ideal_bs
    if ideal_note:
        config["ideal_note"] = ideal_note
    write_run(out, rows, config, timeline=result.timeline)
    if result.interrupted:
        raise KeyboardInterrupt
    return out


# ------------------------------------------------------------------------------------------ sweep
@dataclass
class Combination:
    eviction: str
    router: str
    spec: ReplaySpec
    rate_scale: float | None = None  # a step of a --rate-scale ladder

    @property
    def label(self) -> str:
        base = f"{self.eviction}-{self.router}"
        return base if self.rate_scale is None else f"{base}/rate-x{self.rate_scale:g}"


def split_list(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",")]
    if not items or any(not v for v in items):
        raise fail(f"{flag} {value!r}: give one name or a comma list without empty items")
    if len(set(items)) != len(items):
        raise fail(f"{flag} {value!r}: a name is repeated")
    return items


def plan_sweep(base: ReplaySpec, evictions: list[str], routers: list[str],
               rate_scales: list[float] | None = None) -> list[Combination]:
    """One spec per (eviction, router[, rate scale]), writing to ``<output>/<eviction>-<router>[/rate-xS]``.

    A rate scale S replays the trace's arrivals S times as fast (time scale divided by S): a load ladder on
    one fixed trace, so each combination's saturation point shows in the report's sweep charts.
    """
    combos = []
    for ev, rt, scale in itertools.product(evictions, routers, rate_scales or [None]):
        c = Combination(ev, rt, base, scale)
        spec = replace(base, eviction=ev, router=rt, output=Path(base.output) / c.label,
                       name=f"{base.name}/{c.label}" if base.name else c.label, progress=False,
                       time_scale=base.time_scale if scale is None else base.time_scale / scale)
        combos.append(Combination(ev, rt, spec, scale))
    return combos


def parse_rate_scales(text: str | None, flag: str = "--rate-scale") -> list[float] | None:
    """``"0.5,1,2,4"`` -> multipliers of the trace's arrival rate; one line naming --rate-scale otherwise."""
    if text is None:
        return None
    out = []
    for item in split_list(text, flag):
        try:
            value = float(item)
        except ValueError:
            raise fail(f"{flag} {text}: {item!r} is not a number (e.g. {flag} 0.5,1,2,4)") from None
        if not math.isfinite(value) or value <= 0:
            raise fail(f"{flag} {text}: {item!r} must be a positive multiplier of the trace's arrival rate")
        out.append(value)
    if len(set(out)) != len(out):
        raise fail(f"{flag} {text}: a multiplier is repeated")
    return out


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends, then act on them.

    The Python-level handler runs in the main thread whichever thread the OS delivered the signal to, so a
    thread signal mask cannot defer it; swapping the handlers for a recorder can.
    """
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda s, _f: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if caught:
            handler = old[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            else:
                raise KeyboardInterrupt


def _child_init() -> None:
    # The parent owns Ctrl-C; a terminated child raises SystemExit so atomic writes clean up after themselves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _child_run(spec: ReplaySpec) -> tuple[str, str | None, dict[str, Any] | None]:
    import json

    try:
        out = run_replay(spec)
        summary = json.loads((out / "run.json").read_text())["summary"]
    except KvbenchError as exc:
        return str(spec.output), str(exc), None
    except OSError as exc:
        where = exc.filename or spec.output
        return str(spec.output), f"{where}: {exc.strerror or exc}", None
    except Exception as exc:  # noqa: BLE001 - a sweep reports a failed combination, never a traceback
        return str(spec.output), f"replay failed ({type(exc).__name__}: {exc})", None
    return str(spec.output), None, summary


def _remove_partial(combos: list[Combination]) -> None:
    for c in combos:
        out = Path(c.spec.output)
        if out.is_dir() and not (out / "run.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():
            for tmp in out.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def run_sweep(combos: list[Combination], jobs: int, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run combinations (in ``jobs`` processes for the simulator); finished ones stay on Ctrl-C."""
    import multiprocessing

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    for c in combos:
        validate_spec(c.spec)
    created: list[Path] = []
    try:
        for c in combos:
            out = Path(c.spec.output)
            if not out.exists():
                created.append(out)
            _check_output(out)
    except KvbenchError:
        for out in created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not progress)
    by_out = {str(c.spec.output): c for c in combos}
    pool = None
    try:
        with bar:
            task = bar.add_task(f"sweep of {len(combos)} combinations", total=len(combos))
            if jobs <= 1:
                for c in combos:
                    _, err, summary = _child_run(c.spec)
                    _collect(c, err, summary, results, errors, bar, task)
            else:
                # Ctrl-C / SIGTERM wait until every worker has its start-up data: a signal that cut the parent's
                # write to a starting child would leave it to die with a traceback on a half-read pipe.
                with _signals_deferred():
                    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_child_init)
                for out, err, summary in pool.imap_unordered(_child_run, [c.spec for c in combos]):
                    _collect(by_out[out], err, summary, results, errors, bar, task)
                pool.close()
                pool.join()
                pool = None
    except KeyboardInterrupt:
        if pool is not None:
            pool.terminate()
            pool.join()
        _remove_partial([c for c in combos if c.label not in results])
        raise
    if errors:
        _remove_partial([c for c in combos if c.label not in results])
        raise fail(errors[0])
    return results


def _collect(c: Combination, err: str | None, summary, results, errors, bar, task) -> None:
    if err is not None:
        errors.append(f"{c.label}: {err}")
    else:
        results[c.label] = summary
    bar.update(task, advance=1, description=f"sweep: {c.label} done")


# -------------------------------------------------------------------------------------------- CLI
def _print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("combination", "hit rate", "ideal", "mean TTFT ms", "p99 TTFT ms", "req/s", "requests cv")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for label, s in sorted(results.items()):
        table.add_row(label, fmt(s.get("hit_rate"), ".3f"), fmt(s.get("hit_rates", {}).get("ideal"), ".3f"),
                      fmt(s.get("mean_ttft_ms"), ".1f"), fmt(s.get("p99_ttft_ms"), ".1f"),
                      fmt(s.get("request_throughput"), ".2f"), fmt(s.get("requests_cv"), ".3f"))
    console = Console(stderr=True)
    console.width = max(console.width, 110)
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        trace: Path = typer.Argument(..., help="Trace file (Parquet) from `kvbench generate`."),
        target: str = typer.Option("sim", help="'sim', comma-separated OpenAI-compatible URLs, or a cluster.json."),
        workers: int = typer.Option(4, help="Simulated workers (the HTTP path uses one worker per URL)."),
        cache_tokens: Optional[int] = typer.Option(None, help="Per-worker KV capacity in tokens; omit for unbounded."),
        block_size: int = typer.Option(16, help="KV block size in tokens (a multiple of the trace's)."),
        eviction: Optional[str] = typer.Option(
            None, help="Eviction policy, or a comma list to sweep (default lru; a real cluster's own policy)."),
        router: str = typer.Option("round_robin", help="Router, or a comma list to sweep."),
        router_param: Optional[list[str]] = typer.Option(None, help="Router parameter key=value (repeatable)."),
        eviction_param: Optional[list[str]] = typer.Option(None, help="Eviction parameter key=value (repeatable)."),
        seed: int = typer.Option(0, help="Seed of every random choice (routers, policies)."),
        profile: str = typer.Option("default", help="Simulator latency profile: built-in name or TOML path."),
        max_batched_tokens: int = typer.Option(8192, help="Simulator: token budget of one engine step."),
        max_num_seqs: int = typer.Option(256, help="Simulator: sequences running at once per worker."),
        chunked_prefill: bool = typer.Option(True, help="Simulator: split long prompts across steps."),
        time_scale: float = typer.Option(1.0, help="Multiply trace times (0.5 replays twice as fast)."),
        rate_scale: Optional[str] = typer.Option(
            None, help="Load ladder: comma list of arrival-rate multipliers (e.g. 0.5,1,2,4), one run each."),
        max_requests: Optional[int] = typer.Option(
            None, help="Replay only the first N requests (warm-up included)."),
        warmup: int = typer.Option(
            0, help="Send the first N requests (whole sessions) first, wait until they finish, then replay "
                    "the rest from that barrier on a warm cache; warm-up rows are marked and in no metric."),
        name: Optional[str] = typer.Option(None, help="Run name recorded in run.json."),
        output: Optional[Path] = typer.Option(None, "-o", "--output",
                                              help="Result directory (a sweep writes one subdirectory per combination)."),
        jobs: int = typer.Option(0, help="Parallel processes of a simulator sweep (0 = one per core)."),
        history: str = typer.Option(
            "recorded", help="Sessions: 'recorded' prompts or 'generated' history (the sim: answers hit)."),
        timeout: float = typer.Option(600.0, help="HTTP: per-request timeout in seconds."),
        max_concurrency: Optional[int] = typer.Option(None, help="HTTP: cap on requests in flight."),
        reset_cache: bool = typer.Option(True, help="HTTP: reset every worker's prefix cache before the run."),
        model: Optional[str] = typer.Option(None, help="HTTP: model name to send (default: the served one)."),
        api: str = typer.Option("completions", help="HTTP: 'completions' or 'chat'."),
        goodput: Optional[str] = typer.Option(
            None, help="SLOs in ms for goodput, e.g. ttft:500,tpot:50,e2el:5000 (as vllm bench serve)."),
        header: Optional[list[str]] = typer.Option(None, help="HTTP: header 'NAME: VALUE' for every request "
                                                              "(repeatable); recorded by name only."),
        api_key: Optional[str] = typer.Option(None, envvar="OPENAI_API_KEY", show_envvar=True,
                                              help="HTTP: sent as 'Authorization: Bearer KEY'; never recorded."),
        extra_body: Optional[str] = typer.Option(None, help="HTTP: JSON object merged into every request body."),
        scrape_interval: Optional[float] = typer.Option(
            None, help="Every N seconds, record each worker's KV-cache usage, running/waiting requests and cache "
                       "counters in timeline.parquet (real workers: their /metrics; sim: its own state)."),
        progress: bool = typer.Option(True, help="Show progress bars."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace finished runs in the output directory."),
    ) -> None:
        """Replay a trace against the simulator or real workers; comma lists of --eviction/--router sweep."""
        from kvbench.goodput import parse_goodput
        from kvbench.http.request_options import parse_extra_body, parse_headers

        evictions = resolve_evictions(eviction, target)
        routers = split_list(router, "--router")
        if jobs < 0:
            raise fail(f"--jobs {jobs}: must be >= 0 (0 = one per core)")
        if output is None:
            output = Path("results") / f"{trace.stem}-{'+'.join(evictions)}-{router.replace(',', '+')}"
        base = ReplaySpec(
            trace=trace, output=output, target=target, eviction=evictions[0], router=routers[0], seed=seed,
            workers=workers, cache_tokens=cache_tokens, block_size=block_size,
            router_params=parse_key_values(router_param, "--router-param"),
            eviction_params=parse_key_values(eviction_param, "--eviction-param"), profile=profile,
            max_batched_tokens=max_batched_tokens, max_num_seqs=max_num_seqs, time_scale=time_scale,
            max_requests=max_requests, warmup=warmup, name=name, history=history, timeout_s=timeout,
            max_concurrency=max_concurrency, reset_cache=reset_cache, model=model, api=api, progress=progress,
            chunked_prefill=chunked_prefill, goodput=parse_goodput(goodput), headers=parse_headers(header),
            api_key=api_key, extra_body=parse_extra_body(extra_body), scrape_interval_s=scrape_interval)
        scales = parse_rate_scales(rate_scale)
        many = len(evictions) * len(routers) > 1 or scales is not None
        combos = plan_sweep(base, evictions, routers, scales) if many else []
        if not overwrite:
            for out in [output, *(Path(c.spec.output) for c in combos)]:
                if (Path(out) / "run.json").exists():
                    raise fail(f"-o {out}: holds a finished run; pass --overwrite to replace it, or choose a new -o")
        if not combos:
            try:
                out = run_replay(base)
            except KeyboardInterrupt:
                raise interrupted(f"partial results (unfinished requests cancelled) in {output}") from None
            from kvbench.results import read_run

            summaries = {out.name: read_run(out).summary}
            _print_table(summaries)
            typer.echo(str(out))
            _say_failures(summaries)
            return
        n_jobs = (jobs or os.cpu_count() or 1) if base.is_sim else 1  # one real cluster: one run at a time
        try:
            results = run_sweep(combos, min(n_jobs, len(combos)), progress)
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):
                Path(output).rmdir()  # only when empty: nothing finished, so leave no folder behind
            kept = sum((Path(c.spec.output) / "run.json").exists() for c in combos)
            raise interrupted(f"{kept} of {len(combos)} combinations finished and kept under {output}") from None
        _print_table(results)
        typer.echo(str(output))
        _say_failures(results)


def _say_failures(summaries: dict[str, dict[str, Any]]) -> None:
    """The last line names failed requests, so a run that lost requests never reads as a clean one."""
    bad = {k: s for k, s in summaries.items() if isinstance(s, dict) and s.get("failed")}
    if bad:
        parts = ", ".join(f"{k}: {s['failed']} of {s.get('num_requests', '?')}" for k, s in bad.items())
        typer.echo(f"kvbench: warning: failed requests ({parts}); see the status and error columns of "
                   f"requests.parquet", err=True)
