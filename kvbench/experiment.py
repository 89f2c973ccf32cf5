"""`kvbench run SPEC.toml`: generate -> replay every combination over several seeds -> summarise -> report.

A spec (``workloads/*.toml``) names its source setup and fixes everything a reproduction needs::

    name = "rlt-gsp-random"
    title = "..."            # one line for tables
    source = "..."           # the published setup this reproduces
    offline = "..."          # what stands in for unavailable data offline (synthetic, say so)
    seeds = [0, 1, 2, 3, 4]

    [generate]               # a `kvbench generate KIND` call; args are its options without dashes
    kind = "gsp"
    args = { groups = 128, order = "random" }

    [replay]                 # ReplaySpec fields shared by every combination
    workers = 4
    cache_tokens = 200000
    eviction = ["lru", "rlt"]        # lists: the cross product is run
    router = ["cache_aware", "lbgr"]
    router_params = { cache_aware = { defaults = "library" } }   # per router (eviction_params likewise)

    [sweep]                  # optional: one parameter varied across values
    field = "cache_tokens"   # a ReplaySpec field, or "generate.<option>"
    values = [50000, 100000]

    [reduced]                # `--reduced`: the same experiment, smaller (the test suite runs it)
    generate = { groups = 8 }
    replay = { cache_tokens = 20000 }
    seeds = [0]
    sweep_values = [50000]

Work is resumable: a combination whose ``run.json`` exists is not rerun, a trace that exists is not
regenerated, and when nothing new ran no file is rewritten.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
import types
import typing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import typer

from kvbench.errors import KvbenchError, fail, interrupted
from kvbench.fsutil import read_toml, write_text_atomic
from kvbench.replay import ReplaySpec

SUMMARY_METRICS = (
    "hit_rate",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_e2el_ms",
    "p99_e2el_ms",
    "request_throughput",
    "total_token_throughput",
    "requests_cv",
)
OPTIONAL_METRICS = ("request_goodput",)  # summarised when the runs have them (replayed with --goodput)
_LIST_FIELDS = ("eviction", "router")
_REPLAY_FIELDS = {f.name for f in fields(ReplaySpec)} - {"trace", "output", "progress"}


@dataclass
class Experiment:
    name: str
    path: Path
    title: str
    source: str
    offline: str
    seeds: list[int]
    gen_kind: str
    gen_args: dict[str, Any]
    replay: dict[str, Any]
    evictions: list[str]
    routers: list[str]
    sweep_field: str | None = None
    sweep_values: list[Any] = field(default_factory=list)
    paper: dict[str, Any] = field(default_factory=dict)
    router_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per router name
    eviction_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per policy name


def _check_replay_type(where: str, key: str, value: Any) -> None:
    """A [replay] value must have its ReplaySpec field's type (``workers = "two"`` is caught here, before work)."""
    hint = typing.get_type_hints(ReplaySpec)[key]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for typ in allowed:
        if typ is type(None) and value is None:
            return
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if typ in (str, bool) and isinstance(value, typ):
            return
        if typing.get_origin(typ) is dict and isinstance(value, dict):
            return
    names = " or ".join("none" if t is type(None) else getattr(t, "__name__", str(t)) for t in allowed)
    raise fail(f"{where}: [replay] {key} = {value!r} must be {'an' if names[0] in 'aeiou' else 'a'} {names}")


def load_spec(path: str | Path, reduced: bool = False) -> Experiment:
    p = Path(path)
    if not p.exists():
        raise fail(f"{p}: no such spec file; see workloads/ for examples")
    data = read_toml(p, str(p))
    where = str(p)
    for key in ("name", "generate", "replay"):
        if key not in data:
            raise fail(f"{where}: missing '{key}'; see the module docstring of kvbench.experiment")
    if not isinstance(data["name"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", data["name"]):
        # the name becomes a folder under results/: "../x" or "a/b" would write elsewhere
        raise fail(f"{where}: name {data['name']!r} must be a plain folder name (letters, digits, '.', '_', '-')")
    if reduced:
        small = data.get("reduced")
        if not isinstance(small, dict):
            raise fail(f"{where}: no [reduced] table; add one to run --reduced")
        data["generate"] = {**data["generate"], "args": {**data["generate"].get("args", {}),
                                                         **small.get("generate", {})}}
        data["replay"] = {**data["replay"], **small.get("replay", {})}
        if "seeds" in small:
            data["seeds"] = small["seeds"]
        if "sweep_values" in small and data.get("sweep"):
            data["sweep"] = {**data["sweep"], "values": small["sweep_values"]}
    gen = data["generate"]
    if "kind" not in gen:
        raise fail(f"{where}: [generate] needs kind = \"gsp\" | \"docqa\" | \"conversation\" | \"trace\"")
    replay = dict(data["replay"])
    unknown = set(replay) - _REPLAY_FIELDS
    if unknown:
        raise fail(f"{where}: unknown [replay] field(s) {', '.join(sorted(unknown))}; "
                   f"valid: {', '.join(sorted(_REPLAY_FIELDS))}")
    per_name = {}
    for key, names in (("router_params", "router"), ("eviction_params", "eviction")):
        table = replay.pop(key, {})
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise fail(f"{where}: [replay] {key} must map a {names} name to a table, "
                       f"e.g. {key} = {{ cache_aware = {{ defaults = \"library\" }} }}")
        per_name[key] = table
    lists = {}
    for key in _LIST_FIELDS:
        val = replay.pop(key, ReplaySpec.__dataclass_fields__[key].default or "lru")
        vals = [val] if isinstance(val, str) else list(val)
        if not vals:
            raise fail(f"{where}: [replay] {key} is empty")
        lists[key] = vals
    for key, value in replay.items():
        _check_replay_type(where, key, value)
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise fail(f"{where}: seeds must be a non-empty list of integers")
    sweep = data.get("sweep") or {}
    sweep_field = sweep.get("field")
    sweep_values = list(sweep.get("values", []))
    if sweep_field is not None:
        if not sweep_values:
            raise fail(f"{where}: [sweep] needs values = [...]")
        if not (sweep_field.startswith("generate.") or sweep_field in _REPLAY_FIELDS):
            raise fail(f"{where}: [sweep] field '{sweep_field}' is neither a replay field nor generate.<option>")
    return Experiment(
        name=str(data["name"]), path=p, title=str(data.get("title", data["name"])), source=str(data.get("source", "")),
        offline=str(data.get("offline", "")), seeds=seeds, gen_kind=str(gen["kind"]), gen_args=dict(gen.get("args", {})),
        replay=replay, evictions=lists["eviction"], routers=lists["router"], sweep_field=sweep_field,
        sweep_values=sweep_values, paper=dict(data.get("paper", {})),
        router_params=per_name["router_params"], eviction_params=per_name["eviction_params"],
    )


def _cli_args(args: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, val in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(val, bool):
            out.append(flag if val else "--no-" + key.replace("_", "-"))
        elif isinstance(val, list):
            out += [flag, ",".join(str(v) for v in val)]
        else:
            out += [flag, str(val)]
    return out


def _value_tag(value: Any) -> str:
    return str(value).replace("/", "_").replace(" ", "")


KEY_FILE = "job.key"  # beside run.json: the key of the configuration and trace that produced it


@dataclass
class Job:
    spec: ReplaySpec
    seed: int
    sweep_value: Any
    eviction: str
    router: str
    key: str = ""  # set by key_jobs once the trace exists

    @property
    def done(self) -> bool:
        """Finished by this very configuration on this very trace, and not cut short.

        A run.json alone proves nothing: an interrupted run writes one too, and so did a run of an
        earlier version of the spec into the same folder.
        """
        run_json = self.spec.output / "run.json"
        key_file = self.spec.output / KEY_FILE
        if not (self.key and run_json.is_file() and key_file.is_file()):
            return False
        try:
            config = json.loads(run_json.read_text(encoding="utf-8"))
            key = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError, ValueError):
            return False  # a corrupt record is rerun
        return isinstance(config, dict) and not config.get("interrupted") and key == self.key


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_jobs(jobs: list[Job]) -> None:
    """Key each job by its full effective configuration and its trace's sha256."""
    trace_sha: dict[Path, str] = {}
    for job in jobs:
        trace = job.spec.trace
        if trace not in trace_sha:
            trace_sha[trace] = _sha256(trace)
        config = {f.name: getattr(job.spec, f.name) for f in fields(job.spec) if f.name not in ("output", "progress")}
        text = json.dumps({"replay": config, "trace_sha256": trace_sha[trace]}, sort_keys=True, default=str)
        job.key = hashlib.sha256(text.encode()).hexdigest()


def plan(exp: Experiment, out: Path, target: str | None = None) -> tuple[list[tuple[Path, list[str]]], list[Job]]:
    """Traces to generate (path, CLI argv) and replay jobs, in a stable order."""
    gens: dict[Path, list[str]] = {}
    jobs: list[Job] = []
    values = exp.sweep_values if exp.sweep_field else [None]
    evictions = exp.evictions
    if target and target != "sim":
        from kvbench.replay import resolve_evictions

        evictions = resolve_evictions(None, target)  # a real cluster's policy is fixed when it starts
    for value in values:
        gen_args = dict(exp.gen_args)
        replay = dict(exp.replay)
        if exp.sweep_field and exp.sweep_field.startswith("generate."):
            gen_args[exp.sweep_field.split(".", 1)[1]] = value
        elif exp.sweep_field:
            replay[exp.sweep_field] = value
        vtag = "" if value is None else f"{exp.sweep_field.split('.')[-1]}={_value_tag(value)}"
        for seed in exp.seeds:
            gen_tag = f"seed{seed}" + (f"-{vtag}" if vtag and exp.sweep_field.startswith("generate.") else "")
            trace = out / "traces" / f"{gen_tag}.parquet"
            gens[trace] = ["generate", exp.gen_kind, *_cli_args(gen_args), "--seed", str(seed), "-o", str(trace)]
            for ev, rt in itertools.product(evictions, exp.routers):
                run_dir = out / "runs" / (vtag or "base") / f"{ev}-{rt}" / f"seed{seed}"
                real = bool(target) and target != "sim"  # a real cluster's policy parameters are its own
                per_combo = {**replay, "router_params": exp.router_params.get(rt, {}),
                             "eviction_params": {} if real else exp.eviction_params.get(ev, {})}
                spec = ReplaySpec(trace=trace, output=run_dir, eviction=ev, router=rt, seed=seed,
                                  name=f"{exp.name}/{vtag + '/' if vtag else ''}{ev}+{rt}/seed{seed}",
                                  progress=False, **per_combo)
                if target:
                    spec = replace(spec, target=target)
                jobs.append(Job(spec=spec, seed=seed, sweep_value=value, eviction=ev, router=rt))
    return list(gens.items()), jobs


def _generate(argv: list[str]) -> None:
    from kvbench.cli import app

    try:
        code = app(argv, standalone_mode=False)
    except SystemExit as exc:  # typer exits 0 on success in some paths
        code = exc.code
    if code == 130:  # typer hands back an interrupt as exit status 130
        raise KeyboardInterrupt
    if code not in (0, None):
        raise fail(f"generating {argv[-1]} failed (exit {code})")


def _run_job(spec: ReplaySpec, key: str) -> str:
    from kvbench.replay import run_replay

    (spec.output / KEY_FILE).unlink(missing_ok=True)  # until this run finishes, the folder holds no finished run
    run_replay(spec)  # raises KeyboardInterrupt after recording an interrupted run: no key is written then
    write_text_atomic(spec.output / KEY_FILE, key + "\n")
    return str(spec.output)


def _trace_is_current(path: Path, argv: list[str]) -> bool:
    """A trace is reused only if it was generated by exactly these arguments (the spec may have changed)."""
    sidecar = path.with_name(path.name + ".argv.json")
    try:
        return path.is_file() and json.loads(sidecar.read_text(encoding="utf-8")) == argv
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _run_jobs(name: str, todo: list[Job], jobs_n: int, bar: Any) -> int:
    """Run the jobs (in parallel processes when jobs_n > 1); returns how many finished."""
    if not todo:
        return 0
    done_now = 0
    t = bar.add_task(f"{name}: runs", total=len(todo))
    if jobs_n <= 1:
        for job in todo:
            _run_job(job.spec, job.key)
            done_now += 1
            bar.advance(t)
        return done_now
    with ProcessPoolExecutor(max_workers=jobs_n) as pool:
        pending = {pool.submit(_run_job, j.spec, j.key): j for j in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = pending.pop(fut)
                    try:
                        fut.result()
                    except (KvbenchError, KeyboardInterrupt):
                        raise
                    except Exception as exc:
                        raise fail(f"{job.spec.name}: replay failed ({type(exc).__name__}: {exc})") from None
                    done_now += 1
                    bar.advance(t)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return done_now


def summarise(exp: Experiment, jobs: list[Job]) -> list[dict[str, Any]]:
    """One row per (sweep value, eviction, router) over the seeds that finished: mean, sample standard
    deviation and the half-width of the mean's 95% t-interval (none with one seed)."""
    import numpy as np

    from kvbench.seed_stats import seed_stats

    groups: dict[tuple[Any, str, str], list[dict[str, Any]]] = {}
    for job in jobs:
        if not job.done:
            continue
        summary = json.loads((job.spec.output / "run.json").read_text())["summary"]
        groups.setdefault((job.sweep_value, job.eviction, job.router), []).append(summary)
    rows = []
    for (value, ev, rt), sums in groups.items():
        row: dict[str, Any] = {"experiment": exp.name}
        if exp.sweep_field:
            row[exp.sweep_field] = value
        row.update({"eviction": ev, "router": rt, "seeds": len(sums)})
        hr_ideal = [s.get("hit_rates", {}).get("ideal") for s in sums]
        for metric in SUMMARY_METRICS + tuple(m for m in OPTIONAL_METRICS if any(m in s for s in sums)):
            st = seed_stats([s.get(metric) for s in sums])
            row[f"{metric}_mean"] = st.mean
            row[f"{metric}_std"] = st.std
            row[f"{metric}_ci95"] = st.ci95
        ideal = [v for v in hr_ideal if v is not None]
        row["ideal_hit_rate"] = float(np.mean(ideal)) if ideal else None
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    names = list(rows[0].keys())
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def run_experiment(spec_path: str | Path, out: str | Path, target: str | None = None, jobs_n: int = 2,
                   seeds: list[int] | None = None, report: bool = True, progress: bool = True,
                   reduced: bool = False) -> dict[str, Any]:
    """Run (or resume) an experiment; returns counts of what was done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    exp = load_spec(spec_path, reduced=reduced)
    if seeds:
        exp.seeds = seeds
    out = Path(out)
    if target and target != "sim":
        jobs_n = 1  # replays against one set of real servers must not overlap (each resets the others' caches)
    generations, jobs = plan(exp, out, target)
    from kvbench.replay import validate_spec

    for job in jobs:  # every flag error before any trace is generated or folder made
        validate_spec(job.spec)
    todo_gen = [(p, argv) for p, argv in generations if not _trace_is_current(p, argv)]
    done_now = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as bar:
        if todo_gen:
            t = bar.add_task(f"{exp.name}: traces", total=len(todo_gen))
            for path, argv in todo_gen:
                try:
                    _generate(argv)
                except KeyboardInterrupt:
                    raise interrupted(f"while generating {path.name}; rerun the same command to resume") from None
                write_text_atomic(path.with_name(path.name + ".argv.json"), json.dumps(argv) + "\n")
                bar.advance(t)
        key_jobs(jobs)
        todo = [j for j in jobs if not j.done]
        try:
            done_now = _run_jobs(exp.name, todo, jobs_n, bar)
        except KeyboardInterrupt:
            finished = sum(j.done for j in jobs)
            raise interrupted(f"{finished} of {len(jobs)} runs finished and kept under {out}; "
                              f"rerun the same command to resume") from None
    rows = summarise(exp, jobs)
    csv_path = out / "summary.csv"
    wrote = False
    if rows and (done_now or not csv_path.exists()):
        write_text_atomic(csv_path, rows_to_csv(rows))
        write_text_atomic(out / "experiment.json", json.dumps(
            {"name": exp.name, "title": exp.title, "source": exp.source, "offline": exp.offline,
             "seeds": exp.seeds, "spec": str(exp.path.name), "paper": exp.paper}, indent=2, sort_keys=True) + "\n")
        wrote = True
    report_path = out / "report.html"
    if report and rows and (done_now or not report_path.exists()):
        from kvbench.report.commands import make_report

        html, _ = make_report([j.spec.output for j in jobs if j.done])
        write_text_atomic(report_path, html)
        wrote = True
    return {"generated": len(todo_gen), "ran": done_now, "skipped": len(jobs) - len(todo), "wrote": wrote,
            "summary": str(csv_path), "report": str(report_path) if report else None}


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        spec: Path = typer.Argument(..., help="Experiment spec (workloads/*.toml)."),
        output: Path = typer.Option(None, "-o", "--output", help="Result directory (default results/<spec name>)."),
        target: str = typer.Option(None, "--target", help="sim (default), comma-separated URLs, or cluster.json."),
        jobs: int = typer.Option(2, "--jobs", "-j", min=1,
                                 help="Parallel replay processes (simulator; a real --target runs one at a time)."),
        seeds: str = typer.Option(None, "--seeds", help="Override the spec's seeds, e.g. 0,1."),
        no_report: bool = typer.Option(False, "--no-report", help="Skip the HTML report."),
        reduced: bool = typer.Option(False, "--reduced", help="Run the spec's \\[reduced] version (a quick check)."),
    ) -> None:
        """Reproduce an experiment spec: traces, every combination over its seeds, summary.csv and report.html."""
        seed_list = None
        if seeds:
            try:
                seed_list = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                raise fail(f"--seeds {seeds!r}: expected comma-separated integers") from None
        exp = load_spec(spec, reduced=reduced)
        out = output or Path("results") / (exp.name + ("-reduced" if reduced else ""))
        res = run_experiment(spec, out, target=target, jobs_n=jobs, seeds=seed_list, report=not no_report,
                             reduced=reduced)
        typer.echo(f"{exp.name}: generated {res['generated']} trace(s), ran {res['ran']} run(s), "
                   f"skipped {res['skipped']} finished; summary {res['summary']}")
