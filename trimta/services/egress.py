"""The egress side of the nursery tree: due messages find their ready queue.

```
egress nursery
├── dispatcher workers: resolve the domain's site, pick a source from the pool
└── one supervised task group per ready queue (source, site)
    └── connection tasks
```

Due messages wait for a dispatcher grouped by domain: a worker takes every message
due for one domain so far and resolves the domain once for all of them, so a burst of
mail to one domain costs one MX resolution (and one worker wake-up), not one per
message. Workers are several so that one domain's slow DNS holds up no other domain.

A ready queue's group is started on its first message and reaped when it has been
empty and idle for a while. Supervision: if a ready queue's group dies of a bug, its
messages go back to their scheduled queues (no attempt counted), the error is logged
with its traceback, and the daemon keeps running.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import trio

from trimta.core.egress import EgressPathProvider
from trimta.core.message import Message
from trimta.core.mx import MxResolution, Resolver
from trimta.core.pools import EgressSource, PoolPicker
from trimta.core.queues import ready_queue_name
from trimta.services.outcomes import OutcomeRecorder
from trimta.services.ready_queue import Connect, ReadyQueue, SharedLimits
from trimta.services.scheduler import Scheduler

log = logging.getLogger(__name__)

DISPATCH_WORKERS = 32
RETRY_AFTER_BUG_S = 60.0
RETURN_AFTER_CRASH_S = 10.0


class Egress:
    """Owns the ready queues and the dispatcher that feeds them."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        paths: EgressPathProvider,
        sources: dict[str, EgressSource],
        picker_for: Callable[[Message], PoolPicker],
        connect: Connect,
        outcomes: OutcomeRecorder,
        scheduler: Scheduler,
        clock: Callable[[], float] = time.time,
        rollup: Callable[[str], bool] = lambda domain: True,
        linger_s: float = 10.0,
        admission: Callable[[Message], Awaitable[bool]] | None = None,
        ready_queue_suspended: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.resolver = resolver
        self.paths = paths
        self.sources = sources
        self.picker_for = picker_for
        self.connect = connect
        self.outcomes = outcomes
        self.scheduler = scheduler
        self.clock = clock
        self.rollup = rollup
        self.linger_s = linger_s
        # Operator rules (admin bounces, suspensions, expiry) get a say before routing:
        # False means the message was dealt with and is not to be routed.
        self.admission = admission
        self.ready_queue_suspended = ready_queue_suspended
        self.ready: dict[str, ReadyQueue] = {}
        self.shared: dict[str, SharedLimits] = {}
        # Due messages by domain, domains in the order their first message fell due.
        self._due: dict[str, deque[Message]] = {}
        self._due_lot = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self.reaped = 0
        self.crashed = 0

    # --- in: due messages ------------------------------------------------------------------

    def dispatch(self, message: Message) -> None:
        """The scheduler's hand-off: never blocks."""
        group = self._due.get(message.domain)
        if group is None:
            self._due[message.domain] = deque((message,))
            self._due_lot.unpark()
        else:
            group.append(message)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(DISPATCH_WORKERS):
                nursery.start_soon(self._dispatcher)
            task_status.started()

    async def _dispatcher(self) -> None:
        while True:
            while not self._due:
                await self._due_lot.park()
            domain = next(iter(self._due))
            group = self._due.pop(domain)
            try:
                await self._route(domain, group)
            except Exception:
                # What is left in the group (the message that met the bug, and those
                # after it) goes back to wait; what was routed stays routed.
                log.exception("routing %d message(s) to %s failed; they wait %ds",
                              len(group), domain, RETRY_AFTER_BUG_S)
                due = self.clock() + RETRY_AFTER_BUG_S
                for message in group:
                    self.scheduler.add(message, due)

    async def _route(self, domain: str, group: deque[Message]) -> None:
        """Route every message of `group` (all to `domain`), taking each out once dealt with."""
        resolution: MxResolution | None = None
        while group:
            message = group[0]
            if self.admission is None or await self.admission(message):
                if resolution is None:
                    resolution = await self._resolve(domain)
                await self._route_one(message, resolution)
            group.popleft()

    async def _resolve(self, domain: str) -> MxResolution:
        resolution = await self.resolver.resolve_mx(domain, mx_rollup=self.rollup(domain))
        observe = getattr(self.paths, "observe", None)
        if observe is not None and resolution.ok:  # the real MX hosts, for provider matching
            observe(resolution)
        return resolution

    async def _route_one(self, message: Message, resolution: MxResolution) -> None:
        if not resolution.ok:
            reply = resolution.reply
            assert reply is not None
            if resolution.is_permanent:
                await self.outcomes.bounce(message, reply, classification=resolution.bounce_classification)
            else:
                await self.outcomes.retry(message, reply)
            return
        picker = self.picker_for(message)
        site = resolution.site
        source_name = picker.next(skip=lambda name: self._suspended(name, site))
        if source_name is None:
            # Every source of the pool has this site suspended: wait without an attempt.
            self.scheduler.add(message, self.clock() + 60.0)
            return
        queue = self.ready_queue(self.sources[source_name], site, message.domain)
        queue.resolution = resolution
        if not queue.add(message):  # reaped a moment ago: a fresh one takes it
            queue = self.ready_queue(self.sources[source_name], site, message.domain)
            queue.resolution = resolution
            queue.add(message)

    def _suspended(self, source: str, site: str) -> bool:
        return self.ready_queue_suspended(ready_queue_name(source, site))

    # --- ready queues ------------------------------------------------------------------------

    def ready_queue(self, source: EgressSource, site: str, domain: str) -> ReadyQueue:
        name = ready_queue_name(source.name, site)
        queue = self.ready.get(name)
        if queue is None or queue._closed:
            path = self.paths.path_config(source.name, site, domain)
            queue = ReadyQueue(
                source=source,
                site=site,
                path=path,
                connect=self.connect,
                outcomes=self.outcomes,
                expires_at=self.outcomes.expires_at,
                clock=self.clock,
                shared=self._shared_limits(path),
                domain=domain,
            )
            queue.suspended = self.ready_queue_suspended(name)
            self.ready[name] = queue
            assert self._nursery is not None, "Egress.run must be started first"
            self._nursery.start_soon(self._supervise, queue)
        return queue

    def _shared_limits(self, path) -> SharedLimits | None:
        """The provider-wide limits this path shares with the provider's other ready queues."""
        if not path.provider or (path.provider_connection_limit is None and path.provider_max_message_rate is None):
            return None
        shared = self.shared.get(path.provider)
        if shared is None:
            shared = self.shared[path.provider] = SharedLimits(path.provider)
        shared.configure(path.provider_connection_limit, path.provider_max_message_rate)
        return shared

    def reload(self, paths: EgressPathProvider) -> None:
        """New shaping: live ready queues take their new options at once."""
        self.paths = paths
        for queue in self.queues():
            path = paths.path_config(queue.source.name, queue.site, queue.domain)
            shared = self._shared_limits(path)
            if shared is not queue.shared:
                if queue.shared is not None:
                    queue.shared.members.discard(queue)
                queue.shared = shared
                if shared is not None:
                    shared.members.add(queue)
            queue.set_path(path)

    async def _supervise(self, queue: ReadyQueue) -> None:
        try:
            await queue.run(linger_s=self.linger_s)
        except Exception:
            self.crashed += 1
            queue._closed = True
            returned = queue.drain()
            log.exception("ready queue %s failed; %d messages go back to their scheduled queues",
                          queue.name, len(returned))
            # Back without an attempt counted, after a pause so a bug cannot spin.
            due = self.clock() + RETURN_AFTER_CRASH_S
            for message in returned:
                self.scheduler.add(message, due)
        finally:
            if self.ready.get(queue.name) is queue:
                del self.ready[queue.name]
                self.reaped += 1

    def queues(self) -> Sequence[ReadyQueue]:
        return list(self.ready.values())
