"""Limits shared by several nodes (``[cluster]``), with local shares while the store is away.

Delivery asks a `LimitsBackend` for what several nodes share: a turn of a rate
(`take`) and a connection lease (`lease`/`release`). Two implementations:

- `NodeLimits` keeps everything on this node: one GCRA per (limit, scope) and a count
  of leases per scope, each limit divided by `share` (the number of nodes). It is the
  fallback below, and a node's limits when nothing is shared.
- `ClusterLimits` asks a `SharedStore` (Redis, `trimta.adapters.redis_limits`) while
  it answers. When a call fails (`ClusterUnavailable`: no connection, no answer within
  the timeout, an error reply) it logs one warning, says so in `statistics()` (the
  ``trimta_cluster_redis_available`` gauge), and answers from a `NodeLimits` whose
  share is the number of nodes last seen alive — so N nodes together stay near each
  limit, each allowed at least 1. That number is kept in the spool directory
  (``cluster_nodes_seen``), so a node that starts while the store is away divides by
  the count of its last run, not by 1. Its `run` task beats this node's heartbeat (how the
  others count it alive), extends the leases it holds, and, while the store is away,
  tries it again every beat; the first answer brings the node back to shared limits.

While the store is away no call waits on it: only the beat tries it (bounded by the
store's timeout), delivery calls go straight to the local shares.

Which limits go through here: every rate and connection limit of the egress path and
provider, the named (``additional_*``) ones, the source selection rates and the
scheduled queues' ``max_message_rate``, unless written ``"local:..."`` (KumoMTA's
meaning: that one stays on the node). `shares` says which.
"""

from __future__ import annotations

import itertools
from functools import partial
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from trimta.adapters.cluster_config import (
    ClusterConfig,
    display_url,
    node_id_for,
    read_nodes_seen,
    write_nodes_seen,
)
from trimta.adapters.redis_limits import ClusterUnavailable, RedisLimits
from trimta.core.throttle import Gcra
from trimta.core.units import Rate

log = logging.getLogger(__name__)


class SharedStore(Protocol):
    """What `ClusterLimits` needs of the store the nodes share (`RedisLimits`). Every call
    is bounded by the store's timeout and raises `ClusterUnavailable` when it fails."""

    async def take(self, limit: str, scope: str, rate: Rate) -> float: ...
    async def acquire_lease(self, scope: str, lease_id: str, limit: int, period_s: float) -> bool: ...
    async def extend_lease(self, scope: str, lease_id: str, period_s: float) -> bool: ...
    async def release_lease(self, scope: str, lease_id: str) -> None: ...
    async def heartbeat(self, node_id: str, ttl_s: float) -> int: ...


@dataclass(eq=False, slots=True)
class Lease:
    """One connection's slot under one connection limit (`scope`)."""

    scope: str
    id: str
    limit: int
    shared: bool  # held in the shared store (False: a local share, taken while it was away)


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    node_id: str
    available: bool  # the shared store answers: limits are shared
    nodes_alive: int  # as last seen (this node included)
    outages: int  # times the store went away since start
    leases_held: int
    local_answers: int  # rate turns and leases answered from local shares


class LimitsBackend(Protocol):
    """Where delivery takes turns of shared rates and leases of shared connection limits."""

    def shares(self, limit: Rate | bool) -> bool:
        """Whether a limit goes through here: a `Rate`, or a limit's ``local`` flag."""
        ...

    async def take(self, limit: str, scope: str, rate: Rate) -> float:
        """Take one turn of `rate` for (`limit`, `scope`) and return 0, or return the wait, taking nothing."""
        ...

    async def lease(self, scope: str, limit: int) -> Lease | None:
        """A slot under `limit` connections for `scope`, or None when they are all held."""
        ...

    async def release(self, lease: Lease) -> None: ...

    def keep(self, leases: list[Lease]) -> bool:
        """Whether a connection holding `leases` may take another message: False while the
        shared store is away and this node holds more than its share under one of them."""
        ...


def _shares(limit: Rate | bool) -> bool:
    return not (limit.local if isinstance(limit, Rate) else limit)


class NodeLimits:
    """The limits kept on this node, each `1/share` of the configured one (at least 1)."""

    def __init__(self, *, clock: Callable[[], float] | None = None, share: int = 1) -> None:
        self.clock = clock or trio.current_time
        self.share = max(1, share)
        self._rates: dict[tuple[str, str], tuple[Rate, int, Gcra]] = {}
        self._held: Counter[str] = Counter()
        self._ids = itertools.count()

    def shares(self, limit: Rate | bool) -> bool:
        return _shares(limit)

    def rate_share(self, rate: Rate) -> Rate:
        """This node's part of `rate`: the limit divided by the nodes, never below one event per period."""
        if self.share == 1:
            return rate
        return Rate(max(1.0, rate.limit / self.share), rate.period_s, rate.max_burst, rate.local)

    def limit_share(self, limit: int) -> int:
        return max(1, limit // self.share)

    async def take(self, limit: str, scope: str, rate: Rate) -> float:
        return self.take_now(limit, scope, rate)

    def take_now(self, limit: str, scope: str, rate: Rate) -> float:
        key = (limit, scope)
        found = self._rates.get(key)
        if found is None or found[0] != rate or found[1] != self.share:
            found = self._rates[key] = (rate, self.share, Gcra.from_rate(self.rate_share(rate), lateness_s=0.0))
        return found[2].try_acquire(self.clock())

    async def lease(self, scope: str, limit: int) -> Lease | None:
        return self.lease_now(scope, limit)

    def lease_now(self, scope: str, limit: int) -> Lease | None:
        """A local lease if fewer than this node's share of `limit` are held here."""
        if self._held[scope] >= self.limit_share(limit):
            return None
        self._held[scope] += 1
        return Lease(scope, f"local-{next(self._ids)}", limit, shared=False)

    async def release(self, lease: Lease) -> None:
        self.release_now(lease)

    def keep(self, leases: list[Lease]) -> bool:
        return all(self._held[lease.scope] <= self.limit_share(lease.limit) for lease in leases)

    def release_now(self, lease: Lease) -> None:
        self._held[lease.scope] -= 1
        if self._held[lease.scope] <= 0:
            del self._held[lease.scope]


class ClusterLimits:
    """Shared limits through a `SharedStore`, local shares while it is away (see the module)."""

    def __init__(self, store: SharedStore, *, node_id: str, lease_period_s: float = 10.0,
                 name: str = "the shared store", clock: Callable[[], float] | None = None,
                 nodes_seen: int = 1, keep_nodes_seen: Callable[[int], None] | None = None) -> None:
        """`nodes_seen`: the nodes alive at the last beat of an earlier run (kept by
        `keep_nodes_seen`, called when the count changes), so a node that starts while
        the store is away takes its share of each limit, not all of it."""
        self.store = store
        self.name = name  # for the log: the store's URL without a password
        self.node_id = node_id
        self.lease_period_s = lease_period_s
        self.beat_s = lease_period_s / 3
        self.local = NodeLimits(clock=clock)
        self.available = True  # optimistic until the first call says otherwise
        self.nodes_alive = max(1, nodes_seen)
        self.local.share = self.nodes_alive
        self._keep_nodes_seen = keep_nodes_seen
        self.outages = 0
        self.local_answers = 0
        # Every lease this node holds, shared or local, by scope: the local share counts them all.
        self._held: dict[str, set[Lease]] = {}
        self._ids = itertools.count()
        # Lease ids: this node, this run (a restarted node's leases are new ones), a counter.
        self._prefix = f"{node_id}-{secrets.token_hex(4)}-"

    # --- the backend -------------------------------------------------------------------------

    def shares(self, limit: Rate | bool) -> bool:
        return _shares(limit)

    async def take(self, limit: str, scope: str, rate: Rate) -> float:
        if self.available:
            try:
                return await self.store.take(limit, scope, rate)
            except ClusterUnavailable as exc:
                self._went_away(exc)
        self.local_answers += 1
        return self.local.take_now(limit, scope, rate)

    async def lease(self, scope: str, limit: int) -> Lease | None:
        held = self._held.setdefault(scope, set())
        if self.available:
            lease_id = self._prefix + str(next(self._ids))
            try:
                if not await self.store.acquire_lease(scope, lease_id, limit, self.lease_period_s):
                    return None
            except ClusterUnavailable as exc:
                self._went_away(exc)
            else:
                lease = Lease(scope, lease_id, limit, shared=True)
                held.add(lease)
                return lease
        self.local_answers += 1
        if len(held) >= self.local.limit_share(limit):
            return None
        lease = Lease(scope, "local-" + str(next(self._ids)), limit, shared=False)
        held.add(lease)
        return lease

    async def release(self, lease: Lease) -> None:
        held = self._held.get(lease.scope)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[lease.scope]
        if lease.shared and self.available:
            try:
                await self.store.release_lease(lease.scope, lease.id)
            except ClusterUnavailable as exc:
                self._went_away(exc)  # it lapses by itself within a lease period

    def keep(self, leases: list[Lease]) -> bool:
        # Connections opened under shared limits go on while the store answers; once it is
        # away, those above this node's share close after their message, so the node comes
        # down to its share (the others still held theirs: the total is over the limit by at
        # most the shares of the nodes, and only until these close).
        if self.available:
            return True
        return all(len(self._held.get(lease.scope, ())) <= self.local.limit_share(lease.limit) for lease in leases)

    # --- liveness, extension, coming back ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Beat every third of a lease period: heartbeat, extend the leases held, and bring
        back shared limits once the store answers again. Started after the first beat."""
        await self._guarded_beat()
        task_status.started()
        while True:
            await trio.sleep(self.beat_s)
            await self._guarded_beat()

    async def _guarded_beat(self) -> None:
        # A bug in a beat (an error the adapter does not translate) must not end the daemon:
        # it is logged, and the node delivers under local shares until a beat succeeds.
        try:
            await self.beat()
        except Exception as exc:
            log.exception("cluster: the heartbeat failed")
            self._went_away(ClusterUnavailable(f"heartbeat failed: {exc!r}"))

    async def beat(self) -> None:
        try:
            alive = await self.store.heartbeat(self.node_id, self.lease_period_s)
            if not self.available:
                await self._rejoin()
            await self._extend()
        except ClusterUnavailable as exc:
            self._went_away(exc)
            return
        alive = max(1, alive)
        if alive != self.nodes_alive and self._keep_nodes_seen is not None:
            try:
                self._keep_nodes_seen(alive)
            except OSError as exc:
                log.warning("cluster: cannot keep the number of nodes seen (%d): %s", alive, exc)
        self.nodes_alive = alive
        self.local.share = self.nodes_alive
        if not self.available:
            self.available = True
            log.warning("cluster: %s answers again; limits are shared again", self.name)

    async def _extend(self) -> None:
        for scope, held in list(self._held.items()):
            for lease in list(held):
                if not lease.shared:
                    continue
                # One that lapsed (the store was away longer than a lease period, or lost it) is
                # taken again if there is room, else kept as a local one until its connection closes.
                if (not await self.store.extend_lease(scope, lease.id, self.lease_period_s)
                        and not await self.store.acquire_lease(scope, lease.id, lease.limit, self.lease_period_s)):
                    lease.shared = False

    async def _rejoin(self) -> None:
        """Leases taken locally during the outage go into the store where there is room, so
        other nodes count them; the rest stay local until their connections close."""
        for scope, held in list(self._held.items()):
            for lease in list(held):
                if lease.shared:
                    continue
                lease_id = self._prefix + str(next(self._ids))
                if await self.store.acquire_lease(scope, lease_id, lease.limit, self.lease_period_s):
                    lease.id, lease.shared = lease_id, True

    def _went_away(self, exc: ClusterUnavailable) -> None:
        if self.available:
            self.available = False
            self.outages += 1
            self.local.share = self.nodes_alive
            log.warning("cluster: %s; delivering under local limits (each limit / %d node(s)) until it answers",
                        exc, self.nodes_alive)

    def statistics(self) -> ClusterStatistics:
        return ClusterStatistics(
            node_id=self.node_id, available=self.available, nodes_alive=self.nodes_alive, outages=self.outages,
            leases_held=sum(len(h) for h in self._held.values()), local_answers=self.local_answers,
        )


class RedisCluster:
    """This node's part of a cluster on Redis: the store's client and the limits on it."""

    def __init__(self, config: ClusterConfig, spool_dir: Path) -> None:
        self.store = RedisLimits.from_config(config)
        self.limits = ClusterLimits(self.store, node_id=node_id_for(config, spool_dir),
                                    lease_period_s=config.lease_period_s, name=display_url(config.redis_url),
                                    nodes_seen=read_nodes_seen(spool_dir),
                                    keep_nodes_seen=partial(write_nodes_seen, spool_dir))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The client's session and the beat; started once the first beat has an answer (or not)."""
        async with self.store.session():
            await self.limits.run(task_status=task_status)
