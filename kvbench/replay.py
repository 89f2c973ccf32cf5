"""`kvbench replay`: one trace x one (eviction, router) combination against a target.

The target is the simulator (``sim``), comma-separated OpenAI-compatible URLs, or a cluster.json written by
``kvbench cluster up``. A replay goes spec -> resolve -> plan -> backend -> record (kvbench.spec,
kvbench.resolve, kvbench.plan, the backend, kvbench.record); this module holds the command and the thin
:func:`run_replay` that chains them. Comma lists of ``--eviction`` and ``--router`` run the cross product as a
sweep (one result directory per combination, through kvbench.jobs).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import typer

from kvbench.errors import fail, interrupted
from kvbench.fsutil import staged
from kvbench.jobs import EXECUTORS, LOCAL, Placement, placement, refuse_real_target
from kvbench.params import parse_key_values
from kvbench.record import BackendResult, check_output, write_record
from kvbench.resolve import Resolved, check_block_multiple, resolve, resolve_evictions, split_list, validate_spec
from kvbench.spec import ReplaySpec


def run_backend(resolved: Resolved, trace, plan) -> BackendResult:
    if resolved.is_sim:
        from kvbench.sim.run import run_sim

        return run_sim(resolved, trace, plan=plan)
    try:
        from kvbench.http.replay import run_http
    except ImportError as exc:
        raise fail(f"--target {resolved.spec.target}: the HTTP backend cannot be loaded ({exc})") from None
    return run_http(resolved, trace, plan=plan)


def run_replay(spec: ReplaySpec, trace=None) -> Path:
    """Run one combination and write ``requests.parquet`` + ``run.json`` into ``spec.output``.

    On Ctrl-C the rows gathered so far are written (unfinished requests as ``cancelled``) and the
    interrupt is re-raised once the files are in place.
    """
    from kvbench.plan import check_cache_fits, make_plan
    from kvbench.trace import read_trace

    resolved = resolve(spec)  # every flag before the trace is read
    if trace is None:
        trace = read_trace(staged(spec.trace))
    if resolved.is_sim:  # a real target's block size is checked once its servers report it
        check_block_multiple(resolved.block_size, resolved.block_size_source, trace)
    plan = make_plan(resolved, trace)
    check_cache_fits(resolved, plan)
    out = staged(spec.output)
    created = not out.exists()
    check_output(out)
    try:
        result = run_backend(resolved, trace, plan)
    except BaseException:
        if created:  # leave nothing behind for a run that produced nothing
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    write_record(out, plan, result)
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


def _sweep_run(spec: ReplaySpec) -> dict[str, Any]:
    """One combination of a sweep, in a worker process: its summary."""
    import json

    return json.loads((run_replay(spec) / "run.json").read_text())["summary"]


def run_sweep(combos: list[Combination], jobs: int, progress: bool = True,
              where: Placement = LOCAL) -> dict[str, dict[str, Any]]:
    """Run combinations (in ``jobs`` processes for the simulator, or as Ray tasks); finished ones stay on
    Ctrl-C."""
    from kvbench.jobs import Job, run_jobs

    return run_jobs([Job(c.label, Path(c.spec.output), _sweep_run, (c.spec,), inputs=c.spec.input_files())
                     for c in combos], jobs, check=lambda job: validate_spec(job.args[0]), progress=progress,
                    name="sweep", where=where)


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
        executor: str = typer.Option("local", help=f"Where runs go: {' or '.join(EXECUTORS)} ('ray': one Ray "
                                                   "task per combination; simulator only)."),
        address: Optional[str] = typer.Option(None, help="--executor ray: an existing Ray cluster's HEAD:PORT "
                                                         "(default: start a Ray instance on this machine)."),
    ) -> None:
        """Replay a trace against the simulator or real workers; comma lists of --eviction/--router sweep."""
        from kvbench.goodput import parse_goodput
        from kvbench.http.request_options import parse_extra_body, parse_headers

        where = placement(executor, address)
        refuse_real_target(where, target)
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
        if where.ray and not combos:  # one combination: one Ray task writing straight into -o
            combos = [Combination(evictions[0], base.router, replace(base, progress=False))]
        if not overwrite:
            for out in [output, *(Path(c.spec.output) for c in combos)]:
                if (Path(out) / "run.json").exists():
                    raise fail(f"-o {out}: holds a finished run; pass --overwrite to replace it, or choose a new -o")
        if not many and not where.ray:
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
            results = run_sweep(combos, min(n_jobs, len(combos)), progress, where)
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):
                Path(output).rmdir()  # only when empty: nothing finished, so leave no folder behind
            kept = sum((Path(c.spec.output) / "run.json").exists() for c in combos)
            raise interrupted(f"{kept} of {len(combos)} combinations finished and kept under {output}") from None
        if not many:
            results = {Path(output).name: summary for summary in results.values()}
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
