"""Egress pools: smooth weighted round-robin, skipping suspended sources, the default pool."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimta.core.pools import DEFAULT_POOL, DEFAULT_SOURCE, EgressPool, EgressSource, PoolPicker


def picks(picker: PoolPicker, n: int, skip=None) -> list[str | None]:
    return [picker.next(skip) for _ in range(n)]


def test_weights_two_to_one_give_exactly_two_thirds_over_3000_picks():
    picker = PoolPicker(EgressPool("p", (("a", 2), ("b", 1))))
    counts = Counter(picks(picker, 3000))
    assert counts == {"a": 2000, "b": 1000}


def test_picks_are_interleaved_not_in_runs():
    picker = PoolPicker(EgressPool("p", (("a", 2), ("b", 1))))
    assert picks(picker, 6) == ["a", "b", "a", "a", "b", "a"]  # not a a b a a b


def test_heavy_weight_is_spread_through_the_cycle():
    picker = PoolPicker(EgressPool("p", (("a", 5), ("b", 1), ("c", 1))))
    assert "".join(picks(picker, 7)) == "aabacaa"  # naive round-robin would give aaaaabc


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6))
def test_every_window_of_one_cycle_holds_each_source_exactly_weight_times(weights):
    pool = EgressPool("p", tuple((f"s{i}", w) for i, w in enumerate(weights)))
    total = sum(weights)
    sequence = picks(PoolPicker(pool), 3 * total)
    for start in range(0, 2 * total + 1):
        window = Counter(sequence[start : start + total])
        assert window == {f"s{i}": w for i, w in enumerate(weights)}


def test_picking_is_deterministic():
    pool = EgressPool("p", (("a", 3), ("b", 2), ("c", 1)))
    assert picks(PoolPicker(pool), 60) == picks(PoolPicker(pool), 60)


def test_skipped_source_is_never_picked_and_the_rest_keep_their_ratio():
    picker = PoolPicker(EgressPool("p", (("a", 1), ("b", 1), ("c", 2))))
    counts = Counter(picks(picker, 300, skip=lambda name: name == "c"))
    assert counts == {"a": 150, "b": 150}


def test_all_sources_skipped_gives_none():
    picker = PoolPicker(EgressPool("p", (("a", 1), ("b", 2))))
    assert picker.next(lambda name: True) is None


def test_source_back_from_suspension_takes_its_share_without_a_burst():
    picker = PoolPicker(EgressPool("p", (("a", 1), ("b", 1))))
    picks(picker, 1000, skip=lambda name: name == "b")
    assert picks(picker, 6) == ["a", "b", "a", "b", "a", "b"]


def test_zero_weight_source_stays_in_the_pool_but_gets_nothing():
    pool = EgressPool("p", (("old", 0), ("new", 1)))
    assert pool.source_names == ("old", "new")
    assert set(picks(PoolPicker(pool), 10)) == {"new"}


def test_default_pool_sends_through_the_unspecified_source_which_binds_nothing():
    assert EgressSource("unspecified", None, None) == DEFAULT_SOURCE
    assert DEFAULT_POOL.name == "unspecified"
    assert picks(PoolPicker(DEFAULT_POOL), 3) == ["unspecified"] * 3


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((), "no entries"),
        ((("a", 1), ("a", 2)), "twice"),
        ((("a", -1),), "integer >= 0"),
        ((("a", 1.5),), "integer >= 0"),
        ((("a", 0),), "positive weight"),
    ],
)
def test_invalid_pools_are_refused(entries, message):
    with pytest.raises(ValueError, match=message):
        EgressPool("p", entries)
