"""Automation rules, in process: a path's responses can suspend, bounce or re-shape it.

A rule (``[["yahoo.com".automation]]`` in a shaping file, see `trimta.core.shaping`)
watches the responses of each ready queue it applies to. When its regex matches
``"code x.y.z text"`` (immediately, or once a `Threshold` rate of matches is reached
within its period), its actions hold for the rule's `duration`:

| action | what it does |
|---|---|
| ``Suspend`` | suspends the ready queue (source, site) |
| ``SuspendTenant`` / ``SuspendCampaign`` | suspends the message's tenant (campaign) for its domain |
| ``Bounce`` | bounces the messages waiting in the ready queue |
| ``BounceTenant`` / ``BounceCampaign`` | admin-bounces the tenant's (campaign's) mail for the domain |
| ``SetConfig`` / ``SetDomainConfig`` | changes an option of the ready queue (e.g. ``max_message_rate``) |

Every action expires by itself; each start and end is logged (an `Automation` record,
and a line on stderr). While a rule's actions hold on a queue it does not fire again
there.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from trimta.core import records
from trimta.core.egress_options import apply_options
from trimta.core.message import Message
from trimta.core.shaping import ActionKind, AutomationRule

log = logging.getLogger("trimta.automation")


@dataclass
class _Firing:
    rule: AutomationRule
    queue_name: str
    until: float
    undo: list[Callable[[], None]]
    record: dict | None = None  # the "Fired" log record, once the actions have started


class Automation:
    """Watches outcomes and fires rules; `run` ends actions when their time is up."""

    def __init__(self, engine, rules_for: Callable[[object], Sequence[AutomationRule]],
                 clock: Callable[[], float], logs=None) -> None:
        self.engine = engine
        self.logs = logs  # where "Automation" records go (a LogSink); None: Python logging only
        self.rules_for = rules_for
        self.clock = clock
        self._matches: dict[tuple[str, int], deque[float]] = {}
        self._active: dict[tuple[str, int], _Firing] = {}
        self._changed = trio.Event()
        self._pending: list[tuple[AutomationRule, object, Message, object]] = []
        self.fired = 0

    def observe(self, message: Message, outcome, queue) -> None:
        """One response on `queue` (sync; called for every attempt outcome)."""
        if queue is None or outcome is None:
            return
        rules = self.rules_for(queue)
        if not rules:
            return
        text = str(outcome.reply).replace("\n", " ")
        internal = bool(getattr(outcome, "connection_failure", False))
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
            self._active[key] = _Firing(rule, queue.name, now + rule.duration_s, [])
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
                        undo()
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

    async def _fire(self, rule: AutomationRule, queue, message: Message, reply) -> None:
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
        engine = self.engine
        for action in rule.actions:
            kind = action.kind
            if kind is ActionKind.SUSPEND:
                r = engine.suspend_ready_queue(name=queue.name, duration_s=rule.duration_s, reason=reason)
                firing.undo.append(lambda r=r: engine.cancel_ready_queue_suspension(r.id))
            elif kind is ActionKind.SUSPEND_TENANT:
                r = engine.suspend(tenant=message.tenant, domain=message.domain, duration_s=rule.duration_s, reason=reason)
                firing.undo.append(lambda r=r: engine.cancel_suspension(r.id))
            elif kind is ActionKind.SUSPEND_CAMPAIGN:
                r = engine.suspend(tenant=message.tenant, campaign=message.campaign, domain=message.domain,
                                   duration_s=rule.duration_s, reason=reason)
                firing.undo.append(lambda r=r: engine.cancel_suspension(r.id))
            elif kind is ActionKind.BOUNCE:
                await engine.bounce_ready_queue(queue, reason)
            elif kind in (ActionKind.BOUNCE_TENANT, ActionKind.BOUNCE_CAMPAIGN):
                campaign = message.campaign if kind is ActionKind.BOUNCE_CAMPAIGN else None
                result = await engine.admin_bounce(tenant=message.tenant, campaign=campaign, domain=message.domain,
                                                   duration_s=rule.duration_s, reason=reason)
                firing.undo.append(lambda r=result.rule: engine.cancel_bounce(r.id))
            elif kind in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG):
                before = queue.path
                queue.set_path(apply_options(before, action.overrides))
                firing.undo.append(lambda q=queue: engine.restore_path(q))


def _describe(rule: AutomationRule) -> str:
    return ", ".join(str(a) for a in rule.actions)
