"""Egress source health: a source whose address is not on this host, or whose proxy does
not answer, is taken out of its pools.

KumoMTA's ``suspend_when_unplumbed``: when binding a source's address fails with
``EADDRNOTAVAIL`` (the address was removed from the interface, or never plumbed),
the source is suspended for the rule's ``duration`` once the rule's ``trigger``
holds (``"Immediate"``: the first such failure; ``{ Threshold = "3/1m" }``: the third
within a minute). While suspended, pool selection skips the source, so its mail goes
out through the pool's other sources instead of waiting; with every source of a pool
suspended, the pool's mail waits until the earliest suspension ends. Suspensions are
this process's own (no cluster coordination, as in KumoMTA) and are forgotten at a
restart, when the addresses are looked at afresh.

KumoMTA's ``suspend_when_proxy_unhealthy`` works the same way for a source sending
through an HAProxy server (``ha_proxy_server``): the failures it counts are connections
to the proxy that fail (refused, timed out, closed before the PROXY header went).

Every failure is counted whether a rule is set or not
(``egress_source_connection_failures_total{source, kind="Unplumbed"|"ProxyUnhealthy"}``),
so an operator sees the signal before opting in. A suspension is logged at WARNING, its
end at INFO.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from trimta.core.pools import EgressSource, HealthRule

log = logging.getLogger(__name__)

UNPLUMBED = "Unplumbed"
PROXY_UNHEALTHY = "ProxyUnhealthy"


@dataclass(frozen=True, slots=True)
class SourceHealthStatistics:
    failures: dict[tuple[str, str], int]  # (source, kind) -> failures since start
    suspensions: dict[tuple[str, str], int]  # (source, reason) -> times suspended since start
    suspended: dict[str, float]  # source -> when its suspension ends (clock seconds)
    reasons: dict[str, str] = field(default_factory=dict)  # source -> the kind of failure it is suspended for


class SourceHealth:
    """Which egress sources are suspended for their health, and until when."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._failures: Counter[tuple[str, str]] = Counter()
        self._suspensions: Counter[tuple[str, str]] = Counter()
        self._until: dict[str, float] = {}
        self._why: dict[str, str] = {}  # source -> the kind of failure that suspended it
        self._recent: dict[tuple[str, str], deque[float]] = {}

    def source_unplumbed(self, source: EgressSource) -> None:
        """Binding `source`'s address failed with EADDRNOTAVAIL; suspend it if its rule says so."""
        rule = source.suspend_when_unplumbed
        if self._failed(source, UNPLUMBED, rule) and rule is not None:  # counted with or without a rule
            log.warning("egress source %s suspended for %gs: its address %s is not on this host (EADDRNOTAVAIL); "
                        "its pools use their other sources meanwhile", source.name, rule.duration_s,
                        source.source_address)

    def proxy_unhealthy(self, source: EgressSource) -> None:
        """Connecting to `source`'s proxy failed; suspend the source if its rule says so."""
        rule = source.suspend_when_proxy_unhealthy
        if self._failed(source, PROXY_UNHEALTHY, rule) and rule is not None:
            server = source.ha_proxy_server
            log.warning("egress source %s suspended for %gs: its proxy %s does not answer; its pools use their "
                        "other sources meanwhile", source.name, rule.duration_s,
                        f"{server[0]}:{server[1]}" if server else "?")

    def _failed(self, source: EgressSource, kind: str, rule: HealthRule | None) -> bool:
        """Count a failure of `kind`; True when it suspends the source (its rule fired)."""
        self._failures[(source.name, kind)] += 1
        now = self.clock()
        if rule is None or self.is_suspended(source.name):
            return False
        if rule.threshold is not None:
            recent = self._recent.setdefault((source.name, kind), deque())
            recent.append(now)
            while recent and recent[0] <= now - rule.threshold.period_s:
                recent.popleft()
            if len(recent) < rule.threshold.limit:
                return False
            recent.clear()
        self._until[source.name] = now + rule.duration_s
        self._why[source.name] = kind
        self._suspensions[(source.name, kind)] += 1
        return True

    def is_suspended(self, name: str) -> bool:
        until = self._until.get(name)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._until[name]
        why = self._why.pop(name, UNPLUMBED)
        log.info("egress source %s: its suspension for %s ended", name,
                 "an unplumbed address" if why == UNPLUMBED else "an unhealthy proxy")
        return False

    def suspended_until(self, name: str) -> float | None:
        """When `name`'s suspension ends; None when it is not suspended."""
        return self._until.get(name) if self.is_suspended(name) else None

    def statistics(self) -> SourceHealthStatistics:
        now = self.clock()
        suspended = {name: until for name, until in self._until.items() if until > now}
        return SourceHealthStatistics(dict(self._failures), dict(self._suspensions), suspended,
                                      {name: self._why.get(name, UNPLUMBED) for name in suspended})
