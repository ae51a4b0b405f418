"""Egress sources and pools, and the weighted round-robin that picks a source.

An *egress source* is a way out: the local address to bind before connecting
(``source_address``) and the name to say in EHLO. An *egress pool* is a weighted
set of sources; a tenant's mail leaves through its pool, a message at a time, each
message going to the source `PoolPicker.next` chooses.

The picker is smooth weighted round-robin (the algorithm nginx uses for upstream
weights): every pick adds each source's weight to its running credit, takes the
source with the most credit, and charges it the total weight. Over any run of
``sum(weights)`` picks each source is chosen exactly ``weight`` times, and the
picks are spread out (weights 5:1:1 give ``a a b a c a a``, not ``a a a a a b c``),
so a new IP address in warm-up at weight 1 next to an established one at weight 9
sees its messages arrive evenly, not in bursts. It is deterministic: no randomness,
so tests and operators can predict it.

Without configuration, mail leaves through `DEFAULT_POOL`, whose one source,
`DEFAULT_SOURCE`, binds nothing and lets the kernel pick the address (KumoMTA's
"unspecified" pool and source).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from trimta.core.units import Rate, parse_duration, parse_rate

UNSPECIFIED = "unspecified"


@dataclass(frozen=True, slots=True)
class HealthRule:
    """KumoMTA's ``suspend_when_unplumbed`` and ``suspend_when_proxy_unhealthy``: take the source out of its pools for
    `duration_s` once its failures reach `threshold` within the rate's period
    (None: KumoMTA's ``"Immediate"``, the first failure)."""

    duration_s: float
    threshold: Rate | None = None


def parse_health_rule(value: object) -> HealthRule:
    """``{ duration = "5m", trigger = "Immediate" | { Threshold = "3/1m" } }``."""
    form = '{ duration = "5m" } or { trigger = { Threshold = "3/1m" }, duration = "5m" }'
    if not isinstance(value, Mapping) or "duration" not in value or set(value) - {"duration", "trigger"}:
        raise ValueError(f"expected {form}, got {value!r}")
    duration_s = parse_duration(value["duration"])
    trigger = value.get("trigger", "Immediate")
    if trigger == "Immediate":
        return HealthRule(duration_s)
    if isinstance(trigger, Mapping) and set(trigger) == {"Threshold"}:
        return HealthRule(duration_s, parse_rate(trigger["Threshold"]))
    raise ValueError(f'trigger: expected "Immediate" or {{ Threshold = "3/1m" }}, got {trigger!r}')


@dataclass(frozen=True, slots=True)
class EgressSource:
    """One way out: the local address to bind (None: the kernel's choice) and EHLO name;
    `remote_port` replaces the path's ``smtp_port`` (KumoMTA's port-mapped egress), and
    `suspend_when_unplumbed` says when a source whose address is not on this host is
    skipped by its pools.

    Through an HAProxy egress server (KumoMTA's ``ha_proxy_server``, ``(address, port)``):
    connections go to the proxy, which connects from `ha_proxy_source_address` to the
    MX host; `suspend_when_proxy_unhealthy` skips the source while the proxy fails."""

    name: str
    source_address: str | None = None
    ehlo_domain: str | None = None
    remote_port: int | None = None
    suspend_when_unplumbed: HealthRule | None = None
    ha_proxy_server: tuple[str, int] | None = None
    ha_proxy_source_address: str | None = None
    suspend_when_proxy_unhealthy: HealthRule | None = None

    @property
    def proxied(self) -> bool:
        return self.ha_proxy_server is not None


@dataclass(frozen=True, slots=True)
class EgressPool:
    """A named, weighted set of sources: ``entries`` are ``(source name, weight)``.

    A weight of 0 keeps a source in the pool without sending through it (draining
    an address); at least one weight must be positive.
    """

    name: str
    entries: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError(f"pool {self.name!r} has no entries")
        seen: set[str] = set()
        for source, weight in self.entries:
            if source in seen:
                raise ValueError(f"pool {self.name!r} lists source {source!r} twice")
            seen.add(source)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ValueError(f"weight of {source!r} in pool {self.name!r} must be an integer >= 0, got {weight!r}")
        if not any(weight for _, weight in self.entries):
            raise ValueError(f"pool {self.name!r} has no source with a positive weight")

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(source for source, _ in self.entries)


DEFAULT_SOURCE = EgressSource(UNSPECIFIED)
DEFAULT_POOL = EgressPool(UNSPECIFIED, ((UNSPECIFIED, 1),))


class PoolPicker:
    """Picks sources from one pool by smooth weighted round-robin; keeps the credits.

    One picker per pool, owned by whoever assigns messages to ready queues. Sources
    for which ``skip(name)`` is true (their ready queue is suspended) are left out
    of a pick: they neither gain credit while skipped nor keep debt, so when they
    come back they take their share from then on, without a catch-up burst.
    """

    def __init__(self, pool: EgressPool) -> None:
        self.pool = pool
        self._names = [name for name, weight in pool.entries if weight > 0]
        self._weights = [weight for _, weight in pool.entries if weight > 0]
        self._credit = [0] * len(self._names)

    def next(self, skip: Callable[[str], bool] | None = None) -> str | None:
        """The source for the next message, or None if every source is skipped."""
        best = -1
        total = 0
        for i, name in enumerate(self._names):
            if skip is not None and skip(name):
                self._credit[i] = 0
                continue
            self._credit[i] += self._weights[i]
            total += self._weights[i]
            # Strictly greater: ties go to the earlier entry, so the order is stable.
            if best < 0 or self._credit[i] > self._credit[best]:
                best = i
        if best < 0:
            return None
        self._credit[best] -= total
        return self._names[best]
