import pytest
from tests.sim.sim_traces import make_trace


@pytest.fixture
def small_trace(tmp_path):
    return make_trace(tmp_path / "t.parquet", sessions=3)
