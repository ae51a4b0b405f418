"""Operator actions on the running engine, in virtual time."""

import trio

from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting, refusing

BASE = """
[egress.default]
prohibited_hosts = []
[queues]
retry_interval = "10m"
"""


def harness() -> DeliveryHarness:
    h = DeliveryHarness(config=BASE)
    h.resolver.add_domain("example.net", "127.0.0.10")
    return h


async def test_suspended_tenant_waits_while_another_flows_then_flows_after_cancel(autojump_clock):
    h = harness()
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(3600):
        async with h.running():
            rule = await h.engine.rules.suspend(tenant="acme", duration_s=3600, reason="complaints")
            (held,) = await h.inject(recipients=["a@example.net"], tenant="acme")
            await h.inject(recipients=["b@example.net"], tenant="globex")
            await h.network.wait_messages(1)
            await trio.sleep(300)
            assert [m.recipients for m in mx.messages] == [("b@example.net",)]
            assert h.engine.find_message(held.id)[1] == "suspended"
            summary = {q.name: q.count for q in h.engine.queue_summary().scheduled}
            assert summary == {"acme@example.net": 1}
            assert await h.engine.rules.cancel_suspension(rule.id)
            await h.wait_until_settled()
    assert sorted(m.recipients[0] for m in mx.messages) == ["a@example.net", "b@example.net"]
    delivery = next(r for r in h.records("Delivery") if r["tenant"] == "acme")
    assert delivery["num_attempts"] == 1  # the suspension was not an attempt
    assert h.records("TransientFailure") == []


async def test_suspension_ends_by_itself(autojump_clock):
    h = harness()
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(3600):
        async with h.running():
            start = trio.current_time()
            await h.engine.rules.suspend(campaign="spring", duration_s=600, reason="")
            await h.inject(recipients=["a@example.net"], tenant="acme", campaign="spring")
            await h.wait_until_settled()
            finished = trio.current_time()
    assert len(mx.messages) == 1
    assert 600 <= finished - start <= 602


async def test_admin_bounce_by_campaign_removes_exactly_that_campaign(autojump_clock):
    h = harness()
    h.network.add_receiver("127.0.0.10", 25, refusing())  # everything stays queued
    with trio.fail_after(3600):
        async with h.running():
            spring = await h.inject(recipients=[f"s{i}@example.net" for i in range(3)], tenant="acme", campaign="spring")
            summer = await h.inject(recipients=[f"u{i}@example.net" for i in range(2)], tenant="acme", campaign="summer")
            await trio.sleep(5)
            result = await h.engine.rules.bounce(campaign="spring", duration_s=3600, reason="bad list")
            assert result.total_bounced == 3
            assert result.bounced == {"spring:acme@example.net": 3}
            late = await h.inject(recipients=["late@example.net"], tenant="acme", campaign="spring")
            await trio.sleep(5)
    bounced = h.records("AdminBounce")
    assert sorted(r["id"] for r in bounced) == sorted(m.id for m in spring + late)
    assert all(r["campaign"] == "spring" and r["response"]["code"] == 551 for r in bounced)
    assert set(h.spool.messages) == {m.id for m in summer}


async def test_suspended_ready_queue_holds_its_mail_until_cancelled(autojump_clock):
    h = harness()
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    name = "unspecified->mx.example.net@smtp_client"
    with trio.fail_after(3600):
        async with h.running():
            rule = await h.engine.rules.suspend_ready_queue(name=name, duration_s=3600, reason="provider asked")
            await h.inject(recipients=["a@example.net"])
            await trio.sleep(120)
            assert mx.messages == []
            assert [r.id for r in h.engine.rules.ready_queue_suspensions()] == [rule.id]
            assert await h.engine.rules.cancel_ready_queue_suspension(rule.id)
            await h.wait_until_settled()
    assert len(mx.messages) == 1


async def test_queue_summary_while_receiver_is_down(autojump_clock):
    h = harness()
    h.network.add_receiver("127.0.0.10", 25, refusing())
    with trio.fail_after(3600):
        async with h.running():
            await h.inject(recipients=[f"a{i}@example.net" for i in range(4)], tenant="acme")
            await h.inject(recipients=[f"b{i}@example.net" for i in range(2)], tenant="globex", campaign="x")
            await trio.sleep(60)
            summary = h.engine.queue_summary()
    counts = {q.name: q.count for q in summary.scheduled}
    assert counts == {"acme@example.net": 4, "x:globex@example.net": 2}
    stats = h.engine.statistics()
    assert stats.scheduled == 6
    assert stats.transient_by_tenant == {"acme": 4, "globex": 2}


async def test_max_age_holds_in_a_suspended_ready_queue(autojump_clock):
    h = DeliveryHarness(config=BASE + '[queues.domains."example.net"]\nmax_age = "1h"\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(100_000):
        async with h.running():
            start = trio.current_time()
            await h.engine.rules.suspend_ready_queue(name="unspecified->mx.example.net@smtp_client", duration_s=7200, reason="")
            await h.inject(recipients=["a@example.net"])
            await h.wait_until_settled()
            expired_at = trio.current_time()
    (record,) = h.records("Expiration")
    assert record["recipient"] == "a@example.net"
    assert 3600 <= expired_at - start <= 3600 + 61  # found by the once-a-minute sweep
    assert mx.messages == []


async def test_max_age_holds_for_suspended_scheduled_mail(autojump_clock):
    h = DeliveryHarness(config=BASE + '[queues.domains."example.net"]\nmax_age = "1h"\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(100_000):
        async with h.running():
            await h.engine.rules.suspend(tenant="acme", duration_s=7200, reason="")
            await h.inject(recipients=["a@example.net"], tenant="acme")
            await h.wait_until_settled()
    (record,) = h.records("Expiration")
    assert record["tenant"] == "acme"


async def test_restore_expires_what_outlived_max_age_and_queues_the_rest(autojump_clock):
    from trimta.core.message import Message, Reception

    h = DeliveryHarness(config=BASE + '[queues.domains."example.net"]\nmax_age = "1h"\n')
    now = trio.current_time()

    def old(i: int, created: float, attempts: int) -> Message:
        m = Message.new(data_id=f"d{i}", sender="s@x", recipient=f"u{i}@example.net", tenant=None, campaign=None,
                        size=1, created=created, reception=Reception(), id=f"m{i}")
        m.attempts = attempts
        return m

    stale, fresh = old(1, now - 7200, 3), old(2, now - 60, 1)
    expired = h.engine.restore([stale, fresh])
    assert expired == [stale]
    assert h.engine.find_message("m2")[1] == "scheduled"
    assert h.engine.find_message("m1") is None


# --- durable rules: written before the call returns, restored with their remaining time -------


async def test_rules_are_saved_before_the_call_returns_and_restored_by_the_next_engine(autojump_clock):
    h = harness()
    async with h.running():
        rule = await h.engine.rules.suspend(tenant="acme", duration_s=7200, reason="incident")
        assert [r["id"] for r in h.rule_store.saved] == [rule.id]  # on "disk" when suspend returns
        ready = await h.engine.rules.suspend_ready_queue(name="unspecified->mx.example.net@smtp_client",
                                                         duration_s=600, reason="asked")
        await trio.sleep(1800)
    restarted = DeliveryHarness(config=h.config, rule_store=h.rule_store)
    restarted.engine.restore([])
    (restored,) = restarted.engine.rules.suspensions()
    assert (restored.id, restored.tenant, restored.reason) == (rule.id, "acme", "incident")
    assert restored.remaining_s(trio.current_time()) == 7200 - 1800
    assert restarted.engine.rules.ready_queue_suspensions() == []  # its 600 s are over
    assert ready.expires < trio.current_time()


async def test_a_restored_suspension_holds_restored_mail(autojump_clock):
    h = harness()
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    async with h.running():
        await h.engine.rules.suspend(tenant="acme", duration_s=3600, reason="incident")
    restarted = DeliveryHarness(config=h.config, rule_store=h.rule_store, network=h.network)
    restarted.resolver.add_domain("example.net", "127.0.0.10")
    restarted.engine.restore([])  # as the app does at start, before delivery runs
    with trio.fail_after(7200):
        async with restarted.running():
            await restarted.inject(recipients=["a@example.net"], tenant="acme")
            await restarted.inject(recipients=["g@example.net"], tenant="globex")
            await restarted.network.wait_messages(1)
            await trio.sleep(600)
            assert [m.recipients for m in mx.messages] == [("g@example.net",)]
            await restarted.wait_until_settled()  # the suspension's hour ends; acme's mail goes
    assert sorted(m.recipients[0] for m in mx.messages) == ["a@example.net", "g@example.net"]


async def test_a_rule_the_store_cannot_keep_is_refused_and_not_in_force(autojump_clock):
    from trimta.adapters.rules_store import RulesStoreError
    from trimta.testing.rules import MemoryRuleStore

    class FullDisk(MemoryRuleStore):
        async def save(self, rules) -> None:
            raise RulesStoreError("cannot write operator-rules.json: No space left on device")

    h = DeliveryHarness(config=BASE, rule_store=FullDisk())
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(600):
        async with h.running():
            try:
                await h.engine.rules.suspend(tenant="acme", duration_s=3600, reason="incident")
            except RulesStoreError:
                pass
            else:
                raise AssertionError("the suspension should have been refused")
            assert h.engine.rules.suspensions() == []
            await h.inject(recipients=["a@example.net"], tenant="acme")
            await h.wait_until_settled()
    assert [m.recipients for m in mx.messages] == [("a@example.net",)]
