"""Provider tables: matching by MX host names and domain, and sites turned back into hosts."""

from __future__ import annotations

import tomllib

import pytest

from trimta.core.mx import MxRecord, mx_site
from trimta.core.shaping import Shaping, read_document
from trimta.core.shaping_automation import InvalidValue
from trimta.core.shaping_providers import MatchKind, ProviderMatch, parse_matches, provider_matches, site_hosts

GOOGLE = parse_matches([{"MXSuffix": ".google.com"}, {"MXSuffix": ".googlemail.com"}])


def test_mx_suffix_needs_every_host_to_match():
    hosts = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]
    assert provider_matches(GOOGLE, "gmail.com", hosts)
    assert provider_matches(GOOGLE, "example.com", ["aspmx.l.google.com", "aspmx2.googlemail.com"])
    # A vanity domain mixing Google and someone else belongs to neither.
    assert not provider_matches(GOOGLE, "mixed.example", ["aspmx.l.google.com", "mx.other.example"])


def test_suffix_is_a_plain_string_suffix():
    assert not provider_matches(GOOGLE, "x.example", ["google.com"])
    assert provider_matches(parse_matches([{"MXSuffix": "google.com"}]), "x.example", ["notgoogle.com"])


def test_matching_ignores_case_and_trailing_dots():
    assert provider_matches(GOOGLE, "Gmail.COM", ["GMAIL-SMTP-IN.L.Google.Com."])


def test_host_name_matches_exactly():
    matches = parse_matches([{"HostName": "mx.example.net."}])
    assert matches == (ProviderMatch(MatchKind.HOST_NAME, "mx.example.net"),)
    assert provider_matches(matches, "a.example", ["mx.example.net"])
    assert not provider_matches(matches, "a.example", ["mx2.example.net"])


def test_host_name_and_mx_suffix_together_cover_the_hosts_between_them():
    matches = parse_matches([{"HostName": "mx.example.net"}, {"MXSuffix": ".google.com"}])
    assert provider_matches(matches, "a.example", ["mx.example.net", "aspmx.l.google.com"])


def test_domain_suffix_needs_no_hosts():
    matches = parse_matches([{"DomainSuffix": ".gmail.com"}, {"DomainSuffix": "googlemail.com"}])
    assert provider_matches(matches, "sub.gmail.com", None)
    assert provider_matches(matches, "googlemail.com", None)
    assert not provider_matches(matches, "gmail.com", None)
    assert not provider_matches(GOOGLE, "gmail.com", None)  # MX rules without hosts: no match


@pytest.mark.parametrize("value, where, message", [
    ({"MXSuffix": ".x.com"}, (), "expected a list like"),
    ([".x.com"], (0,), "expected a list like"),
    ([{"MxSuffix": ".x.com"}], (0, "MxSuffix"), "did you mean 'MXSuffix'?"),
    ([{"MXSuffix": ""}], (0, "MXSuffix"), "suffix"),
    ([{"MXSuffix": ".a", "DomainSuffix": ".b"}], (0,), "expected a list like"),
])
def test_bad_match_forms(value, where, message):
    with pytest.raises(InvalidValue) as info:
        parse_matches(value)
    assert info.value.path == where and message in info.value.message


def site_of(*hosts: str) -> str:
    return mx_site([MxRecord.parse(10 * i, h) for i, h in enumerate(hosts)])


@pytest.mark.parametrize("hosts", [
    ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com", "alt2.gmail-smtp-in.l.google.com"],
    ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"],
    ["mx.example.com"],
    ["a.x.example", "b.y.example"],
])
def test_site_hosts_give_back_every_host_of_the_site(hosts):
    expanded = site_hosts(site_of(*hosts))
    assert expanded is not None and set(hosts) <= set(expanded)


def test_site_hosts_match_a_provider_exactly_when_the_hosts_do():
    mixed = site_of("example-com.mail.protection.outlook.com", "mx-biz.mail.am0.yahoodns.net")
    yahoo = parse_matches([{"MXSuffix": ".yahoodns.net"}])
    microsoft = parse_matches([{"MXSuffix": ".mail.protection.outlook.com"}])
    assert not provider_matches(yahoo, "x.example", site_hosts(mixed))
    assert not provider_matches(microsoft, "x.example", site_hosts(mixed))
    google = site_of("gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com")
    assert provider_matches(GOOGLE, "gmail.com", site_hosts(google))


@pytest.mark.parametrize("site", ["", "domain=example.com", "(a|b.example.com", "2001:db8::1"])
def test_site_hosts_cannot_say_for_own_sites_and_oddities(site):
    assert site_hosts(site) is None


def test_site_hosts_drop_a_port():
    assert site_hosts("(mta5|mta6).am0.yahoodns.net:2525") == ("mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net")


def test_site_hosts_refuse_a_huge_expansion():
    site = ".".join("(" + "|".join(f"l{i}x{j}" for j in range(6)) + ")" for i in range(5))
    assert site_hosts(site) is None


def shaping(text: str) -> Shaping:
    document, problems = read_document(tomllib.loads(text))
    assert not [p for p in problems if not p.warning]
    return Shaping([document])


def test_provider_tables_of_several_documents_merge_and_add_up_their_matches():
    first, _ = read_document(tomllib.loads('[provider."ms"]\nmatch = [{ MXSuffix = ".olc.protection.outlook.com" }]\n'
                                           "connection_limit = 5\n"))
    second, _ = read_document(tomllib.loads('[provider."ms"]\nmatch = [{ MXSuffix = ".mx.microsoft" }]\n'
                                            "max_deliveries_per_connection = 20\n"))
    s = Shaping([first, second])
    entry = s.providers["ms"]
    assert [m.value for m in entry.matches] == [".olc.protection.outlook.com", ".mx.microsoft"]
    assert entry.overrides == {"connection_limit": 5, "max_deliveries_per_connection": 20}
    assert [name for name, _ in s.matching_providers("x.example", ["x-example.a-v1.mx.microsoft"])] == ["ms"]


def test_a_provider_replacing_its_base_drops_earlier_matches():
    first, _ = read_document(tomllib.loads('[provider."p"]\nmatch = [{ MXSuffix = ".a.example" }]\n'))
    second, _ = read_document(tomllib.loads('[provider."p"]\nreplace_base = true\n'
                                            'match = [{ MXSuffix = ".b.example" }]\n'))
    s = Shaping([first, second])
    assert s.matching_providers("x", ["mx.a.example"]) == []
    assert [n for n, _ in s.matching_providers("x", ["mx.b.example"])] == ["p"]


def test_provider_shared_limits_reach_the_path():
    s = shaping("""
        [provider."google"]
        match = [{ MXSuffix = ".google.com" }]
        provider_connection_limit = 5
        provider_max_message_rate = "1000/h"
        provider_source_selection_rate = "100/h"
    """)
    from trimta.core.egress import EgressPathConfig
    from trimta.core.shaping import resolve_path

    layers = s.layers("ip-1", "aspmx.l.google.com", "example.com", mx_hosts=["aspmx.l.google.com"])
    config = resolve_path(layers, start=EgressPathConfig())
    assert (config.provider, config.provider_connection_limit) == ("google", 5)
    assert config.provider_max_message_rate.limit == 1000
    assert config.provider_source_selection_rate.limit == 100 and config.extra == {}
