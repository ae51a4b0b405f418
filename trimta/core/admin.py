"""Operator actions on queued mail: suspensions, admin bounces, ready-queue suspensions.

Each is a rule with an id, a reason and an expiry; a rule matching by tenant, campaign
and domain matches a message when every field it names equals the message's (a rule
naming none matches every message). Rules expire by themselves; time enters as `now`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from trimta.core.message import Message
from trimta.protocol.replies import Reply, reply


@dataclass(frozen=True, slots=True)
class MessageRule:
    """A suspension or an admin bounce: which messages, why, until when."""

    id: str
    kind: str  # "suspend" or "bounce"
    tenant: str | None
    campaign: str | None
    domain: str | None
    reason: str
    created: float
    expires: float

    def matches(self, message: Message) -> bool:
        return (
            (self.tenant is None or self.tenant == message.tenant)
            and (self.campaign is None or self.campaign == message.campaign)
            and (self.domain is None or self.domain == message.domain)
        )

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.expires - now)


@dataclass(frozen=True, slots=True)
class ReadyQueueRule:
    """A suspension of one ready queue (``source->site@smtp``) by name."""

    id: str
    name: str
    reason: str
    created: float
    expires: float

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.expires - now)


def new_rule_id() -> str:
    return str(uuid.uuid4())


def admin_bounce_reply(reason: str) -> Reply:
    """The response an `AdminBounce` record carries."""
    text = f"Administrative bounce: {reason}" if reason else "Administrative bounce"
    return reply(551, "5.7.1", text)


class Rules:
    """The active rules of one kind, expiring by themselves."""

    def __init__(self) -> None:
        self._rules: dict[str, MessageRule | ReadyQueueRule] = {}

    def add(self, rule: MessageRule | ReadyQueueRule) -> None:
        self._rules[rule.id] = rule

    def cancel(self, rule_id: str) -> MessageRule | ReadyQueueRule | None:
        return self._rules.pop(rule_id, None)

    def active(self, now: float) -> list[MessageRule | ReadyQueueRule]:
        return [r for r in self._rules.values() if r.expires > now]

    def expire(self, now: float) -> list[MessageRule | ReadyQueueRule]:
        """Remove and return the rules whose time is up."""
        gone = [r for r in self._rules.values() if r.expires <= now]
        for r in gone:
            del self._rules[r.id]
        return gone

    def next_expiry(self) -> float | None:
        return min((r.expires for r in self._rules.values()), default=None)

    def first_match(self, message: Message, now: float) -> MessageRule | None:
        for rule in self._rules.values():
            if isinstance(rule, MessageRule) and rule.expires > now and rule.matches(message):
                return rule
        return None

    def __len__(self) -> int:
        return len(self._rules)
