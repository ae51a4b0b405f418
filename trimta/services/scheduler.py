"""Scheduled queues: where every message waits until it is due, one queue per
``campaign:tenant@domain``.

All waiting messages share one timer structure, a heap of (due, sequence, message),
and one task sleeps until the earliest due time, so a hundred thousand queues cost a
dict entry each, not a task each. A queue exists while it holds messages: created on
first use, reaped when empty.

Time comes from `clock` (wall-clock seconds in production; trio's virtual clock in
tests), and the task sleeps on trio's clock for the difference, so both agree.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from trimta.core.message import Message
from trimta.core.retry import QueueConfig
from trimta.core.throttle import Gcra
from trimta.core.units import Rate

log = logging.getLogger(__name__)


class ScheduledQueue:
    """One ``campaign:tenant@domain`` queue: its config, throttle and count."""

    __slots__ = ("name", "tenant", "campaign", "domain", "config", "throttle", "count", "oldest_created", "changed")

    def __init__(self, name: str, tenant: str | None, campaign: str | None, domain: str, config: QueueConfig,
                 throttle: Gcra | None = None) -> None:
        self.name = name
        self.tenant = tenant
        self.campaign = campaign
        self.domain = domain
        self.config = config
        self.throttle = throttle
        self.count = 0
        self.oldest_created = math.inf
        self.changed = -math.inf  # when a message last joined or left (the scheduler's clock)


@dataclass(frozen=True, slots=True)
class QueueSummary:
    name: str
    tenant: str | None
    campaign: str | None
    domain: str
    count: int
    oldest_created: float | None


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    queues: int
    scheduled: int
    dispatched: int
    next_due: float | None


class Scheduler:
    """Holds messages until due, then hands each to `dispatch` (synchronously)."""

    def __init__(
        self,
        *,
        queue_config: Callable[[str | None, str | None, str], QueueConfig],
        dispatch: Callable[[Message], None],
        clock: Callable[[], float] = time.time,
        shares_rate: Callable[[Rate], bool] | None = None,
    ) -> None:
        self._queue_config = queue_config
        # With [cluster]: which max_message_rates the nodes share (the egress takes those;
        # only the others, "local:", are throttled here).
        self._shares_rate = shares_rate
        self._dispatch = dispatch
        self.clock = clock
        self._queues: dict[str, ScheduledQueue] = {}
        self._heap: list[tuple[float, int, Message]] = []
        self._seq = itertools.count()
        self._scheduled: dict[str, Message] = {}
        # Suspended messages, by the suspension holding them: out of the heap, still
        # counted in their scheduled queue, released when the suspension ends.
        self._held: dict[str, dict[str, Message]] = {}
        self._held_by: dict[str, str] = {}
        self._wakeup = trio.Event()
        self._dispatched = 0

    # --- adding and removing -----------------------------------------------------------

    def reload(self, queue_config: Callable[[str | None, str | None, str], QueueConfig]) -> None:
        """New queue settings: existing queues take them now (throttles restart)."""
        self._queue_config = queue_config
        for queue in self._queues.values():
            config = queue_config(queue.tenant, queue.campaign, queue.domain)
            if config != queue.config:
                queue.config = config
                queue.throttle = self._throttle(config)

    def _throttle(self, config: QueueConfig) -> Gcra | None:
        rate = config.max_message_rate
        if rate is None or (self._shares_rate is not None and self._shares_rate(rate)):
            return None
        return Gcra.from_rate(rate)

    def config_for(self, message: Message) -> QueueConfig:
        """The message's queue config, without creating the queue."""
        queue = self._queues.get(message.queue)
        if queue is not None:
            return queue.config
        return self._queue_config(message.tenant, message.campaign, message.domain)

    def queue_for(self, message: Message) -> ScheduledQueue:
        queue = self._queues.get(message.queue)
        if queue is None:
            config = self._queue_config(message.tenant, message.campaign, message.domain)
            queue = ScheduledQueue(message.queue, message.tenant, message.campaign, message.domain, config,
                                   self._throttle(config))
            self._queues[message.queue] = queue
        return queue

    def add(self, message: Message, due: float | None = None) -> None:
        """Schedule `message` at `due` (now if None). Never blocks."""
        due = self.clock() if due is None else due
        message.due = due
        queue = self.queue_for(message)
        if message.id not in self._scheduled:
            queue.count += 1
            queue.oldest_created = min(queue.oldest_created, message.created)
            queue.changed = self.clock()
        self._scheduled[message.id] = message
        heapq.heappush(self._heap, (due, next(self._seq), message))
        if self._heap[0][2] is message:
            self._wakeup.set()

    def discard(self, message_id: str) -> Message | None:
        """Take a waiting message out (admin bounce, ...); its heap entry dies lazily."""
        message = self._scheduled.pop(message_id, None)
        if message is None:
            key = self._held_by.pop(message_id, None)
            if key is not None:
                message = self._held[key].pop(message_id)
        if message is not None:
            self._left(message)
        return message

    def hold(self, message: Message, key: str) -> None:
        """Keep `message` aside under suspension `key` (no attempt counted)."""
        if self._scheduled.pop(message.id, None) is None and message.id not in self._held_by:
            queue = self.queue_for(message)
            queue.count += 1
            queue.oldest_created = min(queue.oldest_created, message.created)
        self._held.setdefault(key, {})[message.id] = message
        self._held_by[message.id] = key

    def release(self, key: str, due: float | None = None) -> int:
        """Put every message held under `key` back on the timer (due now by default)."""
        held = self._held.pop(key, {})
        due = self.clock() if due is None else due
        for message_id, message in held.items():
            del self._held_by[message_id]
            message.due = due
            self._scheduled[message_id] = message
            heapq.heappush(self._heap, (due, next(self._seq), message))
        if held:
            self._wakeup.set()
        return len(held)

    def held(self) -> Iterator[tuple[str, Message]]:
        """(suspension id, message) for every held message."""
        return iter([(key, m) for key, group in self._held.items() for m in group.values()])

    def _left(self, message: Message) -> None:
        queue = self._queues.get(message.queue)
        if queue is None:
            return
        queue.count -= 1
        queue.changed = self.clock()
        if queue.count <= 0:
            del self._queues[message.queue]

    # --- the timer task ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch messages as they fall due, until cancelled."""
        task_status.started()
        while True:
            self.dispatch_due()
            self._wakeup = trio.Event()
            if self._heap:
                delay = self._heap[0][0] - self.clock()
                with trio.move_on_after(max(delay, 0.0)):
                    await self._wakeup.wait()
            else:
                await self._wakeup.wait()

    def dispatch_due(self) -> int:
        """Hand every due message to `dispatch`; returns how many went."""
        heap = self._heap
        now = self.clock()
        sent = 0
        while heap and heap[0][0] <= now:
            due, _, message = heapq.heappop(heap)
            if self._scheduled.get(message.id) is not message or message.due != due:
                continue  # discarded, or rescheduled since: a stale entry
            queue = self._queues[message.queue]
            if queue.throttle is not None:
                wait = queue.throttle.try_acquire(now)
                if wait > 0:
                    # The queue's max_message_rate says not yet: no attempt is counted.
                    message.due = now + wait
                    heapq.heappush(heap, (message.due, next(self._seq), message))
                    continue
            del self._scheduled[message.id]
            self._left(message)
            self._dispatched += 1
            sent += 1
            try:
                self._dispatch(message)
            except Exception:
                log.exception("dispatch of %s failed; retrying in 60s", message.id)
                self.add(message, now + 60.0)
            if sent % 1000 == 0:
                now = self.clock()
        return sent

    # --- observation -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._scheduled) + len(self._held_by)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._scheduled or message_id in self._held_by

    def find(self, message_id: str) -> tuple[Message, str] | None:
        """A waiting message and its state: ``"scheduled"`` or ``"suspended"``."""
        if message_id in self._scheduled:
            return self._scheduled[message_id], "scheduled"
        key = self._held_by.get(message_id)
        if key is not None:
            return self._held[key][message_id], "suspended"
        return None

    def messages(self) -> Iterator[Message]:
        """Every waiting message, suspended ones included."""
        return iter([*self._scheduled.values(), *(m for g in self._held.values() for m in g.values())])

    def queue_messages(self, name: str) -> Iterator[tuple[Message, str]]:
        """The waiting messages of scheduled queue `name` with their state (``"scheduled"``,
        ``"suspended"``), lazily: a scan of the waiting messages, stopped when the caller has
        enough. Take what is wanted before awaiting anything (the queues change meanwhile)."""
        if name not in self._queues:
            return
        for message in self._scheduled.values():
            if message.queue == name:
                yield message, "scheduled"
        for group in self._held.values():
            for message in group.values():
                if message.queue == name:
                    yield message, "suspended"

    def last_changed(self, name: str) -> float | None:
        """When a message last joined or left scheduled queue `name` (None: not since it was made)."""
        q = self._queues.get(name)
        return q.changed if q is not None and q.changed != -math.inf else None

    def queue(self, name: str) -> QueueSummary | None:
        """One scheduled queue's summary, None if it holds no message."""
        q = self._queues.get(name)
        if q is None:
            return None
        return QueueSummary(q.name, q.tenant, q.campaign, q.domain, q.count,
                            None if q.oldest_created == math.inf else q.oldest_created)

    def queues(self) -> list[QueueSummary]:
        return [
            QueueSummary(q.name, q.tenant, q.campaign, q.domain, q.count,
                         None if q.oldest_created == math.inf else q.oldest_created)
            for q in self._queues.values()
        ]

    def statistics(self) -> SchedulerStatistics:
        while self._heap and self._scheduled.get(self._heap[0][2].id) is not self._heap[0][2]:
            heapq.heappop(self._heap)
        return SchedulerStatistics(
            queues=len(self._queues),
            scheduled=len(self._scheduled) + len(self._held_by),
            dispatched=self._dispatched,
            next_due=self._heap[0][0] if self._heap else None,
        )
