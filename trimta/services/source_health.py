"""Egress source health: a source whose address is not on this host is taken out of its pools.

KumoMTA's ``suspend_when_unplumbed``: when binding a source's address fails with
``EADDRNOTAVAIL`` (the address was removed from the interface, or never plumbed),
the source is suspended for the rule's ``duration`` once the rule's ``trigger``
holds (``"Immediate"``: the first such failure; ``{ Threshold = "3/1m" }``: the third
within a minute). While suspended, pool selection skips the source, so its mail goes
out through the pool's other sources instead of waiting; with every source of a pool
suspended, the pool's mail waits until the earliest suspension ends. Suspensions are
this process's own (no cluster coordination, as in KumoMTA) and are forgotten at a
restart, when the addresses are looked at afresh.

Every unplumbed failure is counted whether a rule is set or not
(``egress_source_connection_failures_total{source, kind="Unplumbed"}``), so an
operator sees the signal before opting in. A suspension is logged at WARNING, its end
at INFO.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from trimta.core.pools import EgressSource

log = logging.getLogger(__name__)

UNPLUMBED = "Unplumbed"


@dataclass(frozen=True, slots=True)
class SourceHealthStatistics:
    failures: dict[tuple[str, str], int]  # (source, kind) -> failures since start
    suspensions: dict[tuple[str, str], int]  # (source, reason) -> times suspended since start
    suspended: dict[str, float]  # source -> when its suspension ends (clock seconds)


class SourceHealth:
    """Which egress sources are suspended for their health, and until when."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._failures: Counter[tuple[str, str]] = Counter()
        self._suspensions: Counter[tuple[str, str]] = Counter()
        self._until: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = {}

    def source_unplumbed(self, source: EgressSource) -> None:
        """Binding `source`'s address failed with EADDRNOTAVAIL; suspend it if its rule says so."""
        self._failures[(source.name, UNPLUMBED)] += 1
        rule = source.suspend_when_unplumbed
        now = self.clock()
        if rule is None or self.is_suspended(source.name):
            return
        if rule.threshold is not None:
            recent = self._recent.setdefault(source.name, deque())
            recent.append(now)
            while recent and recent[0] <= now - rule.threshold.period_s:
                recent.popleft()
            if len(recent) < rule.threshold.limit:
                return
            recent.clear()
        self._until[source.name] = now + rule.duration_s
        self._suspensions[(source.name, UNPLUMBED)] += 1
        log.warning("egress source %s suspended for %gs: its address %s is not on this host (EADDRNOTAVAIL); "
                    "its pools use their other sources meanwhile", source.name, rule.duration_s,
                    source.source_address)

    def is_suspended(self, name: str) -> bool:
        until = self._until.get(name)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._until[name]
        log.info("egress source %s: its suspension for an unplumbed address ended", name)
        return False

    def suspended_until(self, name: str) -> float | None:
        """When `name`'s suspension ends; None when it is not suspended."""
        return self._until.get(name) if self.is_suspended(name) else None

    def statistics(self) -> SourceHealthStatistics:
        now = self.clock()
        return SourceHealthStatistics(dict(self._failures), dict(self._suspensions),
                                      {name: until for name, until in self._until.items() if until > now})
