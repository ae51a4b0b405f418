"""Rebind on the real engine in virtual time: messages change queue, none is lost, and
they are delivered from their new queue (under its settings) at once."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from trimta.services.rebind import RebindError, RebindRequest, Rebinder
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting, deferring

CONFIG = """
[egress.default]
prohibited_hosts = []
[queues]
retry_interval = "10m"
[tenants.globex]
retry_interval = "1m"
"""


def harness(receiver=None) -> DeliveryHarness:
    h = DeliveryHarness(config=CONFIG)
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.resolver.add_domain("foo.example", "127.0.0.11")
    h.network.add_receiver("127.0.0.10", 25, receiver or deferring(first=3))
    h.foo = h.network.add_receiver("127.0.0.11", 25, accepting())  # type: ignore[attr-defined]
    h.resolver.add_domain("slow.example", "127.0.0.12")
    h.network.add_receiver("127.0.0.12", 25, deferring())
    return h


def rebinder(h: DeliveryHarness) -> Rebinder:
    return Rebinder(scheduler=h.engine.scheduler, store=h.spool, logs=h.logs, clock=trio.current_time)


def scheduled(h: DeliveryHarness) -> dict[str, int]:
    return {q.name: q.count for q in h.engine.queue_summary().scheduled}


def spooled(h: DeliveryHarness) -> Counter[str]:
    """The queues the spool's messages are recorded in (what a restart would restore)."""
    return Counter(m.queue for m in h.spool.messages.values())




async def deferred_three(h: DeliveryHarness) -> None:
    await h.inject(recipients=["a@example.net", "b@example.net", "c@example.net"], tenant="acme")
    await h.inject(recipients=["d@foo.example"], tenant="other")
    while len(h.records("TransientFailure")) < 3 or len(h.records("Delivery")) < 1:
        await trio.sleep(1)


async def test_rebind_to_another_tenant_moves_every_message_and_delivers_them_now(autojump_clock):
    h = harness()
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            before = scheduled(h)
            started = trio.current_time()
            result = await rebinder(h).rebind(RebindRequest(data={"tenant": "globex"}, reason="moved to globex",
                                                            domain="example.net"))
            await h.wait_until_settled()
            took = trio.current_time() - started
    assert before == {"acme@example.net": 3}
    assert (result.matched, result.moved, result.flushed) == (3, 3, 0)
    assert result.queues == {"globex@example.net": 3}
    delivered = [r for r in h.records("Delivery") if r["domain"] == "example.net"]
    assert sorted(r["recipient"] for r in delivered) == ["a@example.net", "b@example.net", "c@example.net"]
    assert {(r["tenant"], r["queue"]) for r in delivered} == {("globex", "globex@example.net")}
    assert took < 60  # due at once, not after acme's 10 minute retry
    rebinds = h.records("AdminRebind")
    assert len(rebinds) == 3
    assert {r["response"]["content"] for r in rebinds} == {
        "Rebound from acme@example.net to globex@example.net: moved to globex"}
    assert {r["response"]["code"] for r in rebinds} == {250}


async def test_the_new_metadata_is_in_the_spool(autojump_clock):
    h = harness(deferring())  # never delivers: the messages stay
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            before = (scheduled(h), spooled(h))
            await rebinder(h).rebind(RebindRequest(data={"campaign": "spring", "batch": "7"}, reason="r",
                                                   domain="example.net"))
            after = spooled(h)
    assert before == ({"acme@example.net": 3}, {"acme@example.net": 3})
    assert after == {"spring:acme@example.net": 3}  # none lost, none doubled
    stored = [m for m in h.spool.messages.values() if m.recipient.endswith("@example.net")]
    assert len(stored) == 3
    assert {(m.campaign, m.tenant, m.domain, m.queue) for m in stored} == {
        ("spring", "acme", "example.net", "spring:acme@example.net")}
    assert [m.meta for m in stored] == [{"batch": "7"}] * 3  # KumoMTA's meta: any other key


async def test_a_whole_queue_name_routes_through_its_domain(autojump_clock):
    """KumoMTA's `kcli rebind --domain example.com --set queue=foo.com`: the messages are
    delivered to foo.com's MX (trimta keeps the recipient's domain in the queue name and
    routes through foo.com: queue ``example.com!foo.com``)."""
    h = harness(deferring())
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            result = await rebinder(h).rebind(RebindRequest(data={"queue": "foo.example"}, reason="r",
                                                            domain="example.net"))
            await h.wait_until_settled()
    assert result.moved == 3 and result.queues == {"example.net!foo.example": 3}
    at_foo = h.foo.messages
    assert sorted(r for m in at_foo for r in m.recipients) == [
        "a@example.net", "b@example.net", "c@example.net", "d@foo.example"]


async def test_an_unchanged_queue_keeps_its_due_time_unless_always_flush(autojump_clock):
    h = harness()
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            due_before = sorted(m.due for m in h.engine.scheduler.messages())
            same = await rebinder(h).rebind(RebindRequest(data={"tenant": "acme"}, reason="r"))
            due_same = sorted(m.due for m in h.engine.scheduler.messages())
            flushed = await rebinder(h).rebind(RebindRequest(data={}, reason="r", always_flush=True))
            now = trio.current_time()
            due_flushed = sorted(m.due for m in h.engine.scheduler.messages())
            await h.wait_until_settled()
    assert (same.matched, same.moved, same.flushed) == (3, 0, 0)
    assert due_same == due_before and min(due_before) > now + 60
    assert (flushed.matched, flushed.moved, flushed.flushed) == (3, 0, 3)
    assert due_flushed == [now] * 3
    assert h.records("AdminRebind") == []  # nothing changed queue


async def test_suppress_logging_writes_no_admin_rebind(autojump_clock):
    h = harness()
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            result = await rebinder(h).rebind(RebindRequest(data={"campaign": "c1"}, reason="r",
                                                            suppress_logging=True))
    assert result.moved == 3 and spooled(h) == {"c1:acme@example.net": 3}
    assert h.records("AdminRebind") == []


async def test_a_suspended_message_moved_out_of_its_suspension_is_delivered(autojump_clock):
    h = harness()
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            await h.engine.rules.suspend(tenant="acme", campaign=None, domain=None, duration_s=86400, reason="hold")
            held = [m for _, m in h.engine.scheduler.held()]
            result = await rebinder(h).rebind(RebindRequest(data={"tenant": "globex"}, reason="r", tenant="acme"))
            await h.wait_until_settled()
    assert len(held) in (0, 3)  # held now, or as each falls due: either way they move
    assert result.moved == 3
    assert len([r for r in h.records("Delivery") if r["tenant"] == "globex"]) == 3


async def test_selectors_must_all_match(autojump_clock):
    h = harness(deferring())
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            await h.inject(recipients=["e@example.net"], tenant="other")
            while len(h.records("TransientFailure")) < 4:
                await trio.sleep(1)
            result = await rebinder(h).rebind(RebindRequest(data={"tenant": "globex"}, reason="r",
                                                            tenant="other", domain="example.net"))
    assert result.matched == 1
    assert spooled(h) == {"acme@example.net": 3, "globex@example.net": 1}


async def test_a_routing_domain_sends_them_through_another_mx_and_can_be_selected(autojump_clock):
    h = harness(deferring())
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            there = await rebinder(h).rebind(RebindRequest(data={"routing_domain": "foo.example"}, reason="r",
                                                           domain="example.net"))
            await h.wait_until_settled()
    assert there.queues == {"acme@example.net!foo.example": 3}
    assert sorted(r for m in h.foo.messages for r in m.recipients) == [
        "a@example.net", "b@example.net", "c@example.net", "d@foo.example"]
    delivered = [r for r in h.records("Delivery") if r["domain"] == "example.net"]
    assert {r["queue"] for r in delivered} == {"acme@example.net!foo.example"}


async def test_a_routing_domain_selector_and_removing_one(autojump_clock):
    h = harness(deferring())
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            await rebinder(h).rebind(RebindRequest(data={"queue": "acme@example.net!slow.example"}, reason="r",
                                                   domain="example.net"))
            while scheduled(h) != {"acme@example.net!slow.example": 3}:  # tried there at once, and back to wait
                await trio.sleep(1)
            none = await rebinder(h).rebind(RebindRequest(data={"routing_domain": ""}, reason="r",
                                                          routing_domain="elsewhere.example"))
            back = await rebinder(h).rebind(RebindRequest(data={"routing_domain": ""}, reason="r",
                                                          routing_domain="slow.example"))
    assert none.matched == 0
    assert back.matched == 3 and back.queues == {"acme@example.net": 3}
    assert spooled(h) == {"acme@example.net": 3}


@pytest.mark.parametrize(("data", "says"), [
    ({"routing_domain": "relay example"}, "expected a domain"),
    ({"queue": "acme@example.net!"}, "no routing domain after"),
    ({"queue": "acme@"}, "has no domain"),
])
async def test_what_cannot_be_set_is_refused_and_nothing_changes(autojump_clock, data, says):
    h = harness(deferring())
    with trio.fail_after(3600):
        async with h.running():
            await deferred_three(h)
            with pytest.raises(RebindError, match=says):
                await rebinder(h).rebind(RebindRequest(data=data, reason="r"))
            assert scheduled(h) == {"acme@example.net": 3}
