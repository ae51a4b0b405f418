"""The shaping model: which tables shape a path, in which order, and what they set.

Documents are plain data here (what tomllib/tomlkit give); files, lines and DNS
are the adapter's business and tested there.
"""

from __future__ import annotations

import tomllib

import pytest

from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.core.shaping import (
    Shaping,
    overrides_of,
    read_document,
    resolve_path,
)
from trimta.core.units import Rate

GMAIL_SITE = "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"
GMAIL_HOSTS = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]
YAHOO_SITE = "(mta5|mta6|mta7).am0.yahoodns.net"


def shaping(*texts: str) -> Shaping:
    documents = []
    for i, text in enumerate(texts):
        document, problems = read_document(tomllib.loads(text), origin=f"file{i}")
        errors = [p for p in problems if not p.warning]
        assert not errors, errors
        documents.append(document)
    return Shaping(documents)


def path(s: Shaping, source: str = "ip-1", site: str = GMAIL_SITE, domain: str = "gmail.com", *,
         site_domains=(), mx_hosts=None, base: EgressPathConfig | None = None) -> EgressPathConfig:
    start = base or EgressPathConfig()
    layers = s.layers(source, site, domain, site_domains=site_domains, mx_hosts=mx_hosts)
    return resolve_path(layers, start=EgressPathConfig(), restart=start) if base else resolve_path(layers, start=start)


ISSUE_EXAMPLE = """
["default"]
connection_limit = 10
max_connection_rate = "100/min"
max_deliveries_per_connection = 100
max_message_rate = "100/s"
idle_timeout = "60s"
enable_tls = "Opportunistic"
consecutive_connection_failures_before_delay = 100

["gmail.com"]
max_deliveries_per_connection = 50
connection_limit = 5
enable_tls = "Required"

["gmail.com".sources."ip-1"]
max_message_rate = "10/s"

["example.com"]
mx_rollup = false
connection_limit = 3
"""


def test_issue_example_default_applies_to_an_unknown_destination():
    config = path(shaping(ISSUE_EXAMPLE), site="mx.other.example", domain="other.example")
    assert config.connection_limit == 10
    assert config.max_connection_rate == Rate(100, 60.0)
    assert config.max_deliveries_per_connection == 100
    assert config.max_message_rate == Rate(100, 1.0)
    assert config.idle_timeout_s == 60.0
    assert config.enable_tls is TlsPolicy.OPPORTUNISTIC
    assert config.consecutive_connection_failures_before_delay == 100


def test_domain_table_applies_to_its_site_and_the_source_table_to_that_source_only():
    s = shaping(ISSUE_EXAMPLE)
    ip1 = path(s, "ip-1")
    ip2 = path(s, "ip-2")
    assert (ip1.connection_limit, ip1.max_deliveries_per_connection, ip1.enable_tls) == (5, 50, TlsPolicy.REQUIRED)
    assert ip1.max_message_rate == Rate(10, 1.0)
    assert ip2.max_message_rate == Rate(100, 1.0)
    assert ip2.connection_limit == 5


def test_rolled_up_table_shapes_another_domain_of_the_same_site():
    s = shaping(ISSUE_EXAMPLE)
    config = path(s, domain="googlemail.com", site_domains=["gmail.com"])
    assert config.connection_limit == 5
    # ...but not when nobody knows gmail.com's table is on this site.
    assert path(s, domain="googlemail.com").connection_limit == 10


def test_mx_rollup_false_applies_to_that_domain_only():
    s = shaping(ISSUE_EXAMPLE)
    assert s.rollup("example.com") is False and s.rollup("Example.COM.") is False
    assert s.rollup("gmail.com") is True and s.rollup("nobody.example") is True
    assert path(s, site="domain=example.com", domain="example.com").connection_limit == 3
    # A domain not rolled up never shapes the site it shares, even if listed there.
    assert path(s, site="mx.example.net", domain="other.example", site_domains=["example.com"]).connection_limit == 10


def test_merge_order_every_step_overrides_the_one_before():
    # Each step sets `smtp_port` to its own number and a marker option of its own,
    # so the winner and every contributor are visible.
    s = shaping("""
        ["default"]
        smtp_port = 1
        connect_timeout = "1s"
        [provider."p"]
        match = [{ DomainSuffix = "example.com" }]
        smtp_port = 2
        banner_timeout = "2s"
        [provider."p".sources."ip-1"]
        smtp_port = 3
        ehlo_timeout = "3s"
        ["site.example.com"]
        smtp_port = 4
        mail_from_timeout = "4s"
        ["site.example.com".sources."ip-1"]
        smtp_port = 6
        data_timeout = "6s"
        ["own.example.com"]
        mx_rollup = false
        smtp_port = 5
        rcpt_to_timeout = "5s"
        ["own.example.com".sources."ip-1"]
        smtp_port = 7
        data_dot_timeout = "7s"
    """)
    layers = s.layers("ip-1", "mx.example.com", "own.example.com", site_domains=["site.example.com"])
    assert [layer.label for layer in layers] == [
        '"default"', 'provider "p"', 'provider "p" source "ip-1"', 'site "mx.example.com"',
        '"own.example.com"', 'site "mx.example.com" source "ip-1"', '"own.example.com" source "ip-1"',
    ]
    config = resolve_path(layers, start=EgressPathConfig())
    assert config.smtp_port == 7
    assert (config.connect_timeout_s, config.banner_timeout_s, config.ehlo_timeout_s, config.mail_from_timeout_s,
            config.rcpt_to_timeout_s, config.data_timeout_s, config.data_dot_timeout_s) == (1, 2, 3, 4, 5, 6, 7)
    assert config.provider == "p"
    # Without the last step the one before it wins, and so on down.
    ports = [resolve_path(layers[:n], start=EgressPathConfig()).smtp_port for n in range(1, len(layers) + 1)]
    assert ports == [1, 2, 3, 4, 5, 6, 7]


def test_providers_merge_in_the_order_they_first_appear_then_their_sources():
    s = shaping("""
        [provider."a"]
        match = [{ DomainSuffix = ".test" }]
        connection_limit = 1
        sources."ip-1".smtp_port = 2526
        [provider."b"]
        match = [{ DomainSuffix = ".test" }]
        connection_limit = 2
        smtp_port = 2525
    """)
    config = path(s, site="mx.x.test", domain="x.test")
    assert config.connection_limit == 2
    assert config.provider == "b"
    # a's source table comes after b's base table.
    assert config.smtp_port == 2526


def test_same_table_in_later_file_merges_over_the_earlier_one():
    s = shaping(
        '["gmail.com"]\nconnection_limit = 5\nidle_timeout = "30s"\n["gmail.com".sources."ip-1"]\nsmtp_port = 2525\n',
        '["gmail.com"]\nconnection_limit = 7\n["gmail.com".sources."ip-1"]\nstarttls_timeout = "9s"\n',
    )
    config = path(s)
    assert (config.connection_limit, config.idle_timeout_s) == (7, 30.0)
    assert (config.smtp_port, config.starttls_timeout_s) == (2525, 9.0)


def test_default_tables_of_several_files_merge():
    s = shaping('["default"]\nconnection_limit = 5\nsmtp_port = 2525\n', '["default"]\nconnection_limit = 6\n')
    config = path(s, site="mx.x.example", domain="x.example")
    assert (config.connection_limit, config.smtp_port) == (6, 2525)


def test_replace_base_drops_earlier_tables_of_that_name():
    s = shaping(
        '["gmail.com"]\nconnection_limit = 5\nidle_timeout = "30s"\n',
        '["gmail.com"]\nreplace_base = true\nconnection_limit = 7\n',
    )
    config = path(s)
    assert config.connection_limit == 7
    assert config.idle_timeout_s == 60.0


def test_replace_base_starts_the_path_again_from_the_base_not_the_default():
    s = shaping("""
        ["default"]
        max_message_rate = "1/s"
        smtp_port = 2525
        ["gmail.com"]
        replace_base = true
        connection_limit = 4
    """)
    operator_base = EgressPathConfig(ehlo_domain="mta.example.net")
    config = path(s, base=operator_base)
    assert config.connection_limit == 4
    assert config.max_message_rate is None and config.smtp_port == 25  # the default table is gone
    assert config.ehlo_domain == "mta.example.net"  # the base is kept
    assert path(s, site="mx.x.example", domain="x.example").smtp_port == 2525


def test_later_table_saying_mx_rollup_moves_the_domain():
    s = shaping('["shop.example"]\nconnection_limit = 2\n', '["shop.example"]\nmx_rollup = false\nsmtp_port = 2525\n')
    assert s.rollup("shop.example") is False
    config = path(s, site="domain=shop.example", domain="shop.example")
    assert (config.connection_limit, config.smtp_port) == (2, 2525)


def test_two_domains_on_one_site_merge_in_file_order():
    s = shaping('["gmail.com"]\nconnection_limit = 5\n["googlemail.com"]\nconnection_limit = 3\nsmtp_port = 2525\n')
    config = path(s, site_domains=["gmail.com", "googlemail.com"])
    assert (config.connection_limit, config.smtp_port) == (3, 2525)


def test_conflicting_domains_on_one_site_are_reported_with_both_values():
    s = shaping("""
        ["gmail.com"]
        connection_limit = 5
        idle_timeout = "30s"
        ["googlemail.com"]
        connection_limit = 3
        idle_timeout = "30s"
        ["googlemail.com".sources."ip-1"]
        smtp_port = 2525
        ["gmail.com".sources."ip-1"]
        smtp_port = 2526
    """)
    conflicts = s.conflicts(["gmail.com", "googlemail.com"])
    assert [(c.option, c.first[:2], c.second[:2]) for c in conflicts] == [
        ("connection_limit", ("gmail.com", 5), ("googlemail.com", 3)),
        # A source table belongs to its domain's table, which comes first here.
        ('sources."ip-1".smtp_port', ("gmail.com", 2526), ("googlemail.com", 2525)),
    ]
    assert path(s, site_domains=["gmail.com", "googlemail.com"]).smtp_port == 2525
    assert s.conflicts(["gmail.com"]) == []


def test_same_domain_twice_is_not_a_conflict():
    s = shaping('["gmail.com"]\nconnection_limit = 5\n', '["gmail.com"]\nconnection_limit = 3\n')
    assert s.conflicts(["gmail.com"]) == []


def test_kumomta_options_trimta_ignores_are_kept_as_extra_through_the_merge():
    s = shaping("""
        ["default"]
        reconnect_strategy = "TerminateSession"
        enable_dane = true
        ["gmail.com"]
        enable_mta_sts = false
    """)
    assert path(s).extra == {"reconnect_strategy": "TerminateSession"}
    assert path(s).enable_mta_sts is False
    assert path(s).enable_dane is True


def test_overrides_of_gives_the_fields_that_differ_from_the_defaults():
    config = EgressPathConfig(connection_limit=3, ehlo_domain="mta.example", extra={"enable_dane": True})
    assert overrides_of(config) == {"connection_limit": 3, "ehlo_domain": "mta.example",
                                    "extra": {"enable_dane": True}}
    assert overrides_of(EgressPathConfig()) == {}


def test_after_default_layers_come_between_default_and_providers():
    s = shaping('["default"]\nsmtp_port = 2525\nconnection_limit = 9\n["gmail.com"]\nconnection_limit = 5\n')
    from trimta.core.shaping import Layer

    layers = s.layers("ip-1", GMAIL_SITE, "gmail.com", after_default=[Layer("operator", {"smtp_port": 2600,
                                                                                         "connection_limit": 1})])
    config = resolve_path(layers, start=EgressPathConfig())
    assert (config.smtp_port, config.connection_limit) == (2600, 5)


@pytest.mark.parametrize("domain", ["GMAIL.com", "gmail.com.", " gmail.com"])
def test_domain_names_match_whatever_their_case_or_trailing_dot(domain):
    s = shaping(ISSUE_EXAMPLE)
    assert path(s, domain=domain).connection_limit == 5
