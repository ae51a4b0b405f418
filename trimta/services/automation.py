"""Automation rules, in process: a path's responses can suspend, bounce or re-shape it.

A rule (``[["yahoo.com".automation]]`` in a shaping file, see `trimta.core.shaping`)
watches the responses of each ready queue it applies to. When its regex matches
``"code x.y.z text"`` (immediately, or once a `Threshold` rate of matches is reached
within its period), its actions hold for the rule's `duration`:

| action | what it does |
|---|---|
| ``Suspend`` | suspends the ready queue (source, site) |
| ``SuspendTenant`` / ``SuspendCampaign`` | suspends the message's tenant (campaign) for its domain |
| ``Bounce`` | admin-bounces all mail for the domain, every tenant's (KumoMTA's meaning) |
| ``BounceTenant`` / ``BounceCampaign`` | admin-bounces the tenant's (campaign's) mail for the domain |
| ``SetConfig`` / ``SetDomainConfig`` | changes an option of the ready queue (e.g. ``max_message_rate``) |

Every action expires by itself; each start and end is logged (an `Automation` record,
and a line on stderr). While a rule's actions hold on a queue it does not fire again
there. The actions are operator rules (`trimta.services.operator_rules`), made and
cancelled through the `Actions` protocol, so they are durable like an operator's:
after a restart a suspension fired before it still holds for its remaining time.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio

from trimta.core import records
from trimta.core.admin import MessageRule, PathOverrideRule, ReadyQueueRule
from trimta.core.message import Message
from trimta.core.outcome import Outcome
from trimta.core.shaping_automation import ActionKind, AutomationRule
from trimta.protocol.replies import Reply
from trimta.services.logs import RecordSink
from trimta.services.ready_queue import ReadyQueue

log = logging.getLogger("trimta.automation")


class Actions(Protocol):
    """The operator rules automation makes and ends (`OperatorRules`)."""

    async def suspend(self, *, tenant: str | None = None, campaign: str | None = None, domain: str | None = None,
                      duration_s: float, reason: str = "") -> MessageRule: ...
    async def cancel_suspension(self, rule_id: str) -> bool: ...
    async def bounce(self, *, tenant: str | None = None, campaign: str | None = None, domain: str | None = None,
                     duration_s: float, reason: str = "") -> Any: ...
    async def cancel_bounce(self, rule_id: str) -> bool: ...
    async def bounce_ready_queue(self, name: str, reason: str) -> int: ...
    async def suspend_ready_queue(self, *, name: str, duration_s: float, reason: str = "") -> ReadyQueueRule: ...
    async def cancel_ready_queue_suspension(self, rule_id: str) -> bool: ...
    async def override(self, *, name: str, option: str, value: Any, duration_s: float,
                       reason: str = "") -> PathOverrideRule: ...
    async def cancel_override(self, rule_id: str) -> bool: ...


@dataclass
class _Firing:
    rule: AutomationRule
    queue_name: str
    until: float
    undo: list[Callable[[], Awaitable[bool]]] = field(default_factory=list)
    record: dict[str, Any] | None = None  # the "Fired" log record, once the actions have started


class Automation:
    """Watches outcomes and fires rules; `run` ends actions when their time is up."""

    def __init__(self, *, rules: Actions, clock: Callable[[], float], logs: RecordSink | None = None) -> None:
        self.rules = rules
        self.logs = logs  # where "Automation" records go (a LogSink); None: Python logging only
        self.clock = clock
        self._matches: dict[tuple[str, int], deque[float]] = {}
        self._active: dict[tuple[str, int], _Firing] = {}
        self._changed = trio.Event()
        self._pending: list[tuple[AutomationRule, ReadyQueue, Message, Reply]] = []
        self.fired = 0

    def observe(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> None:
        """One response on `queue` (sync; called for every attempt outcome)."""
        rules = queue.automation_rules
        if not rules:
            return
        text = str(outcome.reply).replace("\n", " ")
        internal = outcome.connection_failure
        now = self.clock()
        for rule in rules:
            if not rule.matches(text, internal=internal):
                continue
            key = (queue.name, id(rule))
            if key in self._active:
                continue
            if rule.threshold is not None:
                window = self._matches.setdefault(key, deque())
                window.append(now)
                while window and window[0] <= now - rule.threshold.period_s:
                    window.popleft()
                if len(window) < rule.threshold.limit:
                    continue
                window.clear()
            self._pending.append((rule, queue, message, outcome.reply))
            self._active[key] = _Firing(rule, queue.name, now + rule.duration_s)
            self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while self._pending:
                rule, queue, message, reply = self._pending.pop(0)
                await self._fire(rule, queue, message, reply)
            now = self.clock()
            for key, firing in list(self._active.items()):
                if firing.until <= now:
                    del self._active[key]
                    for undo in firing.undo:
                        await undo()
                    log.info("automation ended on %s: %s (%s)", firing.queue_name, _describe(firing.rule),
                             firing.rule.origin)
                    if firing.record is not None and self.logs is not None:
                        self.logs.emit({**firing.record, "event": "Ended", "timestamp": int(now)})
            self._changed = trio.Event()
            if self._pending:
                continue
            next_end = min((f.until for f in self._active.values()), default=math.inf)
            with trio.move_on_after(max(0.0, next_end - self.clock())):
                await self._changed.wait()

    async def _fire(self, rule: AutomationRule, queue: ReadyQueue, message: Message, reply: Reply) -> None:
        firing = self._active.get((queue.name, id(rule)))
        if firing is None:
            return
        self.fired += 1
        text = str(reply).replace("\n", " ")
        reason = f"automation ({rule.origin or 'shaping'}): {text}"
        log.warning("automation fired on %s for %.0fs: %s, because %r matched %s",
                    queue.name, rule.duration_s, _describe(rule), text, rule.origin)
        firing.record = records.automation_record(
            event="Fired", ready_queue=queue.name, site=queue.site, egress_source=queue.source.name,
            rule=rule.origin or "", actions=[str(a) for a in rule.actions], duration_s=rule.duration_s,
            until=firing.until, reply=reply, message=message, now=self.clock(),
        )
        if self.logs is not None:
            self.logs.emit(firing.record)
        rules = self.rules
        duration_s = rule.duration_s
        for action in rule.actions:
            kind = action.kind
            if kind is ActionKind.SUSPEND:
                ready_rule = await rules.suspend_ready_queue(name=queue.name, duration_s=duration_s, reason=reason)
                firing.undo.append(partial(rules.cancel_ready_queue_suspension, ready_rule.id))
            elif kind in (ActionKind.SUSPEND_TENANT, ActionKind.SUSPEND_CAMPAIGN, ActionKind.BOUNCE_TENANT,
                          ActionKind.BOUNCE_CAMPAIGN) and message.tenant is None:
                # KumoMTA: "If no tenant was assigned, this action has no effect."
                log.info("automation %s on %s: the message has no tenant; nothing done", kind.value, queue.name)
            elif kind in (ActionKind.SUSPEND_TENANT, ActionKind.SUSPEND_CAMPAIGN):
                campaign = message.campaign if kind is ActionKind.SUSPEND_CAMPAIGN else None
                suspension = await rules.suspend(tenant=message.tenant, campaign=campaign, domain=message.domain,
                                                 duration_s=duration_s, reason=reason)
                firing.undo.append(partial(rules.cancel_suspension, suspension.id))
            elif kind in (ActionKind.BOUNCE, ActionKind.BOUNCE_TENANT, ActionKind.BOUNCE_CAMPAIGN):
                # KumoMTA's: Bounce covers every scheduled queue of the triggering message's
                # domain, BounceTenant its tenant's, BounceCampaign its campaign's (its
                # tenant's without one), while the rule lasts.
                tenant = message.tenant if kind is not ActionKind.BOUNCE else None
                campaign = message.campaign if kind is ActionKind.BOUNCE_CAMPAIGN else None
                result = await rules.bounce(tenant=tenant, campaign=campaign, domain=message.domain,
                                            duration_s=duration_s, reason=reason)
                firing.undo.append(partial(rules.cancel_bounce, result.rule.id))
            elif kind in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG):
                assert action.option is not None
                override = await rules.override(name=queue.name, option=action.option, value=action.value,
                                                duration_s=duration_s, reason=reason)
                firing.undo.append(partial(rules.cancel_override, override.id))


def _describe(rule: AutomationRule) -> str:
    return ", ".join(str(a) for a in rule.actions)
