"""The cache in front of DNS: TTLs, negative answers, one flight per name, bounds, deadlines.

A scripted backend stands in for the nameservers and counts what it is asked;
time is trio's MockClock (``autojump_clock``), so TTLs of minutes pass at once.
"""

from __future__ import annotations

import random

import pytest
import trio

from trimta.adapters.dns import Answer, CachingLookup, DnsResolver, ResolverConfig, Status
from trimta.core.mx import IpLookupStrategy, MxFailure
from trimta.testing.resolver import NXDOMAIN, SERVFAIL, TableLookup


class CountingBackend:
    """Answers from a table after `latency_s`, counting questions and how many are out at once."""

    def __init__(self, table=None, *, ttl_s: float = 300.0, latency_s: float = 1.0) -> None:
        self.table = TableLookup(table, ttl_s=ttl_s)
        self.latency_s = latency_s
        self.asked: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def lookup(self, name: str, rdtype: str) -> Answer:
        self.asked.append((name, rdtype))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.latency_s)
            return await self.table.lookup(name, rdtype)
        finally:
            self.in_flight -= 1


class SilentBackend:
    """A nameserver that never answers."""

    def __init__(self) -> None:
        self.asked = 0

    async def lookup(self, name: str, rdtype: str) -> Answer:
        self.asked += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")


HOSTS = {"mx.example": {"A": ["192.0.2.1"]}}


async def test_second_lookup_is_answered_from_the_cache(autojump_clock):
    backend = CountingBackend(HOSTS)
    cache = CachingLookup(backend)
    with trio.fail_after(10):
        first = await cache.lookup("mx.example", "A")
        second = await cache.lookup("MX.example.", "A")
    assert first == second and first.records == ("192.0.2.1",)
    assert backend.asked == [("mx.example", "A")]
    assert cache.statistics().cache_hits == 1


async def test_answers_expire_after_their_ttl(autojump_clock):
    backend = CountingBackend(HOSTS, ttl_s=120)
    cache = CachingLookup(backend, ResolverConfig(ttl_floor_s=0, ttl_ceiling_s=3600))
    with trio.fail_after(1000):
        await cache.lookup("mx.example", "A")
        await trio.sleep(100)
        await cache.lookup("mx.example", "A")
        assert len(backend.asked) == 1
        await trio.sleep(25)
        await cache.lookup("mx.example", "A")
    assert len(backend.asked) == 2


@pytest.mark.parametrize(
    ("ttl_s", "floor_s", "ceiling_s", "kept_s"),
    [(1, 60, 3600, 60), (86400, 0, 300, 300)],
    ids=["floor lifts a tiny ttl", "ceiling cuts a huge ttl"],
)
async def test_ttl_is_clamped_to_floor_and_ceiling(autojump_clock, ttl_s, floor_s, ceiling_s, kept_s):
    backend = CountingBackend(HOSTS, ttl_s=ttl_s, latency_s=0)
    cache = CachingLookup(backend, ResolverConfig(ttl_floor_s=floor_s, ttl_ceiling_s=ceiling_s))
    with trio.fail_after(100_000):
        await cache.lookup("mx.example", "A")
        await trio.sleep(kept_s - 1)
        await cache.lookup("mx.example", "A")
        assert len(backend.asked) == 1, "expired before the clamped ttl"
        await trio.sleep(2)
        await cache.lookup("mx.example", "A")
    assert len(backend.asked) == 2, "kept beyond the clamped ttl"


async def test_negative_answers_are_cached_for_negative_ttl(autojump_clock):
    backend = CountingBackend({"nodata.example": {"TXT": ["x"]}}, latency_s=0)
    cache = CachingLookup(backend, ResolverConfig(negative_ttl_s=300))
    with trio.fail_after(1000):
        for _ in range(3):
            assert (await cache.lookup("gone.example", "MX")).status is Status.NXDOMAIN
            assert (await cache.lookup("nodata.example", "MX")).status is Status.NODATA
        assert len(backend.asked) == 2
        await trio.sleep(301)
        await cache.lookup("gone.example", "MX")
    assert len(backend.asked) == 3


async def test_failures_are_remembered_only_briefly(autojump_clock):
    backend = CountingBackend({"broken.example": SERVFAIL}, latency_s=0)
    cache = CachingLookup(backend, ResolverConfig(failure_ttl_s=5))
    with trio.fail_after(100):
        await cache.lookup("broken.example", "MX")
        await cache.lookup("broken.example", "MX")
        assert len(backend.asked) == 1
        await trio.sleep(6)
        assert (await cache.lookup("broken.example", "MX")).status is Status.SERVFAIL
    assert len(backend.asked) == 2


async def test_concurrent_askers_share_one_query(autojump_clock):
    backend = CountingBackend(HOSTS, latency_s=2)
    cache = CachingLookup(backend)
    answers = []

    async def ask():
        answers.append(await cache.lookup("mx.example", "A"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(ask)
    assert backend.asked == [("mx.example", "A")]
    assert len(answers) == 50 and all(a.records == ("192.0.2.1",) for a in answers)
    assert cache.statistics().coalesced == 49


async def test_waiters_still_get_an_answer_when_the_first_asker_is_cancelled(autojump_clock):
    backend = CountingBackend(HOSTS, latency_s=2)
    cache = CachingLookup(backend)
    got = []

    async def waiter():
        got.append(await cache.lookup("mx.example", "A"))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as first:
                nursery.start_soon(waiter)  # queued behind the first asker below

                async def cancel_soon():
                    await trio.sleep(1)
                    first.cancel()

                nursery.start_soon(cancel_soon)
                await cache.lookup("mx.example", "A")
    assert first.cancelled_caught
    assert [a.records for a in got] == [("192.0.2.1",)]
    assert len(backend.asked) == 2  # asked again by the waiter


async def test_cache_is_bounded_and_evicts_the_least_recently_used(autojump_clock):
    table = {f"h{i}.example": {"A": [f"192.0.2.{i}"]} for i in range(4)}
    backend = CountingBackend(table, latency_s=0)
    cache = CachingLookup(backend, ResolverConfig(cache_size=2))
    with trio.fail_after(10):
        await cache.lookup("h0.example", "A")
        await cache.lookup("h1.example", "A")
        await cache.lookup("h0.example", "A")  # h0 is now the most recently used
        await cache.lookup("h2.example", "A")  # evicts h1
        assert cache.statistics().cached_entries == 2
        await cache.lookup("h0.example", "A")
        assert len(backend.asked) == 3
        await cache.lookup("h1.example", "A")
    assert backend.asked[-1] == ("h1.example", "A") and len(backend.asked) == 4


async def test_no_more_than_max_concurrency_queries_in_flight(autojump_clock):
    backend = CountingBackend({}, latency_s=1)
    cache = CachingLookup(backend, ResolverConfig(max_concurrency=7))
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(cache.lookup, f"d{i}.example", "MX")
    assert len(backend.asked) == 500
    assert backend.max_in_flight == 7


async def test_resolving_10000_domains_keeps_the_concurrency_bound(autojump_clock):
    backend = CountingBackend({}, latency_s=0.05)
    resolver = DnsResolver(CachingLookup(backend, ResolverConfig(max_concurrency=50)))
    failures = []

    async def resolve(domain):
        failures.append((await resolver.resolve_mx(domain)).failure)

    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            for i in range(10_000):
                nursery.start_soon(resolve, f"d{i}.example")
    assert failures.count(MxFailure.NXDOMAIN) == 10_000
    assert backend.max_in_flight == 50
    assert resolver.statistics().queries_sent == 10_000


async def test_a_lookup_that_gets_no_answer_times_out_in_virtual_time(autojump_clock):
    backend = SilentBackend()
    cache = CachingLookup(backend, ResolverConfig(timeout_s=3))
    start = trio.current_time()
    with trio.fail_after(60):
        answer = await cache.lookup("slow.example", "MX")
    assert answer.status is Status.TIMEOUT
    assert 3 <= trio.current_time() - start < 4


async def test_a_timed_out_mx_lookup_is_a_transient_failure(autojump_clock):
    resolver = DnsResolver(CachingLookup(SilentBackend(), ResolverConfig(timeout_s=2)))
    with trio.fail_after(60):
        r = await resolver.resolve_mx("slow.example")
    assert r.failure is MxFailure.TIMEOUT and str(r.reply).startswith("451 4.4.3 ")


async def test_waiting_for_the_limiter_does_not_count_toward_the_timeout(autojump_clock):
    backend = CountingBackend({}, latency_s=2)
    cache = CachingLookup(backend, ResolverConfig(timeout_s=3, max_concurrency=1))
    statuses = []

    async def ask(i):
        statuses.append((await cache.lookup(f"d{i}.example", "MX")).status)

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(ask, i)
    assert statuses == [NXDOMAIN] * 5  # the last waited 8s in line, then got its 3s


async def test_statistics_snapshot(autojump_clock):
    cache = CachingLookup(CountingBackend(HOSTS, latency_s=0), ResolverConfig(max_concurrency=9))
    with trio.fail_after(10):
        await cache.lookup("mx.example", "A")
        await cache.lookup("mx.example", "A")
    stats = cache.statistics()
    assert (stats.queries_sent, stats.cache_hits, stats.in_flight, stats.cached_entries, stats.max_concurrency) == (
        1, 1, 0, 1, 9,
    )


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


MX_TABLE = {
    "shop.example": {"MX": [(10, "mx1.shop.example"), (20, "mx2.shop.example")]},
    "mx1.shop.example": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "mx2.shop.example": {"A": ["192.0.2.2"]},
}


@pytest.mark.parametrize("strategy", list(IpLookupStrategy))
async def test_a_cached_domain_resolves_from_the_cache_alone(autojump_clock, strategy):
    """Once its MX hosts' answers are cached, a domain resolves without asking anything
    (and without a task per host): the same resolution as the first time."""
    backend = CountingBackend(MX_TABLE)
    resolver = DnsResolver(CachingLookup(backend), ip_lookup_strategy=strategy, rng=random.Random(1))
    with trio.fail_after(60):
        first = await resolver.resolve_mx("shop.example")
        asked = len(backend.asked)
        hits = resolver.statistics().cache_hits
        start = trio.current_time()
        spawned = SpawnCounter()
        trio.lowlevel.add_instrument(spawned)
        try:
            again = await resolver.resolve_mx("shop.example")
        finally:
            trio.lowlevel.remove_instrument(spawned)
    assert trio.current_time() == start  # nothing waited on the backend's latency
    assert spawned.count == 0
    assert len(backend.asked) == asked
    assert again.hosts == first.hosts and again.site == first.site and again.failure is None
    assert resolver.statistics().cache_hits - hits == asked  # every question answered by the cache
    addresses = {h.name: h.addresses for h in again.hosts}
    expected_mx1 = {
        IpLookupStrategy.IPV4_AND_IPV6: ("192.0.2.1", "2001:db8::1"),
        IpLookupStrategy.IPV4_ONLY: ("192.0.2.1",),
        IpLookupStrategy.IPV6_ONLY: ("2001:db8::1",),
        IpLookupStrategy.IPV4_THEN_IPV6: ("192.0.2.1",),
        IpLookupStrategy.IPV6_THEN_IPV4: ("2001:db8::1",),
    }[strategy]
    assert addresses["mx1.shop.example"] == expected_mx1


async def test_a_host_missing_from_the_cache_is_asked_alone(autojump_clock):
    backend = CountingBackend(MX_TABLE)
    cache = CachingLookup(backend)
    resolver = DnsResolver(cache, rng=random.Random(1))
    with trio.fail_after(60):
        await cache.lookup("mx1.shop.example", "A")
        await cache.lookup("mx1.shop.example", "AAAA")
        backend.asked.clear()
        r = await resolver.resolve_mx("shop.example")
    assert sorted(backend.asked) == [("mx2.shop.example", "A"), ("mx2.shop.example", "AAAA"), ("shop.example", "MX")]
    assert {h.name: h.addresses for h in r.hosts} == {
        "mx1.shop.example": ("192.0.2.1", "2001:db8::1"), "mx2.shop.example": ("192.0.2.2",)}
