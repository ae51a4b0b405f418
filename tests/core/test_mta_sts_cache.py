"""The MTA-STS policy cache: expiry, id changes, refresh ahead, and an unreachable policy host (RFC 8461 5.1)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trimta.core.mta_sts import Mode, MtaStsPolicy, StsRecord
from trimta.core.mta_sts_cache import Action, PolicyCache, decide

DAY = 86400
ENFORCE_WEEK = MtaStsPolicy(Mode.ENFORCE, ("mx.example.com",), 7 * DAY)
TESTING_WEEK = MtaStsPolicy(Mode.TESTING, ("*.example.com",), 7 * DAY)


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s


def cache_with_policy(clock: Clock) -> PolicyCache:
    cache = PolicyCache(clock, refresh_ahead_s=DAY)
    decision = cache.decide("Example.com", StsRecord("v1"))
    assert decision.action is Action.FETCH and decision.policy is None
    cache.fetched("Example.com", StsRecord("v1"), ENFORCE_WEEK)
    return cache


def test_no_record_and_nothing_cached_means_no_policy():
    cache = PolicyCache(Clock())
    decision = cache.decide("example.com", None)
    assert (decision.action, decision.must_fetch, decision.policy) == (Action.NO_POLICY, False, None)


def test_cached_policy_is_used_while_id_unchanged():
    clock = Clock()
    cache = cache_with_policy(clock)
    clock.now_s += 5 * DAY
    decision = cache.decide("example.com", StsRecord("v1"))
    assert (decision.action, decision.must_fetch, decision.policy) == (Action.USE_CACHED, False, ENFORCE_WEEK)


def test_cached_policy_outlives_a_stripped_or_failed_txt_lookup():
    clock = Clock()
    cache = cache_with_policy(clock)
    clock.now_s += 6.9 * DAY
    decision = cache.decide("example.com", None)
    assert (decision.action, decision.policy) == (Action.USE_CACHED, ENFORCE_WEEK)


def test_changed_id_refetches_and_the_new_policy_replaces_the_old():
    clock = Clock()
    cache = cache_with_policy(clock)
    clock.now_s += DAY
    decision = cache.decide("example.com", StsRecord("v2"))
    assert (decision.action, decision.must_fetch, decision.policy) == (Action.REFETCH_ID_CHANGED, True, ENFORCE_WEEK)
    cache.fetched("example.com", StsRecord("v2"), TESTING_WEEK)
    assert cache.decide("example.com", StsRecord("v2")).policy == TESTING_WEEK
    [entry] = cache.entries()
    assert (entry.policy_id, entry.fetched_at_s) == ("v2", clock.now_s)


def test_unreachable_policy_host_keeps_the_cached_policy_until_it_expires():
    clock = Clock()
    cache = cache_with_policy(clock)
    clock.now_s += DAY
    decision = cache.decide("example.com", StsRecord("v2"))
    assert cache.fetch_failed(decision) == ENFORCE_WEEK
    clock.now_s += 5.5 * DAY  # the refresh window: still the old policy, still a fetch due
    decision = cache.decide("example.com", StsRecord("v2"))
    assert decision.action is Action.REFETCH_ID_CHANGED
    assert cache.fetch_failed(decision) == ENFORCE_WEEK
    clock.now_s += 0.5 * DAY  # exactly fetched_at + max_age
    decision = cache.decide("example.com", StsRecord("v2"))
    assert (decision.action, decision.must_fetch, decision.policy) == (Action.EXPIRED, True, None)
    assert cache.fetch_failed(decision) is None
    assert cache.entries() == []


def test_policy_is_refreshed_ahead_of_expiry_and_the_refresh_extends_it():
    clock = Clock()
    cache = cache_with_policy(clock)
    clock.now_s += 6 * DAY - 1
    assert cache.decide("example.com", StsRecord("v1")).action is Action.USE_CACHED
    clock.now_s += 1
    decision = cache.decide("example.com", StsRecord("v1"))
    assert (decision.action, decision.must_fetch, decision.policy) == (Action.REFRESH_AHEAD, True, ENFORCE_WEEK)
    cache.fetched("example.com", StsRecord("v1"), ENFORCE_WEEK)
    clock.now_s += 3 * DAY  # beyond the first fetch's expiry, before the refresh window of the second
    assert cache.decide("example.com", StsRecord("v1")).action is Action.USE_CACHED


def test_refresh_fetch_failing_keeps_the_policy():
    clock = Clock()
    cache = cache_with_policy(clock)
    clock.now_s += 6.5 * DAY
    decision = cache.decide("example.com", StsRecord("v1"))
    assert decision.action is Action.REFRESH_AHEAD
    assert cache.fetch_failed(decision) == ENFORCE_WEEK


def test_expired_policy_without_txt_record_means_no_policy():
    clock = Clock()
    cache = cache_with_policy(clock)
    clock.now_s += 7 * DAY
    decision = cache.decide("example.com", None)
    assert (decision.action, decision.must_fetch, decision.policy) == (Action.EXPIRED, False, None)
    assert cache.decide("example.com", None).action is Action.NO_POLICY


def test_max_age_zero_is_never_served_from_cache():
    clock = Clock()
    cache = PolicyCache(clock)
    cache.fetched("example.com", StsRecord("v1"), MtaStsPolicy(Mode.ENFORCE, ("mx.example.com",), 0))
    assert cache.decide("example.com", StsRecord("v1")).action is Action.EXPIRED


def test_entries_reloaded_into_a_new_cache_behave_the_same():
    clock = Clock()
    cache = cache_with_policy(clock)
    restarted = PolicyCache(clock, refresh_ahead_s=DAY)
    for entry in cache.entries():
        restarted.store(entry)
    clock.now_s += 3 * DAY
    assert restarted.decide("EXAMPLE.com", StsRecord("v1")).policy == ENFORCE_WEEK


@given(
    max_age=st.integers(0, 31557600),
    elapsed=st.floats(0, 40_000_000),
    refresh_ahead=st.floats(0, 10 * DAY),
    record=st.sampled_from([None, StsRecord("v1"), StsRecord("v2")]),
)
def test_a_cached_policy_is_in_force_exactly_until_it_expires(max_age, elapsed, refresh_ahead, record):
    policy = MtaStsPolicy(Mode.ENFORCE, ("mx.example.com",), max_age)
    clock = Clock()
    cache = PolicyCache(clock, refresh_ahead_s=refresh_ahead)
    [entry] = [cache.fetched("example.com", StsRecord("v1"), policy)]
    clock.now_s += elapsed
    decision = decide(entry, record, clock.now_s, refresh_ahead_s=refresh_ahead)
    expired = clock.now_s >= entry.expires_at_s
    assert (decision.policy is None) == expired
    assert (decision.action is Action.EXPIRED) == expired
    assert decision.must_fetch == (record is not None and (expired or decision.action is not Action.USE_CACHED))
