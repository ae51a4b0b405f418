"""Operator rules: the one owner of suspensions, admin bounces, ready-queue suspensions
and ready-queue option overrides.

The HTTP admin API and automation make rules here; the egress asks here, for each due
message, whether a rule bounces or holds it (`admission`), and for each ready queue
whether it is suspended and which options are overridden. What a rule does to mail
already queued, it does itself: a suspension takes matching messages out of the ready
queues and holds them in the scheduler; a bounce takes them out of both and records
an `AdminBounce` for each.

Durability: every change is written to the rule store (`trimta.adapters.rules_store`)
before the call returns, so the API answers 200 only for a rule that survives a
restart; at start the rules in force are restored with their remaining time. A store
that cannot be written refuses the change (`RulesStoreError`) and nothing changes.

Time comes from `clock` (epoch seconds in the daemon, so restored expiries mean what
they meant; trio's virtual clock in tests); rules end by themselves in `run`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from trimta.core.admin import (
    ADMIT,
    Admission,
    AnyRule,
    MessageRule,
    PathOverrideRule,
    ReadyQueueRule,
    Rules,
    admin_bounce_reply,
    first_match,
    new_rule_id,
)
from trimta.core.egress_options import parse_path_options
from trimta.core.message import Message
from trimta.core.queues import canonical_ready_queue_name
from trimta.core.retry import QueueConfig
from trimta.protocol.replies import Reply
from trimta.services.ready_queues import ReadyQueues

log = logging.getLogger(__name__)

SWEEP_SUSPENDED_S = 60.0


class RuleStore(Protocol):
    """Where rules are kept across restarts (`FileRuleStore`; `MemoryRuleStore` in tests)."""

    def load(self) -> list[AnyRule]: ...
    async def save(self, rules: Sequence[AnyRule]) -> None: ...


class SharedRules(Protocol):
    """Rules shared with the other nodes of a cluster (`trimta.adapters.redis_rules.RedisRules`).

    `publish` and `withdraw` return False when the cluster is away (the change is kept
    and written when it answers); `follow` keeps this node in step, forever."""

    async def publish(self, rule: AnyRule) -> bool: ...
    async def withdraw(self, rule_id: str) -> bool: ...
    async def follow(self, listener: Any, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


class HeldMessages(Protocol):
    """The scheduler, as far as rules use it: holding, releasing and taking out messages."""

    def hold(self, message: Message, key: str) -> None: ...
    def release(self, key: str, due: float | None = None) -> int: ...
    def discard(self, message_id: str) -> Message | None: ...
    def messages(self) -> Iterator[Message]: ...
    def held(self) -> Iterator[tuple[str, Message]]: ...
    def config_for(self, message: Message) -> QueueConfig: ...


class FinalOutcomes(Protocol):
    """The outcome recorder, as far as rules use it."""

    async def admin_bounce(self, message: Message, reply: Reply, *, record: bool = True) -> None: ...
    async def expired(self, message: Message, queue: None = None) -> None: ...
    def expires_at(self, message: Message) -> float: ...


@dataclass(frozen=True, slots=True)
class AdminBounceResult:
    rule: MessageRule
    bounced: dict[str, int]
    total_bounced: int


class OperatorRules:
    """Suspensions, bounces, ready-queue suspensions and overrides: made, kept, applied, ended."""

    def __init__(
        self,
        *,
        scheduler: HeldMessages,
        outcomes: FinalOutcomes,
        ready: ReadyQueues,
        store: RuleStore | None = None,
        shared: SharedRules | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self.outcomes = outcomes
        self.ready = ready
        self.store = store
        self.shared = shared
        self.clock = clock
        self._suspensions: Rules[MessageRule] = Rules()
        self._bounces: Rules[MessageRule] = Rules()
        # What each bounce rule has bounced since it was made (in this process), by scheduled queue.
        self.bounced_by_rule: dict[str, Counter[str]] = {}
        self._ready_suspensions: Rules[ReadyQueueRule] = Rules()
        self._overrides: Rules[PathOverrideRule] = Rules()
        self._changed = trio.Event()

    # --- start ----------------------------------------------------------------------------

    def restore(self) -> int:
        """Load the rules in force from the store (before delivery starts); returns how many."""
        if self.store is None:
            return 0
        now = self.clock()
        count = 0
        for rule in self.store.load():
            if rule.expires <= now or not _valid(rule):
                continue
            self._rules_for(rule).add(rule)
            count += 1
        if count:
            log.info("restored %d operator rules in force", count)
        return count

    def _rules_for(self, rule: AnyRule) -> Rules[Any]:
        if isinstance(rule, MessageRule):
            return self._suspensions if rule.kind == "suspend" else self._bounces
        if isinstance(rule, ReadyQueueRule):
            return self._ready_suspensions
        return self._overrides

    def rules_in_force(self) -> list[AnyRule]:
        """Every rule this node holds, of every kind."""
        return [*self._suspensions, *self._bounces, *self._ready_suspensions, *self._overrides]

    async def _save(self) -> None:
        if self.store is not None:
            await self.store.save(self.rules_in_force())

    async def _saved_with(self, rules: Rules[Any], rule: AnyRule) -> None:
        """Add `rule` durably: if the store refuses, the rule is not in force. Then share it."""
        rules.add(rule)
        try:
            await self._save()
        except BaseException:
            rules.cancel(rule.id)
            raise
        if self.shared is not None and not await self.shared.publish(rule):
            log.warning("rule %s holds on this node only until the cluster answers", rule.id)

    async def _saved_without(self, rules: Rules[Any], rule_id: str) -> Any:
        rule = rules.cancel(rule_id)
        if rule is None:
            return None
        try:
            await self._save()
        except BaseException:
            rules.add(rule)
            raise
        if self.shared is not None and not await self.shared.withdraw(rule_id):
            log.warning("rule %s cancelled on this node only until the cluster answers", rule_id)
        return rule

    # --- rules made on other nodes (the cluster, see `SharedRules`) ------------------------------

    async def shared_put(self, rule: AnyRule) -> None:
        """A rule made on another node: in force here too, doing here what it did there."""
        if self._known(rule.id) or rule.expires <= self.clock() or not _valid(rule):
            return
        self._rules_for(rule).add(rule)
        await self._save_quietly()
        await self._install(rule)
        self._changed.set()
        log.info("rule %s from the cluster: %s", rule.id, _describe(rule))

    async def shared_removed(self, rule_id: str) -> None:
        """A rule cancelled on another node: lifted here too."""
        for rules in (self._suspensions, self._bounces, self._ready_suspensions, self._overrides):
            rule = rules.cancel(rule_id)
            if rule is not None:
                await self._save_quietly()
                self._uninstall(rule)
                self._changed.set()
                log.info("rule %s cancelled by the cluster", rule_id)
                return

    async def resync(self, rules: Sequence[AnyRule]) -> None:
        """The cluster's rules are the truth (after a start or a reconnection): lift the
        rules this node holds that the cluster does not, apply those it lacks."""
        now = self.clock()
        wanted = {r.id: r for r in rules if r.expires > now and _valid(r)}
        held = {r.id: r for r in self.rules_in_force()}
        gone = [r for rule_id, r in held.items() if rule_id not in wanted]
        new = [r for rule_id, r in wanted.items() if rule_id not in held]
        for rule in gone:
            self._rules_for(rule).cancel(rule.id)
        for rule in new:
            self._rules_for(rule).add(rule)
        if gone or new:
            await self._save_quietly()
        for rule in gone:
            self._uninstall(rule)
        for rule in new:
            await self._install(rule)
        self._changed.set()
        if gone or new:
            log.info("operator rules resynced with the cluster: %d lifted, %d applied, %d in force",
                     len(gone), len(new), len(wanted))

    def _known(self, rule_id: str) -> bool:
        return any(r.id == rule_id for r in self.rules_in_force())

    async def _save_quietly(self) -> None:
        """Keep a cluster rule locally too (for a restart while Redis is away); failing is logged."""
        try:
            await self._save()
        except Exception as exc:  # noqa: BLE001 (the store's error: the rule holds in memory regardless)
            log.error("cluster rules not kept locally: %s", exc)

    async def _install(self, rule: AnyRule) -> Counter[str]:
        """What a rule does to mail already here, the moment it is in force."""
        bounced: Counter[str] = Counter()
        if isinstance(rule, MessageRule) and rule.kind == "suspend":
            for message in self.ready.take_matching(rule.matches):
                self.scheduler.hold(message, rule.id)
        elif isinstance(rule, MessageRule):
            victims = [m for m in self.scheduler.messages() if rule.matches(m)]
            for message in victims:
                self.scheduler.discard(message.id)
            victims.extend(self.ready.take_matching(rule.matches))
            answer = admin_bounce_reply(rule.reason)
            for message in victims:
                bounced[message.queue] += 1
                await self.outcomes.admin_bounce(message, answer, record=not rule.suppress_logging)
        elif isinstance(rule, ReadyQueueRule):
            self._apply_ready_suspension(rule.name)
        else:
            self._apply_overrides(rule.name)
        return bounced

    def _uninstall(self, rule: AnyRule) -> None:
        """What ending a rule does (it is out of its `Rules` already)."""
        if isinstance(rule, MessageRule) and rule.kind == "suspend":
            self.scheduler.release(rule.id)
        elif isinstance(rule, ReadyQueueRule):
            self._apply_ready_suspension(rule.name)
        elif isinstance(rule, PathOverrideRule):
            self._apply_overrides(rule.name)

    # --- what the egress asks ---------------------------------------------------------------

    def admission(self, message: Message) -> Admission:
        """Whether a due message is to be bounced or held instead of routed."""
        now = self.clock()
        bounce = first_match(self._bounces, message, now)
        if bounce is not None:
            self.bounced_by_rule.setdefault(bounce.id, Counter())[message.queue] += 1  # the egress bounces it
            return Admission(bounce=bounce)
        suspension = first_match(self._suspensions, message, now)
        if suspension is not None:
            return Admission(hold=suspension)
        return ADMIT

    def ready_queue_suspended(self, name: str) -> bool:
        now = self.clock()
        name = canonical_ready_queue_name(name)  # rules kept before the rename say "@smtp"
        return any(canonical_ready_queue_name(r.name) == name for r in self._ready_suspensions.active(now))

    def path_overrides(self, name: str) -> Mapping[str, object]:
        """The option overrides in force on ready queue `name`, parsed, oldest first."""
        now = self.clock()
        merged: dict[str, object] = {}
        name = canonical_ready_queue_name(name)
        for rule in sorted(self._overrides.active(now), key=lambda r: r.created):
            if canonical_ready_queue_name(rule.name) == name:
                merged.update(parse_path_options({rule.option: rule.value}, where=""))
        return merged

    # --- suspensions --------------------------------------------------------------------------

    async def suspend(self, *, tenant: str | None = None, campaign: str | None = None, domain: str | None = None,
                      duration_s: float, reason: str = "", routing_domain: str | None = None,
                      queue_names: Sequence[str] = ()) -> MessageRule:
        """Suspend matching mail: it waits, no attempt counted, until cancelled or expired."""
        now = self.clock()
        rule = MessageRule(new_rule_id(), "suspend", tenant, campaign, _domain(domain), reason, now, now + duration_s,
                           routing_domain=_domain(routing_domain), queue_names=tuple(queue_names))
        await self._saved_with(self._suspensions, rule)
        await self._install(rule)
        self._changed.set()
        log.info("suspension %s: tenant=%s campaign=%s domain=%s for %.0fs: %s",
                 rule.id, tenant, campaign, domain, duration_s, reason)
        return rule

    def suspensions(self) -> list[MessageRule]:
        return self._suspensions.active(self.clock())

    async def cancel_suspension(self, rule_id: str) -> bool:
        if await self._saved_without(self._suspensions, rule_id) is None:
            return False
        self.scheduler.release(rule_id)
        self._changed.set()
        log.info("suspension %s cancelled", rule_id)
        return True

    # --- bounces ------------------------------------------------------------------------------

    async def bounce(self, *, tenant: str | None = None, campaign: str | None = None, domain: str | None = None,
                     duration_s: float, reason: str = "", routing_domain: str | None = None,
                     queue_names: Sequence[str] = (), suppress_logging: bool = False) -> AdminBounceResult:
        """Bounce every matching queued message now, and new ones while the rule lasts
        (without AdminBounce records if `suppress_logging`)."""
        now = self.clock()
        rule = MessageRule(new_rule_id(), "bounce", tenant, campaign, _domain(domain), reason, now, now + duration_s,
                           routing_domain=_domain(routing_domain), queue_names=tuple(queue_names),
                           suppress_logging=suppress_logging)
        await self._saved_with(self._bounces, rule)
        self._changed.set()
        bounced = await self._install(rule)
        self.bounced_by_rule.setdefault(rule.id, Counter()).update(bounced)
        total = sum(bounced.values())
        log.info("admin bounce %s: %d messages: %s", rule.id, total, reason)
        return AdminBounceResult(rule, dict(bounced), total)

    def bounces(self) -> list[MessageRule]:
        return self._bounces.active(self.clock())

    async def cancel_bounce(self, rule_id: str) -> bool:
        self._changed.set()
        if await self._saved_without(self._bounces, rule_id) is None:
            return False
        self.bounced_by_rule.pop(rule_id, None)
        return True

    async def bounce_ready_queue(self, name: str, reason: str) -> int:
        """Admin-bounce every message waiting in one ready queue now (automation's ``Bounce``)."""
        queue = self.ready.get(name)
        victims = queue.remove_matching(lambda m: True) if queue is not None else []
        answer = admin_bounce_reply(reason)
        for message in victims:
            await self.outcomes.admin_bounce(message, answer)
        return len(victims)

    # --- ready queues -------------------------------------------------------------------------

    async def suspend_ready_queue(self, *, name: str, duration_s: float, reason: str = "") -> ReadyQueueRule:
        now = self.clock()
        name = canonical_ready_queue_name(name)
        rule = ReadyQueueRule(new_rule_id(), name, reason, now, now + duration_s)
        await self._saved_with(self._ready_suspensions, rule)
        self._apply_ready_suspension(name)
        self._changed.set()
        log.info("ready queue %s suspended for %.0fs: %s", name, duration_s, reason)
        return rule

    def ready_queue_suspensions(self) -> list[ReadyQueueRule]:
        return self._ready_suspensions.active(self.clock())

    async def cancel_ready_queue_suspension(self, rule_id: str) -> bool:
        return await self._cancel_queue_rule(self._ready_suspensions, rule_id, self._apply_ready_suspension)

    async def override(self, *, name: str, option: str, value: Any, duration_s: float,
                       reason: str = "") -> PathOverrideRule:
        """Set ``option = value`` on ready queue `name` for a while (automation's ``SetConfig``)."""
        parse_path_options({option: value}, where="")  # refused here, before it is kept
        now = self.clock()
        name = canonical_ready_queue_name(name)
        rule = PathOverrideRule(new_rule_id(), name, option, value, reason, now, now + duration_s)
        await self._saved_with(self._overrides, rule)
        self._apply_overrides(name)
        self._changed.set()
        return rule

    def overrides(self) -> list[PathOverrideRule]:
        return self._overrides.active(self.clock())

    async def cancel_override(self, rule_id: str) -> bool:
        return await self._cancel_queue_rule(self._overrides, rule_id, self._apply_overrides)

    async def _cancel_queue_rule(self, rules: Rules[Any], rule_id: str, apply: Callable[[str], None]) -> bool:
        """Cancel a rule about one ready queue (durably), and let the queue know."""
        rule = await self._saved_without(rules, rule_id)
        if rule is None:
            return False
        apply(rule.name)
        self._changed.set()
        return True

    def _apply_ready_suspension(self, name: str) -> None:
        queue = self.ready.get(name)
        if queue is not None:
            queue.suspend(self.ready_queue_suspended(name))

    def _apply_overrides(self, name: str) -> None:
        queue = self.ready.get(name)
        if queue is not None:
            queue.set_overrides(self.path_overrides(name))

    # --- the task -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """End rules when their time is up, and expire suspended mail past its max_age; with a
        cluster, follow its rules (started once the first read of them is done or failed)."""
        async with trio.open_nursery() as nursery:
            if self.shared is not None:
                await nursery.start(self.shared.follow, self)
            nursery.start_soon(self._expire_rules)
            nursery.start_soon(self._sweep_suspended)
            task_status.started()

    async def _expire_rules(self) -> None:
        """Ends rules when their time is up: suspended mail flows again."""
        while True:
            now = self.clock()
            for rule in self._suspensions.expire(now):
                self.scheduler.release(rule.id)
                log.info("suspension %s ended (expired)", rule.id)
            for bounce in self._bounces.expire(now):
                self.bounced_by_rule.pop(bounce.id, None)
            for ready_rule in self._ready_suspensions.expire(now):
                self._apply_ready_suspension(ready_rule.name)
            for override in self._overrides.expire(now):
                self._apply_overrides(override.name)
            self._changed = trio.Event()
            expiries = [e for e in (self._suspensions.next_expiry(), self._bounces.next_expiry(),
                                    self._ready_suspensions.next_expiry(), self._overrides.next_expiry())
                        if e is not None]
            with trio.move_on_after(max(0.0, min(expiries) - self.clock()) if expiries else math.inf):
                await self._changed.wait()

    async def _sweep_suspended(self) -> None:
        """max_age holds for suspended mail too."""
        while True:
            await trio.sleep(SWEEP_SUSPENDED_S)
            now = self.clock()
            for _, message in self.scheduler.held():
                if self.outcomes.expires_at(message) <= now:
                    self.scheduler.discard(message.id)
                    await self.outcomes.expired(message)


def _valid(rule: AnyRule) -> bool:
    """An override whose option or value this version does not take is left out (logged)."""
    if not isinstance(rule, PathOverrideRule):
        return True
    try:
        parse_path_options({rule.option: rule.value}, where="")
    except ValueError as exc:
        log.error("override %s of %s not applied: %s", rule.id, rule.name, exc)
        return False
    return True


def _describe(rule: AnyRule) -> str:
    if isinstance(rule, MessageRule):
        return f"{rule.kind} tenant={rule.tenant} campaign={rule.campaign} domain={rule.domain}: {rule.reason}"
    if isinstance(rule, ReadyQueueRule):
        return f"suspend ready queue {rule.name}: {rule.reason}"
    return f"{rule.option} = {rule.value!r} on {rule.name}: {rule.reason}"


def _domain(domain: str | None) -> str | None:
    return domain.lower().rstrip(".") if domain else None
