"""Ready queues: one per (egress source, site), each its own supervised task group.

A ready queue holds messages that are due for one egress path and runs the
connections that deliver them:

- Connection tasks number at most the path's `connection_limit`, and a new one starts
  only while there is work no idle connection can take.
- Each connection lives in a cancel scope whose deadline is `idle_timeout` from its last
  activity: the deadline is lifted while a transaction runs and set again when the
  connection goes back to waiting, so an idle connection closes at exactly that time.
- A connection sends at most `max_deliveries_per_connection` messages, then QUITs.
- `max_connection_rate` and `max_message_rate` are GCRA limiters; a connection does not
  sit open through a wait longer than its idle timeout. A new connection is opened only
  for a message turn reserved for it, and that message is counted when it is sent.
- `consecutive_connection_failures_before_delay` failed connections in a row pause the
  whole queue for `delay_after_connection_failures_s`.
- Fairness: messages are kept per scheduled queue and taken from those in turn, so a
  small tenant's message is not stuck behind a large tenant's backlog for the same site.

Failures are outcomes: a refused connection, a timeout, a TLS or protocol error gives
the message a transient (or permanent) outcome through `Outcomes`; nothing a peer
does raises out of a connection task.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from trimta.core.egress import EgressPathConfig
from trimta.core.message import Message
from trimta.core.mx import MxResolution
from trimta.core.pools import EgressSource
from trimta.core.queues import ready_queue_name
from trimta.core.throttle import Gcra
from trimta.services.smtp_client import ConnectionFailed

log = logging.getLogger(__name__)

# How often a ready queue looks for messages that waited in it past their max_age (each
# message is also checked when a connection takes it).
SWEEP_INTERVAL_S = 60.0


class Connection(Protocol):
    """What a ready queue needs of an outbound SMTP connection."""

    @property
    def usable(self) -> bool: ...
    async def send(self, sender: str, recipient: str, data: bytes, *, smtputf8: bool = False): ...
    async def quit(self) -> None: ...
    async def aclose(self) -> None: ...


class Outcomes(Protocol):
    """Where a ready queue reports what happened to each message."""

    async def delivered(self, message: Message, outcome, queue: ReadyQueue) -> None: ...
    async def failed(self, message: Message, outcome, queue: ReadyQueue) -> None: ...
    async def expired(self, message: Message, queue: ReadyQueue) -> None: ...
    async def load_data(self, message: Message) -> bytes: ...


Connect = Callable[[Sequence[tuple[str, str]], EgressSource, EgressPathConfig], Awaitable[Connection]]


@dataclass(frozen=True, slots=True)
class _ReservedTurn:
    """A message-rate turn reserved for a connection being opened (`Gcra.try_reserve`)."""

    limiters: list[Gcra]


class SharedLimits:
    """Limits shared by every ready queue of one provider (``provider_connection_limit``,
    ``provider_max_message_rate``): one connection count and one GCRA for all of them."""

    def __init__(self, name: str, connection_limit: int | None = None, message_rate=None) -> None:
        self.name = name
        self.connections = 0
        self.members: set[ReadyQueue] = set()
        self.connection_limit: int | None = None
        self.message_rate: Gcra | None = None
        self.configure(connection_limit, message_rate)

    def configure(self, connection_limit: int | None, message_rate) -> None:
        self.connection_limit = connection_limit
        if message_rate is None:
            self.message_rate = None
        elif self.message_rate is None or self._rate != message_rate:
            self.message_rate = Gcra.from_rate(message_rate)
        self._rate = message_rate

    def has_room(self) -> bool:
        return self.connection_limit is None or self.connections < self.connection_limit

    def released(self) -> None:
        for queue in self.members:
            queue._changed.set()


@dataclass(frozen=True, slots=True)
class ReadyQueueStatistics:
    name: str
    source: str
    site: str
    ready: int
    waiting_for_room: int  # due messages beyond max_ready: not ready yet, no attempt counted
    connections: int
    idle_connections: int
    connection_limit: int
    delivered: int
    failed: int
    consecutive_connection_failures: int
    paused_until: float | None
    suspended: bool


class ReadyQueue:
    """The messages due on one egress path, and the connections delivering them."""

    def __init__(
        self,
        *,
        source: EgressSource,
        site: str,
        path: EgressPathConfig,
        connect: Connect,
        outcomes: Outcomes,
        expires_at: Callable[[Message], float],
        clock: Callable[[], float],
        shared: SharedLimits | None = None,
        domain: str | None = None,
    ) -> None:
        self.source = source
        self.site = site
        self.name = ready_queue_name(source.name, site)
        # The domain whose message created it: its path options are looked up with it.
        self.domain = domain or site
        self.path = path
        self.connect = connect
        self.outcomes = outcomes
        self.expires_at = expires_at
        self.clock = clock
        self.resolution: MxResolution | None = None
        self._by_queue: OrderedDict[str, deque[Message]] = OrderedDict()
        self._count = 0
        self._in_flight: dict[str, Message] = {}
        self._waiting = trio.lowlevel.ParkingLot()
        self._connections = 0
        self._idle = 0
        self._starting = 0  # started, not yet running: each will take a message or idle
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._failures = 0
        self._paused_until = -math.inf
        self.suspended = False
        self._connection_rate = Gcra.from_rate(path.max_connection_rate) if path.max_connection_rate else None
        self._message_rate = Gcra.from_rate(path.max_message_rate) if path.max_message_rate else None
        self._delivered = 0
        self._failed = 0
        self._changed = trio.Event()
        # Until when a message rate keeps connections closed (a wait longer than the
        # idle timeout is not spent holding a connection open).
        self._rate_blocked_until = -math.inf
        self._next_sweep = -math.inf
        self.shared = shared
        if shared is not None:
            shared.members.add(self)

    # --- messages in --------------------------------------------------------------------

    def add(self, message: Message) -> bool:
        """Queue a due message; False if this ready queue has shut down (ask for a new one)."""
        if self._closed:
            return False
        bucket = self._by_queue.get(message.queue)
        if bucket is None:
            bucket = self._by_queue[message.queue] = deque()
        bucket.append(message)
        self._count += 1
        self._changed.set()
        if self._waiting:
            self._waiting.unpark()
        return True

    def _put_back(self, message: Message) -> None:
        """Return a taken message to the front of its scheduled queue's turn."""
        bucket = self._by_queue.get(message.queue)
        if bucket is None:
            bucket = self._by_queue[message.queue] = deque()
        bucket.appendleft(message)
        self._by_queue.move_to_end(message.queue, last=False)
        self._count += 1

    def _take(self) -> Message | None:
        """The next message, taking each scheduled queue in turn."""
        while self._by_queue:
            name, bucket = next(iter(self._by_queue.items()))
            message = bucket.popleft()
            self._count -= 1
            if bucket:
                self._by_queue.move_to_end(name)
            else:
                del self._by_queue[name]
            return message
        return None

    def remove_matching(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Take out (and return) the queued messages `predicate` accepts; in-flight ones stay."""
        taken: list[Message] = []
        for name in list(self._by_queue):
            kept: deque[Message] = deque()
            for m in self._by_queue[name]:
                (taken if predicate(m) else kept).append(m)
            if kept:
                self._by_queue[name] = kept
            else:
                del self._by_queue[name]
        self._count -= len(taken)
        return taken

    def find(self, message_id: str) -> tuple[Message, str] | None:
        if message_id in self._in_flight:
            return self._in_flight[message_id], "in_flight"
        for m in self.messages():
            if m.id == message_id:
                return m, "ready"
        return None

    def drain(self) -> list[Message]:
        """Remove and return every queued and in-flight message (for supervision)."""
        out = list(self._in_flight.values())
        self._in_flight.clear()
        while (m := self._take()) is not None:
            out.append(m)
        return out

    def messages(self) -> Iterator[Message]:
        for bucket in self._by_queue.values():
            yield from bucket

    def __len__(self) -> int:
        return self._count

    def statistics(self) -> ReadyQueueStatistics:
        paused = self._paused_until if self._paused_until > self.clock() else None
        ready = min(self._count, self.path.max_ready)
        return ReadyQueueStatistics(
            self.name, self.source.name, self.site, ready, self._count - ready, self._connections, self._idle,
            self.path.connection_limit, self._delivered, self._failed, self._failures, paused,
            self.suspended,
        )

    # --- the task group ---------------------------------------------------------------------

    async def run(self, *, linger_s: float = 10.0) -> None:
        """Run connections while there is work; return once empty and idle for `linger_s`."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                self._changed = trio.Event()
                if self.clock() >= self._next_sweep:
                    # A scan of every waiting message: once a minute, not on every event.
                    self._next_sweep = self.clock() + SWEEP_INTERVAL_S
                    await self._sweep_expired()
                self._start_connections()
                if self._count == 0 and self._connections == 0:
                    with trio.move_on_after(linger_s):
                        await self._changed.wait()
                    if self._count == 0 and self._connections == 0:
                        self._closed = True
                        if self.shared is not None:
                            self.shared.members.discard(self)
                        return
                    continue
                # Wake on news, or in a while to sweep expired messages and retry after pauses.
                with trio.move_on_after(self._next_check_s()):
                    await self._changed.wait()

    def _next_check_s(self) -> float:
        now = self.clock()
        if self._paused_until > now:
            return min(self._paused_until - now, 60.0)
        if self._rate_blocked_until > now:
            return min(self._rate_blocked_until - now, 60.0)
        if self._connection_rate is not None and self._count:
            return max(0.001, min(self._connection_rate.wait_s(now), 60.0))
        return 60.0

    def _start_connections(self) -> None:
        """Start connections for work that no idle connection can take."""
        assert self._nursery is not None
        now = self.clock()
        if self.suspended or self._paused_until > now or self._rate_blocked_until > now:
            return
        shared = self.shared
        if self._connections and self._message_rate_wait_s(now) > 0:
            return  # the connections there are already wait for the message rate
        while (
            self._count > self._idle + self._starting
            and self._connections < self.path.connection_limit
            and (shared is None or shared.has_room())
        ):
            if self._connection_rate is not None and self._connection_rate.try_acquire(now) > 0:
                return
            self._connections += 1
            self._starting += 1
            if shared is not None:
                shared.connections += 1
            self._nursery.start_soon(self._connection)

    async def _sweep_expired(self) -> None:
        """max_age holds in the ready queue too: expire what waited here too long."""
        now = self.clock()
        for m in self.remove_matching(lambda m: self.expires_at(m) <= now):
            await self.outcomes.expired(m, self)

    async def _next_message(self, scope: trio.CancelScope) -> Message | None:
        """Wait (idle) for a message; None when the idle deadline passes first."""
        while True:
            if self.suspended or self._paused_until > self.clock():
                return None
            message = self._take()
            if message is not None:
                if self.expires_at(message) <= self.clock():
                    await self.outcomes.expired(message, self)
                    continue
                return message
            scope.deadline = trio.current_time() + self.path.idle_timeout_s
            self._idle += 1
            try:
                await self._waiting.park()
            finally:
                self._idle -= 1
            if scope.cancel_called:
                return None

    async def _connection(self) -> None:
        """One outbound connection, from connect to QUIT.

        Its first message's rate turn is reserved before connecting (no connection is
        opened without a turn for it) and counted when the message is sent, so connect,
        banner and EHLO do not make it reach the receiver later than the count says.
        """
        self._starting -= 1  # running now: it takes a message below, or waits idle
        conn: Connection | None = None
        try:
            with trio.CancelScope() as scope:
                message = await self._next_message(scope)
                if message is None:
                    return
                scope.deadline = math.inf
                turn = await self._reserve_message_turn(message)
                if turn is None:
                    return  # not worth a connection yet: the queue waits
                conn = await self._open(message)
                if conn is None:
                    return
                sent = 0
                while message is not None:
                    if not sent:
                        await self._use_reserved_turn(turn)
                    elif not await self._wait_for_message_rate(message):
                        break  # the wait is longer than the idle timeout: close, the queue waits
                    scope.deadline = math.inf
                    await self._deliver(conn, message)
                    sent += 1
                    if (
                        not conn.usable
                        or sent >= self.path.max_deliveries_per_connection
                        or self._connections > self.path.connection_limit  # lowered by a reload
                    ):
                        break
                    message = await self._next_message(scope)
        except Exception:
            log.exception("connection task of %s failed", self.name)
        finally:
            # The slot is free only once the socket is: limits count open connections.
            if conn is not None:
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.path.rset_timeout_s):
                        await conn.quit()
                    await conn.aclose()
            self._connections -= 1
            self._changed.set()
            if self.shared is not None:
                self.shared.connections -= 1
                self.shared.released()

    def _message_limiters(self) -> list[Gcra]:
        return [g for g in (self._message_rate, self.shared.message_rate if self.shared else None) if g]

    def _message_rate_wait_s(self, now: float) -> float:
        return max((g.wait_s(now) for g in self._message_limiters()), default=0.0)

    def _message_wait_s(self, now: float, *, reserve: bool = False) -> float:
        """How long until the path's (and the provider's) message rate allows one more; if
        it allows one now, that one is taken (or, with `reserve`, reserved)."""
        limiters = self._message_limiters()
        wait = max((g.wait_s(now) for g in limiters), default=0.0)
        if wait == 0.0:
            for g in limiters:
                if reserve:
                    g.try_reserve(now)
                else:
                    g.try_acquire(now)
        return wait

    async def _wait_for_message_rate(self, message: Message, *, reserve: bool = False) -> bool:
        """Wait for the message rate; False (message put back) if that would idle too long."""
        while (wait := self._message_wait_s(self.clock(), reserve=reserve)) > 0:
            if wait > self.path.idle_timeout_s:
                self._put_back(message)
                self._rate_blocked_until = self.clock() + wait
                self._changed.set()
                return False
            await trio.sleep(wait)
        return True

    async def _reserve_message_turn(self, message: Message) -> _ReservedTurn | None:
        """Wait for the message rate and reserve the turn for a connection about to be
        opened; None (message put back) if that would idle too long."""
        if not await self._wait_for_message_rate(message, reserve=True):
            return None
        # No checkpoint since the reservation: these are the limiters that made it.
        return _ReservedTurn(self._message_limiters())

    async def _use_reserved_turn(self, turn: _ReservedTurn) -> None:
        """Count the reserved turn's message as it is sent, once the rate's cap has room.

        The connection waits here even past its idle timeout, since it was opened for
        this turn: only until the oldest message in the rate's count is a period old
        (for a limit too large to log, until its next interval).
        """
        while (wait := max((g.redeem_wait_s(self.clock()) for g in turn.limiters), default=0.0)) > 0:
            await trio.sleep(wait)
        now = self.clock()
        for g in turn.limiters:
            g.redeem(now)

    async def _open(self, message: Message) -> Connection | None:
        """Connect for `message`; on failure its outcome is recorded and None returned."""
        self._in_flight[message.id] = message
        resolution = self.resolution
        targets = resolution.targets if resolution is not None else ()
        try:
            conn = await self.connect(targets, self.source, self.path)
        except ConnectionFailed as failure:
            self._in_flight.pop(message.id, None)
            self._failed += 1
            if failure.outcome.connection_failure:
                self._failures += 1
            if self._failures >= self.path.consecutive_connection_failures_before_delay:
                self._paused_until = self.clock() + self.path.delay_after_connection_failures_s
                log.warning("%s: %d connection failures in a row, pausing %.0fs",
                            self.name, self._failures, self.path.delay_after_connection_failures_s)
                self._failures = 0
            await self.outcomes.failed(message, failure.outcome, self)
            return None
        self._failures = 0
        return conn

    async def _deliver(self, conn: Connection, message: Message) -> None:
        self._in_flight[message.id] = message
        try:
            data = await self.outcomes.load_data(message)
            outcome = await conn.send(message.sender, message.recipient, data, smtputf8=message.reception.smtputf8)
        finally:
            self._in_flight.pop(message.id, None)
        if outcome.kind == "delivered":
            self._delivered += 1
            await self.outcomes.delivered(message, outcome, self)
        else:
            self._failed += 1
            await self.outcomes.failed(message, outcome, self)

    # --- operator actions ----------------------------------------------------------------------

    def set_path(self, path: EgressPathConfig) -> None:
        """New options (a reload); a lower connection_limit takes effect as connections end."""
        if path.max_connection_rate != self.path.max_connection_rate:
            self._connection_rate = Gcra.from_rate(path.max_connection_rate) if path.max_connection_rate else None
        if path.max_message_rate != self.path.max_message_rate:
            self._message_rate = Gcra.from_rate(path.max_message_rate) if path.max_message_rate else None
        self.path = path
        self._changed.set()

    def suspend(self, suspended: bool) -> None:
        self.suspended = suspended
        self._changed.set()
        if suspended:
            self._waiting.unpark_all()

