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
        prompt_lengths: str = typer.Option("128,256,512,1024,2048", help="Prompt lengths in tokens."),
        suffix_tokens: int = typer.Option(64, help="New tokens after a cached prefix in warm measurements."),
        output_tokens: int = typer.Option(16, help="Tokens streamed per decode measurement."),
        concurrency: str = typer.Option("1,2,4,8", help="Concurrent streams (decode batch sizes)."),
        repeats: int = typer.Option(2, help="Repetitions of the whole plan."),
        max_token_id: int = typer.Option(1000, help="Random prompt token ids are drawn below this."),
        seed: int = typer.Option(0, help="Seed of the random prompts."),
        timeout: float = typer.Option(300.0, help="Per-request timeout in seconds."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Fit the simulator's latency profile to measurements of real servers (see docs/simulator.md)."""
        from rich.progress import Progress

        from kvbench.fsutil import write_text_atomic
        from kvbench.sim.calibrate import CalibrationPlan, fit, measure, steps_in_plan
        from kvbench.sim.latency import load_profile, profile_toml

        urls = [u.strip().rstrip("/") for u in target.split(",") if u.strip()]
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if not urls or bad:
            raise fail(f"--target {target}: give http(s):// base URLs separated by commas")
        if output.suffix != ".toml":
            raise fail(f"-o {output}: a profile file must end in .toml")
        if repeats < 1 or suffix_tokens < 1 or output_tokens < 2 or max_token_id < 11 or timeout <= 0:
            raise fail("--repeats, --suffix-tokens must be >= 1, --output-tokens >= 2, --max-token-id > 10, "
                       "--timeout > 0")
        plan = CalibrationPlan(prompt_lengths=_ints(prompt_lengths, "--prompt-lengths"), suffix_tokens=suffix_tokens,
                               output_tokens=output_tokens, concurrency=_ints(concurrency, "--concurrency"),
                               repeats=repeats, token_range=(10, max_token_id), seed=seed, timeout_s=timeout)
        with Progress(disable=not progress) as bar:
            task = bar.add_task("calibrating", total=steps_in_plan(plan))
            samples = asyncio.run(measure(urls, plan, model, tick=lambda: bar.advance(task)))
        coef, stats = fit(samples)
        how = (f"non-negative least squares (relative error) over {stats['samples']} measurements "
               f"({stats['by_kind']['cold']} cold prefills, {stats['by_kind']['warm']} warm prefills, "
               f"{stats['by_kind']['decode']} decode batches); median relative error "
               f"{stats['median_abs_rel_error']:.3f}")
        notes = {k: how for k in coef}
        source = (f"kvbench calibrate against {', '.join(urls)} (model {model or 'as listed by the server'}); "
                  f"prompt lengths {plan.prompt_lengths}, concurrency {plan.concurrency}, seed {seed}")
        text = profile_toml(name or output.stem, source, coef, notes, extra={"fit": {
            "samples": stats["samples"], "r2": stats["r2"], "median_abs_rel_error": stats["median_abs_rel_error"],
            "max_abs_rel_error": stats["max_abs_rel_error"]}})
        write_text_atomic(output, text)
        load_profile(str(output))  # what was written reads back
        for k, v in coef.items():
            typer.echo(f"{k} = {v:.4g}", err=True)
        typer.echo(str(output))
