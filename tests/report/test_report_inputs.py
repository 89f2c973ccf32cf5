from pathlib import Path

import pytest

from kvbench.errors import KvbenchError
from kvbench.report.inputs import find_run_dirs, load_inputs
from tests.report.synthetic import write_synthetic_run


def test_directory_of_runs_is_searched(sweep_dir: Path):
    loaded = load_inputs([sweep_dir])
    assert len(loaded.runs) == 9
    assert not loaded.skipped
    # Natural order: a sweep's runs come out by the swept value, not alphabetically.
    assert [r.cache_tokens for r in loaded.runs[:3]] == [16384, 65536, 262144]
    # A run dir, its run.json and its parent all find it, and duplicates collapse.
    one = sweep_dir / "lru-round_robin-16384"
    assert find_run_dirs(one) == [one]
    assert find_run_dirs(one / "run.json") == [one]
    assert len(load_inputs([one, one / "run.json", sweep_dir]).runs) == 9


def test_empty_directory_is_a_note_not_a_crash(tmp_path: Path, sweep_dir: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    loaded = load_inputs([empty, sweep_dir / "arc-cache_aware-65536"])
    assert len(loaded.runs) == 1
    assert loaded.skipped == [(str(empty), "no runs found (no run.json below it)")]


def test_half_written_and_broken_runs_are_skipped(tmp_path: Path):
    good = write_synthetic_run(tmp_path / "runs" / "good", n=50)
    hidden = write_synthetic_run(tmp_path / "runs" / ".good.abc.tmp", n=50)  # an atomic_dir in progress
    broken = tmp_path / "runs" / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    (broken / "requests.parquet").write_bytes(b"")
    incomplete = tmp_path / "runs" / "incomplete"
    incomplete.mkdir()
    (incomplete / "run.json").write_text("{}")
    loaded = load_inputs([tmp_path / "runs"])
    assert [r.path for r in loaded.runs] == [good]
    reasons = dict(loaded.skipped)
    assert "invalid JSON" in reasons[str(broken)]
    assert "without requests.parquet" in reasons[str(incomplete)]
    assert str(hidden) not in reasons


def test_missing_path_is_one_clear_error(tmp_path: Path):
    with pytest.raises(KvbenchError, match="no such file or directory"):
        load_inputs([tmp_path / "nope"])


def test_baseline_must_be_one_run(sweep_dir: Path, tmp_path: Path):
    with pytest.raises(KvbenchError, match="--baseline .*found 9 runs"):
        load_inputs([sweep_dir], baseline=sweep_dir)
    with pytest.raises(KvbenchError, match="--baseline .*found no run"):
        load_inputs([sweep_dir], baseline=tmp_path / "nope")
    # A baseline outside the listed runs is loaded and shown too.
    extra = write_synthetic_run(tmp_path / "base", name="base", n=50)
    loaded = load_inputs([sweep_dir], baseline=extra)
    assert loaded.baseline is not None and loaded.baseline.name == "base"
    assert len(loaded.runs) == 10


def test_duplicate_names_are_told_apart(tmp_path: Path):
    write_synthetic_run(tmp_path / "a" / "run", name="same", n=40)
    write_synthetic_run(tmp_path / "b" / "run", name="same", n=40)
    write_synthetic_run(tmp_path / "c" / "x" / "run", name="same", n=40)
    write_synthetic_run(tmp_path / "d" / "x" / "run", name="same", n=40)
    names = [r.name for r in load_inputs([tmp_path]).runs]
    assert names == ["same (a)", "same (b)", "same (x)", "same (x) #2"]


def test_run_without_summary_or_trace_meta_still_loads(tmp_path: Path):
    from tests.report.synthetic import synthetic_rows
    from kvbench.results import write_run

    write_run(tmp_path / "bare", synthetic_rows(60, 2, seed=3), {"eviction": "lru", "router": "random",
                                                                 "trace": "traces/t.parquet"})
    (run,) = load_inputs([tmp_path / "bare"]).runs
    assert run.n_workers == 2 and run.workload_label == "t.parquet"
    assert run.summary["num_requests"] == 60
    assert run.hit_rate() is not None
    assert any("no summary" in n for n in run.notes)
