"""The delivery tables of trimta.toml: queues, tenants, sources, pools, egress; and docs/queues.md."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from trimta.adapters.config import ConfigError, parse_config
from trimta.adapters.delivery_config import DeliveryConfig, parse_delivery_config
from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.core.pools import DEFAULT_POOL, PoolPicker
from trimta.core.retry import QueueConfig
from trimta.core.units import Rate

DOCS = Path(__file__).resolve().parents[2] / "docs" / "queues.md"
GMAIL_SITE = "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"

FULL = """
[queues]
retry_interval = "20m"
max_retry_interval = "8h"
max_age = "7d"
egress_pool = "default"
max_message_rate = "1000/s"

[queues.domains."Example.com"]
max_age = "1d"

[tenants.acme]
egress_pool = "acme-pool"
max_age = "2d"

[sources.ip-1]
source_address = "127.0.0.2"
ehlo_domain = "mta1.example.com"

[sources.ip-2]
source_address = "::1"

[pools.default]
entries = [{ name = "unspecified" }]

[pools.acme-pool]
entries = [{ name = "ip-1", weight = 2 }, { name = "ip-2" }]

[egress.default]
smtp_port = 2525
prohibited_hosts = []

[egress.domains."example.com"]
connection_limit = 3

[egress.sites."(mx1|mx2).example.net"]
connection_limit = 5

[egress.sources."ip-1"]
max_deliveries_per_connection = 10
"""


def load(text: str, **kwargs) -> DeliveryConfig:
    return parse_delivery_config(tomllib.loads(text), "trimta.toml", **kwargs)


def error(text: str, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, **kwargs)
    return info.value


def test_no_tables_means_kumomta_defaults_and_the_unspecified_pool():
    config = load("")
    assert config.queue_config("acme", "spring", "example.com") == QueueConfig()
    assert config.pool_for("acme") is DEFAULT_POOL
    assert config.source("unspecified").source_address is None
    assert config.path_provider.path_config("unspecified", "mx.example", "example.com") == EgressPathConfig()


def test_queue_config_layers_defaults_then_domain_then_tenant():
    config = load(FULL)
    plain = config.queue_config(None, None, "other.example")
    assert plain == QueueConfig(1200.0, 8 * 3600.0, 7 * 86400.0, "default", Rate(1000, 1.0))
    assert config.queue_config(None, None, "example.com").max_age_s == 86400.0  # domain
    assert config.queue_config(None, None, "EXAMPLE.COM.").max_age_s == 86400.0
    acme = config.queue_config("acme", "spring", "example.com")
    assert acme.max_age_s == 2 * 86400.0  # the tenant beats the domain
    assert acme.egress_pool == "acme-pool"
    assert acme.retry_interval_s == 1200.0  # untouched keys come from [queues]


def test_tenant_domain_and_pool_selection():
    config = load(FULL)
    assert config.pool_for("acme").entries == (("ip-1", 2), ("ip-2", 1))
    assert config.pool_for("someone-else").name == "default"
    assert config.pool_for(None).entries == (("unspecified", 1),)


def test_sources_and_their_ehlo_domain_reach_the_path():
    config = load(FULL)
    assert config.source("ip-1").source_address == "127.0.0.2"
    assert config.source("ip-2").source_address == "::1"
    path = config.path_provider.path_config("ip-1", "mx.other.example", "other.example")
    assert path.ehlo_domain == "mta1.example.com"
    assert path.max_deliveries_per_connection == 10
    assert config.path_provider.path_config("ip-2", "mx.other.example", "other.example").ehlo_domain is None


def test_egress_tables_layer_default_site_domain_source():
    provider = load(FULL).path_provider
    site = provider.path_config("ip-2", "(mx1|mx2).example.net", "other.example")
    assert (site.connection_limit, site.smtp_port, site.prohibited_hosts) == (5, 2525, ())
    domain = provider.path_config("ip-2", "(mx1|mx2).example.net", "example.com")
    assert domain.connection_limit == 3
    source = provider.path_config("ip-1", "(mx1|mx2).example.net", "example.com")
    assert (source.connection_limit, source.max_deliveries_per_connection) == (3, 10)


def test_egress_sources_table_can_override_a_sources_ehlo_domain():
    config = load(FULL.replace("max_deliveries_per_connection = 10", 'ehlo_domain = "other.example.com"'))
    assert config.path_provider.path_config("ip-1", "s", "d").ehlo_domain == "other.example.com"


def test_ignored_kumomta_options_load_with_a_warning():
    config = load('[egress.default]\ndispatcher_wakeup_strategy = "Aggressive"\nenable_dane = true\n')
    assert config.warnings == (
        "trimta.toml: egress.default.dispatcher_wakeup_strategy: a KumoMTA option trimta does not act on; ignored",
    )
    assert config.path_provider.default.enable_dane is True


def test_keys_owned_elsewhere_may_appear_in_tenant_tables():
    text = '[tenants.acme]\nmax_age = "1d"\nwebhook = "https://example.com/hook"\n'
    assert error(text).key == "tenants.acme.webhook"
    config = load(text, other_tenant_keys=("webhook",))
    assert config.queue_config("acme", None, "x.example").max_age_s == 86400.0


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ('[queues]\nretry_intervall = "1m"\n', "queues.retry_intervall", "did you mean 'retry_interval'?"),
        ('[queues]\nmax_age = "7 fortnights"\n', "queues.max_age", "unknown duration unit 'fortnights'"),
        ("[queues]\nmax_age = 0\n", "queues.max_age", "longer than zero"),
        ('[queues]\nmax_message_rate = "fast"\n', "queues.max_message_rate", '"100/s"'),
        ('[queues]\negress_pool = "nope"\n', "queues.egress_pool", "no pool named 'nope'; pools defined: unspecified"),
        ('[queues]\nretry_interval = "1h"\nmax_retry_interval = "10m"\n', "queues", "must not be shorter"),
        ('[queues.domains."a.example"]\nmax_retry_interval = "1m"\n', 'queues.domains."a.example"',
         "must not be shorter"),
        ('[queues.domains."a.example"]\nmax_retry_interval = "1h"\n[tenants.t]\nretry_interval = "2h"\n',
         "tenants.t", "(for mail to a.example)"),
        ("[queues]\ndomains = 3\n", "queues.domains", "expected a table"),
        ('[queues.domains."a.example"]\nmax_agee = "1d"\n', 'queues.domains."a.example".max_agee', "max_age"),
        ('[tenants.acme]\negres_pool = "x"\n', "tenants.acme.egres_pool", "did you mean 'egress_pool'?"),
        ('[pools.acme-pool]\nentries = [{ name = "unspecified" }]\n[tenants.acme]\negress_pool = "acme-pol"\n',
         "tenants.acme.egress_pool", "did you mean 'acme-pool'?"),
        ('[sources.ip-1]\nsource_address = "mail.example.com"\n', "sources.ip-1.source_address", "an IP address"),
        ('[sources.ip-1]\nsource_adress = "192.0.2.1"\n', "sources.ip-1.source_adress", "source_address"),
        ('[sources.ip-1]\nehlo_domain = ""\n', "sources.ip-1.ehlo_domain", "host name"),
        ("[pools.p]\n", "pools.p.entries", "non-empty list"),
        ('[pools.p]\nentries = [{ name = "ip-9" }]\n', "pools.p.entries[0].name", "no source named 'ip-9'"),
        ('[sources.ip-1]\n[pools.p]\nentries = [{ name = "ip-1" }, { name = "ip-2" }]\n',
         "pools.p.entries[1].name", "did you mean 'ip-1'?"),
        ('[pools.p]\nentries = [{ name = "unspecified", weight = -1 }]\n', "pools.p.entries[0].weight", ">= 0"),
        ('[pools.p]\nentries = [{ name = "unspecified", wieght = 2 }]\n', "pools.p.entries[0].wieght", "weight"),
        ('[pools.p]\nentries = [{ name = "unspecified" }, { name = "unspecified" }]\n',
         "pools.p.entries[1].name", "listed twice"),
        ('[pools.p]\nentries = [{ name = "unspecified", weight = 0 }]\n', "pools.p.entries", "positive weight"),
        ("[egress]\ndefaults = {}\n", "egress.defaults", "did you mean 'default'?"),
        ('[egress.domains."example.com"]\nconection_limit = 3\n',
         'egress.domains."example.com".conection_limit', "did you mean 'connection_limit'?"),
        ('[egress.default]\nidle_timeout = "soon"\n', "egress.default.idle_timeout", "expected a number of seconds"),
        ('[egress.sites."mx.example"]\nenable_tls = "Always"\n', 'egress.sites."mx.example".enable_tls',
         '"Opportunistic"'),
        ('[sources.ip-1]\n[egress.sources."ip-2"]\nconnection_limit = 1\n', "egress.sources.ip-2",
         "did you mean 'ip-1'?"),
        ("[egress.sources]\nip-1 = 3\n", "egress.sources.ip-1", "expected a table"),
    ],
)
def test_errors_name_file_key_and_what_is_accepted(text, key, hint):
    exc = error(text)
    assert exc.file == "trimta.toml"
    assert exc.key == key
    assert hint in str(exc)
    assert str(exc).startswith(f"trimta.toml: {key}: ")


def test_pool_from_config_picks_by_weight():
    config = load(FULL)
    picker = PoolPicker(config.pool_for("acme"))
    assert [picker.next() for _ in range(6)] == ["ip-1", "ip-2", "ip-1", "ip-1", "ip-2", "ip-1"]


def test_queue_config_results_are_shared_per_layer_combination():
    config = load(FULL)
    assert config.queue_config("x", None, "a.example") is config.queue_config("y", "c", "b.example")


def test_the_brief_tables_are_accepted_by_the_daemon_config(tmp_path):
    """parse_config reserves the top-level keys these tables live under."""
    parse_config(tomllib.loads(FULL), source="trimta.toml", base_dir=tmp_path)


# --- docs/queues.md ----------------------------------------------------------------


def doc_examples() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_docs_have_examples():
    assert len(doc_examples()) == 6


@pytest.mark.parametrize("index", range(6))
def test_every_doc_example_loads(index, tmp_path):
    raw = tomllib.loads(doc_examples()[index])
    parse_delivery_config(raw, "queues.md")
    parse_config(raw, source="queues.md", base_dir=tmp_path)


def test_doc_routing_example_behaves_as_described():
    config = parse_delivery_config(tomllib.loads(doc_examples()[1]), "queues.md")
    assert config.queue_config("acme", None, "example.com").routing_domain == "smarthost.example.net"
    assert config.queue_config(None, None, "my.own.hostname").routing_domain == "[10.0.0.1]"
    assert config.queue_config(None, None, "example.org").routing_domain is None


def test_doc_queue_example_behaves_as_described():
    config = parse_delivery_config(tomllib.loads(doc_examples()[0]), "queues.md")
    acme = config.queue_config("acme", None, "example.com")
    assert (acme.retry_interval_s, acme.max_retry_interval_s, acme.max_age_s) == (1800.0, 4 * 3600.0, 86400.0)
    other = config.queue_config("other", None, "example.com")
    assert (other.retry_interval_s, other.max_age_s) == (1800.0, 3 * 86400.0)
    assert config.queue_config("other", None, "elsewhere.example").retry_interval_s == 600.0


def test_doc_pool_example_behaves_as_described():
    config = parse_delivery_config(tomllib.loads(doc_examples()[2]), "queues.md")
    assert config.pool_for("acme").name == "acme-pool"
    assert config.pool_for("other").name == "shared"
    picker = PoolPicker(config.pool_for("other"))
    assert [picker.next() for _ in range(3)] == ["ip-1", "ip-2", "ip-1"]


def test_doc_egress_example_behaves_as_described():
    provider = parse_delivery_config(tomllib.loads(doc_examples()[5]), "queues.md").path_provider
    gmail = provider.path_config("unspecified", GMAIL_SITE, "gmail.com")
    assert (gmail.connection_limit, gmail.max_message_rate, gmail.idle_timeout_s) == (8, Rate(500, 60.0), 30.0)
    example = provider.path_config("ip-1", "mx.example.com", "example.com")
    assert (example.connection_limit, example.enable_tls, example.max_deliveries_per_connection) == (
        3, TlsPolicy.REQUIRED, 100)


def test_doc_unplumbed_example_behaves_as_described():
    from trimta.core.pools import HealthRule
    from trimta.core.units import Rate as R

    sources = parse_delivery_config(tomllib.loads(doc_examples()[3]), "queues.md").sources
    assert sources["ip-1"].suspend_when_unplumbed == HealthRule(300.0)
    assert sources["ip-2"].suspend_when_unplumbed == HealthRule(300.0, R(3, 60.0))


def test_doc_haproxy_example_behaves_as_described():
    (source,) = [s for n, s in parse_delivery_config(tomllib.loads(doc_examples()[4]), "queues.md").sources.items()
                 if n != "unspecified"]
    assert (source.ha_proxy_server, source.ha_proxy_source_address) == (("10.0.0.5", 5000), "192.0.2.10")
    assert source.suspend_when_proxy_unhealthy.duration_s == 600


def test_doc_mistakes_are_the_messages_trimta_gives():
    text = DOCS.read_text(encoding="utf-8")
    cases = [
        '[tenants.acme]\negres_pool = "x"\n',
        '[pools.acme-pool]\nentries = [{ name = "unspecified" }]\n[tenants.acme]\negress_pool = "acme-pol"\n',
        '[sources.ip-1]\n[pools.shared]\nentries = [{ name = "ip-1" }, { name = "ip-4" }]\n',
        '[egress.domains."example.com"]\nconection_limit = 3\n',
        '[queues]\nmax_age = "2 fortnights"\n',
    ]
    for case in cases:
        assert f"    {error(case)}\n" in text


@pytest.mark.parametrize(("table", "message"), [
    ('remote_port = 0', "sources.ip-1.remote_port: expected a port number from 1 to 65535, got 0"),
    ('suspend_when_unplumbed = { trigger = "Immediate" }', "sources.ip-1.suspend_when_unplumbed: expected "
     '{ duration = "5m" } or { trigger = { Threshold = "3/1m" }, duration = "5m" }'),
    ('suspend_when_unplumbed = { duration = "5m", trigger = "Sometimes" }', "sources.ip-1.suspend_when_unplumbed: "
     'trigger: expected "Immediate" or { Threshold = "3/1m" }, got \'Sometimes\''),
])
def test_a_mistaken_source_health_or_port_names_the_key(table, message):
    with pytest.raises(ConfigError) as caught:
        parse_delivery_config(tomllib.loads(f"[sources.ip-1]\n{table}\n"), "trimta.toml")
    assert message in str(caught.value)


def test_a_source_through_haproxy():
    from trimta.core.pools import HealthRule

    sources = parse_delivery_config(tomllib.loads(
        '[sources.ip-1]\nha_proxy_server = "10.0.0.1:5000"\nha_proxy_source_address = "192.0.2.10"\n'
        'suspend_when_proxy_unhealthy = { duration = "10m" }\n'
        '[sources.ip-6]\nha_proxy_server = "[2001:db8::1]:5000"\nha_proxy_source_address = "2001:db8::10"\n'
    ), "trimta.toml").sources
    assert (sources["ip-1"].ha_proxy_server, sources["ip-1"].ha_proxy_source_address) == (("10.0.0.1", 5000),
                                                                                           "192.0.2.10")
    assert sources["ip-1"].suspend_when_proxy_unhealthy == HealthRule(600.0) and sources["ip-1"].proxied
    assert sources["ip-6"].ha_proxy_server == ("2001:db8::1", 5000) and not sources["unspecified"].proxied


@pytest.mark.parametrize(("table", "message"), [
    ('ha_proxy_server = "10.0.0.1:5000"', "sources.ip-1.ha_proxy_server: ha_proxy_server needs "
     "ha_proxy_source_address too"),
    ('ha_proxy_source_address = "192.0.2.10"', "sources.ip-1.ha_proxy_source_address: ha_proxy_source_address "
     "needs ha_proxy_server too"),
    ('ha_proxy_server = "proxy.example.com:5000"\nha_proxy_source_address = "192.0.2.10"',
     "sources.ip-1.ha_proxy_server: expected the proxy's IP address and port"),
    ('ha_proxy_server = "10.0.0.1"\nha_proxy_source_address = "192.0.2.10"',
     "sources.ip-1.ha_proxy_server: expected the proxy's IP address and port"),
    ('ha_proxy_server = "10.0.0.1:5000"\nha_proxy_source_address = "mta1"',
     'sources.ip-1.ha_proxy_source_address: expected an IP address, like "192.0.2.10"'),
    ('suspend_when_proxy_unhealthy = { duration = "5m" }',
     "sources.ip-1.suspend_when_proxy_unhealthy: this source has no ha_proxy_server"),
])
def test_a_mistaken_proxy_setting_names_the_key(table, message):
    with pytest.raises(ConfigError) as caught:
        parse_delivery_config(tomllib.loads(f"[sources.ip-1]\n{table}\n"), "trimta.toml")
    assert message in str(caught.value)
