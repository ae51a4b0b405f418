"""Operator rules shared through a real redis-server (trimta/adapters/redis_rules.py).

Each node is a delivery engine on the fake network (a `DeliveryHarness`) whose operator
rules follow one Redis through its own `RedisRules`, as a daemon's do. Real time (Redis
is real): every wait polls for what a user would see, bounded by a generous deadline,
and no assertion is about how long something took.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from trimta.adapters.redis_rules import RedisRules
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import StaticPathProvider
from trimta.core.egress_paths import EgressPathProvider
from trimta.core.shaping import parse_rule
from trimta.protocol.replies import reply
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting, deferring, refusing
from trimta.testing.rules import MemoryRuleStore

from .brokers import Redis

BASE = """
[egress.default]
prohibited_hosts = []
[queues]
retry_interval = "10m"
"""
DEADLINE_S = 60
READY = "unspecified->mx.example.net@smtp_client"


@pytest.fixture
def redis(tmp_path):
    server = Redis(tmp_path / "redis")
    server.directory.mkdir()
    try:
        yield server.start()
    finally:
        server.close()


@asynccontextmanager
async def node(url: str, *, receiver=None, clock: Callable[[], float] = trio.current_time,
               outbox_dir: Path | None = None, rule_store: MemoryRuleStore | None = None,
               paths: EgressPathProvider | None = None,
               ) -> AsyncIterator[tuple[DeliveryHarness, RedisRules]]:
    """A node; with `rule_store` and `outbox_dir` of an earlier one, that node restarted."""
    shared = RedisRules(url, clock=clock, timeout_s=5, retry_s=0.2, outbox_dir=outbox_dir)
    h = DeliveryHarness(config=BASE, shared_rules=shared, clock=clock, rule_store=rule_store, paths=paths)
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, receiver or accepting())
    h.engine.restore([])  # the rules it kept, as a daemon restores them at start
    async with h.running():
        yield h, shared


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(DEADLINE_S):
        while not condition():
            await trio.sleep(0.02)


def suspended_ids(h: DeliveryHarness) -> set[str]:
    return {r.id for r in h.engine.rules.suspensions()}


async def test_a_suspension_made_on_one_node_holds_the_others_mail_and_lifting_it_releases_it(redis):
    async with node(redis.url) as (a, _), node(redis.url) as (b, _):
        rule = await a.engine.rules.suspend(tenant="acme", duration_s=3600, reason="complaints")
        await until(lambda: suspended_ids(b) == {rule.id})
        (held,) = await b.inject(recipients=["a@example.net"], tenant="acme")
        await b.inject(recipients=["g@example.net"], tenant="globex")
        await until(lambda: len(b.network.messages) == 1)
        assert [m.recipients for m in b.network.messages] == [("g@example.net",)]
        assert b.engine.find_message(held.id)[1] == "suspended"
        assert await a.engine.rules.cancel_suspension(rule.id)
        await until(lambda: len(b.network.messages) == 2)
        assert b.engine.rules.suspensions() == []
    delivery = next(r for r in b.records("Delivery") if r["tenant"] == "acme")
    assert delivery["num_attempts"] == 1  # being held was not an attempt


async def test_a_rule_made_on_one_node_can_be_cancelled_on_another(redis):
    async with node(redis.url) as (a, _), node(redis.url) as (b, _):
        await a.inject(recipients=["a@example.net"], tenant="acme")  # delivered: nothing holds it yet
        await until(lambda: len(a.network.messages) == 1)
        rule = await a.engine.rules.suspend(tenant="acme", duration_s=3600, reason="")
        (held,) = await a.inject(recipients=["b@example.net"], tenant="acme")
        await until(lambda: suspended_ids(b) == {rule.id})
        assert a.engine.find_message(held.id)[1] == "suspended"
        assert await b.engine.rules.cancel_suspension(rule.id)
        await until(lambda: len(a.network.messages) == 2)  # released on a
        assert suspended_ids(a) == set() == suspended_ids(b)


async def test_a_bounce_made_on_one_node_bounces_the_mail_queued_on_another(redis):
    async with node(redis.url) as (a, _), node(redis.url, receiver=refusing()) as (b, _):
        queued = await b.inject(recipients=["x@example.net", "y@example.net"], tenant="acme", campaign="spring")
        kept = await b.inject(recipients=["z@example.net"], tenant="acme", campaign="summer")
        await until(lambda: len(b.records("TransientFailure")) == 3)  # queued, waiting for a retry
        await a.engine.rules.bounce(campaign="spring", duration_s=3600, reason="bad list")
        await until(lambda: len(b.records("AdminBounce")) == 2)
        assert sorted(r["id"] for r in b.records("AdminBounce")) == sorted(m.id for m in queued)
        assert set(b.spool.messages) == {m.id for m in kept}


async def test_ready_queue_suspensions_and_overrides_reach_the_other_node_and_end_there_too(redis):
    async with node(redis.url) as (a, _), node(redis.url) as (b, _):
        suspension = await a.engine.rules.suspend_ready_queue(name=READY, duration_s=3600, reason="421s")
        override = await a.engine.rules.override(name=READY, option="max_message_rate", value="10/s",
                                                 duration_s=3600, reason="throttled")
        await until(lambda: len(b.engine.rules.overrides()) == 1)
        assert b.engine.rules.ready_queue_suspended(READY)
        assert b.engine.rules.path_overrides(READY) == a.engine.rules.path_overrides(READY) != {}
        await a.engine.rules.cancel_ready_queue_suspension(suspension.id)
        await a.engine.rules.cancel_override(override.id)
        await until(lambda: not b.engine.rules.overrides() and not b.engine.rules.ready_queue_suspended(READY))


async def test_a_node_connecting_later_loads_the_rules_in_force_with_the_same_expiry(redis):
    async with node(redis.url) as (a, _):
        kept = await a.engine.rules.suspend(tenant="acme", duration_s=3600, reason="kept")
        lifted = await a.engine.rules.suspend(tenant="globex", duration_s=3600, reason="lifted")
        await a.engine.rules.cancel_suspension(lifted.id)
        await a.engine.rules.suspend(tenant="initech", duration_s=0.5, reason="over soon")
        await until(lambda: len(a.engine.rules.suspensions()) == 1)  # the short one has ended
        # A node whose clock is 1000 s ahead of a's, started now.
        def skewed() -> float:
            return trio.current_time() + 1000

        async with node(redis.url, clock=skewed) as (c, _):
            assert suspended_ids(c) == {kept.id}  # loaded before delivery started
            (theirs,) = c.engine.rules.suspensions()
            # The rule ends at the same moment on both nodes, whatever their clocks say.
            assert abs(theirs.remaining_s(c.engine.clock()) - kept.remaining_s(a.engine.clock())) < 5
            (held,) = await c.inject(recipients=["a@example.net"], tenant="acme")
            await c.inject(recipients=["g@example.net"], tenant="globex")
            await until(lambda: len(c.network.messages) == 1)
            assert c.engine.find_message(held.id)[1] == "suspended"


async def test_after_a_redis_restart_the_nodes_resync_including_changes_made_while_it_was_down(redis):
    async with node(redis.url) as (a, _), node(redis.url) as (b, b_shared):
        first = await a.engine.rules.suspend(tenant="acme", duration_s=3600, reason="first")
        await until(lambda: suspended_ids(b) == {first.id})
        (held,) = await b.inject(recipients=["a@example.net"], tenant="acme")
        redis.stop()
        await until(lambda: not b_shared.connected)
        # Made on a while Redis is away: in force on a at once, on b once Redis is back.
        assert await a.engine.rules.cancel_suspension(first.id)
        second = await a.engine.rules.suspend(tenant="globex", duration_s=3600, reason="second")
        assert suspended_ids(a) == {second.id}
        assert suspended_ids(b) == {first.id}
        assert b.engine.find_message(held.id)[1] == "suspended"
        redis.start()
        await until(lambda: suspended_ids(b) == {second.id})
        await until(lambda: len(b.network.messages) == 1)  # acme's mail, released
        assert suspended_ids(a) == {second.id}


async def test_a_redis_that_lost_its_data_is_given_the_rules_again_by_the_nodes(redis):
    async with node(redis.url) as (a, a_shared):
        rule = await a.engine.rules.suspend(tenant="acme", duration_s=3600, reason="kept")
        resyncs = a_shared.resyncs
        redis.stop()
        shutil.rmtree(redis.directory)
        redis.directory.mkdir()
        redis.start()
        await until(lambda: a_shared.resyncs > resyncs)
        async with node(redis.url) as (c, _):
            assert suspended_ids(c) == {rule.id}
        assert suspended_ids(a) == {rule.id}


async def test_a_rule_made_while_redis_is_away_survives_a_restart_of_its_node_and_reaches_the_others(
    redis, tmp_path,
):
    store = MemoryRuleStore()
    async with node(redis.url) as (b, _):
        async with node(redis.url, outbox_dir=tmp_path, rule_store=store) as (a, a_shared):
            before = await a.engine.rules.suspend(tenant="globex", duration_s=3600, reason="before the outage")
            await until(lambda: suspended_ids(b) == {before.id})
            redis.stop()
            await until(lambda: not a_shared.connected)
            rule = await a.engine.rules.suspend(tenant="acme", duration_s=3600, reason="during the outage")
        # Node a restarted while Redis is still away: it holds the rule from its own store...
        async with node(redis.url, outbox_dir=tmp_path, rule_store=store) as (again, _):
            assert suspended_ids(again) == {before.id, rule.id}
            redis.start()
            # ... and writes it to Redis when it answers, before taking Redis's rules as the truth.
            await until(lambda: suspended_ids(b) == {before.id, rule.id})
            assert suspended_ids(again) == {before.id, rule.id}


class AutomatedPaths(StaticPathProvider):
    """Every path with the given automation rules (as a shaping file's would give them)."""

    def __init__(self, *rules):
        super().__init__()
        self.rules = rules

    def path_config(self, source, site, domain):
        return EgressPathConfig(prohibited_hosts=())

    def automation_for(self, source, site, domain):
        return self.rules


async def test_an_automation_action_fired_on_one_node_holds_on_the_other(redis):
    answer = reply(421, "4.7.0", "[TS04] Messages temporarily deferred due to unexpected volume")
    rule = parse_rule({"regex": r"\[TS04\]", "action": "SuspendTenant", "duration": "2h"},
                      origin='"example.net"')
    async with node(redis.url, receiver=deferring("rcpt_to", first=1, answer=answer),
                    paths=AutomatedPaths(rule)) as (a, _), \
            node(redis.url, paths=AutomatedPaths(rule)) as (b, _):
        await a.inject(recipients=["a@example.net"], tenant="acme")
        await until(lambda: len(b.engine.rules.suspensions()) == 1)  # fired on a, in force on b
        (suspension,) = b.engine.rules.suspensions()
        assert (suspension.tenant, suspension.domain) == ("acme", "example.net")
        (held,) = await b.inject(recipients=["b@example.net"], tenant="acme")
        await b.inject(recipients=["g@example.net"], tenant="globex")
        await until(lambda: len(b.network.messages) == 1)
        assert [m.recipients for m in b.network.messages] == [("g@example.net",)]
        assert b.engine.find_message(held.id)[1] == "suspended"
        assert a.engine.automation.fired == 1 and b.engine.automation.fired == 0
