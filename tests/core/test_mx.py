"""MX ordering, domain literals, and what each resolution outcome means for a message."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimta.core.mx import (
    IpLookupStrategy,
    MxFailure,
    MxHost,
    MxRecord,
    MxResolution,
    connection_order,
    parse_domain_literal,
)


def test_connection_order_is_best_preference_first():
    records = [MxRecord(30, "c.example"), MxRecord(10, "a.example"), MxRecord(20, "b.example")]
    ordered = connection_order(records, random.Random(1))
    assert [r.host for r in ordered] == ["a.example", "b.example", "c.example"]


def test_hosts_of_equal_preference_are_tried_in_every_order_over_time():
    records = [MxRecord(10, "primary.example")] + [MxRecord(20, f"mx{i}.example") for i in range(3)]
    orders = Counter()
    rng = random.Random(7)
    for _ in range(300):
        ordered = connection_order(records, rng)
        assert ordered[0].host == "primary.example"
        orders[tuple(r.host for r in ordered[1:])] += 1
    assert len(orders) == 6  # all permutations of the three equal hosts


def test_the_injected_rng_makes_the_order_repeatable():
    records = [MxRecord(10, f"mx{i}.example") for i in range(6)]
    first = connection_order(records, random.Random(42))
    again = connection_order(records, random.Random(42))
    assert first == again


@given(st.lists(st.tuples(st.integers(0, 100), st.sampled_from([f"h{i}.example" for i in range(8)]))), st.randoms())
def test_connection_order_is_a_permutation_sorted_by_preference(pairs, rnd):
    records = [MxRecord(p, h) for p, h in pairs]
    ordered = connection_order(records, rnd)
    assert sorted(ordered) == sorted(set(records))
    assert [r.preference for r in ordered] == sorted(r.preference for r in ordered)


def test_mx_record_text_is_normalised():
    assert MxRecord.parse(10, "MX1.Example.NET.") == MxRecord(10, "mx1.example.net")
    assert MxRecord.parse(0, ".").is_null
    with pytest.raises(ValueError):
        MxRecord.parse(10, "bad name.example.")


@pytest.mark.parametrize(
    ("domain", "address"),
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:DB8:0:0::1]", "2001:db8::1"),
        ("[ipv6:::1]", "::1"),
        ("example.com", None),
    ],
)
def test_domain_literals_give_their_address(domain, address):
    assert parse_domain_literal(domain) == address


@pytest.mark.parametrize("bad", ["[example.com]", "[2001:db8::1]", "[IPv6:192.0.2.1]", "[300.1.1.1]", "[]"])
def test_unusable_domain_literals_are_refused(bad):
    with pytest.raises(ValueError):
        parse_domain_literal(bad)


@pytest.mark.parametrize(
    ("failure", "reply", "classification", "permanent"),
    [
        (MxFailure.NULL_MX, "556 5.1.10", "BadDomain", True),
        (MxFailure.NXDOMAIN, "550 5.1.2", "BadDomain", True),
        (MxFailure.NO_RECORDS, "550 5.1.2", "BadDomain", True),
        (MxFailure.INVALID_DOMAIN, "550 5.1.2", "BadDomain", True),
        (MxFailure.DNS_ERROR, "451 4.4.3", "DNSFailure", False),
        (MxFailure.TIMEOUT, "451 4.4.3", "DNSFailure", False),
        (MxFailure.NO_ADDRESSES, "451 4.4.4", "DNSFailure", False),
    ],
)
def test_each_failure_has_its_reply_and_bounce_classification(failure, reply, classification, permanent):
    r = MxResolution.failed("dest.example", failure, "SERVFAIL")
    assert str(r.reply).startswith(reply + " ")
    assert "dest.example" in str(r.reply)
    assert r.bounce_classification == classification
    assert r.is_permanent is permanent
    assert r.is_transient is not permanent
    assert not r.ok and r.addresses == ()


def test_null_mx_reply_on_the_wire():
    r = MxResolution.failed("nomail.example", MxFailure.NULL_MX)
    assert r.null_mx
    assert r.reply.to_bytes() == b"556 5.1.10 Recipient domain nomail.example has null MX and accepts no mail\r\n"


def test_addresses_follow_connection_order_and_appear_once():
    records = [MxRecord(10, "a.example"), MxRecord(20, "b.example")]
    hosts = [
        MxHost("a.example", 10, ("192.0.2.1", "2001:db8::1")),
        MxHost("b.example", 20, ("192.0.2.2", "192.0.2.1")),
    ]
    r = MxResolution.for_hosts("dest.example", records, hosts)
    assert r.ok and r.reply is None and r.bounce_classification is None
    assert r.addresses == ("192.0.2.1", "2001:db8::1", "192.0.2.2")
    assert r.targets[2] == ("b.example", "192.0.2.2")
    assert r.site == "(a|b).example"


def test_mx_hosts_without_addresses_are_a_transient_failure_that_keeps_the_site():
    records = [MxRecord(10, "a.example"), MxRecord(20, "b.example")]
    hosts = [MxHost("a.example", 10, (), "nxdomain"), MxHost("b.example", 20, (), "timeout")]
    r = MxResolution.for_hosts("dest.example", records, hosts)
    assert r.failure is MxFailure.NO_ADDRESSES and r.is_transient
    assert r.site == "(a|b).example"
    assert "a.example: nxdomain" in str(r.reply) and "b.example: timeout" in str(r.reply)


def test_one_host_with_addresses_is_enough():
    records = [MxRecord(10, "a.example"), MxRecord(20, "b.example")]
    hosts = [MxHost("a.example", 10, (), "nxdomain"), MxHost("b.example", 20, ("192.0.2.2",))]
    r = MxResolution.for_hosts("dest.example", records, hosts)
    assert r.ok and r.addresses == ("192.0.2.2",)


def test_a_domain_literal_is_its_own_host_and_site():
    r = MxResolution.for_literal("[192.0.2.1]", "192.0.2.1")
    assert r.ok and r.literal and r.site == "192.0.2.1" and r.addresses == ("192.0.2.1",)


def test_without_rollup_the_site_is_the_domains_own():
    r = MxResolution.for_hosts("gmail.com", [MxRecord(5, "gmail-smtp-in.l.google.com")],
                               [MxHost("gmail-smtp-in.l.google.com", 5, ("192.0.2.9",))])
    assert r.with_rollup(True).site == "gmail-smtp-in.l.google.com"
    assert r.with_rollup(False).site == "domain=gmail.com"
    assert r.with_rollup(False).addresses == r.addresses
    assert MxResolution.failed("n.example", MxFailure.NULL_MX).with_rollup(False).site == ""


def test_to_dict_lists_hosts_by_preference_and_failures_as_such():
    records = [MxRecord(20, "b.example"), MxRecord(10, "a.example")]
    hosts = [MxHost("b.example", 20, ("192.0.2.2",)), MxHost("a.example", 10, ("192.0.2.1",))]
    d = MxResolution.for_hosts("dest.example", records, hosts).to_dict()
    assert [h["name"] for h in d["hosts"]] == ["a.example", "b.example"]
    assert d["null_mx"] is False and d["error"] is None and "reply" not in d
    d = MxResolution.failed("nomail.example", MxFailure.NULL_MX).to_dict()
    assert d["null_mx"] is True and d["site"] == "" and d["error"] == "null_mx"
    assert d["reply"].startswith("556 5.1.10") and d["permanent"] is True


def test_ip_lookup_strategy_names_are_kumomtas_in_any_case():
    assert IpLookupStrategy.parse("Ipv4thenIpv6") is IpLookupStrategy.IPV4_THEN_IPV6
    assert IpLookupStrategy.parse("ipv6only") is IpLookupStrategy.IPV6_ONLY
    with pytest.raises(ValueError, match='"Ipv4AndIpv6"'):
        IpLookupStrategy.parse("both please")


def test_core_modules_import_no_io_libraries():
    code = (
        "import sys, trimta.core.mx, trimta.core.sites;"
        "bad = [m for m in ('trio', 'dns', 'tomlkit', 'h11') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
