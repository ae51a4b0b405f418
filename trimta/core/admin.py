"""Operator actions on queued mail: suspensions, admin bounces, ready-queue suspensions,
and option overrides of one ready queue (automation's ``SetConfig``).

Each is a rule with an id, a reason and an expiry; a rule matching by tenant, campaign
and domain matches a message when every field it names equals the message's (a rule
naming none matches every message). Rules expire by themselves; time enters as `now`.
Rules are kept across restarts as plain dicts (`rule_to_dict`, `rule_from_dict`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
    # KumoMTA's other selectors: the routing domain, and exact scheduled queue names
    # (which, given, take precedence over tenant, campaign and domain).
    routing_domain: str | None = None
    queue_names: tuple[str, ...] = ()
    # A bounce that writes no AdminBounce records (KumoMTA's suppress_logging).
    suppress_logging: bool = False

    def matches(self, message: Message) -> bool:
        if self.queue_names:
            return message.queue in self.queue_names
        return (
            (self.tenant is None or self.tenant == message.tenant)
            and (self.campaign is None or self.campaign == message.campaign)
            and (self.domain is None or self.domain == message.domain)
            and (self.routing_domain is None or self.routing_domain == message.routing_domain)
        )

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.expires - now)


@dataclass(frozen=True, slots=True)
class ReadyQueueRule:
    """A suspension of one ready queue (``source->site@smtp_client``) by name."""

    id: str
    name: str
    reason: str
    created: float
    expires: float

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.expires - now)


@dataclass(frozen=True, slots=True)
class PathOverrideRule:
    """Options of one ready queue overridden for a while: ``option = value`` as a shaping file says it."""

    id: str
    name: str
    option: str
    value: Any
    reason: str
    created: float
    expires: float

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.expires - now)


AnyRule = MessageRule | ReadyQueueRule | PathOverrideRule
R = TypeVar("R", MessageRule, ReadyQueueRule, PathOverrideRule)


@dataclass(frozen=True, slots=True)
class Admission:
    """What operator rules say of a due message: bounce it, hold it, or (neither) route it."""

    bounce: MessageRule | None = None
    hold: MessageRule | None = None

    @property
    def admitted(self) -> bool:
        return self.bounce is None and self.hold is None


ADMIT = Admission()


def new_rule_id() -> str:
    return str(uuid.uuid4())


def admin_bounce_reply(reason: str) -> Reply:
    """The response an `AdminBounce` record carries."""
    text = f"Administrative bounce: {reason}" if reason else "Administrative bounce"
    return reply(551, "5.7.1", text)


class Rules(Generic[R]):
    """The active rules of one kind, expiring by themselves."""

    def __init__(self) -> None:
        self._rules: dict[str, R] = {}

    def add(self, rule: R) -> None:
        self._rules[rule.id] = rule

    def cancel(self, rule_id: str) -> R | None:
        return self._rules.pop(rule_id, None)

    def active(self, now: float) -> list[R]:
        return [r for r in self._rules.values() if r.expires > now]

    def expire(self, now: float) -> list[R]:
        """Remove and return the rules whose time is up."""
        gone = [r for r in self._rules.values() if r.expires <= now]
        for r in gone:
            del self._rules[r.id]
        return gone

    def next_expiry(self) -> float | None:
        return min((r.expires for r in self._rules.values()), default=None)

    def __iter__(self) -> Iterator[R]:
        return iter(list(self._rules.values()))

    def __len__(self) -> int:
        return len(self._rules)


def first_match(rules: Rules[MessageRule], message: Message, now: float) -> MessageRule | None:
    """The first active rule matching `message`, if any."""
    for rule in rules:
        if rule.expires > now and rule.matches(message):
            return rule
    return None


# --- kept across restarts -------------------------------------------------------------------

_KINDS = {"suspend", "bounce", "suspend-ready-q", "set-config"}


def rule_to_dict(rule: AnyRule) -> dict[str, Any]:
    """A rule as JSON-ready data (times as the clock gave them: epoch seconds in the daemon)."""
    common = {"id": rule.id, "reason": rule.reason, "created": rule.created, "expires": rule.expires}
    if isinstance(rule, MessageRule):
        extra: dict[str, Any] = {}
        if rule.routing_domain is not None:
            extra["routing_domain"] = rule.routing_domain
        if rule.queue_names:
            extra["queue_names"] = list(rule.queue_names)
        if rule.suppress_logging:
            extra["suppress_logging"] = True
        return {"kind": rule.kind, "tenant": rule.tenant, "campaign": rule.campaign, "domain": rule.domain,
                **extra, **common}
    if isinstance(rule, ReadyQueueRule):
        return {"kind": "suspend-ready-q", "name": rule.name, **common}
    return {"kind": "set-config", "name": rule.name, "option": rule.option, "value": rule.value, **common}


def rule_from_dict(data: Mapping[str, Any]) -> AnyRule:
    """The rule `rule_to_dict` wrote; ValueError (saying what) for anything else."""
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown rule kind {kind!r}")
    try:
        rule_id, reason = str(data["id"]), str(data.get("reason") or "")
        created, expires = float(data["created"]), float(data["expires"])
        if not (math.isfinite(created) and math.isfinite(expires)):
            raise ValueError("created and expires must be finite")
        if kind in ("suspend", "bounce"):
            names = data.get("queue_names") or []
            if not isinstance(names, list):
                raise ValueError("queue_names must be a list")
            return MessageRule(rule_id, kind, _opt(data, "tenant"), _opt(data, "campaign"), _opt(data, "domain"),
                               reason, created, expires, routing_domain=_opt(data, "routing_domain"),
                               queue_names=tuple(str(n) for n in names),
                               suppress_logging=bool(data.get("suppress_logging", False)))
        if kind == "suspend-ready-q":
            return ReadyQueueRule(rule_id, str(data["name"]), reason, created, expires)
        return PathOverrideRule(rule_id, str(data["name"]), str(data["option"]), data["value"], reason,
                                created, expires)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{kind} rule is missing or mistypes {exc}") from None


def _opt(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)
