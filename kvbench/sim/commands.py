"""`kvbench calibrate`: measure real OpenAI-compatible servers and write a simulator latency profile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer

from kvbench.errors import fail


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{flag} {text!r}: expected a comma list of integers") from None
    if not vals or min(vals) < 1:
        raise fail(f"{flag} {text!r}: expected positive integers")
    return vals


def register(app: typer.Typer) -> None:
    @app.command()
    def calibrate(
        target: str = typer.Option(..., help="Comma-separated OpenAI-compatible base URLs (http://host:port)."),
        output: Path = typer.Option(..., "-o", "--output", help="Profile TOML to write."),
        model: Optional[str] = typer.Option(None, help="Model name (default: the first one the server lists)."),
        name: Optional[str] = typer.Option(None, help="Profile name (default: the output file's stem)."),
        prompt_lengths: Optional[str] = typer.Option(
            None, help="Prompt lengths in tokens (default 128,256,512,1024,2048; or take them from --trace)."),
        trace: Optional[Path] = typer.Option(
            None, help="Trace to be simulated: measure prompt lengths spanning its input_tokens (min, quartiles, "
                       "max, on its blocks), capped at the server's max_model_len."),
        suffix_tokens: int = typer.Option(64, help="New tokens after a cached prefix in warm measurements."),
        output_tokens: int = typer.Option(16, help="Tokens streamed per decode measurement."),
        concurrency: str = typer.Option("1,2,4,8", help="Concurrent streams (decode batch sizes)."),
        repeats: int = typer.Option(2, help="Repetitions of the whole plan."),
        max_token_id: int = typer.Option(1000, help="Random prompt token ids are drawn below this."),
        seed: int = typer.Option(0, help="Seed of the random prompts."),
        timeout: float = typer.Option(300.0, help="Per-request timeout in seconds."),
        replay_rate_scale: Optional[str] = typer.Option(
            None, help="With --trace: then replay the trace at these multiples of its arrival rate (e.g. "
                       "0.5,1,2) and adjust the profile until the simulator's TTFT/e2e percentiles match."),
        replay_requests: Optional[int] = typer.Option(
            None, help="Requests per replay for --replay-rate-scale (default: the whole trace)."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Fit the simulator's latency profile to measurements of real servers (see docs/simulator.md)."""
        from rich.progress import Progress

        from kvbench.fsutil import write_text_atomic
        from kvbench.sim.calibrate import CalibrationPlan, fit, measure, steps_in_plan
        from kvbench.sim.latency import COEFFICIENTS, PROFILE_KEYS, load_profile, profile_toml

        urls = [u.strip().rstrip("/") for u in target.split(",") if u.strip()]
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if not urls or bad:
            raise fail(f"--target {target}: give http(s):// base URLs separated by commas")
        if output.suffix != ".toml":
            raise fail(f"-o {output}: a profile file must end in .toml")
        if repeats < 1 or suffix_tokens < 1 or output_tokens < 2 or max_token_id < 11 or timeout <= 0:
            raise fail("--repeats, --suffix-tokens must be >= 1, --output-tokens >= 2, --max-token-id > 10, "
                       "--timeout > 0")
        if trace is not None and prompt_lengths is not None:
            raise fail("--trace, --prompt-lengths: give one (--trace picks the lengths from the trace)")
        scales = None
        if replay_rate_scale is not None:
            from kvbench.replay import parse_rate_scales

            if trace is None:
                raise fail("--replay-rate-scale: needs --trace (the trace whose replays are fitted)")
            scales = parse_rate_scales(replay_rate_scale, "--replay-rate-scale")
        if replay_requests is not None and replay_requests < 1:
            raise fail(f"--replay-requests {replay_requests}: must be >= 1")
        if trace is not None:
            lengths = _lengths_from_trace(trace, urls, model, suffix_tokens, output_tokens)
        else:
            lengths = _ints(prompt_lengths or "128,256,512,1024,2048", "--prompt-lengths")
        plan = CalibrationPlan(prompt_lengths=lengths, suffix_tokens=suffix_tokens,
                               output_tokens=output_tokens, concurrency=_ints(concurrency, "--concurrency"),
                               repeats=repeats, token_range=(10, max_token_id), seed=seed, timeout_s=timeout)
        with Progress(disable=not progress) as bar:
            task = bar.add_task("calibrating", total=steps_in_plan(plan))
            samples = asyncio.run(measure(urls, plan, model, tick=lambda: bar.advance(task)))
        coef, stats = fit(samples)
        if stats["rank"] < len(COEFFICIENTS):
            typer.echo(f"kvbench: warning: the measurements determine {stats['rank']} of the {len(COEFFICIENTS)} "
                       "coefficients, so some trade off freely (request_s against step_base_s unless decode "
                       "batches ran at two --concurrency levels); measure more shapes", err=True)
        how = (f"non-negative least squares (relative error) over {stats['samples']} measurements "
               f"({stats['by_kind']['cold']} cold prefills, {stats['by_kind']['warm']} warm prefills, "
               f"{stats['by_kind']['decode']} decode batches); median relative error "
               f"{stats['median_abs_rel_error']:.3f}")
        notes = {k: how for k in coef}
        notes["request_s"] = ("per-request front-end time (HTTP, tokenization, admission) in every prefill's "
                              f"TTFT, told from step_base_s by the decode batches; {how}")
        picked = f" (from the input_tokens of {trace})" if trace is not None else ""
        source = (f"kvbench calibrate against {', '.join(urls)} (model {model or 'as listed by the server'}); "
                  f"prompt lengths {plan.prompt_lengths}{picked}, concurrency {plan.concurrency}, seed {seed}")
        text = profile_toml(name or output.stem, source, coef, notes, extra={"fit": {
            "samples": stats["samples"], "r2": stats["r2"], "median_abs_rel_error": stats["median_abs_rel_error"],
            "max_abs_rel_error": stats["max_abs_rel_error"], "rank": stats["rank"],
            # what was measured: a replay warns when a trace's prompts go well beyond it
            "prompt_tokens_min": min(plan.prompt_lengths), "prompt_tokens_max": max(plan.prompt_lengths),
            "max_concurrency": max(plan.concurrency)}})
        if scales:
            text = _refine_on_replays(text, output, urls, trace, scales, replay_requests, timeout, model, progress)
        write_text_atomic(output, text)
        written = load_profile(str(output))  # what was written reads back
        for k in PROFILE_KEYS:
            typer.echo(f"{k} = {getattr(written, k):.4g}", err=True)
        typer.echo(str(output))


def _refine_on_replays(text: str, output: Path, urls: list[str], trace: Path, scales: list[float],
                       max_requests: int | None, timeout: float, model: str | None, progress: bool) -> str:
    """The isolated fit (``text``), adjusted to whole replays of ``trace``; returns the profile's TOML."""
    import tempfile

    from kvbench.sim.latency import PROFILE_KEYS, load_profile, profile_toml
    from kvbench.sim.refine import measure_replays, refine, simulator_for
    from kvbench.fsutil import read_toml

    with tempfile.TemporaryDirectory(prefix="kvbench-profile-") as tmp:
        first = Path(tmp) / output.name
        first.write_text(text, encoding="utf-8")
        base = load_profile(str(first))
        data = read_toml(first, str(first))
    target = ",".join(urls)
    typer.echo(f"replaying {trace} at {', '.join(f'{s:g}x' for s in scales)} its arrival rate", err=True)
    points, tr = measure_replays(target, trace, scales, max_requests, timeout, model, progress)
    result = refine(base, points, simulator_for(target, tr, trace, max_requests, model))
    coef = {k: getattr(result.profile, k) for k in PROFILE_KEYS}
    how = (f"refined on whole replays of {trace.name} at {','.join(f'{s:g}' for s in scales)}x its arrival "
           f"rate ({sum(p.completed for p in points)} requests): mean squared log error of TTFT p50/p90/p99 "
           f"and e2e p50/p99 {result.loss_before:.3f} -> {result.loss_after:.3f} in {result.evaluations} "
           f"simulations, from the isolated fit")
    notes = {k: f"{data['notes'].get(k, '')}; {how}".lstrip("; ") for k in coef}
    notes["request_sigma"] = ("log-normal spread of the front-end time around request_s (each request's is drawn "
                              f"from its id), fitted on the replays only; {how}")
    fit = dict(data.get("fit", {}))
    fit.update({"replay_rate_scales": list(scales), "replay_loss_before": round(result.loss_before, 6),
                "replay_loss_after": round(result.loss_after, 6)})
    typer.echo(f"replay fit: loss {result.loss_before:.3f} -> {result.loss_after:.3f}", err=True)
    for r in result.per_rate:
        cells = ", ".join(f"{k} {r['measured'][k] * 1000:.1f}/{(r['simulated'][k] or float('nan')) * 1000:.1f} ms"
                          for k in r["measured"])
        typer.echo(f"  {r['rate_scale']:g}x (real/sim): {cells}", err=True)
    return profile_toml(data["profile"]["name"], data["profile"]["source"] + f"; {how}", coef, notes,
                        extra={"fit": fit})


def _lengths_from_trace(path: Path, urls: list[str], model: str | None, suffix_tokens: int,
                        output_tokens: int) -> list[int]:
    """``--trace``: prompt lengths spanning the trace's, each short enough that its warm (prompt + suffix +
    one token) and decode (prompt + output tokens) requests fit the servers' max_model_len."""
    from kvbench.sim.calibrate import max_model_len, pick_prompt_lengths
    from kvbench.trace import read_trace

    t = read_trace(path)
    limit = asyncio.run(max_model_len(urls, model))
    cap = None if limit is None else limit - max(suffix_tokens + 1, output_tokens)
    inputs = t.df["input_tokens"].to_numpy()
    lengths = pick_prompt_lengths(inputs, t.block_size, cap)
    if int(inputs.max()) > max(lengths):
        typer.echo(f"kvbench: warning: --trace {path}: prompts reach {int(inputs.max())} tokens but the server "
                   f"takes {limit} (max_model_len), so the longest measured is {max(lengths)}; a replay of "
                   f"this trace extrapolates above that", err=True)
    typer.echo(f"prompt lengths from {path}: {','.join(map(str, lengths))}", err=True)
    return lengths
