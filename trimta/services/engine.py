"""The delivery engine: scheduled queues, the egress tree, and what outcomes do.

```
engine
├── scheduler ........ one timer structure for every scheduled queue
└── egress nursery ... dispatcher workers; one task group per ready queue
```

The app hands it accepted and restored messages; tests build it with a fake
resolver, a fake network and an in-memory spool and run it in virtual time.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import trio

from trimta.adapters.delivery_config import DeliveryConfig
from trimta.adapters.network import NetworkBackend
from trimta.adapters.shaping_files import ShapingProvider
from trimta.core.admin import MessageRule, ReadyQueueRule, Rules, admin_bounce_reply, new_rule_id
from trimta.core.egress import EgressPathConfig
from trimta.core.message import Message
from trimta.core.mx import Resolver
from trimta.core.pools import EgressSource, PoolPicker
from trimta.core.retry import due_after_restart, expires_before
from trimta.services.automation import Automation
from trimta.services.egress import Egress
from trimta.services.logs import RecordSink
from trimta.services.outcomes import OutcomeRecorder
from trimta.services.ready_queue import ReadyQueueStatistics
from trimta.services.scheduler import QueueSummary, Scheduler
from trimta.services.smtp_client import OutboundConnection

log = logging.getLogger(__name__)


class DeliveryEngine:
    def __init__(
        self,
        *,
        spool,
        logs: RecordSink,
        resolver: Resolver,
        network: NetworkBackend,
        delivery: DeliveryConfig,
        hostname: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        linger_s: float = 10.0,
        tls_contexts=None,
        shaping=None,
    ) -> None:
        self.delivery = delivery
        self.resolver = resolver
        # Shaping files (a LoadedShaping) over the [egress] tables; without them, the tables.
        self.paths = (
            ShapingProvider(shaping, overrides=delivery.path_provider) if shaping is not None
            else delivery.path_provider
        )
        self.network = network
        self.hostname = hostname
        self.clock = clock
        self.rng = rng or random.Random()
        self.tls_contexts = tls_contexts
        self._pickers: dict[str, PoolPicker] = {}
        self.scheduler = Scheduler(queue_config=delivery.queue_config, dispatch=self._dispatch, clock=clock)
        self.outcomes = OutcomeRecorder(
            spool=spool, logs=logs, scheduler=self.scheduler, clock=clock, rng=self.rng,
            pool_name=lambda m: self.scheduler.config_for(m).egress_pool,
        )
        self.egress = Egress(
            resolver=resolver,
            paths=self.paths,
            sources=dict(delivery.sources),
            picker_for=self._picker_for,
            connect=self._connect,
            outcomes=self.outcomes,
            scheduler=self.scheduler,
            clock=clock,
            linger_s=linger_s,
            admission=self._admit,
            ready_queue_suspended=self._ready_queue_suspended,
            rollup=getattr(self.paths, "rollup", lambda domain: True),
        )
        self._suspensions = Rules()
        self._bounces = Rules()
        self._ready_suspensions = Rules()
        self._rules_changed = trio.Event()
        self.received_by_tenant: Counter[str] = Counter()
        self.automation = Automation(self, self._automation_rules, clock, logs=logs)
        self.outcomes.observers.append(self.automation.observe)

    def _dispatch(self, message: Message) -> None:
        self.egress.dispatch(message)

    def _picker_for(self, message: Message) -> PoolPicker:
        pool = self.delivery.pool(self.scheduler.config_for(message).egress_pool)
        picker = self._pickers.get(pool.name)
        if picker is None:
            picker = self._pickers[pool.name] = PoolPicker(pool)
        return picker

    async def _connect(self, targets: Sequence[tuple[str, str]], source: EgressSource, path: EgressPathConfig):
        kwargs = {"tls_contexts": self.tls_contexts} if self.tls_contexts is not None else {}
        return await OutboundConnection.open(
            self.network, targets, source=source, path=path, hostname=self.hostname, **kwargs
        )

    async def reload(self, config) -> None:
        """New configuration (SIGHUP): shaping and egress options apply to live ready queues
        at once; queue settings to messages as they are next scheduled."""
        self.delivery = config.delivery
        self.scheduler.reload(config.delivery.queue_config)
        if isinstance(self.paths, ShapingProvider) and config.shaping_loaded is not None:
            self.paths.swap(config.shaping_loaded, overrides=config.delivery.path_provider)
            await self.paths.resolve_sites(self.resolver)
        else:
            self.paths = config.delivery.path_provider
        self.egress.reload(self.paths)

    def use_paths(self, paths) -> None:
        """Shape with another provider (tests, simulations)."""
        self.paths = paths
        self.egress.rollup = getattr(paths, "rollup", lambda domain: True)
        self.egress.reload(paths)

    def _automation_rules(self, queue) -> Sequence:
        rules_for = getattr(self.egress.paths, "automation_for", None)
        if rules_for is None:
            return ()
        return rules_for(queue.source.name, queue.site, queue.domain)

    def restore_path(self, queue) -> None:
        """Back to the configured options (an automation's SetConfig has ended)."""
        queue.set_path(self.egress.paths.path_config(queue.source.name, queue.site, queue.domain))

    async def bounce_ready_queue(self, queue, reason: str) -> int:
        """Admin-bounce every message waiting in one ready queue (automation's Bounce)."""
        victims = queue.remove_matching(lambda m: True)
        reply = admin_bounce_reply(reason)
        for message in victims:
            await self.outcomes.admin_bounce(message, reply)
        return len(victims)

    # --- messages in ---------------------------------------------------------------------

    def accept(self, messages: Iterable[Message]) -> None:
        """Newly accepted messages: due now."""
        now = self.clock()
        for message in messages:
            self.received_by_tenant[message.tenant or ""] += 1
            self.scheduler.add(message, now)

    def restore(self, messages: Iterable[Message]) -> list[Message]:
        """Messages found in the spool at start: back in their queues; returns the expired."""
        now = self.clock()
        expired = []
        for message in messages:
            config = self.scheduler.config_for(message)
            due = due_after_restart(config, message.created, message.attempts, now, self.rng,
                                    recorded_due=message.due)
            if expires_before(config, message.created, due):  # due is clamped to the expiry
                expired.append(message)
                continue
            self.scheduler.add(message, due)
        return expired

    async def run(self, *, restored_expired: Sequence[Message] = (),
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        resolve_sites = getattr(self.paths, "resolve_sites", None)
        if resolve_sites is not None:
            # Each rolled-up domain table shapes its whole site from the first message on.
            await resolve_sites(self.resolver)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.outcomes.run)
            await nursery.start(self.egress.run)
            await nursery.start(self.scheduler.run)
            nursery.start_soon(self._expire_rules)
            await nursery.start(self.automation.run)
            nursery.start_soon(self._sweep_suspended)
            for message in restored_expired:
                await self.outcomes.expired(message)
            task_status.started()

    # --- operator rules: what a due message meets before routing -----------------------------

    async def _admit(self, message: Message) -> bool:
        """Expired, admin-bounced or suspended messages are dealt with here, not routed."""
        now = self.clock()
        if self.outcomes.expires_at(message) <= now:
            await self.outcomes.expired(message)
            return False
        bounce = self._bounces.first_match(message, now)
        if bounce is not None:
            await self.outcomes.admin_bounce(message, admin_bounce_reply(bounce.reason))
            return False
        suspension = self._suspensions.first_match(message, now)
        if suspension is not None:
            self.scheduler.hold(message, suspension.id)
            return False
        return True

    def _ready_queue_suspended(self, name: str) -> bool:
        now = self.clock()
        return any(r.name == name for r in self._ready_suspensions.active(now))

    async def _expire_rules(self) -> None:
        """Ends rules when their time is up: suspended mail flows again."""
        while True:
            now = self.clock()
            for rule in self._suspensions.expire(now):
                self.scheduler.release(rule.id)
                log.info("suspension %s ended (expired)", rule.id)
            self._bounces.expire(now)
            for rule in self._ready_suspensions.expire(now):
                self._apply_ready_suspension(rule.name)
            self._rules_changed = trio.Event()
            expiries = [e for e in (self._suspensions.next_expiry(), self._bounces.next_expiry(),
                                    self._ready_suspensions.next_expiry()) if e is not None]
            with trio.move_on_after(max(0.0, min(expiries) - self.clock()) if expiries else math.inf):
                await self._rules_changed.wait()

    async def _sweep_suspended(self, interval_s: float = 60.0) -> None:
        """max_age holds for suspended mail too."""
        while True:
            await trio.sleep(interval_s)
            now = self.clock()
            for _, message in self.scheduler.held():
                if self.outcomes.expires_at(message) <= now:
                    self.scheduler.discard(message.id)
                    await self.outcomes.expired(message)

    def _apply_ready_suspension(self, name: str) -> None:
        queue = self.egress.ready.get(name)
        if queue is not None:
            queue.suspend(self._ready_queue_suspended(name))

    def _pull_back(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Take matching messages out of the ready queues (in-flight ones finish)."""
        taken: list[Message] = []
        for queue in self.egress.queues():
            taken.extend(queue.remove_matching(predicate))
        return taken

    # --- operator API (the HTTP admin endpoints call these) ------------------------------------

    def suspend(self, *, tenant: str | None = None, campaign: str | None = None, domain: str | None = None,
                duration_s: float, reason: str = "") -> MessageRule:
        """Suspend matching mail: it waits, no attempt counted, until cancelled or expired."""
        now = self.clock()
        rule = MessageRule(new_rule_id(), "suspend", tenant, campaign, _domain(domain), reason, now, now + duration_s)
        self._suspensions.add(rule)
        for message in self._pull_back(rule.matches):
            self.scheduler.hold(message, rule.id)
        self._rules_changed.set()
        log.info("suspension %s: tenant=%s campaign=%s domain=%s for %.0fs: %s",
                 rule.id, tenant, campaign, domain, duration_s, reason)
        return rule

    def suspensions(self) -> list[MessageRule]:
        return self._suspensions.active(self.clock())

    def cancel_suspension(self, rule_id: str) -> bool:
        rule = self._suspensions.cancel(rule_id)
        if rule is None:
            return False
        self.scheduler.release(rule_id)
        self._rules_changed.set()
        log.info("suspension %s cancelled", rule_id)
        return True

    async def admin_bounce(self, *, tenant: str | None = None, campaign: str | None = None,
                           domain: str | None = None, duration_s: float, reason: str = "") -> AdminBounceResult:
        """Bounce every matching queued message now, and new ones while the rule lasts."""
        now = self.clock()
        rule = MessageRule(new_rule_id(), "bounce", tenant, campaign, _domain(domain), reason, now, now + duration_s)
        self._bounces.add(rule)
        self._rules_changed.set()
        victims = [m for m in self.scheduler.messages() if rule.matches(m)]
        for message in victims:
            self.scheduler.discard(message.id)
        victims.extend(self._pull_back(rule.matches))
        bounced: Counter[str] = Counter()
        reply = admin_bounce_reply(reason)
        for message in victims:
            bounced[message.queue] += 1
            await self.outcomes.admin_bounce(message, reply)
        log.info("admin bounce %s: %d messages: %s", rule.id, len(victims), reason)
        return AdminBounceResult(rule, dict(bounced), len(victims))

    def bounces(self) -> list[MessageRule]:
        return self._bounces.active(self.clock())

    def cancel_bounce(self, rule_id: str) -> bool:
        self._rules_changed.set()
        return self._bounces.cancel(rule_id) is not None

    def suspend_ready_queue(self, *, name: str, duration_s: float, reason: str = "") -> ReadyQueueRule:
        now = self.clock()
        rule = ReadyQueueRule(new_rule_id(), name, reason, now, now + duration_s)
        self._ready_suspensions.add(rule)
        self._apply_ready_suspension(name)
        self._rules_changed.set()
        log.info("ready queue %s suspended for %.0fs: %s", name, duration_s, reason)
        return rule

    def ready_queue_suspensions(self) -> list[ReadyQueueRule]:
        return self._ready_suspensions.active(self.clock())

    def cancel_ready_queue_suspension(self, rule_id: str) -> bool:
        rule = self._ready_suspensions.cancel(rule_id)
        if rule is None:
            return False
        self._apply_ready_suspension(rule.name)
        self._rules_changed.set()
        return True

    def queue_summary(self) -> QueueSummaryReport:
        return QueueSummaryReport(
            scheduled=self.scheduler.queues(),
            ready=[q.statistics() for q in self.egress.queues()],
        )

    def find_message(self, message_id: str) -> tuple[Message, str] | None:
        found = self.scheduler.find(message_id)
        if found is not None:
            return found
        for queue in self.egress.queues():
            found = queue.find(message_id)
            if found is not None:
                return found
        return None

    async def load_data(self, message: Message) -> bytes:
        return await self.outcomes.load_data(message)

    def statistics(self) -> EngineStatistics:
        o = self.outcomes
        ready = [q.statistics() for q in self.egress.queues()]
        return EngineStatistics(
            received_by_tenant=dict(self.received_by_tenant),
            delivered_by_tenant=dict(o.by_tenant["Delivery"]),
            transient_by_tenant=dict(o.by_tenant["TransientFailure"]),
            bounced_by_tenant=dict(o.by_tenant["Bounce"]),
            expired_by_tenant=dict(o.by_tenant["Expiration"]),
            delivered_by_site=dict(o.by_site["Delivery"]),
            transient_by_site=dict(o.by_site["TransientFailure"]),
            bounced_by_site=dict(o.by_site["Bounce"]),
            expired_by_site=dict(o.by_site["Expiration"]),
            scheduled=len(self.scheduler),
            scheduled_queues=self.scheduler.statistics().queues,
            ready=sum(r.ready for r in ready),
            ready_queues=len(ready),
            connections=sum(r.connections for r in ready),
            suspensions=len(self.suspensions()),
            bounces=len(self.bounces()),
        )


@dataclass(frozen=True, slots=True)
class AdminBounceResult:
    rule: MessageRule
    bounced: dict[str, int]
    total_bounced: int


@dataclass(frozen=True, slots=True)
class QueueSummaryReport:
    scheduled: list[QueueSummary]
    ready: list[ReadyQueueStatistics]


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """Counters since start (records by tenant, "" for none; by site) and current depths."""

    received_by_tenant: dict[str, int]
    delivered_by_tenant: dict[str, int]
    transient_by_tenant: dict[str, int]
    bounced_by_tenant: dict[str, int]
    expired_by_tenant: dict[str, int]
    delivered_by_site: dict[str, int]
    transient_by_site: dict[str, int]
    bounced_by_site: dict[str, int]
    expired_by_site: dict[str, int]
    scheduled: int
    scheduled_queues: int
    ready: int
    ready_queues: int
    connections: int
    suspensions: int
    bounces: int


def _domain(domain: str | None) -> str | None:
    return domain.lower().rstrip(".") if domain else None
