import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from kvbench.errors import KvbenchError
from kvbench.report.commands import register


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep `report` a subcommand, as in the real CLI
        return None

    return app


def test_html_report_is_written(app, sweep_dir: Path, tmp_path: Path):
    out = tmp_path / "out" / "report.html"
    res = CliRunner().invoke(app, ["report", str(sweep_dir), "-o", str(out), "--baseline",
                                   str(sweep_dir / "lru-round_robin-16384")])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "vs base" in page
    assert out.stat().st_mode & 0o044  # readable by others, not private like a temp file
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_csv_and_json_go_to_stdout_or_a_file(app, sweep_dir: Path, tmp_path: Path):
    res = CliRunner().invoke(app, ["report", str(sweep_dir), "--format", "csv"])
    assert res.exit_code == 0
    lines = [ln for ln in res.stdout.splitlines() if ln]
    assert lines[0].startswith("run,workload,") and len(lines) == 10
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["report", str(sweep_dir), "--format", "JSON", "-o", str(out)])
    assert res.exit_code == 0
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 9 and {r["eviction"] for r in runs} == {"lru", "rlt", "arc"}


def test_a_folder_without_runs_is_an_error_and_writes_nothing(app, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")])
    assert isinstance(res.exception, KvbenchError) and "no finished runs" in str(res.exception)
    assert "skipped" in res.stderr
    assert not (tmp_path / "r.html").exists()
    (tmp_path / "listy").mkdir()
    (tmp_path / "listy" / "run.json").write_text("[1, 2]")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "listy"), "--format", "csv"])
    assert isinstance(res.exception, KvbenchError) and res.stdout.strip() == ""


def test_bad_format_is_a_kvbench_error(app, sweep_dir: Path):
    res = CliRunner().invoke(app, ["report", str(sweep_dir), "--format", "xml"])
    assert isinstance(res.exception, KvbenchError)
    assert "--format xml" in str(res.exception)


def test_real_cli_exit_status(sweep_dir: Path, tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "kvbench", "report", str(tmp_path / "missing")],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("kvbench: error: ")
    assert "missing" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "kvbench", "report", str(sweep_dir), "--format", "csv"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0
    assert len(pd.read_csv(io.StringIO(proc.stdout))) == 9
