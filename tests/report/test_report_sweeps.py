from pathlib import Path

from kvbench.report.inputs import load_inputs
from kvbench.report.sweeps import find_sweeps
from tests.report.synthetic import write_synthetic_run


def test_cache_sweep_gives_a_line_per_combination(sweep_dir: Path):
    sweeps = find_sweeps(load_inputs([sweep_dir]).runs)
    assert [s.param.key for s in sweeps] == ["cache_tokens"]
    lines = sweeps[0].lines
    assert sorted(line.combination.label for line in lines) == ["arc × cache_aware", "lru × round_robin",
                                                                "rlt × lbgr"]
    assert all([x for x, _ in line.points] == [16384, 65536, 262144] for line in lines)
    assert all(line.suffix == "" for line in lines)


def test_rate_and_workers_sweeps(tmp_path: Path):
    for rate in (4.0, 8.0):
        write_synthetic_run(tmp_path / f"rate{rate}", n=60, params={"groups": 8, "rate": rate})
    for ts in (0.5, 1.0):  # a time scale of 0.5 doubles the effective rate of the 8 req/s trace
        write_synthetic_run(tmp_path / f"ts{ts}", n=60, params={"groups": 8, "rate": 8.0}, time_scale=ts,
                            workers=2)
    for w in (2, 8):
        write_synthetic_run(tmp_path / f"w{w}", n=60, workers=w, eviction="rlt", params={"groups": 8})
    sweeps = {s.param.key: s for s in find_sweeps(load_inputs([tmp_path]).runs)}
    assert set(sweeps) == {"request_rate", "workers"}
    rate_lines = {line.suffix: [x for x, _ in line.points] for line in sweeps["request_rate"].lines}
    assert rate_lines == {"workers=4": [4.0, 8.0], "workers=2": [8.0, 16.0]}
    # The 2-worker run at 8 req/s and the 4-worker one also form an lru line across workers.
    worker_lines = {line.combination.eviction: [x for x, _ in line.points] for line in sweeps["workers"].lines}
    assert worker_lines == {"lru": [2.0, 4.0], "rlt": [2.0, 8.0]}


def test_runs_differing_in_two_parameters_are_not_a_sweep(tmp_path: Path):
    write_synthetic_run(tmp_path / "a", n=40, cache_tokens=1000, workers=2)
    write_synthetic_run(tmp_path / "b", n=40, cache_tokens=2000, workers=4)
    write_synthetic_run(tmp_path / "c", n=40, cache_tokens=2000, workers=4, extra={"block_size": 32})
    assert find_sweeps(load_inputs([tmp_path]).runs) == []
