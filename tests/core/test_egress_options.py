"""Egress path options: KumoMTA names and value forms, errors, layering by the static provider."""

from __future__ import annotations

import ipaddress

import pytest

from trimta.core.egress import EgressPathConfig, KeySource, TlsPolicy
from trimta.core.egress_options import (
    OPTIONS,
    OptionError,
    StaticPathProvider,
    apply_options,
    parse_path_options,
)
from trimta.core.mx import IpLookupStrategy
from trimta.core.units import Limit, Rate

GMAIL_SITE = "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"


def test_every_option_parses_into_its_field():
    table = {
        "connection_limit": 10,
        "max_connection_rate": "100/min",
        "max_message_rate": "20/s,max_burst=5",
        "max_deliveries_per_connection": 50,
        "max_ready": 200,
        "idle_timeout": "30s",
        "enable_tls": "RequiredInsecure",
        "enable_mta_sts": False,
        "enable_dane": True,
        "smtp_port": 2525,
        "prohibited_hosts": ["10.0.0.0/8", "::1"],
        "skip_hosts": ["192.0.2.7"],
        "ip_lookup_strategy": "Ipv4Only",
        "consecutive_connection_failures_before_delay": 5,
        "delay_after_connection_failures": "2m",
        "connect_timeout": "10s",
        "banner_timeout": "11s",
        "ehlo_timeout": "12s",
        "mail_from_timeout": "13s",
        "rcpt_to_timeout": "14s",
        "data_timeout": "15s",
        "data_dot_timeout": "16s",
        "starttls_timeout": "17s",
        "rset_timeout": "18s",
        "enable_pipelining": False,
        "ehlo_domain": "mta1.example.com",
        "provider_connection_limit": 100,
        "provider_max_message_rate": "1000/h",
        "provider_source_selection_rate": "500/d,max_burst=1",
        "auth_timeout": "19s",
        "enable_rset": True,
        "max_recipients_per_batch": 10,
        "try_next_host_on_transport_error": True,
        "remember_broken_tls": "3 days",
        "opportunistic_tls_reconnect_on_failed_handshake": True,
        "smtp_auth_plain_username": "daniel",
        "smtp_auth_plain_password": {"key_data": "tiger"},
        "tls_certificate": "/etc/trimta/client.pem",
        "tls_private_key": "/etc/trimta/client.key",
        "openssl_cipher_list": "ECDHE-RSA-AES128-GCM-SHA256",
        "openssl_options": "NO_TLSV1_3 | NO_TICKET",
        "use_lmtp": True,
        "allow_smtp_auth_plain_without_tls": True,
        "allow_smtp_auth_plain_without_valid_certificate": True,
        "provider_name": "bigmail",
        "additional_connection_limits": {"global-connection-limit": "local:100"},
        "additional_message_rate_throttles": {"global-message-rate": "4000/s"},
        "source_selection_rate": "100/day,max_burst=1",
        "additional_source_selection_rates": {"overall-ip-1": "10,000/day,max_burst=1"},
    }
    assert set(table) == set(OPTIONS)
    config = apply_options(EgressPathConfig(), parse_path_options(table, where="test"))
    assert config.connection_limit == 10
    assert config.enable_mta_sts is False
    assert config.enable_dane is True
    assert config.max_connection_rate == Rate(100, 60.0)
    assert config.max_message_rate == Rate(20, 1.0, 5)
    assert config.max_deliveries_per_connection == 50
    assert config.max_ready == 200
    assert config.idle_timeout_s == 30.0
    assert config.enable_tls is TlsPolicy.REQUIRED_INSECURE
    assert config.smtp_port == 2525
    assert config.prohibited_hosts == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert config.is_skipped("192.0.2.7") and not config.is_skipped("192.0.2.8")
    assert config.ip_lookup_strategy is IpLookupStrategy.IPV4_ONLY
    assert config.consecutive_connection_failures_before_delay == 5
    assert config.delay_after_connection_failures_s == 120.0
    assert (config.connect_timeout_s, config.banner_timeout_s, config.ehlo_timeout_s) == (10, 11, 12)
    assert (config.mail_from_timeout_s, config.rcpt_to_timeout_s, config.data_timeout_s) == (13, 14, 15)
    assert (config.data_dot_timeout_s, config.starttls_timeout_s, config.rset_timeout_s) == (16, 17, 18)
    assert config.enable_pipelining is False
    assert config.ehlo_domain == "mta1.example.com"
    assert config.provider_connection_limit == 100
    assert config.provider_max_message_rate == Rate(1000, 3600.0)
    assert config.provider_source_selection_rate == Rate(500, 86400.0, 1)
    assert (config.tls_certificate.path, config.tls_private_key.path) == ("/etc/trimta/client.pem", "/etc/trimta/client.key")
    assert config.openssl_cipher_list == "ECDHE-RSA-AES128-GCM-SHA256"
    assert config.openssl_options == ("NO_TLSV1_3", "NO_TICKET")
    assert config.use_lmtp is True
    assert config.auth_timeout_s == 19
    assert config.enable_rset and config.try_next_host_on_transport_error
    assert config.max_recipients_per_batch == 10
    assert config.remember_broken_tls_s == 3 * 86400
    assert config.opportunistic_tls_reconnect_on_failed_handshake
    assert config.smtp_auth_plain_username == "daniel"
    assert config.smtp_auth_plain_password == KeySource(data="tiger")
    assert config.allow_smtp_auth_plain_without_tls and config.allow_smtp_auth_plain_without_valid_certificate
    assert config.provider == "bigmail"
    assert config.additional_connection_limits == (("global-connection-limit", Limit(100, local=True)),)
    assert config.additional_message_rate_throttles == (("global-message-rate", Rate(4000, 1.0)),)
    assert config.source_selection_rate == Rate(100, 86400.0, 1)
    assert config.additional_source_selection_rates == (("overall-ip-1", Rate(10_000, 86400.0, 1)),)


def test_only_given_options_are_overridden():
    assert parse_path_options({"idle_timeout": "5 minutes"}, where="t") == {"idle_timeout_s": 300.0}
    assert parse_path_options({}, where="t") == {}


def test_empty_prohibited_hosts_allows_loopback_for_tests():
    config = apply_options(EgressPathConfig(), parse_path_options({"prohibited_hosts": []}, where="t"))
    assert EgressPathConfig().is_prohibited("127.0.0.1")
    assert not config.is_prohibited("127.0.0.1")


def test_enable_tls_is_case_insensitive_like_kumomta_names():
    assert parse_path_options({"enable_tls": "opportunisticinsecure"}, where="t") == {
        "enable_tls": TlsPolicy.OPPORTUNISTIC_INSECURE
    }


def test_unknown_option_suggests_the_closest_name():
    with pytest.raises(OptionError) as info:
        parse_path_options({"conection_limit": 3}, where="shaping.toml: gmail.com")
    assert info.value.key == "conection_limit"
    assert "did you mean 'connection_limit'?" in str(info.value)
    assert str(info.value).startswith("shaping.toml: gmail.com: conection_limit: ")


def test_unknown_option_with_nothing_close_lists_the_options():
    with pytest.raises(OptionError, match="known options: connection_limit, "):
        parse_path_options({"zzzz": 1}, where="t")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("idle_timeout", "60 parsecs", "unknown duration unit"),
        ("idle_timeout", True, "expected a number of seconds or a string"),
        ("max_message_rate", "100 per second", 'a string like "100/s"'),
        ("max_message_rate", 100, 'a string like "100/s"'),
        ("connection_limit", 0, "expected a positive integer, got 0"),
        ("connection_limit", "three", "got 'three' (a string like \"1,000\", \"1_000\" or \"local:5\" works too)"),
        ("connection_limit", "local:0", "got 'local:0'"),
        ("max_message_rate", "3/0m", "the period must be longer than zero"),
        ("smtp_auth_plain_password", {"vault_mount": "secret", "vault_path": "x"}, "Vault"),
        ("smtp_port", 70000, "port number from 1 to 65535"),
        ("enable_tls", "Sometimes", '"Opportunistic", "OpportunisticInsecure", "Required"'),
        ("ip_lookup_strategy", "Ipv5", '"Ipv4AndIpv6"'),
        ("prohibited_hosts", ["10.0.0.0/33"], "not an address or CIDR: '10.0.0.0/33'"),
        ("prohibited_hosts", 10, "expected a list of addresses or CIDRs"),
        ("enable_pipelining", "yes", "expected true or false"),
        ("ehlo_domain", "two words", "expected a host name"),
    ],
)
def test_bad_values_are_explained(key, value, message):
    with pytest.raises(OptionError) as info:
        parse_path_options({key: value}, where="t")
    assert info.value.key == key
    assert message in info.value.message


def test_option_error_is_a_value_error():
    assert issubclass(OptionError, ValueError)


def test_kumomta_options_trimta_does_not_act_on_are_kept_aside_as_extra():
    overrides = parse_path_options({"ignore_8bit_checks": True, "connection_limit": 2}, where="t")
    assert overrides == {"connection_limit": 2, "extra": {"ignore_8bit_checks": True}}
    config = apply_options(EgressPathConfig(), overrides)
    assert config.extra == {"ignore_8bit_checks": True}
    config = apply_options(config, parse_path_options({"reconnect_strategy": "TerminateSession"}, where="t"))
    assert config.extra == {"ignore_8bit_checks": True, "reconnect_strategy": "TerminateSession"}


def test_enable_dane_is_acted_on_and_off_by_default():
    assert EgressPathConfig().enable_dane is False
    assert parse_path_options({"enable_dane": True}, where="t") == {"enable_dane": True}
    with pytest.raises(OptionError, match="enable_dane"):
        parse_path_options({"enable_dane": "yes"}, where="t")


def test_enable_mta_sts_is_acted_on_and_on_by_default():
    assert EgressPathConfig().enable_mta_sts is True
    assert parse_path_options({"enable_mta_sts": False}, where="t") == {"enable_mta_sts": False}
    with pytest.raises(OptionError, match="enable_mta_sts"):
        parse_path_options({"enable_mta_sts": "sometimes"}, where="t")


def test_apply_options_leaves_the_base_unchanged():
    base = EgressPathConfig()
    changed = apply_options(base, {"connection_limit": 3})
    assert base.connection_limit == 32 and changed.connection_limit == 3


def provider() -> StaticPathProvider:
    return StaticPathProvider(
        EgressPathConfig(connection_limit=10, smtp_port=2525),
        by_domain={"Gmail.com": {"connection_limit": 3, "idle_timeout_s": 5.0}},
        by_site={GMAIL_SITE: {"connection_limit": 5, "max_deliveries_per_connection": 50}},
        by_source={"ip-1": {"connection_limit": 1, "ehlo_domain": "mta1.example.com"}},
    )


def test_provider_gives_the_default_for_unknown_paths():
    config = provider().path_config("unspecified", "mx.other.example", "other.example")
    assert (config.connection_limit, config.smtp_port, config.max_deliveries_per_connection) == (10, 2525, 1024)


def test_site_rules_apply_to_every_domain_of_the_site():
    config = provider().path_config("unspecified", GMAIL_SITE, "googlemail.com")
    assert (config.connection_limit, config.max_deliveries_per_connection) == (5, 50)


def test_domain_rules_override_site_rules_and_keep_the_rest():
    config = provider().path_config("unspecified", GMAIL_SITE, "GMAIL.com")
    assert config.connection_limit == 3  # domain beats site
    assert config.max_deliveries_per_connection == 50  # from the site
    assert config.idle_timeout_s == 5.0  # from the domain
    assert config.smtp_port == 2525  # from the default


def test_source_rules_override_everything():
    config = provider().path_config("ip-1", GMAIL_SITE, "gmail.com")
    assert config.connection_limit == 1
    assert config.ehlo_domain == "mta1.example.com"
    assert config.idle_timeout_s == 5.0


def test_provider_returns_the_same_object_for_the_same_layers():
    p = provider()
    assert p.path_config("x", "a.example", "a.example") is p.path_config("y", "b.example", "b.example")
    assert p.path_config("ip-1", GMAIL_SITE, "gmail.com") is p.path_config("ip-1", GMAIL_SITE, "gmail.com")
