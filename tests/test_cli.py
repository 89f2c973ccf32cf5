"""The `kvbench` entry point: every failure a user can cause is one `kvbench: error:` line, exit status 2."""

import subprocess
import sys

import pytest

from kvbench import cli


def test_os_error_is_one_line_naming_the_path(monkeypatch, capsys):
    def raises(*_a, **_k):
        raise PermissionError(13, "Permission denied", "out/run.json")

    monkeypatch.setattr(cli, "app", raises)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "kvbench: error: out/run.json: Permission denied\n"


def test_generate_to_a_path_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = subprocess.run([sys.executable, "-m", "kvbench", "generate", "gsp", "-o", str(tmp_path / "afile" / "t.parquet"),
                        "--groups", "2", "--prompts-per-group", "2", "--lengths", "64"],
                       cwd=tmp_path, capture_output=True, text=True, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("kvbench: error: ") and "afile" in lines[0]
    assert (tmp_path / "afile").read_text() == "x"
