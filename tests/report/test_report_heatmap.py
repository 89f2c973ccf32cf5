"""The eviction x router heatmap, and run labels that stay readable with many runs."""

from __future__ import annotations

import pytest

from kvbench.report.charts import _run_axis, short_names
from kvbench.report.commands import make_report
from tests.report.synthetic import write_synthetic_run


def _grid(root, seeds=(0, 1)):
    paths = {}
    for i, ev in enumerate(("lru", "rlt")):
        for j, rt in enumerate(("round_robin", "cache_aware", "lbgr")):
            for seed in seeds:
                paths[(ev, rt, seed)] = write_synthetic_run(
                    root / f"{ev}-{rt}-{seed}", name=f"exp/{ev}+{rt}/seed{seed}", eviction=ev, router=rt, n=80,
                    seed=100 * i + 10 * j + seed, hit_level=0.1 + 0.1 * i + 0.2 * j + 0.05 * seed,
                    extra={"seed": seed})
    return paths


def test_heatmap_cells_average_the_seeds_of_each_combination(tmp_path):
    paths = _grid(tmp_path)
    _, report = make_report(list(paths.values()))
    (heat,) = [c for c in report.charts if c.title == "heatmap"]
    hit, ttft = heat.figure.data[:2]
    assert list(hit.y) == ["lru", "rlt"] and list(hit.x) == ["round_robin", "cache_aware", "lbgr"]
    run = {r.path: r for r in report.runs}
    for a, ev in enumerate(("lru", "rlt")):
        for b, rt in enumerate(("round_robin", "cache_aware", "lbgr")):
            want = sum(run[paths[(ev, rt, s)]].hit_rate() for s in (0, 1)) / 2
            assert hit.z[a][b] == pytest.approx(want)
            want_ttft = sum(run[paths[(ev, rt, s)]].summary["mean_ttft_ms"] for s in (0, 1)) / 2
            assert ttft.z[a][b] == pytest.approx(want_ttft)
    assert hit.visible is True and ttft.visible is False  # a menu switches the metric
    labels = [b.label for b in heat.figure.layout.updatemenus[0].buttons]
    assert labels == ["hit rate", "mean TTFT (ms)"]  # no goodput recorded: no goodput view
    assert hit.colorscale != ttft.colorscale  # green is good in both: TTFT's scale is reversed


def test_one_combination_has_no_heatmap(tmp_path):
    path = write_synthetic_run(tmp_path / "one", name="one", n=40)
    _, report = make_report([path])
    assert "heatmap" not in [c.title for c in report.charts]


def test_short_names_drop_shared_parts_and_shorten_the_rest():
    assert short_names(["exp/lru+rr/seed0", "exp/arc+ca/seed0"]) == ["lru+rr", "arc+ca"]
    assert short_names(["exp/a/seed0", "exp/a/seed1"]) == ["seed0", "seed1"]
    long = short_names(["x" * 20 + "-middle-" + "y" * 20, "b"], width=12)
    assert long[0] == "xxxxxx…yyyyy" and len(long[0]) == 12 and long[1] == "b"
    assert short_names(["only/one"]) == ["only/one"]


def test_twenty_runs_get_short_steep_tick_labels(tmp_path):
    paths = _grid(tmp_path, seeds=(0, 1, 2))  # 18 runs
    _, report = make_report(list(paths.values()))
    axis = _run_axis(report.runs)
    assert axis["tickangle"] == -60 and len(axis["ticktext"]) == 18
    assert all(not t.startswith("exp/") for t in axis["ticktext"]) and axis["tickvals"][0].startswith("exp/")


def test_interrupted_and_failed_runs_are_flagged_beside_their_name(tmp_path):
    import json

    clean = write_synthetic_run(tmp_path / "clean", name="clean-run", n=40)
    bad = write_synthetic_run(tmp_path / "bad", name="bad-run", n=40, failed=3, eviction="rlt")
    cfg = json.loads((bad / "run.json").read_text())
    cfg["interrupted"] = True
    (bad / "run.json").write_text(json.dumps(cfg))
    html, report = make_report([clean, bad])
    flags = dict(zip(report.table["run"], report.table["flags"]))
    assert flags == {"clean-run": "", "bad-run": "interrupted, 3 failed"}
    assert '<span class="flag"' in html and ">interrupted, 3 failed</span>" in html
    assert html.count('<span class="flag"') == 1
