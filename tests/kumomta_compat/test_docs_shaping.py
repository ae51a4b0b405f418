"""The shaping examples of KumoMTA's documentation, unchanged: what each does, in virtual time."""

from __future__ import annotations

import trio

from trimta.protocol.replies import reply
from trimta.testing.network import FakeTls, Rule, ScriptedReceiver, accepting, deferring

from .conftest import kumomta_harness, peak_open, sliding_max

EXAMPLES = ("docs-shapingfiles-shaping.toml", "docs-shapingfiles-replace-base.toml", "docs-rollups-shaping.toml",
            "docs-rollups-providers.toml", "docs-load-default-and-domain.toml", "docs-load-replace-base.toml",
            "docs-load-mx-rollup.toml", "docs-load-source.toml", "docs-load-automation.toml")


def test_every_example_loads_alone_without_mistakes():
    for name in EXAMPLES:
        _, loaded = kumomta_harness(name)
        assert loaded.warnings == (), name  # enable_dane, the last option trimta ignored, is acted on


def gmail(h, tls=FakeTls.VALID, latency_s=0.2):
    h.resolver.add_mx("gmail.com", "gmail-smtp-in.l.google.com")
    h.resolver.add_host("gmail-smtp-in.l.google.com", "127.0.0.20")
    return h.network.add_receiver("127.0.0.20", 25, accepting("gmail-smtp-in.l.google.com", tls=tls,
                                                              latency_s=latency_s))


async def test_replace_base_in_a_later_file_drops_the_earlier_gmail_rules(autojump_clock):
    # shapingfiles.md: the first file suspends the tenant on "does not have authentication
    # information"; the second's ["gmail.com"] says replace_base = true, connection_limit = 10.
    h, _ = kumomta_harness("docs-shapingfiles-shaping.toml", "docs-shapingfiles-replace-base.toml")
    unauthenticated = reply(550, "5.7.26", "This message does not have authentication information")
    mx = gmail(h)
    mx.rules.append(deferring("rcpt_to", first=1, answer=unauthenticated).rules[0])
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@gmail.com" for i in range(400)], tenant="acme")
            await h.wait_until_settled()
    assert h.engine.automation.fired == 0  # the gmail.com rule went with the base
    assert len(mx.messages) == 399 and len(h.records("Bounce")) == 1
    # provider "google" still holds (it is not gmail.com's table): 5 connections of 50.
    assert mx.peak_connections == 5
    assert max(c.messages for c in mx.connections) == 50


async def test_without_the_replacement_the_gmail_rule_suspends_the_tenant(autojump_clock):
    h, _ = kumomta_harness("docs-shapingfiles-shaping.toml")
    unauthenticated = reply(451, "4.7.26", "This message does not have authentication information")
    mx = gmail(h, latency_s=0.0)
    mx.rules.append(deferring("rcpt_to", first=1, answer=unauthenticated).rules[0])
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["first@gmail.com"], tenant="acme")
            while not h.engine.automation.fired:
                await trio.sleep(0.001)
            await h.inject(recipients=["second@gmail.com"], tenant="acme")
            await h.inject(recipients=["other@gmail.com"], tenant="globex")
            await trio.sleep(2 * 3600)
            delivered_meanwhile = {m.recipients[0] for m in mx.messages}
            await h.wait_until_settled()
    assert delivered_meanwhile == {"other@gmail.com"}  # "SuspendTenant" for three hours
    assert {m.recipients[0] for m in mx.messages} == {"first@gmail.com", "second@gmail.com", "other@gmail.com"}


async def test_rollups_example_gives_foo_com_its_own_limits_and_its_source_five_per_connection(autojump_clock):
    # rollups.md: ["foo.com"] mx_rollup = false, max_deliveries_per_connection = 50,
    # connection_limit = 3; ["foo.com".sources."IP-1"] max_deliveries_per_connection = 5.
    h, _ = kumomta_harness("docs-rollups-shaping.toml", extra="""
[sources."IP-1"]
source_address = "127.0.0.2"
[sources."IP-2"]
source_address = "127.0.0.3"
[pools.one]
entries = [{ name = "IP-1" }]
[pools.two]
entries = [{ name = "IP-2" }]
[tenants.a]
egress_pool = "one"
[tenants.b]
egress_pool = "two"
""")
    for domain in ("foo.com", "bar.example"):
        h.resolver.add_mx(domain, "mx.hosting.example")
    h.resolver.add_host("mx.hosting.example", "127.0.0.70")
    mx = h.network.add_receiver("127.0.0.70", 25, accepting("mx.hosting.example", latency_s=0.2))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"a{i}@foo.com" for i in range(100)], tenant="a")
            await h.inject(recipients=[f"b{i}@foo.com" for i in range(200)], tenant="b")
            await h.inject(recipients=[f"c{i}@bar.example" for i in range(200)], tenant="b")
            await h.wait_until_settled()
    by = {}
    for m in mx.messages:
        by.setdefault((m.recipients[0].split("@")[1], m.connection.source_address), set()).add(m.connection)
    assert max(c.messages for c in by[("foo.com", "127.0.0.2")]) == 5
    assert max(c.messages for c in by[("foo.com", "127.0.0.3")]) == 50
    assert peak_open(by[("foo.com", "127.0.0.3")]) == 3
    # bar.example shares the MX but not foo.com's table: the default's 10 connections of 100.
    assert peak_open(by[("bar.example", "127.0.0.3")]) == 10
    assert max(c.messages for c in by[("bar.example", "127.0.0.3")]) <= 100


async def test_rollups_providers_share_the_google_rate_across_sites(autojump_clock):
    # rollups.md's provider."google": provider_max_message_rate = "100/s", provider_connection_limit = 5.
    h, _ = kumomta_harness("docs-rollups-providers.toml")
    mx = gmail(h, latency_s=0.0)
    h.resolver.add_mx("workspace.example", "aspmx.l.google.com")
    h.resolver.add_host("aspmx.l.google.com", "127.0.0.21")
    ws = h.network.add_receiver("127.0.0.21", 25, accepting("aspmx.l.google.com"))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"g{i}@gmail.com" for i in range(500)]
                           + [f"w{i}@workspace.example" for i in range(500)])
            await h.wait_until_settled()
    times = [m.received_at for m in mx.messages + ws.messages]
    assert len(times) == 1000
    assert sliding_max(times, 1.0) <= 100
    assert h.network.peak_connections <= 5


async def test_load_examples_default_and_gmail_limits(autojump_clock):
    # load.md: ["default"] connection_limit = 10; ["gmail.com"] connection_limit = 100.
    h, _ = kumomta_harness("docs-load-default-and-domain.toml")
    mx = gmail(h, tls=FakeTls.NONE, latency_s=1.0)
    h.resolver.add_domain("example.net", "127.0.0.10")
    other = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=1.0))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"g{i}@gmail.com" for i in range(300)]
                           + [f"e{i}@example.net" for i in range(300)])
            await h.wait_until_settled()
    assert mx.peak_connections == 100
    assert other.peak_connections == 10


async def test_load_example_source_table_applies_to_its_source_only(autojump_clock):
    # load.md: ["example.com".sources."my source name"] connection_limit = 5.
    h, _ = kumomta_harness("docs-load-source.toml", extra="""
[sources."my source name"]
source_address = "127.0.0.2"
[pools.p]
entries = [{ name = "my source name" }, { name = "unspecified" }]
""".replace("[pools.p]", '[queues.domains."example.com"]\negress_pool = "p"\n[pools.p]'))
    h.resolver.add_domain("example.com", "127.0.0.80")
    mx = h.network.add_receiver("127.0.0.80", 25, accepting(latency_s=1.0))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.com" for i in range(400)])
            await h.wait_until_settled()
    mine = [c for c in mx.connections if c.source_address == "127.0.0.2"]
    others = [c for c in mx.connections if c.source_address != "127.0.0.2"]
    assert peak_open(mine) == 5
    assert peak_open(others) == 32  # trimta's built-in default, no ["default"] table here


async def test_load_example_yahoo_automation(autojump_clock):
    # load.md: ["yahoo.com"] max_deliveries_per_connection = 20 and [TS04] suspends for 2 hours.
    h, _ = kumomta_harness("docs-load-automation.toml")
    h.resolver.add_domain("yahoo.com", "127.0.0.30")
    ts04 = reply(421, "4.7.0", "[TS04] Messages from 192.0.2.1 temporarily deferred")
    mx = h.network.add_receiver("127.0.0.30", 25, ScriptedReceiver(
        "mx.yahoo.com", rules=[Rule("rcpt_to", ts04, times=1, recipient="first@yahoo.com")], latency_s=0.1))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=[f"before{i}@yahoo.com" for i in range(1000)])
            await h.wait_until_settled()
            per_connection = max(c.messages for c in mx.connections)
            await h.inject(recipients=["first@yahoo.com"])
            while not h.engine.rules.ready_queue_suspensions():
                await trio.sleep(0.001)
            fired = trio.current_time()
            await h.inject(recipients=[f"u{i}@yahoo.com" for i in range(9)])
            await h.wait_until_settled()
    assert per_connection == 20
    after = [m.received_at for m in mx.messages if not m.recipients[0].startswith("before")]
    assert len(after) == 10
    assert min(after) - fired >= 7200 - 1


async def test_source_selection_rate_keeps_a_new_source_to_its_warm_up_rate(autojump_clock):
    # source_selection_rate.md: ["example.com".sources."new"] source_selection_rate =
    # "100/day,max_burst=1", with a pool of "new" and "established" (KumoMTA's own example,
    # here as a table, since the docs show it inline).
    from trimta.adapters.delivery_config import parse_delivery_config
    from trimta.adapters.shaping_files import ShapingProvider, parse_shaping_text
    from trimta.core.shaping import Shaping
    import tomllib

    document, problems = parse_shaping_text(
        '["example.com".sources."new"]\nsource_selection_rate = "100/day,max_burst=1"\n', "shaping.toml")
    assert not problems
    delivery = parse_delivery_config(tomllib.loads("""
[egress.default]
prohibited_hosts = []
[sources.new]
source_address = "127.0.0.2"
[sources.established]
source_address = "127.0.0.3"
[pools.mypool]
entries = [{ name = "new" }, { name = "established" }]
[queues.domains."example.com"]
egress_pool = "mypool"
"""), "<test>")
    from trimta.testing.harness import DeliveryHarness

    h = DeliveryHarness(config=delivery, paths=ShapingProvider(Shaping([document]), overrides=delivery.path_provider))
    h.resolver.add_domain("example.com", "127.0.0.80")
    mx = h.network.add_receiver("127.0.0.80", 25, accepting())
    with trio.fail_after(10**6):
        async with h.running():
            for _ in range(10):  # 50 messages every 864 s (a hundredth of a day)
                await h.inject(recipients=[f"u{i}@example.com" for i in range(50)])
                await trio.sleep(864)
            await h.wait_until_settled()
    new = [m for m in mx.messages if m.connection.source_address == "127.0.0.2"]
    assert len(mx.messages) == 500
    # One selection per 864 s: ten over the ten rounds, the rest through "established".
    assert len(new) == 10
    assert sliding_max([m.received_at for m in new], 863) == 1


async def test_provider_source_selection_rate_is_one_rate_for_every_site_of_the_provider(autojump_clock):
    # additional_source_selection_rates.md: [provider."Office 365".sources."new-source"]
    # provider_source_selection_rate = "500/d,max_burst=1" applies "to that source across all
    # sites that map to that provider". Two domains on different MX hosts (two sites, two
    # ready queues) of one provider; the new source is picked once per 172.8 s in all.
    import tomllib

    from trimta.adapters.delivery_config import parse_delivery_config
    from trimta.adapters.shaping_files import ShapingProvider, parse_shaping_text
    from trimta.core.shaping import Shaping
    from trimta.testing.harness import DeliveryHarness

    document, problems = parse_shaping_text("""
[provider."Office 365"]
match = [{ MXSuffix = ".olc.protection.outlook.com" }]

[provider."Office 365".sources."new-source"]
provider_source_selection_rate = "500/d,max_burst=1"
""", "shaping.toml")
    assert not problems
    delivery = parse_delivery_config(tomllib.loads("""
[egress.default]
prohibited_hosts = []
[sources.new-source]
source_address = "127.0.0.2"
[sources.established]
source_address = "127.0.0.3"
[pools.mypool]
entries = [{ name = "new-source" }, { name = "established" }]
[queues]
egress_pool = "mypool"
"""), "<test>")
    h = DeliveryHarness(config=delivery, paths=ShapingProvider(Shaping([document]), overrides=delivery.path_provider))
    receivers = []
    for i, domain in enumerate(("a.example", "b.example")):
        host = f"{domain.split('.')[0]}-mail.olc.protection.outlook.com"
        h.resolver.add_mx(domain, host)
        h.resolver.add_host(host, f"127.0.0.{81 + i}")
        receivers.append(h.network.add_receiver(f"127.0.0.{81 + i}", 25, accepting(host)))
    with trio.fail_after(10**6):
        async with h.running():
            for _ in range(10):  # 20 messages to each domain every 172.8 s
                for domain in ("a.example", "b.example"):
                    await h.inject(recipients=[f"u{i}@{domain}" for i in range(20)])
                await trio.sleep(172.8)
            await h.wait_until_settled()
    messages = [m for r in receivers for m in r.messages]
    new = [m for m in messages if m.connection.source_address == "127.0.0.2"]
    assert len(messages) == 400 and all(len(r.messages) == 200 for r in receivers)
    assert {m.connection.source_address for r in receivers for m in r.messages} == {"127.0.0.2", "127.0.0.3"}
    # Ten selections over the ten rounds for both sites together (a rate per site would give 20).
    assert len(new) == 10
    assert sliding_max([m.received_at for m in new], 172.7) == 1


def test_provider_source_selection_rate_outside_a_provider_block_is_a_mistake():
    from trimta.adapters.shaping_files import parse_shaping_text

    _, problems = parse_shaping_text('["example.com"]\nprovider_source_selection_rate = "1/s"\n', "shaping.toml")
    assert [str(p) for p in problems] == [
        'shaping.toml:2: "example.com".provider_source_selection_rate: provider_source_selection_rate belongs in '
        'a provider block ([provider."NAME"] or its sources), where it names the provider']
