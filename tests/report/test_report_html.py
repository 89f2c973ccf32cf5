"""The HTML file: self-contained, every outside string escaped, every section present."""

import json
import re
from pathlib import Path

import plotly
from tests.report.report_strings import IMG, XSS

from kvbench.report.build import build_report
from kvbench.report.inputs import load_inputs
from kvbench.report.page import render_html, script_json


def _html(*paths: Path, baseline: Path | None = None) -> str:
    return render_html(build_report(load_inputs(list(paths), baseline)))


def test_script_json_cannot_close_a_script():
    text = script_json({"a": "</script><!-- & \u2028", "b": [1.5, None]})
    assert not re.search(r"[<>&\u2028]", text)
    assert json.loads(text) == {"a": "</script><!-- & \u2028", "b": [1.5, None]}


def test_hostile_strings_never_appear_unescaped(hostile_run: Path, sweep_dir: Path):
    page = _html(hostile_run, sweep_dir, baseline=hostile_run)
    assert XSS not in page
    assert IMG not in page
    # Only our own script elements: plotly.js and the chart data.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    # The name is shown, escaped, in the table, the section, the failures table and the configuration.
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4
    assert "upstream said &lt;script&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;" in page  # a config value that tries to close the <pre>
    # Inside the chart JSON the name is entity-escaped for plotly and \u-escaped for the script.
    data = page[page.index("var KVB_CHARTS"):]
    assert re.search(r"\\u0026lt;script\\u0026gt;alert\(1\)\\u0026lt;(/|\\u002f)script\\u0026gt;", data)


def test_self_contained_with_plotly_once(sweep_dir: Path):
    page = _html(sweep_dir)
    assert page.count(plotly.offline.get_plotlyjs()[:200]) == 1
    assert page.count("plotly.js v") == 1
    assert re.findall(r"<script[^>]{0,200}>", page) == ['<script type="text/javascript">', "<script>"]
    assert "<link" not in page


def test_sections_and_charts(sweep_dir: Path, tmp_path: Path):
    from tests.report.synthetic import write_synthetic_run

    other = write_synthetic_run(tmp_path / "other", name="chat-run", generator="sharegpt", n=60)
    report = build_report(load_inputs([sweep_dir, other], sweep_dir / "lru-round_robin-16384"))
    page = render_html(report)
    titles = [c.title for c in report.sections[0].charts]
    assert titles == ["heatmap", "hit rate", "TTFT", "throughput", "TTFT CDF", "end-to-end latency CDF",
                      "hit rate over time", "worker load", "sweep cache_tokens"]
    assert len(report.sections) == 2 and "sweep cache_tokens" not in [c.title for c in report.sections[1].charts]
    assert f'data-chart-count="{len(report.charts)}"' in page
    assert page.count('class="kvb-chart"') == len(report.charts)
    assert page.count("<details>") == 10  # each run's configuration on request
    assert "Workload: gsp" in page and "Workload: sharegpt" in page
    assert "2 different workloads" in page and "Ratios are against the baseline run lru-round_robin-c16384" in page
    assert "lru-round_robin-c65536: 4 of 300 requests failed" in page
    assert 'id="failures-table"' in page
    # One colour per combination, shared by every chart and both workloads.
    expected = {r.combination.label: report.palette(r.combination) for r in report.runs}
    assert len(expected) == 3 and len(set(expected.values())) == 3
    checked = 0
    for chart in report.charts:
        for trace in chart.figure.data:
            group = (trace.legendgroup or "").split(" (")[0]
            if group in expected:
                colour = trace.marker.color if trace.type == "bar" else trace.line.color
                assert colour == expected[group], (chart.title, trace.name)
                checked += 1
    assert checked > 50


def test_empty_inputs_make_a_report_that_says_so(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    page = _html(tmp_path / "empty")
    assert "No runs found" in page and "Inputs without runs" in page
    assert 'data-chart-count="0"' in page


def test_run_with_only_failures(tmp_path: Path):
    from tests.report.synthetic import write_synthetic_run

    dead = write_synthetic_run(tmp_path / "dead", name="dead", n=20, failed=20)
    ok = write_synthetic_run(tmp_path / "ok", name="fine", n=50)
    report = build_report(load_inputs([dead, ok]))
    page = render_html(report)
    assert "dead: no completed requests (20 rows, 20 failed or cancelled)" in page
    assert report.table.set_index("run").loc["dead", "completed"] == 0
    # Only the completed run has latency curves.
    cdf = next(c for c in report.charts if c.title == "TTFT CDF")
    assert [t.name for t in cdf.figure.data] == ["fine"]


def test_interrupted_and_failing_runs_are_flagged(tmp_path: Path):
    from tests.report.synthetic import write_synthetic_run

    cut = write_synthetic_run(tmp_path / "cut", name="cut", n=60, extra={"interrupted": True})
    lossy = write_synthetic_run(tmp_path / "lossy", name="lossy", n=60, failed=5)
    fine = write_synthetic_run(tmp_path / "fine", name="fine", n=60)
    page = render_html(build_report(load_inputs([cut, lossy, fine])))
    assert "interrupted (Ctrl-C): the run stopped early" in page
    assert "lossy: 5 of 60 requests failed" in page


def test_belady_below_an_online_policy_is_explained(tmp_path: Path):
    from tests.report.synthetic import write_synthetic_run

    note = "belady is positioned ... (what this run's number bounds)"
    low = write_synthetic_run(tmp_path / "b", name="b", eviction="belady", hit_level=0.3,
                              extra={"backend_config": {"simulator": {"belady_note": note}}})
    high = write_synthetic_run(tmp_path / "l", name="l", eviction="lru", hit_level=0.5)
    page = render_html(build_report(load_inputs([low, high])))
    assert "the offline policy belady" in page and "docs/belady.md" in page and note.split("(")[0] in page
    fine = write_synthetic_run(tmp_path / "b2", name="b2", eviction="belady", hit_level=0.7)
    page = render_html(build_report(load_inputs([fine, high])))
    assert "the offline policy belady" not in page
