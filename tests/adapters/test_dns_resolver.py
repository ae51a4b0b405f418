"""From DNS answers to an MxResolution, over a table of answers (the fake resolver)."""

from __future__ import annotations

import random

import pytest
import trio

from trimta.core.mx import IpLookupStrategy, MxFailure
from trimta.testing.resolver import NULL_MX, NXDOMAIN, SERVFAIL, TIMEOUT, FakeResolver

GOOGLE = {
    "gmail.com": {"MX": [
        (40, "alt4.gmail-smtp-in.l.google.com."), (5, "gmail-smtp-in.l.google.com."),
        (10, "alt1.gmail-smtp-in.l.google.com."), (30, "alt3.gmail-smtp-in.l.google.com."),
        (20, "alt2.gmail-smtp-in.l.google.com."),
    ]},
    "gmail-smtp-in.l.google.com": {"A": ["192.0.2.5"], "AAAA": ["2001:db8::5"]},
    **{f"alt{i}.gmail-smtp-in.l.google.com": {"A": [f"192.0.2.{10 + i}"]} for i in range(1, 5)},
}


async def resolve(resolver, domain, **kw):
    with trio.fail_after(5):
        return await resolver.resolve_mx(domain, **kw)


async def test_mx_hosts_in_preference_order_with_their_addresses():
    r = await resolve(FakeResolver(GOOGLE), "Gmail.COM.")
    assert r.ok and not r.implicit_mx
    assert [(h.preference, h.name) for h in r.hosts] == [
        (5, "gmail-smtp-in.l.google.com"), (10, "alt1.gmail-smtp-in.l.google.com"),
        (20, "alt2.gmail-smtp-in.l.google.com"), (30, "alt3.gmail-smtp-in.l.google.com"),
        (40, "alt4.gmail-smtp-in.l.google.com"),
    ]
    assert r.addresses == ("192.0.2.5", "2001:db8::5", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14")
    assert r.site == "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"


async def test_domains_hosted_by_the_same_mx_share_a_site():
    resolver = FakeResolver(GOOGLE)
    resolver.set("googlemail.com", "MX", GOOGLE["gmail.com"]["MX"][::-1])
    a, b = await resolve(resolver, "gmail.com"), await resolve(resolver, "googlemail.com")
    assert a.site == b.site


async def test_equal_preference_hosts_are_shuffled_by_the_rng():
    table = {"d.example": {"MX": [(10, f"mx{i}.d.example") for i in range(4)]}}
    table.update({f"mx{i}.d.example": {"A": [f"192.0.2.{i}"]} for i in range(4)})
    orders = set()
    for seed in range(20):
        r = await resolve(FakeResolver(table, rng=random.Random(seed)), "d.example")
        orders.add(r.addresses)
        assert r.site == "(mx0|mx1|mx2|mx3).d.example"
    assert len(orders) > 1
    same = [await resolve(FakeResolver(table, rng=random.Random(3)), "d.example") for _ in range(2)]
    assert same[0].addresses == same[1].addresses


async def test_no_mx_but_an_address_makes_the_domain_its_own_host():
    r = await resolve(FakeResolver({"www.example.com": {"A": ["192.0.2.80"]}}), "www.example.com")
    assert r.ok and r.implicit_mx
    assert r.site == "www.example.com"
    assert r.targets == (("www.example.com", "192.0.2.80"),)


async def test_null_mx_fails_permanently_with_556():
    r = await resolve(FakeResolver({"nomail.example": {"MX": NULL_MX, "A": ["192.0.2.1"]}}), "nomail.example")
    assert r.null_mx and r.is_permanent and r.site == "" and r.addresses == ()
    assert str(r.reply).startswith("556 5.1.10 ")


async def test_a_null_mx_beside_real_hosts_is_ignored():
    table = {"odd.example": {"MX": [(0, "."), (10, "mx.odd.example")]}, "mx.odd.example": {"A": ["192.0.2.7"]}}
    r = await resolve(FakeResolver(table), "odd.example")
    assert r.ok and r.addresses == ("192.0.2.7",) and r.site == "mx.odd.example"


async def test_nxdomain_fails_permanently_as_bad_domain():
    r = await resolve(FakeResolver({}), "no-such-domain.example")
    assert r.failure is MxFailure.NXDOMAIN and r.is_permanent
    assert str(r.reply).startswith("550 5.1.2 ") and r.bounce_classification == "BadDomain"


async def test_a_domain_with_neither_mx_nor_address_fails_permanently():
    r = await resolve(FakeResolver({"bare.example": {"TXT": ["v=spf1 -all"]}}), "bare.example")
    assert r.failure is MxFailure.NO_RECORDS and str(r.reply).startswith("550 5.1.2 ")


@pytest.mark.parametrize(("status", "failure"), [(SERVFAIL, MxFailure.DNS_ERROR), (TIMEOUT, MxFailure.TIMEOUT)])
async def test_servfail_and_timeout_are_transient(status, failure):
    r = await resolve(FakeResolver({"flaky.example": {"MX": status}}), "flaky.example")
    assert r.failure is failure and r.is_transient
    assert str(r.reply).startswith("451 4.4.3 ") and r.bounce_classification == "DNSFailure"


async def test_implicit_mx_lookup_that_fails_is_transient_not_a_bounce():
    r = await resolve(FakeResolver({"half.example": {"A": SERVFAIL}}), "half.example")
    assert r.failure is MxFailure.DNS_ERROR and r.is_transient


async def test_mx_hosts_that_resolve_to_nothing_are_transient():
    table = {"d.example": {"MX": [(10, "gone.d.example"), (20, "slow.d.example")]}, "slow.d.example": TIMEOUT}
    r = await resolve(FakeResolver(table), "d.example")
    assert r.failure is MxFailure.NO_ADDRESSES and r.is_transient
    assert str(r.reply).startswith("451 4.4.4 ")
    assert r.site == "(gone|slow).d.example"
    assert {h.name: h.error for h in r.hosts} == {"gone.d.example": "nxdomain", "slow.d.example": "timeout"}


async def test_mx_host_without_address_is_skipped_when_another_has_one():
    table = {"d.example": {"MX": [(10, "gone.d.example"), (20, "ok.d.example")]}, "ok.d.example": {"A": ["192.0.2.3"]}}
    r = await resolve(FakeResolver(table), "d.example")
    assert r.ok and r.addresses == ("192.0.2.3",)


DUAL = {"d.example": {"MX": [(10, "mx.d.example")]}, "mx.d.example": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
        "v6.example": {"MX": [(10, "mx.v6.example")]}, "mx.v6.example": {"AAAA": ["2001:db8::6"]},
        "v4.example": {"MX": [(10, "mx.v4.example")]}, "mx.v4.example": {"A": ["192.0.2.4"]}}


@pytest.mark.parametrize(
    ("strategy", "dual", "v6_only", "v4_only"),
    [
        (IpLookupStrategy.IPV4_AND_IPV6, ("192.0.2.1", "2001:db8::1"), ("2001:db8::6",), ("192.0.2.4",)),
        (IpLookupStrategy.IPV4_ONLY, ("192.0.2.1",), (), ("192.0.2.4",)),
        (IpLookupStrategy.IPV6_ONLY, ("2001:db8::1",), ("2001:db8::6",), ()),
        (IpLookupStrategy.IPV4_THEN_IPV6, ("192.0.2.1",), ("2001:db8::6",), ("192.0.2.4",)),
        (IpLookupStrategy.IPV6_THEN_IPV4, ("2001:db8::1",), ("2001:db8::6",), ("192.0.2.4",)),
    ],
)
async def test_ip_lookup_strategy_decides_which_addresses(strategy, dual, v6_only, v4_only):
    resolver = FakeResolver(DUAL, ip_lookup_strategy=strategy)
    assert (await resolve(resolver, "d.example")).addresses == dual
    assert (await resolve(resolver, "v6.example")).addresses == v6_only
    assert (await resolve(resolver, "v4.example")).addresses == v4_only


async def test_then_strategies_ask_the_second_family_only_when_needed():
    resolver = FakeResolver(DUAL, ip_lookup_strategy=IpLookupStrategy.IPV4_THEN_IPV6)
    await resolve(resolver, "d.example")
    assert ("mx.d.example", "AAAA") not in resolver.queries
    await resolve(resolver, "v6.example")
    assert resolver.queries[-2:] == [("mx.v6.example", "A"), ("mx.v6.example", "AAAA")]


async def test_a_strategy_that_excludes_every_address_is_transient():
    resolver = FakeResolver(DUAL, ip_lookup_strategy=IpLookupStrategy.IPV4_ONLY)
    r = await resolve(resolver, "v6.example")
    assert r.failure is MxFailure.NO_ADDRESSES and r.site == "mx.v6.example"


@pytest.mark.parametrize(
    ("domain", "address", "site"),
    [("[192.0.2.1]", "192.0.2.1", "192.0.2.1"), ("[IPv6:2001:DB8::1]", "2001:db8::1", "2001:db8::1")],
)
async def test_domain_literal_goes_to_its_address_without_asking_dns(domain, address, site):
    resolver = FakeResolver({})
    r = await resolve(resolver, domain)
    assert r.ok and r.literal and r.addresses == (address,) and r.site == site
    assert resolver.queries == []


@pytest.mark.parametrize("domain", ["[not-an-address]", "bad..example", "under score!.example", ""])
async def test_invalid_destinations_fail_permanently_without_asking_dns(domain):
    resolver = FakeResolver({})
    r = await resolve(resolver, domain)
    assert r.failure is MxFailure.INVALID_DOMAIN and r.is_permanent
    assert resolver.queries == []


async def test_internationalised_domain_is_asked_in_punycode():
    resolver = FakeResolver({"xn--bcher-kva.example": {"A": ["192.0.2.9"]}})
    r = await resolve(resolver, "bücher.example")
    assert r.ok and r.addresses == ("192.0.2.9",)


async def test_internationalised_domain_is_asked_in_idna_2008_not_2003():
    # IDNA 2003 (Python's "idna" codec) maps faß.de to fass.de: someone else's domain.
    resolver = FakeResolver({"xn--fa-hia.example": {"A": ["192.0.2.9"]}, "fass.example": {"A": ["192.0.2.66"]}})
    r = await resolve(resolver, "faß.example")
    assert r.ok and r.addresses == ("192.0.2.9",)
    assert all("fass" not in str(q) for q in resolver.queries)


async def test_mx_rollup_false_gives_the_domain_its_own_site():
    resolver = FakeResolver(GOOGLE)
    resolver.set("googlemail.com", "MX", GOOGLE["gmail.com"]["MX"])
    own = await resolve(resolver, "googlemail.com", mx_rollup=False)
    shared = await resolve(resolver, "gmail.com")
    assert own.site == "domain=googlemail.com" != shared.site
    assert own.addresses == shared.addresses


async def test_resolve_addresses_of_a_single_host():
    resolver = FakeResolver(DUAL)
    with trio.fail_after(5):
        assert await resolver.resolve_addresses("MX.D.example.") == ["192.0.2.1", "2001:db8::1"]
        assert await resolver.resolve_addresses("192.0.2.77") == ["192.0.2.77"]
        assert await resolver.resolve_addresses("[IPv6:::1]") == ["::1"]
        assert await resolver.resolve_addresses("nowhere.example") == []


async def test_fake_resolver_helpers_build_the_common_table():
    resolver = FakeResolver()
    resolver.add_domain("example.com", "127.0.0.2", "::1")
    resolver.add_mx("other.example", (5, "mx.example.com"))
    a, b = await resolve(resolver, "example.com"), await resolve(resolver, "other.example")
    assert a.addresses == ("127.0.0.2", "::1") and a.site == "mx.example.com"
    assert b.site == a.site
    resolver.set("example.com", "MX", SERVFAIL)
    assert (await resolve(resolver, "example.com")).failure is MxFailure.DNS_ERROR
    assert resolver.asked("MX") == ["example.com", "other.example", "example.com"]


async def test_fake_latency_passes_in_virtual_time(autojump_clock):
    resolver = FakeResolver({"d.example": NXDOMAIN}, latency_s=3)
    start = trio.current_time()
    await resolve(resolver, "d.example")
    assert trio.current_time() - start == pytest.approx(3)
