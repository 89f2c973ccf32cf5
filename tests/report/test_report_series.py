import numpy as np
import pandas as pd

from kvbench.report.series import cdf, outstanding_per_worker, rolling_hit_rate


def _rows(**cols):
    n = len(next(iter(cols.values())))
    base = {"status": ["ok"] * n, "worker": [0] * n}
    base.update(cols)
    return pd.DataFrame(base)


def test_cdf_small_is_exact_and_large_is_bounded():
    c = cdf(np.array([3.0, 1.0, 2.0, np.nan]))
    assert c.x.tolist() == [1.0, 2.0, 3.0]
    assert np.allclose(c.y, [1 / 3, 2 / 3, 1.0], rtol=1e-3)
    values = np.random.default_rng(0).lognormal(size=50_000)
    big = cdf(values, max_points=200)
    assert len(big.x) == 200
    assert np.isclose(big.x[0], values.min(), rtol=1e-3)
    assert np.isclose(big.x[-1], values.max(), rtol=1e-3) and big.y[-1] == 1.0
    assert np.all(np.diff(big.x) >= 0) and np.all(np.diff(big.y) >= 0)
    # The median of the sampled curve matches the data's.
    assert np.isclose(np.interp(0.5, big.y, big.x), np.median(values), rtol=0.02)
    assert cdf(np.array([])) is None


def test_rolling_hit_rate_follows_the_cache():
    n = 400
    cached = np.where(np.arange(n) < 200, 0, 100)  # cold first half, 100% hits second half
    df = _rows(arrival_s=np.arange(n, dtype=float), sent_s=np.arange(n, dtype=float) + 0.5,
               input_tokens=np.full(n, 100), cached_tokens=pd.array(cached, dtype="Int32"))
    curve = rolling_hit_rate(df, max_points=50)
    assert len(curve.x) <= 50 and np.all(np.diff(curve.x) > 0)
    assert curve.y[0] == 0.0 and curve.y[-1] == 1.0
    assert curve.x[0] >= 0.5  # time counts from the first arrival
    df["cached_tokens"] = pd.array([None] * n, dtype="Int32")
    assert rolling_hit_rate(df) is None


def test_outstanding_requests_per_worker():
    df = _rows(worker=[0, 0, 1, -1], arrival_s=[0.0, 0.0, 0.0, 0.0], sent_s=[0.0, 1.0, 2.0, np.nan],
               done_s=[4.0, 2.0, np.nan, np.nan], status=["ok", "ok", "error", "error"])
    grid, load = outstanding_per_worker(df, 2, max_points=9)  # grid step 0.5 s over [0, 4]
    at = dict(zip(grid.tolist(), load[0].tolist()))
    assert at[0.5] == 1 and at[1.5] == 2 and at[2.5] == 1 and at[4.0] == 0
    assert load[1].max() == 0  # a failed request without a done time never counts as in flight
    assert outstanding_per_worker(df.iloc[3:], 2) is None
