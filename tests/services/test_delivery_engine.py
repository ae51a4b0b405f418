"""The delivery engine in virtual time: scheduled queues, ready queues, the SMTP client,
against a fake resolver and a fake network of scripted receivers."""

import math

import trio

from trimta.protocol.replies import reply
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting, deferring, rejecting, refusing

BASE = """
[egress.default]
prohibited_hosts = []
"""


def harness(extra: str = "", **kwargs) -> DeliveryHarness:
    return DeliveryHarness(config=BASE + extra, **kwargs)


async def test_message_is_delivered_once_with_its_envelope(autojump_clock):
    h = harness()
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(600):
        async with h.running():
            (msg,) = await h.inject(recipients=["ann@example.net"], tenant="acme", campaign="spring")
            await h.wait_until_settled()
    (received,) = mx.messages
    assert received.sender == "sender@example.com"
    assert received.recipients == ("ann@example.net",)
    (delivery,) = h.records("Delivery")
    assert delivery["id"] == msg.id
    assert delivery["tenant"] == "acme" and delivery["campaign"] == "spring"
    assert delivery["queue"] == "spring:acme@example.net"
    # KumoMTA's site is the ready queue's name; trimta's site name is site_name.
    assert delivery["site"] == delivery["ready_queue"] == "unspecified->mx.example.net@smtp_client"
    assert delivery["site_name"] == "mx.example.net"
    assert delivery["response"]["code"] == 250
    assert delivery["peer_address"]["addr"] == "127.0.0.10"
    assert delivery["num_attempts"] == 1
    assert h.spool.messages == {}


async def test_a_message_received_with_smtputf8_is_relayed_with_it(autojump_clock):
    h = harness()
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=["ann@example.net"], protocol="UTF8SMTPS")
            await h.inject(recipients=["bob@example.net"])
            await h.wait_until_settled()
    assert sorted((m.recipients[0], m.smtputf8) for m in mx.messages) == [
        ("ann@example.net", True), ("bob@example.net", False)]


async def test_retry_schedule_follows_backoff_then_delivers(autojump_clock):
    h = harness('[queues]\nretry_interval = "10m"\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, deferring("rcpt_to", first=3))
    with trio.fail_after(10_000):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=["ann@example.net"])
            await h.wait_until_settled()
    failures = h.records("TransientFailure")
    assert [f["num_attempts"] for f in failures] == [1, 2, 3]
    (delivery,) = h.records("Delivery")
    assert delivery["num_attempts"] == 4
    times = [f["timestamp"] for f in failures] + [delivery["timestamp"]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 10m, 20m, 40m, each shortened by at most 10% jitter (and a second of rounding).
    for gap, nominal in zip(gaps, [600, 1200, 2400]):
        assert 0.9 * nominal - 2 <= gap <= nominal + 2, gaps
    assert delivery["timestamp"] - start < 4300


async def test_message_expires_when_next_attempt_would_pass_max_age(autojump_clock):
    h = harness('[queues]\nretry_interval = "10m"\nmax_age = "1h"\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, deferring("rcpt_to"))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["ann@example.net"])
            await h.wait_until_settled()
    (expiration,) = h.records("Expiration")
    assert expiration["response"]["code"] == 551
    assert expiration["response"]["enhanced_code"] == {"class": 5, "subject": 4, "detail": 7}
    # attempts at ~0, ~10m, ~30m; the next (~70m) would pass 1h.
    assert expiration["num_attempts"] == 3
    assert h.spool.messages == {}


async def test_permanent_failure_bounces_with_classification(autojump_clock):
    h = harness()
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver(
        "127.0.0.10", 25,
        rejecting("rcpt_to", answer=reply(550, "5.1.1", "The email account that you tried to reach does not exist")),
    )
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=["nobody@example.net"])
            await h.wait_until_settled()
    (bounce,) = h.records("Bounce")
    assert bounce["response"]["code"] == 550
    assert bounce["bounce_classification"] == "InvalidRecipient"
    assert h.records("Delivery") == []


async def test_connection_limit_never_exceeded_while_1000_messages_drain(autojump_clock):
    h = harness('[egress.domains."example.net"]\nconnection_limit = 3\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.05))
    with trio.fail_after(3600):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(1000)])
            await h.wait_until_settled()
    assert len(mx.messages) == 1000
    assert h.network.peak_connections == 3


async def test_max_deliveries_per_connection_opens_ceil_n_over_k_connections(autojump_clock):
    h = harness('[egress.domains."example.net"]\nconnection_limit = 1\nmax_deliveries_per_connection = 50\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(3600):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(1001)])
            await h.wait_until_settled()
    assert len(mx.messages) == 1001
    assert h.network.connection_count == math.ceil(1001 / 50)
    assert max(c.messages for c in h.network.connections) == 50


async def test_idle_connection_closes_at_exactly_idle_timeout(autojump_clock):
    h = harness('[egress.domains."example.net"]\nidle_timeout = "37s"\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=["a@example.net"])
            await h.network.wait_messages(1)
            delivered_at = trio.current_time()
            while h.network.connections_open:
                await trio.sleep(0.001)
            closed_at = trio.current_time()
    assert closed_at - delivered_at == 37.0 or abs(closed_at - delivered_at - 37.0) < 0.002


async def test_two_domains_with_the_same_mx_share_one_ready_queue(autojump_clock):
    h = harness()
    h.resolver.add_mx("one.example", "mx.shared.example")
    h.resolver.add_mx("two.example", "mx.shared.example")
    h.resolver.add_host("mx.shared.example", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=["a@one.example", "b@two.example"])
            await h.wait_until_settled()
    sites = {r["site_name"] for r in h.records("Delivery")}
    queues = {r["ready_queue"] for r in h.records("Delivery")}
    assert sites == {"mx.shared.example"}
    assert len(queues) == 1


async def test_fairness_small_tenant_is_not_stuck_behind_large_backlog(autojump_clock):
    h = harness('[egress.domains."example.net"]\nconnection_limit = 1\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.1))
    with trio.fail_after(3600):
        async with h.running():
            await h.inject(recipients=[f"big{i}@example.net" for i in range(500)], tenant="big")
            await h.inject(recipients=[f"small{i}@example.net" for i in range(5)], tenant="small")
            await h.wait_until_settled()
    order = [m.recipients[0] for m in mx.messages]
    small_positions = [i for i, r in enumerate(order) if r.startswith("small")]
    # Taken in turn with the big tenant's queue: all five within the first dozen or so.
    assert max(small_positions) < 15, small_positions


async def test_weighted_round_robin_over_sources(autojump_clock):
    h = harness("""
[sources.s1]
source_address = "127.0.0.2"
[sources.s2]
source_address = "127.0.0.3"
[pools.main]
entries = [{ name = "s1", weight = 2 }, { name = "s2", weight = 1 }]
[queues]
egress_pool = "main"
""")
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(3600):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(300)])
            await h.wait_until_settled()
    by_source = {}
    for r in h.records("Delivery"):
        by_source[r["egress_source"]] = by_source.get(r["egress_source"], 0) + 1
    assert by_source == {"s1": 200, "s2": 100}
    sources = {c.source_address for c in h.network.connections}
    assert sources == {"127.0.0.2", "127.0.0.3"}


async def test_down_destination_waits_while_others_deliver(autojump_clock):
    h = harness()
    h.resolver.add_domain("down.example", "127.0.0.11")
    h.resolver.add_domain("up.example", "127.0.0.10")
    h.network.add_receiver("127.0.0.11", 25, refusing())
    up = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(3600):
        async with h.running():
            await h.inject(recipients=["a@down.example", "b@up.example"])
            await h.network.wait_messages(1)
            await trio.sleep(60)
    assert [m.recipients for m in up.messages] == [("b@up.example",)]
    assert any(m.recipient == "a@down.example" for m in h.spool.messages.values())
    (failure,) = h.records("TransientFailure")
    assert failure["recipient"] == "a@down.example"


async def test_ready_queue_that_crashes_returns_its_messages(autojump_clock, monkeypatch):
    h = harness()
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    from trimta.services import ready_queue as rq

    original = rq.ReadyQueue._start_connections  # noqa: SLF001 (the fault goes into the queue's own method)
    crashes = []

    def explode_once(self):
        if not crashes:
            crashes.append(self.name)
            raise RuntimeError("a bug")
        return original(self)

    monkeypatch.setattr(rq.ReadyQueue, "_start_connections", explode_once)
    with trio.fail_after(3600):
        async with h.running():
            await h.inject(recipients=["a@example.net", "b@example.net"])
            await h.wait_until_settled()
    assert crashes
    assert h.engine.egress.crashed == 1
    assert sorted(m.recipients[0] for m in mx.messages) == ["a@example.net", "b@example.net"]
    assert h.records("TransientFailure") == []  # no attempt was counted


async def test_trickle_of_messages_reuses_one_idle_connection(autojump_clock):
    h = harness()
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.05))
    with trio.fail_after(600):
        async with h.running():
            for i in range(8):
                await h.inject(recipients=[f"u{i}@example.net"])
                await trio.sleep(2)
            await h.wait_until_settled()
    # Each message finds the previous one's connection idle: one connection, 8 messages.
    assert h.network.connection_count == 1
    assert h.network.peak_connections == 1


# --- dispatching due messages: one resolution per domain and burst ----------------------------


async def test_messages_due_together_for_one_domain_share_one_mx_resolution(autojump_clock):
    h = harness()
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.resolver.add_domain("example.org", "127.0.0.11")
    net = h.network.add_receiver("127.0.0.10", 25, accepting())
    org = h.network.add_receiver("127.0.0.11", 25, accepting())
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(30)] + ["x@example.org"])
            await h.wait_until_settled()
    assert len(net.messages) == 30 and len(org.messages) == 1
    mx_questions = [name for name, rdtype in h.resolver.queries if rdtype == "MX"]
    assert sorted(mx_questions) == ["example.net", "example.org"]  # once each, not once per message


async def test_a_bug_routing_one_message_sends_it_and_the_rest_of_its_burst_back_to_wait(autojump_clock, monkeypatch):
    h = harness()
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    pool_for = h.engine.egress.pool_for
    failed_at = []
    calls = []

    def buggy_pool_for(name):
        calls.append(name)
        if len(calls) == 3 and not failed_at:  # a, b, then c: the bug strikes c
            failed_at.append(trio.current_time())
            raise RuntimeError("a bug")
        return pool_for(name)

    monkeypatch.setattr(h.engine.egress, "pool_for", buggy_pool_for)
    with trio.fail_after(3600):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=[f"{name}@example.net" for name in "abcde"])
            await h.wait_until_settled()
    by_recipient = {m.recipients[0]: m for m in mx.messages}
    assert sorted(by_recipient) == [f"{name}@example.net" for name in "abcde"]  # each exactly once
    assert failed_at == [start]
    # a and b were routed before the bug and went at once; c, d and e waited a minute.
    late = sorted(r["recipient"] for r in h.records("Delivery") if r["timestamp"] >= start + 60)
    assert late == ["c@example.net", "d@example.net", "e@example.net"]
    assert h.records("TransientFailure") == []  # no attempt was counted
