"""The README's simulator examples run as written (in a scratch directory)."""

from __future__ import annotations

import json
import subprocess

from tests.readme_blocks import README, readme_commands


def test_readme_sim_examples_run(tmp_path):
    commands = readme_commands("sim")
    assert len(commands) >= 10
    for cmd in commands:
        res = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"README command failed: {cmd}\n{res.stderr[-2000:]}"
    run = json.loads((tmp_path / "results/gsp/rlt-lbgr/run.json").read_text())
    assert run["summary"]["completed"] == 512
    assert (tmp_path / "report.html").stat().st_size > 100_000


def test_readme_install_and_test_commands_match_ci():
    text = README.read_text(encoding="utf-8")
    assert "pip install -e . && kvbench run workloads/quickstart.toml" in text
    assert "bash scripts/test.sh" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
