"""`kvbench validate`: can the simulator be trusted for this traffic on this cluster?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kvbench.errors import interrupted

if TYPE_CHECKING:
    from kvbench.validate.record import FidelityRecord


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def print_table(record: FidelityRecord) -> None:
    """The record on one screen (stderr): a row per combination, then the rankings and the verdict."""
    from rich.console import Console
    from rich.table import Table

    from kvbench.validate.compare import order_text
    from kvbench.validate.record import METRICS

    table = Table(title="simulator fidelity (s/r = simulated / real mean)")
    for name in ("combination", "reps", "real hit", "real range", "sim hit", "diff", "within",
                 "TTFT s/r p50 p90 p99", "req/s s/r"):
        table.add_column(name, no_wrap=True)
    for c in record.combinations:
        m = c.metrics
        hit = m["hit_rate"]
        ttft = " ".join(_fmt(m[k].ratio, ".2f") for k in ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"))
        table.add_row(c.label, str(c.repeats), _fmt(hit.real.mean, ".3f"),
                      f"{_fmt(hit.real.min, '.3f')}-{_fmt(hit.real.max, '.3f')}" if hit.real.n else "-",
                      _fmt(hit.sim, ".3f"), _fmt(hit.difference, "+.3f"),
                      f"{_yes(c.hit_rate_within)} ±{_fmt(c.hit_rate_tolerance, '.3f')}", ttft,
                      _fmt(m["request_throughput"].ratio, ".2f"))
    console = Console(stderr=True, highlight=False)
    console.width = max(console.width, 130)
    console.print(table)
    for r in record.rankings:
        console.print(f"Kendall tau-b over {r.metric} ({len(r.combinations)} combinations): "
                      f"{_fmt(r.kendall_tau_b, '.2f')}; order agrees: {_yes(r.agrees)} "
                      f"({r.discordant_resolved_pairs} of {r.resolved_pairs} resolved pairs reversed)",
                      markup=False)
    for o in record.eviction_orders:
        higher = METRICS[o.metric][3]
        real, sim = order_text(o.evictions, o.real_mean, higher), order_text(o.evictions, o.sim, higher)
        console.print(f"router {o.router}, {o.metric}: real {real}, sim {sim}; agrees: {_yes(o.agrees)}",
                      markup=False)
    v = record.verdict
    console.print(f"verdict: hit rates within {_yes(v.hit_rates_within)}, hit-rate ranking "
                  f"{_yes(v.hit_rate_ranking_agrees)}, TTFT ranking {_yes(v.ttft_ranking_agrees)}, eviction "
                  f"order {_yes(v.eviction_order_agrees)} -> trusted: {_yes(v.trusted)}", markup=False)
    for note in record.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        trace: Path = typer.Argument(..., help="Trace file (Parquet) from `kvbench generate`."),
        target: str = typer.Option(..., help="cluster.json, several comma-separated (one per eviction "
                                             "policy), or the comma-separated URLs of one cluster."),
        router: str = typer.Option("round_robin", help="Router or a comma list; each runs on every cluster."),
        repeats: int = typer.Option(3, help="Real runs per combination (the simulator runs once)."),
        profile: str | None = typer.Option(
            None, help="Simulator latency profile (name or TOML); default cpu-tiny-llama for kvbench's tiny "
                       "CPU model, else required."),
        seed: int = typer.Option(0, help="Seed of routers and simulated policies."),
        router_param: list[str] | None = typer.Option(None, help="Router parameter key=value (repeatable)."),
        cache_tokens: int | None = typer.Option(
            None, help="Per-worker KV tokens, only for servers that do not report their cache size."),
        block_size: int | None = typer.Option(None, help="Block size, for servers that do not report it."),
        max_num_seqs: int | None = typer.Option(
            None, help="Simulator max_num_seqs, only when neither cluster file nor servers give it."),
        max_batched_tokens: int | None = typer.Option(
            None, help="Simulator step token budget, only when neither cluster file nor servers give it."),
        time_scale: float = typer.Option(1.0, help="Multiply trace times (0.5 replays twice as fast)."),
        max_requests: int | None = typer.Option(
            None, help="Replay only the first N requests (warm-up included)."),
        warmup: int = typer.Option(
            0, help="Run the first N requests (whole sessions) before a barrier, in no metric; every run, "
                    "simulated and real, does the same."),
        scrape_interval: float | None = typer.Option(
            None, help="Every N seconds, record each worker's KV-cache usage and running/waiting requests in "
                       "timeline.parquet (real runs: /metrics; the simulated run: its own state)."),
        history: str = typer.Option("recorded", help="Sessions: 'recorded' prompts or 'generated' history."),
        timeout: float = typer.Option(600.0, help="Per-request timeout in seconds (real runs)."),
        max_concurrency: int | None = typer.Option(None, help="Cap on requests in flight (real runs)."),
        model: str | None = typer.Option(None, help="Model name to send (default: the served one)."),
        api: str = typer.Option("completions", help="'completions' or 'chat'."),
        output: Path | None = typer.Option(None, "-o", "--output", help="Output directory."),
        progress: bool = typer.Option(True, help="Show progress."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier validation in -o."),
    ) -> None:
        """Replay a trace on real workers and on the simulator configured like them: do they agree?"""
        from kvbench.params import parse_key_values
        from kvbench.resolve import split_list
        from kvbench.validate.run import ValidateSpec, run_validate
        from kvbench.validate.targets import Flags

        routers = split_list(router, "--router")
        out = output or Path("results") / f"{trace.stem}-validate"
        spec = ValidateSpec(
            trace=trace, target=target, output=out, routers=routers, repeats=repeats, profile=profile,
            seed=seed, router_params=parse_key_values(router_param, "--router-param"),
            flags=Flags(cache_tokens=cache_tokens, block_size=block_size, max_num_seqs=max_num_seqs,
                        max_batched_tokens=max_batched_tokens, model=model),
            time_scale=time_scale, max_requests=max_requests, warmup=warmup, scrape_interval_s=scrape_interval,
            history=history,
            timeout_s=timeout, max_concurrency=max_concurrency, api=api, progress=progress,
            overwrite=overwrite)
        try:
            record = run_validate(spec)
        except KeyboardInterrupt as exc:
            raise interrupted(str(exc) or "stopped; nothing written") from None
        print_table(record)
        typer.echo(str(out))
