"""DANE lookups against a real validating resolver: unbound on loopback, with signed, unsigned and bogus zones.

The production stack (dnspython on trio behind the cache) asks unbound, which
validates from the test root's trust anchor (tests/unbound_dnssec.py); what trimta
makes of the AD bit and of SERVFAIL is what these tests pin down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trimta.adapters.dns import DnsResolver, ResolverConfig, Status
from trimta.core.dane import DnssecState, TlsaRecord
from trimta.core.mx import IpLookupStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dnsmasq import Dnsmasq, dnsmasq  # noqa: F401  (dnsmasq is a fixture)
from unbound_dnssec import Signing, Unbound, Zone, unbound  # noqa: F401  (unbound is the fixture)

pytestmark = pytest.mark.interop

DIGEST = "ab" * 32
UNBOUND_ZONES = [
    Zone("sec.test", [
        "@ IN MX 10 mx1", "mx1 IN A 127.0.0.21", f"_25._tcp.mx1 IN TLSA 3 1 1 {DIGEST}",
        "both IN A 127.0.0.22", "both IN AAAA ::1",
        f"_25._tcp.both IN TLSA 2 0 1 {DIGEST}", f"_25._tcp.both IN TLSA 1 1 1 {DIGEST}",
        "notlsa IN A 127.0.0.23",
        # CNAMEs: to a host with TLSA records, and to one without (the alias's own count then)
        "alias IN CNAME mx1", "alias2 IN CNAME notlsa", f"_25._tcp.alias2 IN TLSA 3 1 1 {DIGEST}",
    ]),
    Zone("insec.test", ["mx1 IN A 127.0.0.31", f"_25._tcp.mx1 IN TLSA 3 1 1 {DIGEST}"], Signing.UNSIGNED),
    Zone("bogus.test", ["mx1 IN A 127.0.0.41", f"_25._tcp.mx1 IN TLSA 3 1 1 {DIGEST}"], Signing.BOGUS),
    # Addresses secure, TLSA records tampered with.
    Zone("badtlsa.test", ["mx1 IN A 127.0.0.51", f"_25._tcp.mx1 IN TLSA 3 1 1 {DIGEST}"], Signing.BOGUS,
         bogus_types=("TLSA",)),
]


def resolver_for(server: Unbound | Dnsmasq, **options) -> DnsResolver:
    config = ResolverConfig(nameservers=(("127.0.0.1", server.port),), **{"timeout_s": 5.0, **options})
    return DnsResolver.from_config(config)


async def test_secure_tlsa_records_of_a_secure_host(unbound):
    with trio.fail_after(30):
        lookup = await resolver_for(unbound).lookup_tlsa("mx1.sec.test")
    assert lookup.state is DnssecState.SECURE
    assert lookup.records == (TlsaRecord(3, 1, 1, bytes.fromhex(DIGEST)),)


async def test_every_record_of_the_rrset_comes_back_and_both_address_families_count(unbound):
    with trio.fail_after(30):
        lookup = await resolver_for(unbound).lookup_tlsa("both.sec.test")
    assert lookup.state is DnssecState.SECURE
    assert sorted(r.usage for r in lookup.records) == [1, 2]


async def test_behind_a_cname_the_target_s_tlsa_records_come_first_then_the_alias_s(unbound):
    resolver = resolver_for(unbound)
    with trio.fail_after(30):
        to_mx1 = await resolver.lookup_tlsa("alias.sec.test")
        to_notlsa = await resolver.lookup_tlsa("alias2.sec.test")
    assert (to_mx1.state, to_mx1.base_domain) == (DnssecState.SECURE, "mx1.sec.test")
    assert to_mx1.reference_names == ("alias.sec.test", "mx1.sec.test")
    assert (to_notlsa.state, to_notlsa.base_domain, len(to_notlsa.records)) == (DnssecState.SECURE, "", 1)


async def test_a_secure_host_without_tlsa_records_is_not_dane(unbound):
    with trio.fail_after(30):
        lookup = await resolver_for(unbound).lookup_tlsa("notlsa.sec.test")
    assert (lookup.state, lookup.records) == (DnssecState.INSECURE, ())
    assert "no TLSA records at _25._tcp.notlsa.sec.test" in lookup.detail


async def test_an_unsigned_zone_is_insecure_even_with_tlsa_records(unbound):
    with trio.fail_after(30):
        lookup = await resolver_for(unbound).lookup_tlsa("mx1.insec.test")
    assert lookup.state is DnssecState.INSECURE
    assert "not DNSSEC-signed" in lookup.detail


async def test_a_bogus_zone_fails(unbound):
    with trio.fail_after(30):
        lookup = await resolver_for(unbound).lookup_tlsa("mx1.bogus.test")
    # The addresses are bogus too (SERVFAIL: no address), so the host is unusable anyway;
    # asked directly, the TLSA RRset is a failure, never "insecure".
    answer = await resolver_for(unbound).lookup.lookup("_25._tcp.mx1.bogus.test", "TLSA")
    assert answer.status is Status.SERVFAIL
    assert lookup.state is DnssecState.INSECURE and "no address records" in lookup.detail


async def test_a_bogus_tlsa_rrset_under_secure_addresses_fails(unbound):
    with trio.fail_after(30):
        lookup = await resolver_for(unbound).lookup_tlsa("mx1.badtlsa.test")
    assert lookup.state is DnssecState.FAILED
    assert "TLSA lookup for _25._tcp.mx1.badtlsa.test failed (SERVFAIL" in lookup.detail


async def test_ip_strategy_decides_which_addresses_must_be_secure(unbound):
    with trio.fail_after(30):
        v4 = await resolver_for(unbound, ip_lookup_strategy=IpLookupStrategy.IPV4_ONLY).lookup_tlsa("mx1.sec.test")
    assert v4.state is DnssecState.SECURE


async def test_literals_have_no_tlsa(unbound):
    resolver = resolver_for(unbound)
    for host in ("[127.0.0.1]", "127.0.0.1", "[IPv6:::1]"):
        assert (await resolver.lookup_tlsa(host)).state is DnssecState.INSECURE


async def test_a_validating_resolver_sets_ad_and_dnsmasq_does_not(unbound, dnsmasq):
    with trio.fail_after(30):
        assert await resolver_for(unbound).sets_ad_bit()
        assert not await resolver_for(dnsmasq).sets_ad_bit()


def test_resolve_site_shows_what_dane_would_do_for_each_mx_host(unbound, tmp_path):
    config = tmp_path / "trimta.toml"
    config.write_text(f'[dns]\nnameservers = ["{unbound.nameserver}"]\ntimeout = "5s"\n')
    result = subprocess.run(
        [sys.executable, "-m", "trimta", "resolve-site", "sec.test", "mx1.insec.test", "mx1.badtlsa.test",
         "--no-mta-sts", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    blocks = {block.splitlines()[0]: block.splitlines()[1:] for block in result.stdout.strip().split("\n\n")}
    assert f"  dane: mx1.sec.test: TLS required, the certificate must match (dane-ee: 3 1 1 {DIGEST})" \
        in blocks["sec.test"]
    assert any(line.startswith("  dane: mx1.insec.test: not applicable (the address records")
               for line in blocks["mx1.insec.test"])
    assert any(line.startswith("  dane: mx1.badtlsa.test: host skipped, mail deferred (TLSA lookup")
               for line in blocks["mx1.badtlsa.test"])
    as_json = subprocess.run(
        [sys.executable, "-m", "trimta", "resolve-site", "sec.test", "--json", "--no-mta-sts", "--config",
         str(config)], capture_output=True, text=True, timeout=120)
    (row,) = json.loads(as_json.stdout)
    assert row["hosts"][0]["dane"] == {"state": "secure", "decision": "authenticate",
                                       "records": [f"3 1 1 {DIGEST}"], "detail": None}
