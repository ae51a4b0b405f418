"""The ``[dns]`` table of trimta.toml: what is accepted, and what an operator is told otherwise."""

from __future__ import annotations

import tomllib

import pytest

from trimta.adapters.config import ConfigError
from trimta.adapters.dns_config import ResolverConfig, parse_dns_table
from trimta.core.mx import IpLookupStrategy


def parse(text: str) -> ResolverConfig:
    return parse_dns_table(tomllib.loads(text).get("dns", {}), "trimta.toml")


def test_empty_table_gives_the_defaults():
    config = parse("")
    assert config == ResolverConfig()
    assert config.nameservers == ()  # the system's resolv.conf
    assert (config.timeout_s, config.negative_ttl_s) == (5.0, 300.0)
    assert config.ip_lookup_strategy is IpLookupStrategy.IPV4_AND_IPV6


def test_every_key_in_operator_form():
    config = parse(
        """
        [dns]
        nameservers = ["127.0.0.1:5353", "192.0.2.53", "::1", "[2001:db8::53]:5300"]
        timeout = "1500ms"
        ttl_floor = "1m"
        ttl_ceiling = "2h"
        negative_ttl = 120
        failure_ttl = "2s"
        cache_size = 500
        max_concurrency = 16
        ip_lookup_strategy = "Ipv6thenIpv4"
        """
    )
    assert config == ResolverConfig(
        nameservers=(("127.0.0.1", 5353), ("192.0.2.53", 53), ("::1", 53), ("2001:db8::53", 5300)),
        timeout_s=1.5,
        ttl_floor_s=60.0,
        ttl_ceiling_s=7200.0,
        negative_ttl_s=120.0,
        failure_ttl_s=2.0,
        cache_size=500,
        max_concurrency=16,
        ip_lookup_strategy=IpLookupStrategy.IPV6_THEN_IPV4,
    )


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ('nameservers = "127.0.0.1"', "dns.nameservers", "a list"),
        ('nameservers = ["ns.example.com"]', "dns.nameservers", '"127.0.0.1:5353"'),
        ('nameservers = ["127.0.0.1:99999"]', "dns.nameservers", "1 to 65535"),
        ('nameservers = ["[::1"]', "dns.nameservers", '"[::1]:5353"'),
        ('timeout = "soon"', "dns.timeout", '"30s"'),
        ("timeout = 0", "dns.timeout", "more than zero"),
        ("max_concurrency = 0", "dns.max_concurrency", "at least 1"),
        ("cache_size = true", "dns.cache_size", "integer"),
        ('ip_lookup_strategy = "v4"', "dns.ip_lookup_strategy", '"Ipv4thenIpv6"'),
        ('ttl_floor = "2h"\nttl_ceiling = "1h"', "dns.ttl_floor", "above ttl_ceiling"),
        ('nameserver = ["127.0.0.1"]', "dns.nameserver", "nameservers"),
    ],
)
def test_mistakes_name_file_key_and_what_would_be_accepted(text, key, hint):
    with pytest.raises(ConfigError) as info:
        parse("[dns]\n" + text)
    err = info.value
    assert (err.file, err.key) == ("trimta.toml", key)
    assert hint in str(err)
    assert str(err).startswith(f"trimta.toml: {key}: ")


def test_dns_that_is_not_a_table_is_refused():
    with pytest.raises(ConfigError) as info:
        parse_dns_table(["127.0.0.1"], "trimta.toml")
    assert info.value.key == "dns"
