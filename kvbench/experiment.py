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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator

from kvbench.errors import KvbenchError, fail, interrupted
from kvbench.fsutil import read_toml, staged, write_text_atomic
from kvbench.jobs import EXECUTORS, LOCAL, Placement, placement, refuse_real_target, run_jobs
from kvbench.jobs import Job as RunJob
from kvbench.resolve import resolve_evictions, validate_spec
from kvbench.spec import ReplaySpec
from kvbench.workloads import CONFIGS, GenerateConfig, generate, parse_config

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


def _seed_list(value: Any) -> Any:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                              for s in value):
        raise ValueError("seeds must be a non-empty list of integers")
    return value


Seeds = Annotated[list[int], BeforeValidator(_seed_list)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateTable(_Table):
    """``[generate]``: a `kvbench generate KIND` call; args are its options without dashes (checked against
    the source's config model, kvbench.workloads.configs, once [reduced] and the sweep are applied)."""

    kind: str
    args: dict[str, Any] = {}


class SweepTable(_Table):
    field: str | None = None  # a ReplaySpec field, or "generate.<option>"
    values: list[Any] = []

    @model_validator(mode="after")
    def _check(self) -> SweepTable:
        if self.field is not None:
            if not self.values:
                raise ValueError("[sweep] needs values = [...]")
            if not (self.field.startswith("generate.") or self.field in _REPLAY_FIELDS):
                raise ValueError(f"[sweep] field '{self.field}' is neither a replay field nor generate.<option>")
        return self


class ReducedTable(_Table):
    generate: dict[str, Any] = {}
    replay: dict[str, Any] = {}
    seeds: Seeds | None = None
    sweep_values: list[Any] | None = None


class ExperimentSpec(_Table):
    """A spec file (workloads/*.toml) as written; :func:`load_spec` applies [reduced] and checks [replay]."""

    name: str
    title: str | None = None
    source: str = ""
    offline: str = ""
    seeds: Seeds = [0]
    generate: GenerateTable
    replay: dict[str, Any]  # ReplaySpec fields shared by every combination (checked by load_spec)
    sweep: SweepTable | None = None
    reduced: ReducedTable | None = None
    paper: dict[str, Any] = {}

    @field_validator("name", mode="before")
    @classmethod
    def _plain_name(cls, value: Any) -> Any:
        # the name becomes a folder under results/: "../x" or "a/b" would write elsewhere
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"name {value!r} must be a plain folder name (letters, digits, '.', '_', '-')")
        return value

    @field_validator("generate", mode="before")
    @classmethod
    def _has_kind(cls, value: Any) -> Any:
        if isinstance(value, dict) and "kind" not in value:
            raise ValueError(f"[generate] needs kind = {' | '.join(map(repr, CONFIGS))}".replace("'", '"'))
        return value


def _spec_error(exc: ValidationError, where: str) -> KvbenchError:
    """The first problem in a spec file as one line naming the file and the key."""
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"])
    if err["type"] == "value_error":
        return fail(f"{where}: {err['ctx']['error']}")
    if err["type"] == "missing":
        return fail(f"{where}: missing '{key}'; see the module docstring of kvbench.experiment")
    if err["type"] == "extra_forbidden":
        return fail(f"{where}: unknown key '{key}'; see the module docstring of kvbench.experiment")
    return fail(f"{where}: {key} = {err['input']!r}: {err['msg'][0].lower()}{err['msg'][1:]}")


def load_spec(path: str | Path, reduced: bool = False) -> Experiment:
    p = Path(path)
    if not p.exists():
        raise fail(f"{p}: no such spec file; see workloads/ for examples")
    where = str(p)
    try:
        spec = ExperimentSpec.model_validate(read_toml(p, where))
    except ValidationError as exc:
        raise _spec_error(exc, where) from None
    gen_args = dict(spec.generate.args)
    replay = dict(spec.replay)
    seeds = spec.seeds
    sweep = spec.sweep or SweepTable()
    sweep_values = list(sweep.values)
    if reduced:
        small = spec.reduced
        if small is None:
            raise fail(f"{where}: no [reduced] table; add one to run --reduced")
        gen_args.update(small.generate)
        replay.update(small.replay)
        seeds = small.seeds or seeds
        if small.sweep_values is not None and sweep.field is not None:
            sweep_values = list(small.sweep_values)
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
    exp = Experiment(
        name=spec.name, path=p, title=spec.title if spec.title is not None else spec.name, source=spec.source,
        offline=spec.offline, seeds=seeds, gen_kind=spec.generate.kind, gen_args=gen_args,
        replay=replay, evictions=lists["eviction"], routers=lists["router"], sweep_field=sweep.field,
        sweep_values=sweep_values, paper=dict(spec.paper),
        router_params=per_name["router_params"], eviction_params=per_name["eviction_params"],
    )
    for value in exp.sweep_values if exp.sweep_field else [None]:  # every option error before any work
        _gen_config(exp, seeds[0], value)
    return exp


def _gen_config(exp: Experiment, seed: int, sweep_value: Any) -> GenerateConfig:
    """The trace's config: the spec's [generate] args, the swept option if any, and the seed."""
    args = dict(exp.gen_args)
    if exp.sweep_field and exp.sweep_field.startswith("generate."):
        args[exp.sweep_field.split(".", 1)[1]] = sweep_value
    args["seed"] = seed
    return parse_config(exp.gen_kind, args, where=f"{exp.path}: [generate]")


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


def plan(exp: Experiment, out: Path, target: str | None = None
         ) -> tuple[list[tuple[Path, GenerateConfig]], list[Job]]:
    """Traces to generate (path, config) and replay jobs, in a stable order."""
    gens: dict[Path, GenerateConfig] = {}
    jobs: list[Job] = []
    values = exp.sweep_values if exp.sweep_field else [None]
    evictions = exp.evictions
    if target and target != "sim":
        evictions = resolve_evictions(None, target)  # a real cluster's policy is fixed when it starts
    for value in values:
        replay = dict(exp.replay)
        if exp.sweep_field and not exp.sweep_field.startswith("generate."):
            replay[exp.sweep_field] = value
        vtag = "" if value is None else f"{exp.sweep_field.split('.')[-1]}={_value_tag(value)}"
        for seed in exp.seeds:
            gen_tag = f"seed{seed}" + (f"-{vtag}" if vtag and exp.sweep_field.startswith("generate.") else "")
            trace = out / "traces" / f"{gen_tag}.parquet"
            gens[trace] = _gen_config(exp, seed, value)
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


def _run_job(spec: ReplaySpec, key: str) -> str:
    """One replay in a worker process; its key is written last, so only a finished run counts as done."""
    from kvbench.replay import run_replay

    key_file = staged(spec.output) / KEY_FILE
    key_file.unlink(missing_ok=True)  # until this run finishes, the folder holds no finished run
    run_replay(spec)  # raises KeyboardInterrupt after recording an interrupted run: no key is written then
    write_text_atomic(key_file, key + "\n")
    return str(spec.output)


def _config_text(config: GenerateConfig) -> str:
    """What a trace was generated from, kept beside it as ``<trace>.config.json``."""
    return json.dumps({"kind": config.kind, "config": config.model_dump()}, sort_keys=True, default=str) + "\n"


def _trace_is_current(path: Path, config: GenerateConfig) -> bool:
    """A trace is reused only if it was generated from exactly this config (the spec may have changed).

    A results folder from before the configs (an ``.argv.json`` beside the trace) regenerates its traces
    once; the same options give the same bytes, so the job keys and the finished runs still hold."""
    try:
        return path.is_file() and _sidecar(path).read_text(encoding="utf-8") == _config_text(config)
    except (OSError, UnicodeDecodeError):
        return False


def _sidecar(trace: Path) -> Path:
    return trace.with_name(trace.name + ".config.json")


def _run_jobs(name: str, todo: list[Job], jobs_n: int, bar: Any, where: Placement) -> int:
    """Run the jobs through kvbench.jobs (the sweep's runner); returns how many finished.

    Every spec was validated before the traces were generated, so no check is repeated here. The first
    failure stops the rest: a rerun resumes from the finished ones."""
    if not todo:
        return 0
    runs = [RunJob(job.spec.name or str(job.spec.output), job.spec.output, _run_job, (job.spec, job.key),
                   inputs=job.spec.input_files(), last=("run.json", KEY_FILE)) for job in todo]
    return len(run_jobs(runs, jobs_n, keep_going=False, bar=bar, name=name, where=where))


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
                   reduced: bool = False, where: Placement = LOCAL) -> dict[str, Any]:
    """Run (or resume) an experiment; returns counts of what was done. ``where``: local processes or Ray."""
    from kvbench.progress import progress_bar

    exp = load_spec(spec_path, reduced=reduced)
    if seeds:
        exp.seeds = seeds
    out = Path(out)
    if target and target != "sim":
        jobs_n = 1  # replays against one set of real servers must not overlap (each resets the others' caches)
    refuse_real_target(where, target)
    generations, jobs = plan(exp, out, target)
    for job in jobs:  # every flag error before any trace is generated or folder made
        validate_spec(job.spec)
    todo_gen = [(p, config) for p, config in generations if not _trace_is_current(p, config)]
    generating: Path | None = None
    try:  # the bar is closed before the interrupt is announced, so the announcement is stderr's last line
        with progress_bar(enabled=progress) as bar:
            if todo_gen:
                t = bar.add_task(f"{exp.name}: traces", total=len(todo_gen))
                for generating, config in todo_gen:
                    generate(config.kind, config, generating)
                    write_text_atomic(_sidecar(generating), _config_text(config))
                    # the old sidecar, now stale
                    generating.with_name(generating.name + ".argv.json").unlink(missing_ok=True)
                    bar.advance(t)
                generating = None
            key_jobs(jobs)
            todo = [j for j in jobs if not j.done]
            done_now = _run_jobs(exp.name, todo, jobs_n, bar, where)
    except KeyboardInterrupt:
        if generating is not None:
            raise interrupted(f"while generating {generating.name}; rerun the same command to resume") from None
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
        executor: str = typer.Option("local", help=f"Where runs go: {' or '.join(EXECUTORS)} ('ray': one Ray task "
                                                   "per run, --jobs unused; simulator only)."),
        address: str = typer.Option(None, help="--executor ray: an existing Ray cluster's HEAD:PORT "
                                               "(default: start a Ray instance on this machine)."),
    ) -> None:
        """Reproduce an experiment spec: traces, every combination over its seeds, summary.csv and report.html."""
        where = placement(executor, address)
        seed_list = None
        if seeds:
            try:
                seed_list = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                raise fail(f"--seeds {seeds!r}: expected comma-separated integers") from None
        exp = load_spec(spec, reduced=reduced)
        out = output or Path("results") / (exp.name + ("-reduced" if reduced else ""))
        res = run_experiment(spec, out, target=target, jobs_n=jobs, seeds=seed_list, report=not no_report,
                             reduced=reduced, where=where)
        typer.echo(f"{exp.name}: generated {res['generated']} trace(s), ran {res['ran']} run(s), "
                   f"skipped {res['skipped']} finished; summary {res['summary']}")
