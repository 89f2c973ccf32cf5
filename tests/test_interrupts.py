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
