"""`ShapingProvider`: shaping files under trimta.toml's [egress] tables, and what DNS teaches it."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import trio

from trimta.adapters.delivery_config import parse_delivery_config
from trimta.adapters.shaping_files import ShapingConfig, ShapingProvider, load_shaping, load_shaping_files
from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.core.mx import MxFailure
from trimta.testing.resolver import NULL_MX, FakeResolver

GOOGLE_HOSTS = [(5, "gmail-smtp-in.l.google.com"), (10, "alt1.gmail-smtp-in.l.google.com")]
GOOGLE_SITE = "alt1?.gmail-smtp-in.l.google.com"


def provider(tmp_path: Path, shaping: str, egress: str = "", **kwargs) -> ShapingProvider:
    path = tmp_path / "shaping.toml"
    path.write_text(textwrap.dedent(shaping), encoding="utf-8")
    overrides = parse_delivery_config(tomllib.loads(textwrap.dedent(egress)), "trimta.toml").path_provider
    return ShapingProvider(load_shaping_files([path]), overrides=overrides, **kwargs)


def google_resolver() -> FakeResolver:
    resolver = FakeResolver()
    for domain in ("gmail.com", "googlemail.com", "workspace.example"):
        resolver.add_mx(domain, *GOOGLE_HOSTS)
    resolver.add_host("gmail-smtp-in.l.google.com", "127.0.0.10")
    resolver.add_host("alt1.gmail-smtp-in.l.google.com", "127.0.0.11")
    return resolver


SHAPING = """
    ["default"]
    connection_limit = 10
    smtp_port = 2525
    ["gmail.com"]
    connection_limit = 5
    enable_tls = "Required"
    ["gmail.com".sources."ip-1"]
    max_deliveries_per_connection = 7
"""


def test_egress_default_comes_after_the_shaping_default_and_before_domain_tables(tmp_path):
    p = provider(tmp_path, SHAPING, '[egress.default]\nconnection_limit = 20\nidle_timeout = "5s"\n')
    other = p.path_config("unspecified", "mx.other.example", "other.example")
    assert (other.connection_limit, other.smtp_port, other.idle_timeout_s) == (20, 2525, 5.0)
    p.learn_site("gmail.com", GOOGLE_SITE)
    gmail = p.path_config("unspecified", GOOGLE_SITE, "gmail.com")
    assert (gmail.connection_limit, gmail.idle_timeout_s) == (5, 5.0)


def test_egress_sites_domains_and_sources_have_the_last_word(tmp_path):
    p = provider(tmp_path, SHAPING, f"""
        [sources.ip-1]
        source_address = "127.0.0.2"
        [egress.sites."{GOOGLE_SITE}"]
        connection_limit = 4
        [egress.domains."gmail.com"]
        enable_tls = "Disabled"
        [egress.sources."ip-1"]
        max_deliveries_per_connection = 3
    """)
    p.learn_site("gmail.com", GOOGLE_SITE)
    config = p.path_config("ip-1", GOOGLE_SITE, "gmail.com")
    assert (config.connection_limit, config.enable_tls, config.max_deliveries_per_connection) == (
        4, TlsPolicy.DISABLED, 3)
    labels = [layer.label for layer in p.layers("ip-1", GOOGLE_SITE, "gmail.com")]
    assert labels == ['"default"', "[egress.default]", f'site "{GOOGLE_SITE}"', f'site "{GOOGLE_SITE}" source "ip-1"',
                      f'[egress.sites."{GOOGLE_SITE}"]', '[egress.domains."gmail.com"]', '[egress.sources."ip-1"]']


def test_a_sources_ehlo_domain_holds_over_shaping(tmp_path):
    p = provider(tmp_path, '["default"]\nehlo_domain = "shaping.example"\n',
                 '[sources.ip-1]\nehlo_domain = "mta1.example.com"\n')
    assert p.path_config("ip-1", "mx.x.example", "x.example").ehlo_domain == "mta1.example.com"
    assert p.path_config("ip-2", "mx.x.example", "x.example").ehlo_domain == "shaping.example"


def test_replace_base_keeps_the_operators_egress_default(tmp_path):
    p = provider(tmp_path, """
        ["default"]
        max_message_rate = "1/s"
        ["gmail.com"]
        replace_base = true
        connection_limit = 3
    """, "[egress.default]\nprohibited_hosts = []\n")
    p.learn_site("gmail.com", GOOGLE_SITE)
    config = p.path_config("ip-1", GOOGLE_SITE, "gmail.com")
    assert (config.connection_limit, config.max_message_rate, config.prohibited_hosts) == (3, None, ())


async def test_resolving_the_tables_domains_lets_gmail_rules_shape_googlemail(tmp_path):
    p = provider(tmp_path, SHAPING)
    resolver = google_resolver()
    # Before DNS is asked, googlemail.com's path knows nothing of gmail.com's table.
    assert p.path_config("ip-1", GOOGLE_SITE, "googlemail.com").connection_limit == 10
    with trio.fail_after(5):
        resolutions = await p.resolve_sites(resolver)
    assert resolutions["gmail.com"].site == GOOGLE_SITE
    assert p.site_domains(GOOGLE_SITE) == ("gmail.com",)
    config = p.path_config("ip-1", GOOGLE_SITE, "googlemail.com")
    assert (config.connection_limit, config.enable_tls, config.max_deliveries_per_connection) == (
        5, TlsPolicy.REQUIRED, 7)
    assert p.path_config("ip-2", GOOGLE_SITE, "workspace.example").max_deliveries_per_connection == 1024


def test_a_path_opened_for_the_domain_teaches_its_site(tmp_path):
    p = provider(tmp_path, SHAPING)
    assert p.path_config("ip-1", GOOGLE_SITE, "gmail.com").connection_limit == 5
    assert p.path_config("ip-1", GOOGLE_SITE, "googlemail.com").connection_limit == 5


def test_a_domain_whose_mx_moved_shapes_its_new_site_only(tmp_path):
    p = provider(tmp_path, SHAPING)
    p.learn_site("gmail.com", "old.example.net")
    p.learn_site("gmail.com", GOOGLE_SITE)
    assert p.path_config("ip-1", "old.example.net", "other.example").connection_limit == 10
    assert p.path_config("ip-1", GOOGLE_SITE, "other.example").connection_limit == 5


async def test_mx_rollup_false_domain_keeps_its_own_site_and_its_rules(tmp_path):
    p = provider(tmp_path, '["workspace.example"]\nmx_rollup = false\nconnection_limit = 2\n'
                           '[provider."google"]\nmatch = [{ MXSuffix = ".google.com" }]\nsmtp_port = 2525\n')
    resolver = google_resolver()
    with trio.fail_after(5):
        resolutions = await p.resolve_sites(resolver)
        # A table without rollup is not resolved at load (as in KumoMTA): nothing rolls up into it.
        assert "workspace.example" not in resolutions
        # Delivery resolves it, and shows the provider its hosts.
        p.observe(await resolver.resolve_mx("workspace.example", mx_rollup=False))
    assert p.rollup("workspace.example") is False and p.rollup("gmail.com") is True
    own = p.path_config("ip-1", "domain=workspace.example", "workspace.example")
    # Its own rules, and the provider recognised from the hosts DNS gave for its own site.
    assert (own.connection_limit, own.smtp_port, own.provider) == (2, 2525, "google")
    shared = p.path_config("ip-1", GOOGLE_SITE, "gmail.com")
    assert (shared.connection_limit, shared.smtp_port) == (EgressPathConfig().connection_limit, 2525)


async def test_null_mx_and_unresolvable_domains_are_reported_and_shape_nothing(tmp_path):
    p = provider(tmp_path, '["nomail.example"]\nconnection_limit = 2\n["gone.example"]\nconnection_limit = 3\n')
    resolver = FakeResolver({"nomail.example": {"MX": NULL_MX}})
    with trio.fail_after(5):
        resolutions = await p.resolve_sites(resolver)
    assert resolutions["nomail.example"].null_mx
    assert resolutions["gone.example"].failure is MxFailure.NXDOMAIN
    assert p.site_domains("") == ()


def test_observed_hosts_identify_a_provider_the_site_name_cannot(tmp_path):
    p = provider(tmp_path, '[provider."ms"]\nmatch = [{ HostName = "a.mail.example" }, { HostName = "b.other.example" }]'
                           "\nsmtp_port = 2525\n")
    site = "(a|b).(mail|other).example"
    # Expanding the site gives a.other.example too, which no rule covers.
    assert p.provider_for(site, "x.example") is None
    resolver = FakeResolver()
    resolver.add_mx("x.example", "a.mail.example", "b.other.example")
    resolver.add_host("a.mail.example", "127.0.0.2")
    resolver.add_host("b.other.example", "127.0.0.3")
    resolution = trio.run(resolver.resolve_mx, "x.example")
    assert resolution.site == site
    p.observe(resolution)
    assert p.provider_for(site, "x.example") == "ms"
    assert p.path_config("ip-1", site, "x.example").smtp_port == 2525


def test_mx_hosts_callable_is_asked_first(tmp_path):
    p = provider(tmp_path, '[provider."y"]\nmatch = [{ MXSuffix = ".yahoodns.net" }]\n',
                 mx_hosts=lambda site: ["mta5.am0.yahoodns.net"] if site == "opaque" else None)
    assert p.provider_for("opaque", "yahoo.com") == "y"
    assert p.provider_for("other", "yahoo.com") is None


def test_swap_uses_the_new_rules_and_keeps_what_was_learned(tmp_path):
    p = provider(tmp_path, SHAPING)
    p.learn_site("gmail.com", GOOGLE_SITE)
    assert p.path_config("ip-1", GOOGLE_SITE, "googlemail.com").connection_limit == 5
    newer = tmp_path / "newer.toml"
    newer.write_text('["gmail.com"]\nconnection_limit = 2\n["yahoo.com"]\nconnection_limit = 9\n', encoding="utf-8")
    p.swap(load_shaping_files([newer]))
    assert p.path_config("ip-1", GOOGLE_SITE, "googlemail.com").connection_limit == 2
    p.swap(load_shaping_files([tmp_path / "shaping.toml"]).shaping)
    assert p.path_config("ip-1", GOOGLE_SITE, "googlemail.com").connection_limit == 5
    egress = parse_delivery_config(tomllib.loads('[egress.default]\nsmtp_port = 2600\n'
                                                '[egress.domains."googlemail.com"]\nconnection_limit = 1\n'),
                                   "trimta.toml").path_provider
    p.swap(load_shaping_files([tmp_path / "shaping.toml"]), overrides=egress)
    config = p.path_config("ip-1", GOOGLE_SITE, "googlemail.com")
    # The new [egress.default] comes after the files' "default"; the new [egress.domains] last.
    assert (config.connection_limit, config.smtp_port) == (1, 2600)



def test_conflicts_between_domains_that_share_a_site(tmp_path):
    p = provider(tmp_path, '["gmail.com"]\nconnection_limit = 5\n["googlemail.com"]\nconnection_limit = 3\n')
    p.learn_site("gmail.com", GOOGLE_SITE)
    assert p.conflicts() == []
    p.learn_site("googlemail.com", GOOGLE_SITE)
    [(site, conflict)] = p.conflicts()
    assert site == GOOGLE_SITE and conflict.option == "connection_limit"
    assert (conflict.first[:2], conflict.second[:2]) == (("gmail.com", 5), ("googlemail.com", 3))
    assert conflict.second[2].endswith("shaping.toml:3")


async def test_load_shaping_reads_the_configured_files_and_learns_sites(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(textwrap.dedent(SHAPING), encoding="utf-8")
    with trio.fail_after(5):
        p, loaded = await load_shaping(ShapingConfig(files=(path,)), resolver=google_resolver())
    assert loaded.files[-1] == str(path)
    assert p.provider_for(GOOGLE_SITE, "gmail.com") == "google"  # from the shipped defaults
    config = p.path_config("ip-1", GOOGLE_SITE, "googlemail.com")
    assert (config.connection_limit, config.max_deliveries_per_connection) == (5, 7)


async def test_gmail_table_shapes_the_engines_ready_queue_for_googlemail(tmp_path, autojump_clock):
    """End to end in virtual time: the real engine asks the provider for the Google site's path."""
    from trimta.testing.harness import DeliveryHarness
    from trimta.testing.network import accepting

    p = provider(tmp_path, '["gmail.com"]\nconnection_limit = 2\nmax_deliveries_per_connection = 10\n',
                 "[egress.default]\nprohibited_hosts = []\n")
    resolver = google_resolver()
    with trio.fail_after(600):
        await p.resolve_sites(resolver)
        h = DeliveryHarness(resolver=resolver, paths=p)
        receiver = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.05))
        async with h.running():
            await h.inject(recipients=[f"u{i}@googlemail.com" for i in range(100)])
            await h.wait_until_settled()
    assert len(h.records("Delivery")) == 100
    assert h.network.peak_connections == 2
    assert len(receiver.connections) == 10  # 100 messages, 10 per connection
