"""Automation rules of shaping files: a path's responses suspend, bounce or re-shape it.

KumoMTA's form, inside any shaping table::

    [[provider."yahoo".automation]]
    regex = '\\[TSS?04\\]'                  # or a list of regexes
    action = "Suspend"                      # or { SetConfig = { name, value } }, or a list
    trigger = { Threshold = "3/h" }         # default "Immediate"
    duration = "2h"                         # required: every action expires

`parse_rule` checks one such table into an `AutomationRule`; the engine
(`trimta.services.automation`) matches responses against it and carries out
the actions. ``SetConfig`` values are parsed by `trimta.core.egress_options`,
so an automation can set exactly what a shaping table can.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trimta.core.egress_options import OptionError, parse_path_options
from trimta.core.units import Rate, parse_duration, parse_rate

Path = tuple[str | int, ...]
Overrides = Mapping[str, object]
RULE_KEYS = ("regex", "action", "trigger", "duration", "match_internal")


class InvalidValue(Exception):
    """Raised while reading one value: the path below the table and what is wrong."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def suggest(name: str, known: Iterable[str]) -> str:
    known = list(known)
    hint = difflib.get_close_matches(name, known, n=1)
    if hint:
        return f"did you mean {hint[0]!r}?"
    return f"expected one of: {', '.join(known)}"


class ActionKind(enum.Enum):
    """What an automation rule does when it fires (KumoMTA's action names)."""

    SUSPEND = "Suspend"  # the ready queue (source, site)
    SUSPEND_TENANT = "SuspendTenant"  # the tenant's scheduled queues for the site
    SUSPEND_CAMPAIGN = "SuspendCampaign"  # the campaign's scheduled queues for the site
    BOUNCE = "Bounce"  # the messages of the ready queue
    BOUNCE_TENANT = "BounceTenant"
    BOUNCE_CAMPAIGN = "BounceCampaign"
    SET_CONFIG = "SetConfig"  # an egress path option of the ready queue, for the duration
    SET_DOMAIN_CONFIG = "SetDomainConfig"  # KumoMTA: the same, keyed by domain


_PLAIN_ACTIONS = {k.value: k for k in ActionKind if k not in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG)}
_CONFIG_ACTIONS = {ActionKind.SET_CONFIG.value: ActionKind.SET_CONFIG,
                   ActionKind.SET_DOMAIN_CONFIG.value: ActionKind.SET_DOMAIN_CONFIG}
ACTION_FORMS = ('"Suspend", "SuspendTenant", "SuspendCampaign", "Bounce", "BounceTenant", '
                '"BounceCampaign", { SetConfig = { name = "OPTION", value = VALUE } } or a list of them')


@dataclass(frozen=True, slots=True)
class Action:
    """One action of a rule. For ``SetConfig``, `option` and `value` as written and
    `overrides` parsed (`EgressPathConfig` field overrides, for `apply_options`)."""

    kind: ActionKind
    option: str | None = None
    value: object = None
    overrides: Overrides = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        if self.option is None:
            return self.kind.value
        return f"{self.kind.value}({self.option}={self.value!r})"


@dataclass(frozen=True, slots=True)
class AutomationRule:
    """A rule watching a path's responses: when `regex` matches, the actions hold for `duration_s`.

    `threshold` is None for ``trigger = "Immediate"`` (fire on the first match),
    else the rate of matches that fires it (``{ Threshold = "10/h" }``: the tenth
    match within an hour). `origin` names the table the rule was written in
    (``'provider "yahoo"'``, ``'"gmail.com"'``) and `where` its file and line,
    for log records.
    """

    patterns: tuple[str, ...]
    actions: tuple[Action, ...]
    duration_s: float
    threshold: Rate | None = None
    match_internal: bool = False
    origin: str = ""
    where: str = ""
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    @property
    def immediate(self) -> bool:
        return self.threshold is None

    def matches(self, response: str, *, internal: bool = False) -> bool:
        """Whether `response` (``"421 4.7.0 text"``, one line) fires this rule.

        Responses trimta made up itself (`internal`: a connection that failed,
        a timeout) only match rules that say ``match_internal = true``.
        """
        if internal and not self.match_internal:
            return False
        return any(p.search(response) for p in self._compiled)


def parse_rule(table: Any, *, origin: str = "", where: str = "") -> AutomationRule:
    """An `AutomationRule` from one ``[[... .automation]]`` table; `InvalidValue` on mistakes."""
    if not isinstance(table, Mapping):
        raise InvalidValue((), "expected a table with regex, action and duration")
    for key in table:
        if key not in RULE_KEYS:
            raise InvalidValue((key,), f"unknown automation key; {suggest(str(key), RULE_KEYS)}")
    for key in ("regex", "action", "duration"):
        if key not in table:
            raise InvalidValue((), f"an automation rule needs {key!r}")

    regex = table["regex"]
    texts = [regex] if isinstance(regex, str) else regex
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidValue(("regex",), f"expected a regular expression or a list of them, got {regex!r}")
    compiled = []
    for i, text in enumerate(texts):
        try:
            compiled.append(re.compile(text))
        except re.error as exc:
            raise InvalidValue(("regex",) if isinstance(regex, str) else ("regex", i),
                           f"not a valid regular expression {text!r}: {exc}") from None

    actions = _parse_actions(table["action"])

    trigger = table.get("trigger", "Immediate")
    threshold: Rate | None = None
    if isinstance(trigger, str) and trigger == "Immediate":
        threshold = None
    elif isinstance(trigger, Mapping) and list(trigger) == ["Threshold"]:
        try:
            threshold = parse_rate(trigger["Threshold"])
        except ValueError as exc:
            raise InvalidValue(("trigger", "Threshold"), str(exc)) from None
    else:
        raise InvalidValue(("trigger",), f'expected "Immediate" or {{ Threshold = "10/h" }}, got {trigger!r}')

    try:
        duration_s = parse_duration(table["duration"])
    except ValueError as exc:
        raise InvalidValue(("duration",), str(exc)) from None
    if duration_s <= 0:
        raise InvalidValue(("duration",), f"must be longer than zero, got {table['duration']!r}")

    match_internal = table.get("match_internal", False)
    if not isinstance(match_internal, bool):
        raise InvalidValue(("match_internal",), f"expected true or false, got {match_internal!r}")

    return AutomationRule(
        patterns=tuple(texts), actions=actions, duration_s=duration_s, threshold=threshold,
        match_internal=match_internal, origin=origin, where=where, _compiled=tuple(compiled),
    )


def _parse_actions(value: Any) -> tuple[Action, ...]:
    if isinstance(value, list):
        if not value:
            raise InvalidValue(("action",), f"expected {ACTION_FORMS}, got an empty list")
        actions = []
        for i, item in enumerate(value):
            try:
                actions.append(_parse_action(item))
            except InvalidValue as exc:
                raise InvalidValue(("action", i, *exc.path), exc.message) from None
        return tuple(actions)
    try:
        return (_parse_action(value),)
    except InvalidValue as exc:
        raise InvalidValue(("action", *exc.path), exc.message) from None


def _parse_action(value: Any) -> Action:
    if isinstance(value, str):
        if value in _PLAIN_ACTIONS:
            return Action(_PLAIN_ACTIONS[value])
        if value in _CONFIG_ACTIONS:
            raise InvalidValue((), f'{value} needs an option: {{ {value} = {{ name = "OPTION", value = VALUE }} }}')
        raise InvalidValue((), f"unknown action {value!r}; {suggest(value, [*_PLAIN_ACTIONS, *_CONFIG_ACTIONS])}")
    if isinstance(value, Mapping) and len(value) == 1:
        (name, body), = value.items()
        if name not in _CONFIG_ACTIONS:
            raise InvalidValue((name,), f"unknown action {name!r}; {suggest(str(name), [*_PLAIN_ACTIONS, *_CONFIG_ACTIONS])}")
        if not isinstance(body, Mapping) or set(body) != {"name", "value"}:
            raise InvalidValue((name,), f'expected {{ {name} = {{ name = "OPTION", value = VALUE }} }}, got {body!r}')
        option = body["name"]
        if not isinstance(option, str):
            raise InvalidValue((name, "name"), f"expected an egress path option name, got {option!r}")
        try:
            overrides = parse_path_options({option: body["value"]}, where="")
        except OptionError as exc:
            key = "name" if exc.message.startswith("unknown egress path option") else "value"
            raise InvalidValue((name, key), f"{option}: {exc.message}") from None
        return Action(_CONFIG_ACTIONS[name], option, body["value"], overrides)
    raise InvalidValue((), f"expected {ACTION_FORMS}, got {value!r}")


