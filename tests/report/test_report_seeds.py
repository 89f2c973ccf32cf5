"""Seeds are replicates: means with 95% t-intervals, ratios paired seed by seed (in summary.csv and the report)."""

from __future__ import annotations

import math

import pytest

from kvbench.report.commands import make_report
from kvbench.report.seeds import seed_groups
from kvbench.seed_stats import paired_ratios, seed_stats
from tests.report.synthetic import write_synthetic_run


def test_t_interval_by_hand():
    st = seed_stats([1.0, 2.0, 3.0])  # mean 2, sample sd 1, t(0.975, 2 df) = 4.302653
    assert (st.n, st.mean, st.std) == (3, 2.0, 1.0)
    assert st.ci95 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (st.low, st.high) == (pytest.approx(2 - 2.484138, rel=1e-6), pytest.approx(2 + 2.484138, rel=1e-6))
    two = seed_stats([0.4, 0.6])  # sd 0.141421, t(0.975, 1 df) = 12.7062
    assert two.ci95 == pytest.approx(12.706205 * 0.1414214 / math.sqrt(2), rel=1e-6)


def test_one_seed_has_no_interval_and_missing_values_are_left_out():
    assert seed_stats([0.5, None, float("nan")]) == seed_stats([0.5])
    one = seed_stats([0.5])
    assert one.mean == 0.5 and one.std is None and one.ci95 is None and one.low is None
    assert seed_stats([]).mean is None


def test_ratios_pair_the_same_seed():
    assert paired_ratios({0: 2.0, 1: 3.0, 2: 5.0}, {0: 1.0, 1: 2.0, 3: 9.0}) == [2.0, 1.5]  # seed 2, 3 unpaired
    assert paired_ratios({0: 2.0}, {0: 0.0}) == []  # no ratio to a zero


def _runs(root, combos=(("lru", "round_robin"), ("rlt", "cache_aware")), seeds=(0, 1, 2)):
    out = {}
    for k, (ev, rt) in enumerate(combos):
        for seed in seeds:
            out[(ev, seed)] = write_synthetic_run(root / f"{ev}-{rt}-s{seed}", name=f"{ev}+{rt}/seed{seed}",
                                                  eviction=ev, router=rt, n=120, seed=10 * k + seed,
                                                  hit_level=0.2 + 0.2 * k + 0.03 * seed, extra={"seed": seed})
    return out


def test_report_groups_seeds_and_pairs_ratios_with_the_baseline(tmp_path):
    paths = _runs(tmp_path)
    html, report = make_report(list(paths.values()), baseline=paths[("lru", 0)])
    groups = seed_groups(report.runs, report.baseline)
    assert [g.label for g in groups] == ["lru × round_robin", "rlt × cache_aware"]
    by_label = {g.label: g for g in groups}
    lru, rlt = by_label["lru × round_robin"], by_label["rlt × cache_aware"]
    hr = {key: next(r for r in report.runs if r.path == p).hit_rate() for key, p in paths.items()}
    assert lru.stats["hit_rate"].n == 3
    assert lru.stats["hit_rate"].mean == pytest.approx(sum(hr[("lru", s)] for s in range(3)) / 3)
    assert lru.stats["hit_rate"].ci95 == pytest.approx(seed_stats([hr[("lru", s)] for s in range(3)]).ci95)
    assert not lru.vs_baseline  # the baseline's own configuration has no ratio
    want = seed_stats([hr[("rlt", s)] / hr[("lru", s)] for s in range(3)])
    assert rlt.vs_baseline["hit_rate"].mean == pytest.approx(want.mean)
    assert rlt.vs_baseline["hit_rate"].ci95 == pytest.approx(want.ci95)
    assert "Across seeds" in html and "hit rate vs base" in html


def test_a_single_seed_per_configuration_shows_no_seed_table(tmp_path):
    paths = _runs(tmp_path, seeds=(0,))
    html, report = make_report(list(paths.values()))
    assert seed_groups(report.runs) == [] and "Across seeds" not in html


def test_experiment_summary_has_sample_std_and_ci95(tmp_path):
    """summary.csv: sample standard deviation (n - 1) and the t half-width, none for one seed."""
    from types import SimpleNamespace

    from kvbench.experiment import summarise
    from kvbench.results import RUN_FILE

    jobs = []
    for seed, hr in enumerate((0.30, 0.34, 0.35)):
        out = tmp_path / f"s{seed}"
        out.mkdir()
        (out / RUN_FILE).write_text('{"summary": {"hit_rate": %s, "hit_rates": {"ideal": 0.5}}}' % hr)
        jobs.append(SimpleNamespace(done=True, spec=SimpleNamespace(output=out), sweep_value=None,
                                    eviction="lru", router="round_robin", seed=seed))
    (row,) = summarise(SimpleNamespace(name="x", sweep_field=None), jobs)
    st = seed_stats([0.30, 0.34, 0.35])
    assert row["hit_rate_mean"] == pytest.approx(0.33)
    assert row["hit_rate_std"] == pytest.approx(st.std) and st.std == pytest.approx(0.0264575, rel=1e-5)
    assert row["hit_rate_ci95"] == pytest.approx(st.ci95)
    assert row["mean_ttft_ms_mean"] is None and row["mean_ttft_ms_ci95"] is None
    (single,) = summarise(SimpleNamespace(name="x", sweep_field=None), jobs[:1])
    assert single["hit_rate_std"] is None and single["hit_rate_ci95"] is None
