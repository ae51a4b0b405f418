import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimta.core.throttle import Gcra
from trimta.core.units import parse_rate


def test_one_per_interval_without_burst():
    g = Gcra.from_rate(parse_rate("10/s"))
    assert g.try_acquire(0.0) == 0
    assert g.try_acquire(0.0) == 0.1
    assert g.try_acquire(0.1) == 0
    assert g.try_acquire(0.15) == pytest.approx(0.05)


def test_burst_allows_that_many_at_once_then_paces():
    g = Gcra.from_rate(parse_rate("60/min,max_burst=5"))
    assert [g.try_acquire(0.0) for _ in range(5)] == [0, 0, 0, 0, 0]
    assert g.try_acquire(0.0) == 1.0


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300))
def test_never_more_than_limit_in_any_window(gaps):
    # 100/min, no burst: at most 100 events in any 60 s window.
    g = Gcra.from_rate(parse_rate("100/min"))
    now, times = 0.0, []
    for gap in gaps:
        now += gap
        if g.try_acquire(now) == 0:
            times.append(now)
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 60) <= 100
