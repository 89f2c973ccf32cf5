import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.workloads.arrivals import ArrivalSpec, arrival_times


def test_gamma_mean_rate_and_burstiness():
    rng = np.random.default_rng(0)
    smooth = np.diff(arrival_times(20000, ArrivalSpec("gamma", 10.0, 4.0), rng))
    bursty = np.diff(arrival_times(20000, ArrivalSpec("gamma", 10.0, 0.25), rng))
    assert abs(smooth.mean() - 0.1) < 0.005 and abs(bursty.mean() - 0.1) < 0.01
    # coefficient of variation of Gamma(b) gaps is 1/sqrt(b)
    assert abs(smooth.std() / smooth.mean() - 0.5) < 0.05
    assert abs(bursty.std() / bursty.mean() - 2.0) < 0.2


def test_poisson_constant_inf_trace():
    rng = np.random.default_rng(1)
    t = arrival_times(5000, ArrivalSpec("poisson", 4.0), rng)
    assert t[0] == 0 and (np.diff(t) >= 0).all() and abs(np.diff(t).mean() - 0.25) < 0.02
    assert arrival_times(4, ArrivalSpec("constant", 2.0), rng).tolist() == [0.0, 0.5, 1.0, 1.5]
    assert arrival_times(3, ArrivalSpec("poisson", float("inf")), rng).tolist() == [0, 0, 0]
    src = np.array([100.0, 100.5, 101.0, 104.0])
    assert arrival_times(4, ArrivalSpec("trace"), rng, src, 0.5).tolist() == [0.0, 0.25, 0.5, 2.0]
    with pytest.raises(ValueError, match="sorted"):  # importers sort first; squashing would lose gaps
        arrival_times(4, ArrivalSpec("trace"), rng, np.array([100.0, 101.0, 100.5, 104.0]))


def test_seeded():
    a = arrival_times(10, ArrivalSpec("gamma", 3.0, 0.5), np.random.default_rng(7))
    b = arrival_times(10, ArrivalSpec("gamma", 3.0, 0.5), np.random.default_rng(7))
    assert (a == b).all()


def test_check():
    with pytest.raises(KvbenchError, match="--rate"):
        ArrivalSpec("poisson", -1).check(False)
    with pytest.raises(KvbenchError, match="--arrival trace"):
        ArrivalSpec("trace").check(False)
    assert ArrivalSpec("trace").check(True).kind == "trace"
