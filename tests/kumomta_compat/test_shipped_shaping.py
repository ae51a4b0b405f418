"""KumoMTA's shipped shaping files (policy-extras and community), unchanged: what each rule does.

Every test loads both files as KumoMTA's shaping helper does (policy-extras first,
community over it) and drives the real delivery engine against fake receivers in
virtual time, asserting what a receiver would observe.
"""

from __future__ import annotations

import trio

from trimta.protocol.replies import reply
from trimta.testing.network import FakeTls, Rule, ScriptedReceiver, accepting, deferring

from .conftest import SHIPPED, kumomta_harness, peak_open, per_window, sliding_max


def test_both_files_load_unchanged_with_each_warning_given_once():
    _, loaded = kumomta_harness(*SHIPPED)
    found = sorted((p.key, p.message) for p in loaded.warnings)
    assert found == [
        ('"http://127.0.0.1:8008.tsa.kumomta".system_shutdown_timeout',
         "a KumoMTA option trimta does not act on; ignored"),
        # The community file adds rules to "gmail", a provider no file defines (the
        # policy-extras one is "google"); "yahoo", "outlook" and the others it extends
        # are matched by policy-extras, so they get no warning.
        ('provider."gmail"', "no file gives this provider a match = [...]: it applies to no site"),
    ]


async def test_default_table_limits_connections_and_deliveries_per_connection(autojump_clock):
    # connection_limit = 10, max_connection_rate = "100/min", max_deliveries_per_connection = 100.
    # Replies take 0.1 s, so ten connections stay below the table's 100/s.
    h, _ = kumomta_harness(*SHIPPED)
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.1))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(1500)])
            await h.wait_until_settled()
    assert len(mx.messages) == 1500
    assert mx.peak_connections == 10
    assert max(c.messages for c in mx.connections) == 100
    assert len(mx.connections) >= 15
    assert sliding_max([c.opened_at for c in mx.connections], 60.0) <= 100


async def test_default_table_message_rate_is_100_a_second(autojump_clock):
    h, _ = kumomta_harness(*SHIPPED)
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(1000)])
            await h.wait_until_settled()
    times = sorted(m.received_at for m in mx.messages)
    assert len(times) == 1000
    assert sliding_max(times, 1.0) <= 100
    assert per_window(times, times[0], 1.0)[:9] == [100] * 9  # at the limit, not below it
    assert mx.peak_connections <= 10


GOOGLE = {"gmail.com": ("gmail-smtp-in.l.google.com", "127.0.0.20"),
          "workspace.example": ("aspmx.l.google.com", "127.0.0.21")}


def google_harness(tls: FakeTls, latency_s: float = 0.0):
    h, _ = kumomta_harness(*SHIPPED)
    receivers = {}
    for domain, (host, address) in GOOGLE.items():
        h.resolver.add_mx(domain, host)
        h.resolver.add_host(host, address)
        receivers[domain] = h.network.add_receiver(address, 25, accepting(host, tls=tls, latency_s=latency_s))
    return h, receivers


async def test_google_requires_tls(autojump_clock):
    # provider."google": enable_tls = 'Required'. A Google MX without STARTTLS gets nothing.
    h, receivers = google_harness(FakeTls.NONE)
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=["a@gmail.com"])
            await trio.sleep(600)
    assert receivers["gmail.com"].messages == []
    (failure, *_) = h.records("TransientFailure")
    assert "TLS is required" in failure["response"]["content"]


async def test_google_provider_connection_limit_covers_every_google_site(autojump_clock):
    # provider_connection_limit = 5 across gmail.com and a Workspace domain (two sites, one
    # provider); max_deliveries_per_connection = 50.
    h, receivers = google_harness(FakeTls.VALID, latency_s=0.05)
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"g{i}@gmail.com" for i in range(300)]
                           + [f"w{i}@workspace.example" for i in range(300)])
            await h.wait_until_settled()
    assert len(receivers["gmail.com"].messages) == 300 and len(receivers["workspace.example"].messages) == 300
    assert h.network.peak_connections == 5
    assert max(c.messages for c in h.network.connections) == 50
    assert all(c.tls_version for c in h.network.connections)


TS01 = reply(421, "4.7.0", "[TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints")


async def test_default_automation_slows_a_path_to_one_a_minute_on_one_connection_for_90_minutes(autojump_clock):
    # ["default"].automation: a "Messages from a.b.c.d temporarily deferred" reply sets
    # max_message_rate = "1/minute" and connection_limit = 1 for 90m.
    h, _ = kumomta_harness(*SHIPPED)
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, deferring("rcpt_to", first=1, answer=TS01))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["first@example.net"])
            while not h.engine.automation.fired:
                await trio.sleep(1)
            fired = trio.current_time()
            await h.inject(recipients=[f"slow{i}@example.net" for i in range(10)])
            await trio.sleep(30 * 60)
            slow = sorted(m.received_at for m in mx.messages)
            await trio.sleep(61 * 60)  # past the 90 minutes
            restored = trio.current_time()
            await h.inject(recipients=[f"fast{i}@example.net" for i in range(200)])
            await h.wait_until_settled()
    # One a minute while the rule holds: 11 messages (the deferred one's retry too) over ~11 minutes.
    assert len(slow) == 11
    assert sliding_max(slow, 60.0) == 1
    connections_meanwhile = [c for c in mx.connections if fired <= c.opened_at < fired + 90 * 60]
    assert peak_open(connections_meanwhile) == 1
    # Then the default's 100/s again.
    fast = sorted(m.received_at for m in mx.messages if m.recipients[0].startswith("fast"))
    assert len(fast) == 200 and fast[-1] - restored < 10


TSS04 = reply(421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints")


async def test_yahoo_tss04_suspends_the_source_for_two_hours_and_connections_carry_20(autojump_clock):
    h, _ = kumomta_harness(*SHIPPED)
    h.resolver.add_mx("yahoo.com", "mta5.am0.yahoodns.net")
    h.resolver.add_host("mta5.am0.yahoodns.net", "127.0.0.30")
    mx = h.network.add_receiver("127.0.0.30", 25, deferring("rcpt_to", first=1, answer=TSS04,
                                                            hostname="mta5.am0.yahoodns.net"))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["first@yahoo.com"])
            while not h.engine.rules.ready_queue_suspensions():
                await trio.sleep(1)
            fired = trio.current_time()
            await h.inject(recipients=[f"u{i}@yahoo.com" for i in range(99)])
            await trio.sleep(3600)
            during = list(mx.messages)
            await h.wait_until_settled()
    assert during == []
    assert len(mx.messages) == 100
    assert min(m.received_at for m in mx.messages) - fired >= 7200
    assert max(c.messages for c in mx.connections) == 20  # provider."yahoo": max_deliveries_per_connection


RL000010 = reply(421, "4.7.0", "RL000010 Throttled: domain is sending too fast")


async def test_comcast_rl000010_suspends_only_the_tenant_for_five_minutes(autojump_clock):
    # ["comcast.net"]: Required TLS, and "RL000010" suspends the tenant's comcast mail for 5 minutes.
    h, _ = kumomta_harness(*SHIPPED)
    h.resolver.add_mx("comcast.net", "mx1a1.comcast.net")
    h.resolver.add_host("mx1a1.comcast.net", "127.0.0.40")
    mx = h.network.add_receiver("127.0.0.40", 25, ScriptedReceiver(
        "mx1a1.comcast.net", tls=FakeTls.VALID,
        rules=[Rule("rcpt_to", RL000010, times=1, recipient="first@comcast.net")]))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["first@comcast.net"], tenant="acme")
            while not h.engine.automation.fired:
                await trio.sleep(0.001)
            fired = trio.current_time()
            await h.inject(recipients=["second@comcast.net"], tenant="acme")
            await h.inject(recipients=["other@comcast.net"], tenant="globex")
            await h.wait_until_settled()
    at = {m.recipients[0]: m.received_at for m in mx.messages}
    deferred_at = mx.connections[0].opened_at  # the reply that fired the rule came on the first connection
    assert at["other@comcast.net"] - fired < 60
    assert at["second@comcast.net"] - deferred_at >= 300
    assert all(m.tls_version for m in mx.messages)


async def test_yahoo_co_jp_community_table(autojump_clock):
    # connection_limit = 2, max_message_rate = "10/s", max_deliveries_per_connection = 20.
    h, _ = kumomta_harness(*SHIPPED)
    h.resolver.add_mx("yahoo.co.jp", "mx1.mail.yahoo.co.jp")
    h.resolver.add_host("mx1.mail.yahoo.co.jp", "127.0.0.50")
    mx = h.network.add_receiver("127.0.0.50", 25, accepting("mx1.mail.yahoo.co.jp", latency_s=0.05))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@yahoo.co.jp" for i in range(200)])
            await h.wait_until_settled()
    times = sorted(m.received_at for m in mx.messages)
    assert len(times) == 200
    assert mx.peak_connections <= 2
    assert max(c.messages for c in mx.connections) == 20
    assert sliding_max(times, 1.0) <= 10
    assert times[-1] - times[0] < 22  # about the 10/s: 200 take 20 seconds


async def test_example_com_has_its_own_queue_and_its_source_table_applies_to_that_source(autojump_clock):
    # ["example.com"]: mx_rollup = false, connection_limit = 3, max_deliveries_per_connection = 100;
    # ["example.com".sources."my source name"]: connection_limit = 5.
    h, _ = kumomta_harness(*SHIPPED, extra="""
[sources."my source name"]
source_address = "127.0.0.2"
[sources.other]
source_address = "127.0.0.3"
[pools.mine]
entries = [{ name = "my source name" }]
[pools.others]
entries = [{ name = "other" }]
[tenants.a]
egress_pool = "mine"
[tenants.b]
egress_pool = "others"
""")
    for domain in ("example.com", "shares-the-mx.example"):
        h.resolver.add_mx(domain, "mx.shared.example")
    h.resolver.add_host("mx.shared.example", "127.0.0.60")
    mx = h.network.add_receiver("127.0.0.60", 25, accepting("mx.shared.example", latency_s=0.5))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"a{i}@example.com" for i in range(100)], tenant="a")
            await h.inject(recipients=[f"b{i}@example.com" for i in range(100)], tenant="b")
            await h.inject(recipients=[f"c{i}@shares-the-mx.example" for i in range(100)], tenant="b")
            await h.wait_until_settled()
    assert len(mx.messages) == 300
    by = {}
    for m in mx.messages:
        by.setdefault((m.recipients[0].split("@")[1], m.connection.source_address), set()).add(m.connection)
    assert peak_open(by[("example.com", "127.0.0.2")]) == 5
    assert peak_open(by[("example.com", "127.0.0.3")]) == 3
    # The same MX for another domain: the default table's 10, not example.com's 3.
    assert peak_open(by[("shares-the-mx.example", "127.0.0.3")]) == 10
    queues = {r["domain"]: r["ready_queue"] for r in h.records("Delivery")}
    assert queues["example.com"] != queues["shares-the-mx.example"]


def test_tsa_table_keeps_its_limit_local_to_this_node():
    # ['http://127.0.0.1:8008.tsa.kumomta']: connection_limit = "local:5", max_ready = 10000.
    h, _ = kumomta_harness(*SHIPPED)
    domain = "http://127.0.0.1:8008.tsa.kumomta"
    path = h.engine.paths.path_config("unspecified", f"domain={domain}", domain)
    assert (path.connection_limit, path.connection_limit_local) == (5, True)
    assert (path.max_ready, path.max_deliveries_per_connection) == (10000, 8192)
    assert h.engine.paths.rollup(domain) is False
    default = h.engine.paths.path_config("unspecified", "mx.example.net", "example.net")
    assert (default.connection_limit, default.connection_limit_local) == (10, False)


async def test_default_remembers_broken_tls_for_three_days(autojump_clock):
    # ["default"]: remember_broken_tls = "3 days" with enable_tls = "Opportunistic".
    h, _ = kumomta_harness(*SHIPPED)
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting("mx.example.net", tls=FakeTls.BROKEN))
    with trio.fail_after(10**6):
        async with h.running():
            await h.inject(recipients=["first@example.net"])
            await h.wait_until_settled()
            await trio.sleep(2 * 86400)
            await h.inject(recipients=["two-days-later@example.net"])
            await h.wait_until_settled()
            await trio.sleep(2 * 86400)
            await h.inject(recipients=["four-days-later@example.net"])
            await trio.sleep(600)
    starttls = [b"STARTTLS" in b"".join(c.writes) for c in mx.connections]
    # The handshake fails once; the retry and everything for three days go in plaintext;
    # then TLS is tried again.
    assert starttls[:3] == [True, False, False] and starttls[3] is True
    assert [m.recipients[0] for m in mx.messages][:2] == ["first@example.net", "two-days-later@example.net"]
    assert len(h.records("TransientFailure")) >= 1


async def test_provider_connection_limit_counts_per_egress_source_as_in_kumomta(autojump_clock):
    # provider."google": provider_connection_limit = 5, which KumoMTA applies per source
    # (shaping-provider-google-SOURCE-limit): two sources, five connections each.
    h, _ = kumomta_harness(*SHIPPED, extra="""
[sources.ip-1]
source_address = "127.0.0.2"
[sources.ip-2]
source_address = "127.0.0.3"
[pools.both]
entries = [{ name = "ip-1" }, { name = "ip-2" }]
[queues.domains."gmail.com"]
egress_pool = "both"
""")
    h.resolver.add_mx("gmail.com", "gmail-smtp-in.l.google.com")
    h.resolver.add_host("gmail-smtp-in.l.google.com", "127.0.0.20")
    mx = h.network.add_receiver("127.0.0.20", 25, accepting("gmail-smtp-in.l.google.com", tls=FakeTls.VALID,
                                                            latency_s=0.2))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"g{i}@gmail.com" for i in range(400)])
            await h.wait_until_settled()
    assert len(mx.messages) == 400
    by_source = {}
    for c in mx.connections:
        by_source.setdefault(c.source_address, []).append(c)
    assert peak_open(by_source["127.0.0.2"]) == 5 and peak_open(by_source["127.0.0.3"]) == 5
    assert mx.peak_connections == 10


async def test_bounce_actions_cover_what_kumomtas_do(autojump_clock):
    # KumoMTA: "Bounce" bounces every scheduled queue of the triggering record's domain;
    # "BounceTenant" its tenant's only, and nothing for a message without a tenant.
    from trimta.core.shaping import parse_rule

    def run(action: str, tenant_of_trigger: str | None):
        return _bounce_run(parse_rule({"regex": "GO AWAY", "action": action, "duration": "1h"}), tenant_of_trigger)

    bounced = await run("Bounce", "acme")
    assert bounced == {"acme-1@example.net", "globex-1@example.net", "none-1@example.net"}
    bounced = await run("BounceTenant", "acme")
    assert bounced == {"acme-1@example.net"}
    bounced = await run("BounceTenant", None)
    assert bounced == set()


async def _bounce_run(rule, tenant_of_trigger):
    import dataclasses

    from trimta.core.egress import EgressPathConfig
    from trimta.testing.harness import DeliveryHarness

    class Paths:
        def path_config(self, source, site, domain):
            return dataclasses.replace(EgressPathConfig(prohibited_hosts=()), connection_limit=1)

        def automation_for(self, source, site, domain):
            return (rule,)

        def rollup(self, domain):
            return True

        def observe(self, resolution):
            pass

        async def resolve_sites(self, resolver):
            return {}

    h = DeliveryHarness(config='[queues]\nretry_interval = "10m"\n', paths=Paths())
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, ScriptedReceiver(
        rules=[Rule("rcpt_to", reply(550, "5.7.1", "GO AWAY"), recipient="trigger@example.net"),
               Rule("rcpt_to", reply(451, "4.3.0", "later"))]))
    with trio.fail_after(10_000):
        async with h.running():
            # Three tenants' mail waits for its retry; then the trigger's reply fires the rule.
            await h.inject(recipients=["acme-1@example.net"], tenant="acme")
            await h.inject(recipients=["globex-1@example.net"], tenant="globex")
            await h.inject(recipients=["none-1@example.net"])
            await trio.sleep(60)
            await h.inject(recipients=["trigger@example.net"], tenant=tenant_of_trigger)
            await trio.sleep(120)
    # The trigger itself got a 550: a Bounce of its own. What the rule did is the AdminBounces.
    assert [r["recipient"] for r in h.records("Bounce")] == ["trigger@example.net"]
    return {r["recipient"] for r in h.records("AdminBounce")}
