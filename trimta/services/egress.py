"""The egress side of the nursery tree: due messages find their ready queue.

```
egress nursery
├── dispatcher workers: operator rules, the domain's site, a source from the pool
└── one supervised task group per ready queue (source, site)
    └── connection tasks
```

Due messages wait for a dispatcher grouped by domain (`DueMessages`): a worker takes
every message due for one domain so far and resolves the domain once for all of
them, so a burst of mail to one domain costs one MX resolution (and one worker
wake-up), not one per message. Workers are several so that one domain's slow DNS
holds up no other domain.

Before routing, each message meets the operator rules (`Admission`): a bounce rule
bounces it, a suspension holds it in the scheduler, no attempt counted.

A ready queue's group is started on its first message and reaped when it has been
empty and idle for a while. Supervision, at each level a bug can strike:

- a dispatcher that raises while routing a burst sends the message that met the bug
  and the rest of its burst back to their scheduled queues (`Delayed` records, no
  attempt counted, due after `RETRY_AFTER_BUG_S`); what was routed stays routed;
- a ready queue's group that dies returns every queued and in-flight message the
  same way, after `RETURN_AFTER_CRASH_S`, and a fresh group takes the next message;
- a connection task's bug is handled in the ready queue (`trimta.services.ready_queue`).

Each is logged with its traceback; the daemon keeps running.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Protocol

import trio

from trimta.core.admin import Admission as AdmissionDecision
from trimta.core.admin import admin_bounce_reply
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_paths import EgressPathProvider
from trimta.core.message import Message
from trimta.core.mta_sts import StsLookup
from trimta.core.mta_sts_delivery import apply_policy
from trimta.core.mx import MxResolution, Resolver
from trimta.core.pools import EgressPool, EgressSource, PoolPicker
from trimta.core.queues import ready_queue_name
from trimta.core.sites import own_site
from trimta.core.throttle import Gcra
from trimta.core.tls_report import TlsSessionSink
from trimta.core.units import Rate
from trimta.services.cluster_limits import LimitsBackend
from trimta.services.outcomes import RETRY_AFTER_BUG_S, OutcomeRecorder
from trimta.services.ready_queue import Connect, Observer, ReadyQueue, SharedLimits
from trimta.services.ready_queues import ReadyQueues
from trimta.services.scheduler import Scheduler
from trimta.services.source_health import SourceHealth

log = logging.getLogger(__name__)

DISPATCH_WORKERS = 32
RETURN_AFTER_CRASH_S = 10.0
# A message whose pool's sources all have its site suspended waits this long, no attempt counted.
SUSPENDED_SOURCES_WAIT_S = 60.0


class Admission(Protocol):
    """What the operator rules say to the egress (`trimta.services.operator_rules.OperatorRules`)."""

    def admission(self, message: Message) -> AdmissionDecision: ...
    def ready_queue_suspended(self, name: str) -> bool: ...
    def path_overrides(self, name: str) -> Mapping[str, object]: ...


class MtaStsPolicies(Protocol):
    """Where the egress asks for a domain's MTA-STS policy (`trimta.services.mta_sts.MtaStsService`)."""

    async def policy_for(self, domain: str) -> StsLookup: ...


class DueMessages:
    """Messages due for routing, grouped by the domain they go to (the routing domain when
    a message has one), domains in the order they fell due.

    The scheduler puts (never blocks); dispatchers take a whole domain's group at once.
    """

    def __init__(self) -> None:
        self._by_domain: dict[str, deque[Message]] = {}
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, message: Message) -> None:
        group = self._by_domain.get(message.destination)
        if group is None:
            self._by_domain[message.destination] = deque((message,))
            self._lot.unpark()
        else:
            group.append(message)

    async def take_group(self) -> tuple[str, deque[Message]]:
        """The oldest domain's due messages, waiting for some if there are none."""
        while not self._by_domain:
            await self._lot.park()
        domain = next(iter(self._by_domain))
        return domain, self._by_domain.pop(domain)

    def __len__(self) -> int:
        return sum(len(g) for g in self._by_domain.values())


class Egress:
    """Owns the ready queues' groups and the dispatchers that feed them."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        paths: EgressPathProvider,
        sources: Mapping[str, EgressSource],
        pool_for: Callable[[str | None], EgressPool],
        connect: Connect,
        outcomes: OutcomeRecorder,
        scheduler: Scheduler,
        rules: Admission,
        ready: ReadyQueues,
        due: DueMessages,
        observer: Observer | None = None,
        health: SourceHealth | None = None,
        clock: Callable[[], float] = time.time,
        linger_s: float = 10.0,
        mta_sts: MtaStsPolicies | None = None,
        tls_sink: TlsSessionSink | None = None,
        limits: LimitsBackend | None = None,
    ) -> None:
        self.resolver = resolver
        self.mta_sts = mta_sts
        self.tls_sink = tls_sink
        # The MTA-STS mode ("enforce", "testing") applied to each domain's last resolution.
        self.mta_sts_modes: dict[str, str] = {}
        # With [cluster]: the limits shared by the nodes (those not written "local:").
        self.limits = limits
        self.paths = paths
        self.sources = dict(sources)
        self.pool_for = pool_for
        self.connect = connect
        self.outcomes = outcomes
        self.scheduler = scheduler
        self.rules = rules
        self.ready = ready
        self.due = due
        self.observer = observer
        self.health = health if health is not None else SourceHealth(clock)
        self.clock = clock
        self.linger_s = linger_s
        self.shared: dict[str, SharedLimits] = {}
        self._pickers: dict[str, PoolPicker] = {}
        # Selection rates (IP warm-up), by the path's or the named limit's key.
        self._selection: dict[str, tuple[Rate, Gcra]] = {}
        # additional_message_rate_throttles, by name: shared by every path naming one.
        self._rates: dict[str, tuple[Rate, Gcra]] = {}
        self._nursery: trio.Nursery | None = None
        self.reaped = 0
        self.crashed = 0
        # MX resolutions: in progress, and finished by success (True) or failure (False).
        self.mx_resolving = 0
        self.mx_resolved: Counter[bool] = Counter()
        # Connections made by ready queues that have ended, by queue name (the live ones
        # count their own), so a counter of connections never goes backwards.
        self.connections_made: Counter[str] = Counter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(DISPATCH_WORKERS):
                nursery.start_soon(self._dispatcher)
            task_status.started()

    # --- routing ------------------------------------------------------------------------------

    async def _dispatcher(self) -> None:
        while True:
            domain, group = await self.due.take_group()
            try:
                await self._route(domain, group)
            except Exception as exc:
                # What is left in the group (the message that met the bug, and those
                # after it) goes back to wait; what was routed stays routed.
                log.exception("routing %d message(s) to %s failed; they wait %ds",
                              len(group), domain, RETRY_AFTER_BUG_S)
                for message in group:
                    await self.outcomes.internal_error(message, exc, None)

    async def _route(self, domain: str, group: deque[Message]) -> None:
        """Route every message of `group` (all to `domain`), taking each out once dealt with."""
        resolution: MxResolution | None = None
        while group:
            message = group[0]
            if await self._admitted(message):
                if resolution is None:
                    resolution = await self.resolve(domain)
                await self._route_one(message, resolution)
            group.popleft()

    async def _admitted(self, message: Message) -> bool:
        """Expired, admin-bounced or suspended messages are dealt with here, not routed."""
        if self.outcomes.expires_at(message) <= self.clock():
            await self.outcomes.expired(message)
            return False
        decision = self.rules.admission(message)
        if decision.bounce is not None:
            await self.outcomes.admin_bounce(message, admin_bounce_reply(decision.bounce.reason),
                                             record=not decision.bounce.suppress_logging)
            return False
        if decision.hold is not None:
            self.scheduler.hold(message, decision.hold.id)
            return False
        return await self._scheduled_rate_allows(message)

    async def _scheduled_rate_allows(self, message: Message) -> bool:
        """With [cluster], the scheduled queue's shared ``max_message_rate`` is taken here
        (the scheduler keeps only local ones): without a turn the message waits for it in
        its scheduled queue, no attempt counted."""
        limits = self.limits
        if limits is None:
            return True
        rate = self.scheduler.config_for(message).max_message_rate
        if rate is None or not limits.shares(rate):
            return True
        wait = await limits.take("scheduled_max_message_rate", message.queue, rate)
        if wait > 0:
            self.scheduler.add(message, self.clock() + wait)
            return False
        return True

    async def resolve(self, domain: str) -> MxResolution:
        """`domain`'s MX hosts as delivery uses them: MTA-STS applied (under enforce, only the
        hosts the policy lists; their site is the queue's). Also for resolve-egress-path."""
        rollup = self.paths.rollup(domain)
        self.mx_resolving += 1
        try:
            resolution = await self.resolver.resolve_mx(domain, mx_rollup=rollup)
        finally:
            self.mx_resolving -= 1
        self.mx_resolved[resolution.ok] += 1
        # MTA-STS before the site: under enforce the site is that of the hosts the policy lists.
        # enable_mta_sts is the domain's (its table and the defaults): there is no site yet.
        if self.mta_sts is not None and resolution.ok and not resolution.literal \
                and self.paths.path_config("", own_site(domain), domain).enable_mta_sts:
            resolution = apply_policy(resolution, await self.mta_sts.policy_for(domain), rollup=rollup)
        self._note_mta_sts(domain, resolution)
        if resolution.ok:  # the real MX hosts, for provider matching
            self.paths.observe(resolution)
        return resolution

    def _note_mta_sts(self, domain: str, resolution: MxResolution) -> None:
        if resolution.mta_sts is None:
            self.mta_sts_modes.pop(domain, None)
            return
        if len(self.mta_sts_modes) >= 100_000 and domain not in self.mta_sts_modes:
            self.mta_sts_modes.clear()
        self.mta_sts_modes[domain] = resolution.mta_sts.mode.value

    def _use_resolution(self, queue: ReadyQueue, message: Message, resolution: MxResolution) -> None:
        queue.resolution = resolution
        queue.tls_sink = self.tls_sink
        queue.mta_sts.note(message.destination, resolution.mta_sts)

    async def _route_one(self, message: Message, resolution: MxResolution) -> None:
        if not resolution.ok:
            answer = resolution.reply
            assert answer is not None
            if resolution.is_permanent:
                await self.outcomes.bounce(message, answer, classification=resolution.bounce_classification)
            else:
                await self.outcomes.retry(message, answer)
            return
        picker = self._picker_for(message)
        site = resolution.site
        source_name = await self._select_source(picker, site, message.destination)
        if source_name is None:
            # Every source of the pool is suspended (for this site, or for its health) or out
            # of selections: wait without an attempt, at most until a suspension ends.
            self.scheduler.add(message, self.clock() + self._wait_for_a_source(picker))
            return
        queue = self.ready_queue(self.sources[source_name], site, message.destination)
        self._use_resolution(queue, message, resolution)
        if not queue.add(message):  # reaped a moment ago: a fresh one takes it
            queue = self.ready_queue(self.sources[source_name], site, message.destination)
            self._use_resolution(queue, message, resolution)
            queue.add(message)

    async def _select_source(self, picker: PoolPicker, site: str, domain: str) -> str | None:
        """The pool's next source for `site` that is not suspended and whose selection rates
        have room (``source_selection_rate``, ``additional_source_selection_rates``).

        As in KumoMTA: the weighted round-robin proposes a source; a selection rate
        without room makes it ineligible for this message, and the next candidate is
        tried. None when no source is eligible.
        """
        refused: set[str] = set()
        while True:
            name = picker.next(skip=lambda n: n in refused or self.health.is_suspended(n)
                               or self.rules.ready_queue_suspended(ready_queue_name(n, site)))
            if name is None or await self._selection_allowed(name, site, domain):
                return name
            refused.add(name)

    def _wait_for_a_source(self, picker: PoolPicker) -> float:
        ends = [until for name, _ in picker.pool.entries if (until := self.health.suspended_until(name)) is not None]
        now = self.clock()
        return min([SUSPENDED_SOURCES_WAIT_S, *(max(until - now, 0.001) for until in ends)])

    async def _selection_allowed(self, source: str, site: str, domain: str) -> bool:
        path = self.paths.path_config(source, site, domain)
        rates = list(path.additional_source_selection_rates)
        if path.source_selection_rate is not None:
            rates.append((f"{source}->{site}", path.source_selection_rate))
        if path.provider_source_selection_rate is not None and path.provider:
            # One rate for every site of the provider, as KumoMTA's shaping helper names it.
            rates.append((f"shaping-provider-{path.provider}-{source}-selection-rate",
                          path.provider_source_selection_rate))
        if not rates:
            return True
        limits = self.limits
        if limits is not None:
            shared = sorted((r for r in rates if limits.shares(r[1])), key=lambda r: r[1].per_second)
            rates = [r for r in rates if not limits.shares(r[1])]
            if rates and not self._local_selection_room(rates):
                return False
            # Smallest first; one without a turn makes the source ineligible (the turns
            # taken before it are spent: the shared rates run under their limit, never over).
            for name, rate in shared:
                if await limits.take("source_selection_rate", name, rate) > 0:
                    return False
            if rates:
                self._take_local_selection(rates)
            return True
        if not self._local_selection_room(rates):
            return False
        self._take_local_selection(rates)
        return True

    def _local_selection_room(self, rates: list[tuple[str, Rate]]) -> bool:
        now = self.clock()
        return not any(self._selection_limiter(name, rate).wait_s(now) > 0 for name, rate in rates)

    def _take_local_selection(self, rates: list[tuple[str, Rate]]) -> None:
        now = self.clock()
        limiters = [self._selection_limiter(name, rate) for name, rate in rates]
        # Smallest first, as KumoMTA checks them; taken only if every one has room.
        limiters.sort(key=lambda g: g.window_events or 0)
        for g in limiters:
            g.try_acquire(now)

    def _named_rates(self, path: EgressPathConfig) -> list[Gcra]:
        """The limiters of a path's ``additional_message_rate_throttles``, one per name for every
        path that names it, smallest limit first (as KumoMTA checks them)."""
        out = []
        for name, rate in path.additional_message_rate_throttles:
            if self.limits is not None and self.limits.shares(rate):
                continue  # shared by the nodes: the ready queue takes it from self.limits
            found = self._rates.get(name)
            if found is None or found[0] != rate:
                found = self._rates[name] = (rate, Gcra.from_rate(rate))
            out.append(found)
        return [g for _, g in sorted(out, key=lambda f: f[0].per_second)]

    def _named_limits(self, path: EgressPathConfig) -> list[SharedLimits]:
        """The connection counts of a path's ``additional_connection_limits``, one per name."""
        out = []
        for name, limit in path.additional_connection_limits:
            key = f"named:{name}"
            shared = self.shared.get(key)
            if shared is None:
                shared = self.shared[key] = SharedLimits(key)
            shared.configure(limit.limit, None)
            out.append(shared)
        return out

    def _selection_limiter(self, name: str, rate: Rate) -> Gcra:
        found = self._selection.get(name)
        if found is None or found[0] != rate:
            found = self._selection[name] = (rate, Gcra.from_rate(rate, lateness_s=0.0))
        return found[1]

    def _picker_for(self, message: Message) -> PoolPicker:
        pool = self.pool_for(self.scheduler.config_for(message).egress_pool)
        picker = self._pickers.get(pool.name)
        if picker is None:
            picker = self._pickers[pool.name] = PoolPicker(pool)
        return picker

    # --- ready queues ---------------------------------------------------------------------------

    def ready_queue(self, source: EgressSource, site: str, domain: str) -> ReadyQueue:
        name = ready_queue_name(source.name, site)
        queue = self.ready.get(name)
        if queue is None or queue.closed:
            path = self.paths.path_config(source.name, site, domain)
            queue = ReadyQueue(
                source=source,
                site=site,
                path=path,
                connect=self.connect,
                outcomes=self.outcomes,
                expires_at=self.outcomes.expires_at,
                clock=self.clock,
                shared=self._shared_limits(path, source.name),
                domain=domain,
                observer=self.observer,
                automation_rules=self.paths.automation_for(source.name, site, domain),
                limits=self.limits,
            )
            overrides = self.rules.path_overrides(name)
            if overrides:
                queue.set_overrides(overrides)
            queue.share_rates(self._named_rates(path))
            queue.share_limits(self._named_limits(path))
            queue.suspend(self.rules.ready_queue_suspended(name))
            self.ready.register(queue)
            assert self._nursery is not None, "Egress.run must be started first"
            self._nursery.start_soon(self._supervise, queue)
        return queue

    def _shared_limits(self, path: EgressPathConfig, source: str) -> SharedLimits | None:
        """The provider-wide limits this path shares with the provider's other ready queues
        from the same egress source: KumoMTA keys them by provider and source
        (``shaping-provider-NAME-SOURCE-limit``), so each source has the provider's limit."""
        if not path.provider or (path.provider_connection_limit is None and path.provider_max_message_rate is None):
            return None
        key = f"shaping-provider-{path.provider}-{source}"
        shared = self.shared.get(key)
        if shared is None:
            shared = self.shared[key] = SharedLimits(key)
        rate = path.provider_max_message_rate
        if rate is not None and self.limits is not None and self.limits.shares(rate):
            rate = None  # shared by the nodes: the ready queue takes it from self.limits
        shared.configure(path.provider_connection_limit, rate)
        return shared

    def reload(self, paths: EgressPathProvider, *, pool_for: Callable[[str | None], EgressPool] | None = None,
               sources: Mapping[str, EgressSource] | None = None) -> None:
        """New shaping (and pools and sources): live ready queues take their new options at once."""
        self.paths = paths
        if pool_for is not None:
            self.pool_for = pool_for
        if sources is not None:
            self.sources = dict(sources)
        for queue in self.ready:
            path = paths.path_config(queue.source.name, queue.site, queue.domain)
            queue.share_rates(self._named_rates(path))
            queue.share_limits(self._named_limits(path))
            shared = self._shared_limits(path, queue.source.name)
            if shared is not queue.shared:
                queue.share(shared)
            queue.set_path(path)
            queue.set_automation_rules(paths.automation_for(queue.source.name, queue.site, queue.domain))

    async def _supervise(self, queue: ReadyQueue) -> None:
        try:
            await queue.run(linger_s=self.linger_s)
        except Exception as exc:
            self.crashed += 1
            queue.close()
            returned = queue.drain()
            log.exception("ready queue %s failed; %d messages go back to their scheduled queues",
                          queue.name, len(returned))
            # Back without an attempt counted, after a pause so a bug cannot spin.
            for message in returned:
                await self.outcomes.internal_error(message, exc, queue, delay_s=RETURN_AFTER_CRASH_S)
        finally:
            self.connections_made[queue.name] += queue.statistics().connections_total
            if self.ready.unregister(queue):
                self.reaped += 1

