"""The report in a real headless Chromium: loads from file:// with the network off, draws every chart,
logs no errors and never opens a dialog, even with hostile names in it. Run with ``-m browser``."""

import os
import shutil
from pathlib import Path

import pytest
from tests.report.report_cdp import find_chromium, load_page

from kvbench.report.build import build_report
from kvbench.report.inputs import load_inputs
from kvbench.report.page import render_html
from tests.report.synthetic import write_synthetic_run

pytestmark = pytest.mark.browser

CHECKS = {
    "expected": "document.querySelectorAll('.kvb-chart').length",
    "containers": "document.querySelectorAll('.kvb-chart .plot-container').length",
    "with_svg": "Array.from(document.querySelectorAll('.kvb-chart')).filter(c => c.querySelector('.main-svg')).length",
    "rendered_attr": "Number(document.body.getAttribute('data-charts-rendered'))",
    "empty_charts": "Array.from(document.querySelectorAll('.kvb-chart')).filter("
                    "c => !c.querySelector('.main-svg') || c.getBoundingClientRect().height < 100).length",
    "traces_drawn": "document.querySelectorAll('.kvb-chart .trace').length",
    "alerted": "window.__kvb_alerted === true",
    "injected_nodes": "document.querySelectorAll('img[src=x], main script, td script, pre script').length",
    "title": "document.title",
}
WAIT = ("document.body && document.body.getAttribute('data-charts-rendered') === "
        "document.body.getAttribute('data-chart-count')")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return path


def _save_screenshot(png: bytes, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    shot.write_bytes(png)
    extra = os.environ.get("KVBENCH_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(extra) / name)
    return shot


def test_report_renders_offline_without_errors(chromium, sweep_dir: Path, hostile_run: Path, tmp_path: Path):
    other = write_synthetic_run(tmp_path / "chat", name="chat-lru", generator="sharegpt",
                                params={"conversations": 128}, n=250, failed=2)
    report = build_report(load_inputs([sweep_dir, other, hostile_run], sweep_dir / "lru-round_robin-16384"))
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    n_charts = len(report.charts)
    assert n_charts >= 20

    result = load_page(chromium, page, wait_js=WAIT, evaluations=CHECKS)
    shot = _save_screenshot(result.screenshot, tmp_path, "kvbench-report.png")

    assert result.console_errors == []
    assert result.exceptions == []
    assert result.dialogs == []  # no alert() from any hostile string
    assert result.network_requests == []
    ev = result.evaluations
    assert ev["expected"] == n_charts
    assert ev["containers"] == n_charts and ev["with_svg"] == n_charts and ev["rendered_attr"] == n_charts
    assert ev["empty_charts"] == 0
    assert ev["traces_drawn"] > n_charts
    assert ev["alerted"] is False and ev["injected_nodes"] == 0
    assert shot.stat().st_size > 50_000 and result.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_report_renders(chromium, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    page = tmp_path / "empty.html"
    page.write_text(render_html(build_report(load_inputs([tmp_path / "empty"]))), encoding="utf-8")
    result = load_page(chromium, page, wait_js=WAIT,
                       evaluations={"text": "document.body.innerText", "expected": CHECKS["expected"]})
    _save_screenshot(result.screenshot, tmp_path, "kvbench-report-empty.png")
    assert result.console_errors == [] and result.exceptions == [] and result.dialogs == []
    assert result.evaluations["expected"] == 0
    assert "No runs found" in result.evaluations["text"]


def test_the_driver_catches_what_it_guards_against(chromium, tmp_path: Path):
    """A control page that does every forbidden thing, so a silent driver cannot pass the test above."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><script>console.error('boom'); alert('x');</script>"
                    "<script src='https://cdn.example.invalid/x.js'></script>"
                    "<script>undefinedFunction();</script></body></html>", encoding="utf-8")
    result = load_page(chromium, page, evaluations={"alerted": CHECKS["alerted"]}, timeout=20)
    assert any("boom" in e for e in result.console_errors)
    assert result.dialogs == ["alert: x"] and result.evaluations["alerted"] is True
    assert result.network_requests == ["https://cdn.example.invalid/x.js"]
    assert any("undefinedFunction" in e for e in result.exceptions)
