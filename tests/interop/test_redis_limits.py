"""The Redis-shared limits (trimta/adapters/redis_limits.py) against a real redis-server.

Several `RedisLimits` clients on one server stand for several nodes. Lease expiry runs
on the server's clock (that is the point: a dead node's leases lapse without it), so
the expiry test polls the server until the lease has lapsed, bounded by a deadline;
it asserts what happens, never how long it took.
"""

from __future__ import annotations

import itertools
import math
import socket

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trimta.adapters.redis_limits import ClusterUnavailable, RedisLimits, SharedRate
from trimta.core.units import Rate

from .brokers import Redis

_scopes = itertools.count()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = Redis(tmp_path_factory.mktemp("redis-limits"))
    try:
        yield server.start().url
    finally:
        server.close()


def fresh_scope(name: str) -> str:
    return f"{name}-{next(_scopes)}"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.sampled_from([1, 2, 2.5, 3, 4, 1.5]), burst=st.integers(1, 3), period_ms=st.integers(30, 120),
       nodes=st.integers(2, 4))
def test_every_window_holds_at_most_limit_plus_burst_minus_one_events_across_nodes(
    redis_url, limit, burst, period_ms, nodes,
):
    rate = Rate(limit, period_ms / 1000, max_burst=burst)
    shared = SharedRate.from_rate(rate)
    scope = fresh_scope("gcra")
    period_us = period_ms * 1000
    taken: list[int] = []

    async def node() -> None:
        async with RedisLimits(redis_url, timeout_s=10).session() as limits:
            # Hammer the limit for four periods of the server's clock.
            first = None
            while True:
                answer = await limits.try_acquire_at("max_message_rate", scope, shared)
                first = answer.server_time_us if first is None else first
                if answer.wait_s == 0:
                    taken.append(answer.server_time_us)
                if answer.server_time_us - first > 4 * period_us:
                    return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(nodes):
                nursery.start_soon(node)

    trio.run(main)
    cap = math.ceil(limit) + burst - 1
    taken.sort()
    assert len(taken) > cap  # the limiter lets events through, not only refuses them
    for i in range(len(taken) - cap):
        # Events i .. i + cap are cap + 1 events: they must span at least a period.
        assert taken[i + cap] - taken[i] >= period_us, (taken[i:i + cap + 1], period_us)


async def test_a_full_limit_refuses_a_lease_until_one_is_released(redis_url):
    scope = fresh_scope("release")
    async with RedisLimits(redis_url).session() as a, RedisLimits(redis_url).session() as b:
        assert await a.acquire_lease(scope, "a-1", limit=2, period_s=60)
        assert await a.acquire_lease(scope, "a-2", limit=2, period_s=60)
        assert not await b.acquire_lease(scope, "b-1", limit=2, period_s=60)
        assert await b.lease_count(scope) == 2
        await a.release_lease(scope, "a-1")
        assert await b.acquire_lease(scope, "b-1", limit=2, period_s=60)
        assert not await a.acquire_lease(scope, "a-3", limit=2, period_s=60)


async def test_leases_lapse_when_their_holder_stops_extending_them(redis_url):
    scope = fresh_scope("lapse")
    async with RedisLimits(redis_url).session() as a, RedisLimits(redis_url).session() as b:
        assert await a.acquire_lease(scope, "a-1", limit=1, period_s=0.2)
        assert await a.extend_lease(scope, "a-1", period_s=0.2)
        # Node a stops extending (it died): node b gets the slot once the lease lapses.
        with trio.fail_after(30):
            while not await b.acquire_lease(scope, "b-1", limit=1, period_s=60):
                await trio.sleep(0.05)
        # a's lease is gone: extending it fails, and it cannot be taken back while b holds the slot.
        assert not await a.extend_lease(scope, "a-1", period_s=60)
        assert not await a.acquire_lease(scope, "a-1", limit=1, period_s=60)
        assert await b.lease_count(scope) == 1


async def test_scripts_are_loaded_again_after_the_server_forgets_them(redis_url):
    import coredis

    scope = fresh_scope("noscript")
    async with RedisLimits(redis_url).session() as a:
        assert await a.acquire_lease(scope, "a-1", limit=1, period_s=60)
        async with coredis.Redis.from_url(redis_url, verify_version=False) as admin:
            await admin.script_flush()
        assert await a.extend_lease(scope, "a-1", period_s=60)
        assert await a.try_acquire("max_message_rate", scope, SharedRate.from_rate(Rate(1, 60))) == 0


async def test_no_redis_listening_raises_cluster_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with RedisLimits(f"redis://127.0.0.1:{port}/0", timeout_s=2).session() as limits:
        with pytest.raises(ClusterUnavailable, match=f"127.0.0.1:{port}"):
            await limits.acquire_lease("x", "a-1", limit=1, period_s=60)


async def test_a_silent_redis_raises_cluster_unavailable_within_the_timeout(autojump_clock):
    # A socket that accepts connections (the kernel's backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        async with RedisLimits(f"redis://:secret@127.0.0.1:{port}/0", timeout_s=3).session() as limits:
            start = trio.current_time()
            with pytest.raises(ClusterUnavailable, match="within 3s") as raised:
                await limits.try_acquire("max_message_rate", "x", SharedRate.from_rate(Rate(1, 1)))
            assert trio.current_time() - start <= 3
            assert "secret" not in str(raised.value)
