"""`kvbench run`: every spec in workloads/ runs end to end in its reduced form, and re-running is a no-op."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.errors import KvbenchError
from kvbench.experiment import load_spec, plan, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "workloads").glob("*.toml"))


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_spec_names_its_source():
    assert len(SPECS) >= 14
    for spec in SPECS:
        exp = load_spec(spec)
        assert exp.source and exp.offline, f"{spec.name}: source and offline notes are required"
        assert exp.name == spec.stem
        if exp.name != "quickstart":
            assert len(exp.seeds) == 5, f"{spec.name}: reproductions use 5 seeds"


def test_required_combinations_are_covered():
    multi = set()
    single = set()
    for spec in SPECS:
        exp = load_spec(spec)
        workers = exp.replay.get("workers", 4)
        if workers == 1:
            single.update(exp.evictions)
        else:
            multi.update((e, r) for e in exp.evictions for r in exp.routers)
    for router in ("random", "round_robin", "cache_aware", "lbgr"):
        for ev in ("lru", "rlt"):
            assert (ev, router) in multi
    assert {"lru", "dbl", "arc", "belady"} <= single


GOLDEN = Path(__file__).parent / "golden" / "summaries"


def _assert_same_summary(got: Path, golden: Path) -> None:
    """The reduced run's summary.csv equals the one recorded before a refactoring (tests/golden/summaries).

    A change of the simulator's results shows here first; when it is meant (a fidelity fix, a policy fixed
    to match its paper), regenerate the golden files with `python scripts/golden_summaries.py` and say why
    in the commit. Numbers compare to 1e-6 relative (the CSV's own rounding), everything else exactly."""
    want = list(csv.DictReader(golden.open()))
    have = list(csv.DictReader(got.open()))
    assert [list(r) for r in have] == [list(r) for r in want], f"{got}: columns differ from {golden}"
    assert len(have) == len(want), f"{got}: {len(have)} rows, {golden} has {len(want)}"
    for i, (h, w) in enumerate(zip(have, want)):
        for key in w:
            a, b = h[key], w[key]
            try:
                fa, fb = float(a), float(b)
            except ValueError:
                assert a == b, f"{got} row {i} {key}: {a!r}, golden {b!r}"
                continue
            assert fa == pytest.approx(fb, rel=1e-6, abs=1e-9, nan_ok=True), \
                f"{got} row {i} ({h.get('eviction')}, {h.get('router')}) {key}: {a}, golden {b}"


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_reduced_spec_end_to_end(spec: Path, tmp_path: Path):
    out = tmp_path / spec.stem
    exp = load_spec(spec, reduced=True)
    _, jobs = plan(exp, out)
    res = run_experiment(spec, out, jobs_n=1, progress=False, reduced=True)
    assert res["ran"] == len(jobs) and res["skipped"] == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    n_values = len(exp.sweep_values) if exp.sweep_field else 1
    assert len(rows) == len(exp.evictions) * len(exp.routers) * n_values
    for row in rows:
        assert 0.0 <= float(row["hit_rate_mean"]) <= 1.0
        assert float(row["request_throughput_mean"]) > 0
    for job in jobs:
        run = json.loads((job.spec.output / "run.json").read_text())
        assert run["summary"]["completed"] + run["summary"]["failed"] == run["summary"]["num_requests"]
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and exp.name in html
    _assert_same_summary(out / "summary.csv", GOLDEN / f"{spec.stem}.csv")

    before = _snapshot(out)
    again = run_experiment(spec, out, jobs_n=1, progress=False, reduced=True)
    assert again["ran"] == 0 and again["generated"] == 0 and not again["wrote"]
    assert _snapshot(out) == before, "re-running a finished spec must not change any file"


def test_resume_runs_only_missing_combinations(tmp_path: Path):
    spec = ROOT / "workloads" / "quickstart.toml"
    out = tmp_path / "qs"
    first = run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
    exp = load_spec(spec, reduced=True)
    _, jobs = plan(exp, out)
    victim = jobs[1].spec.output
    (victim / "run.json").unlink()
    second = run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
    assert first["ran"] == len(jobs)
    assert second["ran"] == 1 and second["skipped"] == len(jobs) - 1
    assert (victim / "run.json").exists()


def test_bad_specs_give_one_line(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[generate]\nkind = "gsp"\n[replay]\nworkerz = 3\n')
    with pytest.raises(KvbenchError, match="unknown \\[replay\\] field"):
        load_spec(bad)
    bad.write_text("name = [\n")
    with pytest.raises(KvbenchError, match="invalid TOML"):
        load_spec(bad)
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(tmp_path / "missing.toml")])
    assert result.exit_code != 0 and isinstance(result.exception, KvbenchError)


def test_real_target_takes_the_clusters_policy(tmp_path: Path):
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"eviction": "rlt", "workers": [{"url": "http://127.0.0.1:9", "pid": 4321}]}))
    exp = load_spec(ROOT / "workloads" / "quickstart.toml", reduced=True)
    _, jobs = plan(exp, tmp_path / "out", target=str(cluster))
    assert {j.eviction for j in jobs} == {"rlt"}
    assert {j.router for j in jobs} == set(exp.routers)
    assert all(j.spec.target == str(cluster) for j in jobs)


def test_a_real_target_runs_one_replay_at_a_time(tmp_path: Path, monkeypatch):
    # two replays at once against the same servers would each reset the other's caches
    from kvbench import experiment, jobs

    def no_pool(*_a, **_k):
        raise AssertionError("replays against real servers must not run in parallel")

    ran = []
    monkeypatch.setattr(jobs, "ProcessPool", no_pool)
    monkeypatch.setattr(experiment, "_run_job", lambda spec, key: ran.append(spec.target) or str(spec.output))
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"eviction": "lru", "workers": [{"url": "http://127.0.0.1:9", "pid": 4321}]}))
    res = run_experiment(ROOT / "workloads" / "quickstart.toml", tmp_path / "out", target=str(cluster), jobs_n=2,
                         progress=False, reduced=True, report=False)
    assert res["ran"] == len(ran) >= 2 and set(ran) == {str(cluster)}


def test_router_params_are_per_router(tmp_path: Path):
    exp = load_spec(ROOT / "workloads" / "rlt-gsp-sglang046.toml", reduced=True)
    _, jobs = plan(exp, tmp_path / "out")
    by_router = {j.router: j.spec.router_params for j in jobs}
    assert by_router["cache_aware"] == {"defaults": "sglang-0.4.6", "fallback": "smallest_tree"}
    assert by_router["lbgr"] == {}
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[generate]\nkind = "gsp"\n[replay]\nrouter_params = { defaults = "cli" }\n')
    with pytest.raises(KvbenchError, match="router_params must map"):
        load_spec(bad)


def _interrupt_after(monkeypatch, k: int) -> None:
    """Ctrl-C arriving when the k-th simulated request of the experiment finishes (an event, not a timer)."""
    from kvbench.sim import engine

    real = engine.ClusterSimulator._finish
    seen = {"n": 0}

    def finish(self, r, now):
        seen["n"] += 1
        if seen["n"] == k:
            raise KeyboardInterrupt
        real(self, r, now)

    monkeypatch.setattr(engine.ClusterSimulator, "_finish", finish)


@pytest.mark.parametrize("k", [1, 37, 150])
def test_interrupt_then_resume_gives_the_uninterrupted_summary(tmp_path: Path, monkeypatch, k: int):
    spec = ROOT / "workloads" / "quickstart.toml"
    clean = tmp_path / "clean"
    run_experiment(spec, clean, jobs_n=1, progress=False, reduced=True, report=False)
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _interrupt_after(m, k)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(spec, cut, jobs_n=1, progress=False, reduced=True, report=False)
    interrupted_runs = [json.loads(p.read_text()) for p in cut.glob("runs/**/run.json")]
    assert any(r["interrupted"] for r in interrupted_runs), "the cut run must be on disk, marked interrupted"
    resumed = run_experiment(spec, cut, jobs_n=1, progress=False, reduced=True, report=False)
    assert resumed["ran"] >= 1
    assert (cut / "summary.csv").read_bytes() == (clean / "summary.csv").read_bytes()


def _run_then_edit(tmp_path: Path, edit) -> tuple[dict, dict, Path]:
    """Run the reduced quickstart, change its spec with ``edit(text)``, run again: (first, second, out)."""
    spec = tmp_path / "qs.toml"
    text = (ROOT / "workloads" / "quickstart.toml").read_text()
    spec.write_text(text)
    out = tmp_path / "out"
    first = run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
    (out / "summary.before.csv").write_bytes((out / "summary.csv").read_bytes())
    spec.write_text(edit(text))
    return first, run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False), out


def test_a_changed_spec_reruns_instead_of_reusing_old_results(tmp_path: Path):
    first, second, out = _run_then_edit(tmp_path, lambda text: (
        text.replace("[reduced]", "[reduced]\nreplay = { max_num_seqs = 3 }", 1)
        if "replay = {" not in text.split("[reduced]", 1)[1] else
        text.replace("replay = { ", "replay = { max_num_seqs = 3, ", 1)))
    before = (out / "summary.before.csv").read_text()
    assert second["skipped"] == 0 and second["ran"] == first["ran"]
    assert (out / "summary.csv").read_text() != before


def test_a_corrupt_run_json_is_rerun(tmp_path: Path):
    spec = ROOT / "workloads" / "quickstart.toml"
    out = tmp_path / "qs"
    run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
    before = (out / "summary.csv").read_bytes()
    victim = next(out.glob("runs/**/run.json"))
    victim.write_text("[1, 2")
    again = run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
    assert again["ran"] == 1 and (out / "summary.csv").read_bytes() == before


@pytest.mark.parametrize("name", ["../../escape", "a/b", "", ".hidden", 3])
def test_spec_names_must_be_plain_folder_names(tmp_path: Path, name):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'name = {json.dumps(name)}\n[generate]\nkind = "gsp"\n[replay]\nworkers = 2\n')
    with pytest.raises(KvbenchError, match="plain folder name"):
        load_spec(bad)


def test_run_help_shows_the_reduced_table_name():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "[reduced] version" in result.output


def test_replay_warmup_is_a_spec_field(tmp_path: Path):
    spec = tmp_path / "w.toml"
    spec.write_text('name = "w"\n[generate]\nkind = "gsp"\n[replay]\nwarmup = 16\n')
    _, jobs = plan(load_spec(spec), tmp_path / "out")
    assert jobs and {j.spec.warmup for j in jobs} == {16}
    spec.write_text('name = "w"\n[generate]\nkind = "gsp"\n[replay]\nwarmup = "some"\n')
    with pytest.raises(KvbenchError, match="warmup = 'some' must be an int"):
        load_spec(spec)


@pytest.mark.parametrize("text,pattern", [
    ('name = "x"\n[generate]\nkind = "gsp"\nargs = { order = "zigzag" }\n[replay]\nworkers = 2\n',
     r"^{bad}: \[generate\] order: --order zigzag: unknown value"),
    ('name = "x"\n[generate]\nkind = "gsp"\nargs = { grups = 2 }\n[replay]\nworkers = 2\n',
     r"^{bad}: \[generate\] grups: unknown option --grups"),
    ('name = "x"\nseeds = [0, "1"]\n[generate]\nkind = "gsp"\n[replay]\nworkers = 2\n',
     "^{bad}: seeds must be a non-empty list of integers"),
    ('name = "x"\n[generate]\nargs = {}\n[replay]\nworkers = 2\n', r'^{bad}: \[generate\] needs kind = "gsp" \| "docqa"'),
    ('name = "x"\n[generate]\nkind = "gsp"\n', "^{bad}: missing 'replay'"),
    ('name = "x"\ntitel = "y"\n[generate]\nkind = "gsp"\n[replay]\nworkers = 2\n', "^{bad}: unknown key 'titel'"),
])
def test_spec_errors_name_the_file_and_key(tmp_path: Path, text: str, pattern: str):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(KvbenchError, match=pattern.replace("{bad}", str(bad))):
        load_spec(bad)


def test_a_results_folder_from_the_argv_sidecars_keeps_its_runs(tmp_path: Path):
    # before the config models a trace's sidecar held the generate command line (<trace>.argv.json);
    # such a folder regenerates its traces once, byte for byte, so every finished run is kept
    spec = ROOT / "workloads" / "quickstart.toml"
    out = tmp_path / "qs"
    run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
    traces = sorted(out.glob("traces/*.parquet"))
    before = {p: p.read_bytes() for p in traces}
    for trace in traces:
        trace.with_name(trace.name + ".config.json").rename(trace.with_name(trace.name + ".argv.json"))
    again = run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
    assert again["generated"] == len(traces) and again["ran"] == 0
    assert {p: p.read_bytes() for p in traces} == before
    assert not list(out.glob("traces/*.argv.json"))


def test_a_changed_generate_option_regenerates_the_trace(tmp_path: Path):
    _, again, _ = _run_then_edit(tmp_path, lambda text: text.replace("generate = { groups = 8,", "generate = { groups = 9,"))
    assert again["generated"] == 1 and again["skipped"] == 0
