"""Resolution against a real DNS server: dnsmasq on loopback, asked through dnspython on trio.

What the server was asked is read from its query log, so "cached" means the
server never saw the second question.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import trio

from trimta.adapters.dns import Answer, CachingLookup, DnspythonLookup, DnsResolver, ResolverConfig, Status
from trimta.core.mx import IpLookupStrategy, MxFailure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dnsmasq import Dnsmasq, dnsmasq  # noqa: F401  (dnsmasq is the fixture)

pytestmark = pytest.mark.interop

DNSMASQ_ZONE = [
    "--mx-host=a.test,mx1.a.test,10",
    "--mx-host=a.test,mx2.a.test,20",
    "--mx-host=a.test,mx3.a.test,20",
    "--mx-host=b.test,mx3.a.test,20",
    "--mx-host=b.test,mx1.a.test,10",
    "--mx-host=b.test,mx2.a.test,20",
    "--host-record=mx1.a.test,127.0.0.10",
    "--host-record=mx2.a.test,127.0.0.11,::1",
    "--host-record=mx3.a.test,127.0.0.12",
    "--mx-host=v6.test,mx.v6.test,10",
    "--host-record=mx.v6.test,::1",
    "--mx-host=null.test,.,0",
    "--host-record=plain.test,127.0.0.20",
    "--txt-record=bare.test,no mail here",
    "--mx-host=ghost.test,nohost.ghost.test,10",
    "--mx-host=cached.test,mx.cached.test,10",
    "--host-record=mx.cached.test,127.0.0.30",
]


def resolver_for(server: Dnsmasq, *, rng: random.Random | None = None, **options) -> DnsResolver:
    """The production resolver stack, pointed at `server`; `options` are ResolverConfig fields."""
    config = ResolverConfig(nameservers=(("127.0.0.1", server.port),), **{"timeout_s": 2.0, **options})
    return DnsResolver.from_config(config, rng=rng)


async def resolve(resolver: DnsResolver, domain: str):
    with trio.fail_after(10):
        return await resolver.resolve_mx(domain)


async def test_mx_hosts_by_preference_with_a_and_aaaa(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "a.test")
    assert r.ok
    assert r.hosts[0].name == "mx1.a.test" and r.hosts[0].preference == 10
    assert {h.name for h in r.hosts[1:]} == {"mx2.a.test", "mx3.a.test"}
    by_name = {h.name: h.addresses for h in r.hosts}
    assert by_name == {"mx1.a.test": ("127.0.0.10",), "mx2.a.test": ("127.0.0.11", "::1"),
                       "mx3.a.test": ("127.0.0.12",)}
    assert r.addresses[0] == "127.0.0.10"
    assert r.site == "(mx1|mx2|mx3).a.test"


async def test_equal_preferences_come_in_both_orders(dnsmasq):
    orders = set()
    for seed in range(12):
        r = await resolve(resolver_for(dnsmasq, rng=random.Random(seed)), "a.test")
        orders.add(tuple(h.name for h in r.hosts))
    assert orders == {
        ("mx1.a.test", "mx2.a.test", "mx3.a.test"),
        ("mx1.a.test", "mx3.a.test", "mx2.a.test"),
    }


async def test_two_domains_with_the_same_mx_set_share_a_site(dnsmasq):
    resolver = resolver_for(dnsmasq)
    a, b = await resolve(resolver, "a.test"), await resolve(resolver, "b.test")
    assert a.site == b.site == "(mx1|mx2|mx3).a.test"


async def test_ipv6_only_mx_host(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "v6.test")
    assert r.ok and r.addresses == ("::1",)
    r = await resolve(resolver_for(dnsmasq, ip_lookup_strategy=IpLookupStrategy.IPV4_ONLY), "v6.test")
    assert r.failure is MxFailure.NO_ADDRESSES and r.is_transient


async def test_null_mx(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "null.test")
    assert r.null_mx and r.site == ""
    assert str(r.reply).startswith("556 5.1.10 ")


async def test_implicit_mx_from_an_a_record(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "plain.test")
    assert r.ok and r.implicit_mx and r.addresses == ("127.0.0.20",) and r.site == "plain.test"


async def test_nxdomain_is_permanent(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "no-such-domain.test")
    assert r.failure is MxFailure.NXDOMAIN and str(r.reply).startswith("550 5.1.2 ")
    assert r.bounce_classification == "BadDomain"


async def test_name_without_mx_or_address_is_permanent(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "bare.test")
    assert r.failure is MxFailure.NO_RECORDS and r.is_permanent


async def test_mx_host_without_address_is_transient(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "ghost.test")
    assert r.failure is MxFailure.NO_ADDRESSES and str(r.reply).startswith("451 4.4.4 ")
    assert r.site == "nohost.ghost.test"


async def test_servfail_is_transient(dnsmasq):
    r = await resolve(resolver_for(dnsmasq), "x.servfail.test")
    assert r.failure is MxFailure.DNS_ERROR and "SERVFAIL" in r.detail
    assert str(r.reply).startswith("451 4.4.3 ")


async def test_unanswered_query_times_out_at_the_configured_timeout(dnsmasq):
    resolver = resolver_for(dnsmasq, timeout_s=0.3)
    r = await resolve(resolver, "x.slow.test")
    assert r.failure is MxFailure.TIMEOUT and r.is_transient
    assert dnsmasq.queries("x.slow.test", "MX") >= 1  # it was really asked


async def test_second_resolution_asks_the_server_nothing(dnsmasq):
    resolver = resolver_for(dnsmasq)
    first = await resolve(resolver, "cached.test")
    asked = {t: dnsmasq.queries(n, t) for n, t in [("cached.test", "MX"), ("mx.cached.test", "A")]}
    second = await resolve(resolver, "cached.test")
    assert first.addresses == second.addresses == ("127.0.0.30",)
    assert asked == {"MX": 1, "A": 1}
    assert dnsmasq.queries("cached.test") == 1
    assert dnsmasq.queries("mx.cached.test") == 2  # one A, one AAAA, both only once
    # A resolver without that cache does ask again: the count above can move.
    await resolve(resolver_for(dnsmasq), "cached.test")
    assert dnsmasq.queries("cached.test") == 2


async def test_nxdomain_is_cached_too(dnsmasq):
    resolver = resolver_for(dnsmasq)
    for _ in range(3):
        assert (await resolve(resolver, "negative.test")).failure is MxFailure.NXDOMAIN
    assert dnsmasq.queries("negative.test", "MX") == 1


class InFlightCounter:
    """Passes questions to a real lookup, counting how many are out at once."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.now = self.most = self.total = 0

    async def lookup(self, name: str, rdtype: str) -> Answer:
        self.now += 1
        self.total += 1
        self.most = max(self.most, self.now)
        try:
            return await self.inner.lookup(name, rdtype)
        finally:
            self.now -= 1


async def test_many_domains_never_exceed_the_concurrency_bound(dnsmasq):
    config = ResolverConfig(nameservers=(("127.0.0.1", dnsmasq.port),), timeout_s=5, max_concurrency=4)
    counter = InFlightCounter(DnspythonLookup(config))
    resolver = DnsResolver(CachingLookup(counter, config))
    results = []

    async def one(i):
        results.append(await resolver.resolve_mx(f"d{i}.many.test"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert [r.failure for r in results] == [MxFailure.NXDOMAIN] * 200
    assert counter.total == 200
    assert counter.most == 4  # the bound, and used: questions did go out in parallel


async def test_dnspython_lookup_answers_each_record_type(dnsmasq):
    lookup = DnspythonLookup(ResolverConfig(nameservers=(("127.0.0.1", dnsmasq.port),)))
    with trio.fail_after(10):
        mx = await lookup.lookup("a.test", "MX")
        aaaa = await lookup.lookup("mx2.a.test", "AAAA")
        nodata = await lookup.lookup("mx1.a.test", "AAAA")
    assert mx.status is Status.ANSWER and sorted((r.preference, r.host) for r in mx.records)[0] == (10, "mx1.a.test")
    assert mx.ttl_s == 60  # dnsmasq's --local-ttl: the TTL is the server's, not a default
    assert aaaa.records == ("::1",)
    assert nodata.status is Status.NODATA
