"""trace-smtp-client on the real engine in virtual time: what a tracer sees of an outgoing
session, and which sessions its filters let through."""

from __future__ import annotations

import trio

from trimta.services.smtp_trace import TraceFilter
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting

CONFIG = """
[egress.default]
prohibited_hosts = []
enable_tls = "Disabled"
[tenants.acme]
egress_pool = "unspecified"
"""


def harness() -> DeliveryHarness:
    h = DeliveryHarness(config=CONFIG)
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.resolver.add_domain("other.example", "127.0.0.11")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    h.network.add_receiver("127.0.0.11", 25, accepting())
    return h


def drain(subscriber) -> list[dict]:
    events = []
    while True:
        try:
            events.append(subscriber.receive.receive_nowait())
        except trio.WouldBlock:
            return events


def trace_filter(**values: list[str]) -> TraceFilter:
    return TraceFilter.parse(values)


async def test_a_session_is_traced_both_ways_with_the_messages_properties(autojump_clock):
    h = harness()
    subscriber = h.engine.trace.subscribe(trace_filter())
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=["a@example.net"], sender="app@sender.example", tenant="acme", campaign="fall")
            await h.wait_until_settled()
            await trio.sleep(120)  # past the idle timeout: the connection is closed
    events = drain(subscriber)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "Connected" and kinds[-1] == "Closed"
    connected = events[0]["session"]
    assert (connected["mx_addr"], connected["port"], connected["egress_source"]) == ("127.0.0.10", 25, "unspecified")
    reads = [e["data"] for e in events if e["kind"] == "Read"]
    writes = [e["data"] for e in events if e["kind"] == "Write"]
    assert reads[0].startswith("220 ") and writes[0].startswith("EHLO ")
    assert any(w.startswith("MAIL FROM:<app@sender.example>") for w in writes)
    (message,) = [e["session"] for e in events if e["kind"] == "Message"]
    assert (message["rcpt_to"], message["domain"], message["tenant"], message["campaign"]) == (
        "a@example.net", "example.net", "acme", "fall")
    assert message["egress_pool"] == "unspecified" and message["ready_queue"].endswith("@smtp_client")
    assert any("Subject: test\r\n\r\nHello.\r\n" in w for w in writes)  # the message data went by (BDAT)
    assert kinds.count("Closed") == 1
    assert len({e["session_id"] for e in events}) == 1


async def test_filters_let_through_only_the_sessions_they_allow(autojump_clock):
    h = harness()
    by_domain = h.engine.trace.subscribe(trace_filter(domain=["other.example"]))
    by_tenant = h.engine.trace.subscribe(trace_filter(tenant=["globex"]))
    by_mx = h.engine.trace.subscribe(trace_filter(mx_addr=["127.0.0.10/32"]))
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=["a@example.net"], tenant="acme")
            await h.inject(recipients=["b@other.example"], tenant="acme")
            await h.wait_until_settled()
            await trio.sleep(120)
    domain_events, tenant_events, mx_events = drain(by_domain), drain(by_tenant), drain(by_mx)
    # a domain is known from RCPT TO on: the other session is seen up to there, then no more
    sessions = {e["session_id"] for e in domain_events if e["kind"] == "Message"}
    assert [e["session"]["rcpt_to"] for e in domain_events if e["kind"] == "Message"] == ["b@other.example"]
    assert all(e["session_id"] in sessions for e in domain_events if e["kind"] in ("Closed", "Message"))
    assert not [e for e in tenant_events if e["kind"] in ("Message", "Closed")]  # acme's: excluded once known
    assert {e["session"]["mx_addr"] for e in mx_events if e["kind"] == "Connected"} == {"127.0.0.10"}


async def test_nobody_tracing_costs_nothing(autojump_clock):
    h = harness()
    with trio.fail_after(600):
        async with h.running():
            subscriber = h.engine.trace.subscribe(trace_filter())
            subscriber.close()  # gone before any connection
            await h.inject(recipients=["a@example.net"])
            await h.wait_until_settled()
    assert h.engine.trace.subscribers == set()
    assert len(h.network.messages) == 1


async def test_a_slow_tracer_loses_events_not_mail(autojump_clock):
    h = harness()
    subscriber = h.engine.trace.subscribe(trace_filter(), buffer=3)
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(5)])
            await h.wait_until_settled()
    assert len(h.network.messages) == 5
    assert len(drain(subscriber)) == 3 and subscriber.dropped > 0


def test_a_bad_filter_is_named():
    for values, says in (({"source": ["10.0.0.300"]}, "source: expected an address or a CIDR"),
                         ({"colour": ["red"]}, "colour: not a property to trace by")):
        try:
            TraceFilter.parse(values)
        except ValueError as exc:
            assert str(exc).startswith(says)
        else:
            raise AssertionError(f"{values} was accepted")
