"""Interrupts end a command with exit status 130, one line, and no cut or half-written output."""

import signal

import pytest
import typer

from kvbench import cli
from kvbench.workloads import build
from tests.workloads.conftest import mooncake_file  # noqa: F401  (fixture)


def test_typer_exit_code_is_the_process_exit_code(monkeypatch):
    def exits(*_a, **_k):
        return 130  # what click returns for `raise typer.Exit(130)` outside standalone mode

    monkeypatch.setattr(cli, "app", exits)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130


def test_sigterm_is_handled_like_ctrl_c(monkeypatch):
    monkeypatch.setattr(cli, "app", lambda **_k: signal.raise_signal(signal.SIGTERM))
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as info:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, old)
    assert info.value.code == 130


def test_interrupted_import_writes_no_trace(monkeypatch, tmp_path, mooncake_file, capsys):  # noqa: F811
    added = {"n": 0}
    real_add = build.Rows.add

    def add_then_interrupt(self, **kw):
        added["n"] += 1
        if added["n"] == 3:
            raise KeyboardInterrupt
        real_add(self, **kw)

    monkeypatch.setattr(build.Rows, "add", add_then_interrupt)
    out = tmp_path / "out" / "t.parquet"
    monkeypatch.setattr("sys.argv", ["kvbench", "generate", "trace", "--format", "mooncake", "--input",
                                     str(mooncake_file), "-o", str(out)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped after 2" in err[0] and "no trace written" in err[0]
    assert not out.exists() and not list(out.parent.glob("*")) if out.parent.exists() else True


def test_typer_exit_inside_a_command_reaches_the_shell(monkeypatch):
    app = typer.Typer()

    @app.command()
    def stop() -> None:
        raise typer.Exit(130)

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr("sys.argv", ["kvbench"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130


def test_sigterm_during_a_parallel_sweep_is_exit_130_one_line_and_no_debris(tmp_path):
    import subprocess
    import sys
    import time

    trace = tmp_path / "t.parquet"
    gen = subprocess.run([sys.executable, "-m", "kvbench", "generate", "gsp", "--groups", "1000",
                          "--prompts-per-group", "20", "--lengths", "256", "--rate", "1000", "--output-tokens",
                          "1000", "--seed", "0", "-o", str(trace)], capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "kvbench", "replay", str(trace), "--target", "sim",
                             "--workers", "2", "--eviction", "lru,rlt", "--router", "round_robin", "--jobs", "2",
                             "-o", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out / "lru-round_robin").exists():  # the sweep has started: its folders exist
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("kvbench: interrupted: ")
    left = [p for p in out.rglob("*")] if out.exists() else []
    assert not [p for p in left if p.name.endswith(".tmp")]
    for run_dir in {p.parent for p in left if p.is_file()}:
        assert (run_dir / "run.json").exists()  # only finished runs stay


def test_sigterm_while_writing_a_trace_leaves_no_temporary_file(monkeypatch, tmp_path):
    import pyarrow.parquet as pq

    real = pq.write_table

    def write_then_terminate(table, where, **kw):
        real(table, where, **kw)  # the temporary file now exists, half way to its rename
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(pq, "write_table", write_then_terminate)
    out = tmp_path / "t.parquet"
    monkeypatch.setattr("sys.argv", ["kvbench", "generate", "gsp", "--groups", "2", "--prompts-per-group", "2",
                                     "--lengths", "64", "-o", str(out)])
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as info:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, old)
    assert info.value.code == 130
    assert list(tmp_path.iterdir()) == []


def test_sigint_kvbench_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    """The real signal at a real point: once the first run of the spec has finished."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "workloads" / "quickstart.toml"
    # eight seeds (48 runs, several seconds) so that the signal, sent once the first run has finished, lands
    # in the middle however late a busy machine lets this process see that first run
    base = [sys.executable, "-m", "kvbench", "run", str(spec), "--reduced", "--jobs", "1", "--no-report",
            "--seeds", "0,1,2,3,4,5,6,7"]
    clean = subprocess.run([*base, "-o", str(tmp_path / "clean")], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "cut"
    # as a foreground command gets Ctrl-C: default disposition, whatever this test process inherited (a
    # background job of a shell without job control starts with SIGINT ignored, and children inherit that)
    proc = subprocess.Popen([*base, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/**/job.key")):
        assert proc.poll() is None and time.monotonic() < deadline, "no run finished"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the whole spec finished before the signal arrived")  # reported as a failure in CI
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("kvbench: interrupted: "), err
    resumed = subprocess.run([*base, "-o", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "summary.csv").read_bytes() == (tmp_path / "clean" / "summary.csv").read_bytes()
