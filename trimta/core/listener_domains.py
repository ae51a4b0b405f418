"""Listener domains, KumoMTA's ``listener_domains.toml``: who may relay mail for which domain.

A peer outside the listener's ``relay_hosts`` that has not authenticated may
still relay a recipient when

- the recipient's domain says ``relay_to = true`` (inbound mail for a domain we
  serve, from anyone), or
- the sender's domain lists the peer's address in ``relay_from``.

A recipient domain whose ``log_oob`` or ``log_arf`` logs reports (`ReportHandling`)
takes any recipient at RCPT, as KumoMTA does: whether the message may stay is
decided once it is in (`trimta.services.reports`): a report is logged, then relayed
or dropped; anything else is refused then unless relaying is allowed.

Lookup is KumoMTA's: the listener's own table (``[listener."127.0.0.1:25"."DOMAIN"]``),
then the tables for every listener, then ``["*"]``. Within one table a domain is
found exactly, else by the nearest wildcard above it (``"*.example.com"`` covers
``a.b.example.com`` but not ``example.com``).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY = "*"


class ReportHandling(enum.Enum):
    """KumoMTA's ``log_oob`` / ``log_arf`` values: what to do with a report sent to the domain."""

    IGNORE = "Ignore"  # not looked at: an ordinary message (``false`` says the same)
    LOG_THEN_RELAY = "LogThenRelay"  # logged, then queued as any message (``true`` says the same)
    LOG_THEN_DROP = "LogThenDrop"  # logged, then dropped: accepted, no other record

    @property
    def logs(self) -> bool:
        return self is not ReportHandling.IGNORE

    @classmethod
    def parse(cls, value: object) -> ReportHandling | None:
        """A value as KumoMTA takes it (``true``/``false`` too); None if it is none of them."""
        if value is True:
            return cls.LOG_THEN_RELAY
        if value is False:
            return cls.IGNORE
        return next((h for h in cls if h.value == value), None)


@dataclass(frozen=True, slots=True)
class ListenerDomain:
    """What one domain's entry allows."""

    relay_to: bool = False
    relay_from: tuple[Network, ...] = ()
    relay_from_authz: tuple[str, ...] = ()
    log_oob: ReportHandling = ReportHandling.IGNORE  # RFC 3464 delivery status notifications
    log_arf: ReportHandling = ReportHandling.IGNORE  # RFC 5965 feedback reports

    @property
    def logs_reports(self) -> bool:
        return self.log_oob.logs or self.log_arf.logs


@dataclass(frozen=True, slots=True)
class ListenerDomains:
    """Every entry, by listener name (``"127.0.0.1:25"``, or ``"*"`` for all) and domain."""

    by_listener: Mapping[str, Mapping[str, ListenerDomain]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_listener)

    def lookup(self, domain: str, listener: str) -> ListenerDomain | None:
        """The entry that holds for `domain` on `listener`, or None."""
        domain = domain.strip().lower().removesuffix(".")
        for name, wanted in ((listener, domain), (ANY, domain), (ANY, ANY)):
            table = self.by_listener.get(name)
            if table is None:
                continue
            found = table.get(wanted) if wanted == ANY else _find(table, wanted)
            if found is not None:
                return found
        return None

    @property
    def logs_reports(self) -> bool:
        """Whether any entry logs OOB or ARF reports."""
        return any(e.logs_reports for table in self.by_listener.values() for e in table.values())

    def report_handling(self, domain: str, listener: str) -> tuple[ReportHandling, ReportHandling]:
        """``(log_oob, log_arf)`` for mail to `domain` on `listener`."""
        entry = self.lookup(domain, listener)
        if entry is None:
            return ReportHandling.IGNORE, ReportHandling.IGNORE
        return entry.log_oob, entry.log_arf

    def relay_allowed(self, *, listener: str, peer: str, sender_domain: str | None, recipient_domain: str,
                      authz_id: str | None = None) -> bool:
        """Whether this recipient may be relayed for a peer that ``relay_hosts`` does not cover."""
        if not self.by_listener:
            return False
        to = self.lookup(recipient_domain, listener)
        if to is not None and to.relay_to:
            return True
        if sender_domain is None:
            return False
        source = self.lookup(sender_domain, listener)
        if source is None:
            return False
        if authz_id is not None and authz_id in source.relay_from_authz:
            return True
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(ip in net for net in source.relay_from)


def _find(table: Mapping[str, ListenerDomain], domain: str) -> ListenerDomain | None:
    if domain in table:
        return table[domain]
    labels = domain.split(".")
    for i in range(1, len(labels)):
        found = table.get("*." + ".".join(labels[i:]))
        if found is not None:
            return found
    return None
