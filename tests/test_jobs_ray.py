"""`--executor ray`: a sweep's or an experiment's runs as Ray tasks leave the local executor's files, byte for byte.

One Ray instance (two CPUs, a 100 MB object store) serves the module; the commands run in this process, so they
use it instead of starting their own. Each comparison runs the local executor first, moves its results aside,
then runs Ray into the same paths (run.json records them)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.sim.sim_traces import make_trace
from tests.test_experiment import _snapshot

from kvbench import cli
from kvbench.errors import KvbenchError
from kvbench.jobs import Job, Placement, run_jobs, run_on_node
from kvbench.replay import Combination, _sweep_run, plan_sweep, run_sweep
from kvbench.spec import ReplaySpec
from kvbench.trace import file_sha256

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "workloads" / "quickstart.toml"
RAY = Placement("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
             logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture
def trace(tmp_path):
    return make_trace(tmp_path / "t.parquet", n_groups=3, per_group=4, sessions=2)


def kvbench(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The command in this process (so on the module's Ray instance): exit status, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["kvbench", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def local_then_ray(monkeypatch, capsys, out: Path, *args) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Every file the command writes under ``out``: with the local executor, then with Ray into the same path."""
    code, _, err = kvbench(monkeypatch, capsys, *args)
    assert code == 0, err
    local = files(out)
    shutil.move(out, out.with_name(out.name + "-local"))
    code, _, err = kvbench(monkeypatch, capsys, *args, "--executor", "ray")
    assert code == 0, err
    return local, files(out)


def test_run_gives_the_local_summary_byte_for_byte(tmp_path, monkeypatch, capsys):
    out = tmp_path / "qs"
    local, on_ray = local_then_ray(monkeypatch, capsys, out, "run", QUICKSTART, "--reduced", "--no-report",
                                   "-o", out)
    assert on_ray == local  # every file: traces, run.json, requests.parquet, job.key, summary.csv
    assert len([name for name in on_ray if name.endswith("run.json")]) == 6
    assert on_ray["summary.csv"] == (ROOT / "tests" / "golden" / "summaries" / "quickstart.csv").read_bytes()


def test_resume_on_ray_runs_only_what_is_missing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "qs"
    args = ("run", QUICKSTART, "--reduced", "--no-report", "-o", out, "--executor", "ray")
    assert kvbench(monkeypatch, capsys, *args)[0] == 0
    before = _snapshot(out)
    assert "ran 0 run(s), skipped 6 finished" in kvbench(monkeypatch, capsys, *args)[1]
    assert _snapshot(out) == before, "re-running a finished spec must not change any file"

    victim = out / "runs" / "base" / "rlt-lbgr" / "seed0"
    (victim / "run.json").unlink()
    assert "ran 1 run(s), skipped 5 finished" in kvbench(monkeypatch, capsys, *args)[1]
    again = _snapshot(out)
    assert {k: v[1] for k, v in again.items()} == {k: v[1] for k, v in before.items()}
    rewritten = {k for k in again if again[k][0] != before[k][0]}
    assert rewritten == {"runs/base/rlt-lbgr/seed0/run.json", "runs/base/rlt-lbgr/seed0/requests.parquet",
                         "runs/base/rlt-lbgr/seed0/job.key", "summary.csv", "experiment.json"}


def test_sweep_and_single_replay_write_the_local_files(tmp_path, trace, monkeypatch, capsys):
    out = tmp_path / "sweep"
    local, on_ray = local_then_ray(monkeypatch, capsys, out, "replay", trace, "--eviction", "lru,rlt",
                                   "--router", "cache_aware,round_robin", "--workers", "2", "--cache-tokens",
                                   "2000", "--no-progress", "-o", out)
    assert sorted(on_ray) == sorted(f"{ev}-{rt}/{name}" for ev in ("lru", "rlt")
                                    for rt in ("cache_aware", "round_robin")
                                    for name in ("requests.parquet", "run.json"))
    assert on_ray == local

    one = tmp_path / "one"
    local, on_ray = local_then_ray(monkeypatch, capsys, one, "replay", trace, "--router", "lbgr",
                                   "--scrape-interval", "1", "--no-progress", "-o", one)
    assert sorted(on_ray) == ["requests.parquet", "run.json", "timeline.parquet"]
    assert on_ray == local
    # overwritten without --scrape-interval, the stale timeline goes, as it does locally
    code, _, err = kvbench(monkeypatch, capsys, "replay", trace, "--router", "lbgr", "--no-progress", "-o", one,
                           "--overwrite", "--executor", "ray")
    assert code == 0, err
    assert sorted(files(one)) == ["requests.parquet", "run.json"]


def test_a_failing_job_is_its_error_line_and_the_others_are_kept(tmp_path, trace):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    messages = {}
    for where in (Placement(), RAY):
        out = tmp_path / where.executor
        combos = plan_sweep(ReplaySpec(trace=trace, output=out, workers=2), ["lru", "rlt"], ["round_robin"])
        combos.append(Combination("fifo", "round_robin",
                                  replace(combos[0].spec, trace=bad, eviction="fifo", output=out / "broken")))
        with pytest.raises(KvbenchError) as exc:
            run_sweep(combos, 1, progress=False, where=where)
        messages[where.executor] = str(exc.value)
        assert (out / "lru-round_robin" / "run.json").is_file() and (out / "rlt-round_robin" / "run.json").is_file()
        assert not (out / "broken").exists()
    assert messages["ray"] == messages["local"]  # the trace named as given, not as copied to the node
    assert messages["ray"].startswith(f"fifo-round_robin: {bad}: not a readable Parquet trace")


def test_ctrl_c_cancels_the_rest_and_keeps_what_finished(tmp_path, trace):
    class InterruptOnFirstResult:
        """A progress bar whose first update is a Ctrl-C: exactly one run has been written by then."""

        def add_task(self, *_a, **_k):
            return 0

        def update(self, *_a, **_k):
            raise KeyboardInterrupt

    combos = plan_sweep(ReplaySpec(trace=trace, output=tmp_path / "o", workers=2),
                        ["lru", "rlt", "fifo", "arc"], ["round_robin"])
    jobs = [Job(c.label, c.spec.output, _sweep_run, (c.spec,), inputs=c.spec.input_files()) for c in combos]
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, bar=InterruptOnFirstResult(), where=RAY)
    kept = sorted(p.parent.name for p in (tmp_path / "o").glob("*/run.json"))
    assert len(kept) == 1 and sorted(p.name for p in (tmp_path / "o").iterdir()) == kept
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # the instance outlives a stop it did not start


def test_a_task_needs_nothing_of_this_filesystem(tmp_path, trace):
    """What a node without the driver's files does: the trace arrives as bytes, the output is local."""
    nowhere = tmp_path / "afile"
    nowhere.write_text("x")  # nothing can be created under a file: a write to the given path would fail
    spec = ReplaySpec(trace=nowhere / "t.parquet", output=nowhere / "out", workers=2, progress=False)
    job = Job("lru-round_robin", spec.output, _sweep_run, (spec,), inputs=spec.input_files())
    outcome, result = run_on_node(job, trace.read_bytes())
    assert outcome.error is None and outcome.value["completed"] == 18
    assert [name for name, _ in result] == ["requests.parquet", "run.json"]
    run = json.loads(dict(result)["run.json"])
    assert run["trace_file"]["path"] == str(nowhere / "t.parquet") and run["output"] == str(nowhere / "out")
    assert run["trace_file"]["sha256"] == file_sha256(trace)
    assert nowhere.read_text() == "x"


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("kvbench: error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--address", "127.0.0.1:6379"], "--address 127.0.0.1:6379: names a Ray cluster; pass it with --executor ray"),
    (["--executor", "dask"], "--executor dask: unknown executor; use local or ray"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers there"),
    (["--executor", "ray", "--target", "http://127.0.0.1:9"], "--executor ray: runs simulator replays only"),
])
@pytest.mark.parametrize("command", ["replay", "run"])
def test_bad_executor_flags_give_one_line(tmp_path, trace, command, args, needle):
    first = [str(trace), "--eviction", "lru,rlt"] if command == "replay" else [str(QUICKSTART), "--reduced"]
    r = subprocess.run([sys.executable, "-m", "kvbench", command, *first, "-o", str(tmp_path / "o"), *args],
                       cwd=tmp_path, capture_output=True, text=True, check=False)
    assert needle in _one_line(r)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["replay", "run"])
def test_without_ray_the_flag_says_how_to_install_it(tmp_path, trace, command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    first = trace if command == "replay" else QUICKSTART
    code, _, err = kvbench(monkeypatch, capsys, command, first, "--reduced" if command == "run" else "--no-progress",
                           "--executor", "ray", "-o", tmp_path / "o")
    assert code == 2
    assert err == "kvbench: error: --executor ray: Ray is not installed; pip install 'kvbench[ray]'\n"
    assert not (tmp_path / "o").exists()
