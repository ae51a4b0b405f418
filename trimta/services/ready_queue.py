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

Supervision: a connection task that raises anyway (a bug in the client, a stream
raising something no network error explains) ends that connection only. Its
message goes back to its scheduled queue through `Outcomes.internal_error` (a
`Delayed` record says what happened; no attempt is counted), the error is logged
with its traceback, and the queue goes on. A message is in flight from the moment a connection takes
it until its outcome is recorded, so if even that fails, the error ends the queue's
group and the egress supervisor returns every queued and in-flight message to its
scheduled queue (`drain`).

Each connection task is a `Dispatcher` (KumoMTA's word): inspect-ready-q lists them with
their phase, and `abort` cancels one's scope; its socket closes without QUIT, and a
message it was sending goes back to this queue (an outcome already in hand is recorded
first, shielded, so an answered message is never sent twice).

Which connections to open and when one closes is decided by pure functions of a
snapshot (`trimta.core.ready_pool`); the task applies the decisions.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
import uuid
from dataclasses import dataclass
from typing import Protocol

import trio

from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.core.egress_options import apply_options
from trimta.core.message import Message
from trimta.core.mx import MxResolution
from trimta.core.outcome import Outcome
from trimta.core.pools import EgressSource
from trimta.core.queues import ready_queue_name
from trimta.core.shaping_automation import AutomationRule
from trimta.core.ready_pool import ConnectionState, PoolState, connection_limited, connections_to_open, should_close
from trimta.core.throttle import Gcra
from trimta.core.tls_report import TlsSessionSink
from trimta.core.units import Rate, format_rate
from trimta.services.mta_sts_sessions import StsQueueState
from trimta.services.cluster_limits import Lease, LimitsBackend
from trimta.services.smtp_client import ConnectionFailed

log = logging.getLogger(__name__)

# How often a ready queue looks for messages that waited in it past their max_age (each
# message is also checked when a connection takes it).
SWEEP_INTERVAL_S = 60.0

# With [cluster]: how long a queue waits before asking again for a connection lease that
# every node together has used up (the other nodes release theirs as their connections end).
LEASE_RETRY_S = 0.25
# How long a closing connection may spend giving its leases back (each call is bounded by
# the store's timeout; a lease not given back lapses by itself).
LEASE_RELEASE_S = 5.0
# With [cluster]: the longest a connection holding a shared lease waits idle for a message,
# so a node whose queue has run dry gives its slots to nodes that still have mail.
SHARED_IDLE_TIMEOUT_S = 2.0


class Connection(Protocol):
    """What a ready queue needs of an outbound SMTP connection."""

    @property
    def usable(self) -> bool: ...
    @property
    def session_id(self) -> str: ...
    async def send(self, sender: str, recipient: str, data: bytes, *, smtputf8: bool = False) -> Outcome: ...
    async def quit(self) -> None: ...
    async def aclose(self) -> None: ...


class Outcomes(Protocol):
    """Where a ready queue reports what happened to each message."""

    async def delivered(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> None: ...
    async def failed_over(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> bool: ...
    async def failed(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> None: ...
    async def expired(self, message: Message, queue: ReadyQueue | None = None) -> None: ...
    async def internal_error(self, message: Message, error: BaseException, queue: ReadyQueue | None) -> None: ...
    async def load_data(self, message: Message) -> bytes: ...


class Observer(Protocol):
    """Told of every attempt's outcome on a queue, before it is recorded (automation)."""

    def observe(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> None: ...


# (targets, source, path options, the message's destination domain: DANE reports its
# sessions for it, RFC 8460's policy domain; the dispatcher's session id, which its records carry)
Connect = Callable[[Sequence[tuple[str, str]], EgressSource, EgressPathConfig, str, str], Awaitable[Connection]]


@dataclass(slots=True)
class Dispatcher:
    """One connection task, as KumoMTA's inspect-ready-q lists its dispatchers and
    abort-ready-q-conn names one: by `session_id`, which the records of the session it
    opens carry too.

    `phase` is KumoMTA's DispatcherPhase name (Starting, AcquiringLease, Idle,
    MessageRateThrottled, AttemptingConnection, DeliveringMessage, Closing); `lease`
    names the limit an AcquiringLease waits for. Times are the queue's clock.
    """

    session_id: str
    started_at: float
    scope: trio.CancelScope
    phase: str = "Starting"
    phase_since: float = 0.0
    lease: str | None = None
    detail: str | None = None
    delivered: int = 0
    transfailed: int = 0
    failed: int = 0
    aborted: bool = False  # abort-ready-q-conn: no QUIT, the message in hand goes back

    def enter(self, phase: str, now: float, *, detail: str | None = None, lease: str | None = None) -> None:
        if phase != self.phase or lease != self.lease:
            self.phase, self.phase_since, self.lease = phase, now, lease
        self.detail = detail


@dataclass(frozen=True, slots=True)
class QueueState:
    """A state a ready queue is in (KumoMTA's QueueState): why, and since when (queue clock)."""

    context: str
    since: float


def _state(current: QueueState | None, context: str | None, now: float) -> QueueState | None:
    """The state after seeing `context` now: kept (with its start) while it stays the same."""
    if context is None:
        return None
    if current is not None and current.context == context:
        return current
    return QueueState(context, now)


@dataclass(frozen=True, slots=True)
class _ReservedTurn:
    """A message-rate turn reserved for a connection being opened (`Gcra.try_reserve`)."""

    limiters: list[Gcra]


class SharedLimits:
    """Limits shared by every ready queue of one provider (``provider_connection_limit``,
    ``provider_max_message_rate``): one connection count and one GCRA for all of them."""

    def __init__(self, name: str, connection_limit: int | None = None, message_rate: Rate | None = None) -> None:
        self.name = name
        self.connections = 0
        self.members: set[ReadyQueue] = set()
        self.connection_limit: int | None = None
        self.message_rate: Gcra | None = None
        self._rate: Rate | None = None
        self.configure(connection_limit, message_rate)

    def configure(self, connection_limit: int | None, message_rate: Rate | None) -> None:
        self.connection_limit = connection_limit
        if message_rate is None:
            self.message_rate = None
        elif self.message_rate is None or self._rate != message_rate:
            self.message_rate = Gcra.from_rate(message_rate)
        self._rate = message_rate

    def room(self) -> int | None:
        """Connections the limit still allows; None without a limit."""
        return None if self.connection_limit is None else max(0, self.connection_limit - self.connections)

    def released(self) -> None:
        for queue in self.members:
            queue.wake()


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
    provider: str = ""  # provider_name of the path ("" for none)
    connections_total: int = 0  # connections established since the queue started


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
        observer: Observer | None = None,
        automation_rules: Sequence[AutomationRule] = (),
        limits: LimitsBackend | None = None,
    ) -> None:
        self.source = source
        # With [cluster]: the limits several nodes share (those not written "local:") go
        # through it, not through this queue's own limiters.
        self.limits = limits
        # The last shared lease asked for was refused: open one connection at a time (a
        # probe) until one gets a lease, rather than a burst of refusals.
        self._lease_refused = False
        self._leasing = 0  # connection tasks asking for their leases now
        self.site = site
        self.name = ready_queue_name(source.name, site)
        # The domain whose message created it: its path options are looked up with it.
        self.domain = domain or site
        self.observer = observer
        # The shaping's automation rules watching this queue's responses (the observer reads them).
        self.automation_rules = tuple(automation_rules)
        self.named_rates: tuple[Gcra, ...] = ()  # additional_message_rate_throttles (`share_rates`)
        self.named_limits: tuple[SharedLimits, ...] = ()  # additional_connection_limits (`share_limits`)
        self._configured = path  # as the path provider gives it; `path` has the overrides laid over
        self._overrides: dict[str, object] = {}
        self.path = path
        self.connect = connect
        self.outcomes = outcomes
        self.expires_at = expires_at
        self.clock = clock
        self.resolution: MxResolution | None = None
        # MTA-STS: the policies of the domains fed into it, and where sessions are reported.
        self.mta_sts = StsQueueState()
        self.tls_sink: TlsSessionSink | None = None
        self._by_queue: OrderedDict[str, deque[Message]] = OrderedDict()
        self._count = 0
        self._in_flight: dict[str, Message] = {}
        self._dispatchers: dict[str, Dispatcher] = {}  # the connection tasks, by session id
        # KumoMTA's ready-queue states: (context, since) while a limit holds connections back.
        self._limited: QueueState | None = None  # a connection limit is full
        self._lease_limited: QueueState | None = None  # [cluster]: a shared limit's lease was refused
        self._rate_throttled: QueueState | None = None  # max_connection_rate says wait
        self._waiting = trio.lowlevel.ParkingLot()
        self._connections = 0
        self._idle = 0
        self._starting = 0  # started, not yet running: each will take a message or idle
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._failures = 0
        self._paused_until = -math.inf
        self.suspended = False
        self._connection_rate = self._local_limiter(path.max_connection_rate)
        self._message_rate = self._local_limiter(path.max_message_rate)
        self._delivered = 0
        self._failed = 0
        self._connections_total = 0
        self._changed = trio.Event()
        # Until when a message rate keeps connections closed (a wait longer than the
        # idle timeout is not spent holding a connection open).
        self._rate_blocked_until = -math.inf
        self._next_sweep = -math.inf
        self.shared = shared
        if shared is not None:
            shared.members.add(self)

    def _local_limiter(self, rate: Rate | None) -> Gcra | None:
        """This queue's own limiter for `rate`: none if there is no rate, or if it is shared."""
        if rate is None or (self.limits is not None and self.limits.shares(rate)):
            return None
        return Gcra.from_rate(rate)

    @property
    def closed(self) -> bool:
        """True once the queue takes no more messages (reaped, or its group failed)."""
        return self._closed

    def close(self) -> None:
        """Take no more messages (`add` returns False): the egress makes a new queue."""
        self._closed = True

    def _all_shared(self) -> list[SharedLimits]:
        """The provider's limits and the named ``additional_connection_limits`` this queue counts against."""
        return [self.shared, *self.named_limits] if self.shared is not None else list(self.named_limits)

    def _shared_room(self) -> int | None:
        rooms = [r for r in (limits.room() for limits in self._all_shared()) if r is not None]
        return min(rooms) if rooms else None

    def share_limits(self, limits: Sequence[SharedLimits]) -> None:
        """KumoMTA's ``additional_connection_limits``: named connection limits this queue
        counts against with every queue whose path names them."""
        for old in self.named_limits:
            old.members.discard(self)
        self.named_limits = tuple(limits)
        for new in self.named_limits:
            new.members.add(self)

    def share_rates(self, limiters: Sequence[Gcra]) -> None:
        """KumoMTA's ``additional_message_rate_throttles``: named message rates this queue
        shares with every queue whose path names them (smallest first)."""
        self.named_rates = tuple(limiters)

    def share(self, shared: SharedLimits | None) -> None:
        """Count against other provider-wide limits from now on (a reload); None: none."""
        if self.shared is not None:
            self.shared.members.discard(self)
        self.shared = shared
        if shared is not None:
            shared.members.add(self)

    def wake(self) -> None:
        """Look again at what to do now (a shared limit has room, an option changed)."""
        self._changed.set()

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

    def in_flight(self) -> list[Message]:
        """The messages being delivered now."""
        return list(self._in_flight.values())

    def scheduled_queue_names(self) -> list[str]:
        """The scheduled queues whose messages wait here now."""
        return [name for name, group in self._by_queue.items() if group]

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
            self.suspended, self.path.provider or "", self._connections_total,
        )

    def states(self) -> dict[str, QueueState]:
        """KumoMTA's ready-queue states in force, by name (``connection_limited``,
        ``connection_rate_throttled``; suspensions are the operator rules')."""
        out: dict[str, QueueState] = {}
        limited = self._lease_limited or self._limited
        if limited is not None:
            out["connection_limited"] = limited
        if self._rate_throttled is not None:
            out["connection_rate_throttled"] = self._rate_throttled
        return out

    def _limit_context(self, which: str | None) -> str | None:
        if which == "connection_limit":
            return f"connection_limit {self.path.connection_limit} for {self.name}"
        if which == "shared":
            full = [s.name for s in self._all_shared() if s.room() == 0]
            return f"connection limit {', '.join(full) or 'shared'} is full"
        return None

    def dispatchers(self) -> list[Dispatcher]:
        """The connection tasks running now, oldest first."""
        return sorted(self._dispatchers.values(), key=lambda d: d.started_at)

    def abort(self, session_id: str) -> bool:
        """Abort the connection task `session_id` (KumoMTA's abort-ready-q-conn): its socket
        is closed without QUIT and a message it was sending goes back to this queue for the
        next connection, its attempt not counted. False if no such task runs."""
        dispatcher = self._dispatchers.get(session_id.lower())
        if dispatcher is None:
            return False
        if not dispatcher.aborted:
            log.warning("%s: connection %s aborted by the operator (%s for %.1fs)", self.name, session_id,
                        dispatcher.phase, self.clock() - dispatcher.phase_since)
            dispatcher.aborted = True
            dispatcher.scope.cancel()
        return True

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
                        for limits in self._all_shared():
                            limits.members.discard(self)
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

    def pool_state(self) -> PoolState:
        """The snapshot `connections_to_open` decides on."""
        now = self.clock()
        return PoolState(
            queued=self._count,
            idle=self._idle,
            starting=self._starting,
            connections=self._connections,
            connection_limit=self.path.connection_limit,
            provider_room=self._shared_room(),
            held=self.suspended or self._paused_until > now or self._rate_blocked_until > now,
            message_rate_wait_s=self._message_rate_wait_s(now),
        )

    def _start_connections(self) -> None:
        """Start the connections `connections_to_open` asks for, as the connection rate allows;
        then note whether a connection limit or the connection rate holds more back."""
        assert self._nursery is not None
        wanted = connections_to_open(self.pool_state())
        if self._lease_refused:
            wanted = max(0, min(wanted, 1 - self._starting - self._leasing))
        now = self.clock()
        throttled: str | None = None
        for _ in range(wanted):
            if self._connection_rate is not None and self._connection_rate.try_acquire(now) > 0:
                rate = self.path.max_connection_rate
                throttled = f"max_connection_rate {format_rate(rate)}" if rate is not None else "max_connection_rate"
                break
            self._connections += 1
            self._starting += 1
            for limits in self._all_shared():
                limits.connections += 1
            self._nursery.start_soon(self._connection)
        # With the connections just started counted: what waits for a connection, and why.
        self._rate_throttled = _state(self._rate_throttled, throttled, now)
        self._limited = _state(self._limited, self._limit_context(connection_limited(self.pool_state())), now)

    async def _sweep_expired(self) -> None:
        """max_age holds in the ready queue too: expire what waited here too long."""
        now = self.clock()
        for m in self.remove_matching(lambda m: self.expires_at(m) <= now):
            await self.outcomes.expired(m, self)

    async def _next_message(self, dispatcher: Dispatcher, *, shared_leases: bool = False) -> Message | None:
        """Wait (idle) for a message; None when the idle deadline passes first."""
        scope = dispatcher.scope
        while True:
            if self.suspended or self._paused_until > self.clock():
                return None
            message = self._take()
            if message is not None:
                if self.expires_at(message) <= self.clock():
                    await self.outcomes.expired(message, self)
                    continue
                self._in_flight[message.id] = message  # until its outcome is recorded
                return message
            idle_s = self.path.idle_timeout_s
            if shared_leases:
                idle_s = min(idle_s, SHARED_IDLE_TIMEOUT_S)
            scope.deadline = trio.current_time() + idle_s
            dispatcher.enter("Idle", self.clock())
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

        Anything it raises besides cancellation is a bug: the message it holds goes back
        to its scheduled queue (`Outcomes.internal_error`) and the connection ends; the
        queue and its other connections go on.
        """
        self._starting -= 1  # running now: it takes a message below, or waits idle
        conn: Connection | None = None
        message: Message | None = None
        leases: list[Lease] = []
        scope = trio.CancelScope()
        now = self.clock()
        dispatcher = Dispatcher(str(uuid.uuid4()), now, scope, phase_since=now)
        self._dispatchers[dispatcher.session_id] = dispatcher
        try:
            with scope:
                message = await self._next_message(dispatcher)
                if message is None:
                    return
                scope.deadline = math.inf
                turn = await self._reserve_message_turn(message, dispatcher)
                if turn is None:
                    message = None  # put back: the queue waits
                    return
                if self.limits is not None and not await self._cluster_admit(message, self.limits, leases,
                                                                             dispatcher):
                    message = None  # put back: the queue waits for a lease or a connection turn
                    return
                # MTA-STS enforce: whether this connection will have required verified TLS.
                verified = self.mta_sts.path_for(self.path, message.destination).enable_tls is TlsPolicy.REQUIRED
                dispatcher.enter("AttemptingConnection", self.clock())
                conn = await self._open(message, dispatcher)
                if conn is None:
                    message = None  # its outcome is recorded
                    return
                sent = 0
                while message is not None:
                    if sent and not verified and self.mta_sts.enforced(message.destination):
                        # Mail under MTA-STS enforce: not over this connection, the next is opened for it.
                        self._in_flight.pop(message.id, None)
                        self._put_back(message)
                        self._changed.set()
                        message = None
                        break
                    # A message in hand: the idle deadline set while waiting for it is over.
                    scope.deadline = math.inf
                    if not sent:
                        await self._use_reserved_turn(turn, dispatcher)
                    elif not await self._wait_for_message_rate(message, dispatcher):
                        message = None  # put back: the wait is longer than the idle timeout
                        break
                    if self.limits is not None and not await self._shared_message_turn(message, self.limits,
                                                                                       dispatcher):
                        message = None  # put back, as above, for a rate shared by the nodes
                        break
                    dispatcher.enter("DeliveringMessage", self.clock(), detail=f"message {message.id}")
                    await self._deliver(conn, message, dispatcher)
                    message = None
                    sent += 1
                    if should_close(ConnectionState(
                        usable=conn.usable, sent=sent, max_deliveries=self.path.max_deliveries_per_connection,
                        connections=self._connections, connection_limit=self.path.connection_limit,
                    )) or (leases and self.limits is not None and not self.limits.keep(leases)):
                        break
                    message = await self._next_message(dispatcher, shared_leases=bool(leases))
            if message is not None:  # cut short by the idle deadline or an abort, a message in hand
                self._in_flight.pop(message.id, None)
                self._put_back(message)
                message = None
        except Exception as exc:
            log.exception("connection task of %s failed%s", self.name,
                          f"; message {message.id} goes back to its scheduled queue" if message else "")
            if message is not None:
                # Raising here ends the queue's group; the message is still in flight
                # then, and the egress supervisor returns it.
                await self.outcomes.internal_error(message, exc, self)
                self._in_flight.pop(message.id, None)
        finally:
            # The slot is free only once the socket is: limits count open connections.
            dispatcher.enter("Closing", self.clock())
            if conn is not None:
                with trio.CancelScope(shield=True):
                    if not dispatcher.aborted:
                        with trio.move_on_after(self.path.rset_timeout_s):
                            await conn.quit()
                    await conn.aclose()
            if leases:
                await self._release(leases)
            self._dispatchers.pop(dispatcher.session_id, None)
            self._connections -= 1
            self._changed.set()
            for limits in self._all_shared():
                limits.connections -= 1
                limits.released()

    # --- limits shared by the nodes ([cluster]) ------------------------------------------------

    def _shared_rates(self, limits: LimitsBackend) -> list[tuple[str, str, Rate]]:
        """The message rates this queue shares with the other nodes: (limit, scope, rate), smallest first."""
        path = self.path
        out: list[tuple[str, str, Rate]] = []
        if path.max_message_rate is not None and limits.shares(path.max_message_rate):
            out.append(("max_message_rate", self.name, path.max_message_rate))
        rate = path.provider_max_message_rate
        if self.shared is not None and rate is not None and limits.shares(rate):
            out.append(("provider_max_message_rate", self.shared.name, rate))
        out += [("additional_message_rate_throttles", name, rate)
                for name, rate in path.additional_message_rate_throttles if limits.shares(rate)]
        return sorted(out, key=lambda entry: entry[2].per_second)

    def _shared_connection_limits(self, limits: LimitsBackend) -> list[tuple[str, int]]:
        """The connection limits this queue shares with the other nodes: (lease scope, limit)."""
        path = self.path
        out: list[tuple[str, int]] = []
        if limits.shares(path.connection_limit_local):
            out.append((f"connection_limit:{self.name}", path.connection_limit))
        if (self.shared is not None and path.provider_connection_limit is not None
                and limits.shares(path.provider_connection_limit_local)):
            out.append((f"provider_connection_limit:{self.shared.name}", path.provider_connection_limit))
        out += [(f"named:{name}", limit.limit) for name, limit in path.additional_connection_limits
                if limits.shares(limit.local)]
        return out

    def _give_back(self, message: Message, wait_s: float) -> None:
        """Put a taken message back, and open no connection for `wait_s`."""
        self._in_flight.pop(message.id, None)
        self._put_back(message)
        self._rate_blocked_until = max(self._rate_blocked_until, self.clock() + wait_s)
        self._changed.set()

    async def _cluster_admit(self, message: Message, limits: LimitsBackend, leases: list[Lease],
                             dispatcher: Dispatcher) -> bool:
        """Before connecting: a lease of every shared connection limit, then a turn of the
        shared connection rate. False (message put back, leases given back) if one is refused."""
        for scope, limit in self._shared_connection_limits(limits):
            dispatcher.enter("AcquiringLease", self.clock(), lease=scope)
            self._leasing += 1
            try:
                lease = await limits.lease(scope, limit)
            finally:
                self._leasing -= 1
            self._lease_refused = lease is None
            if lease is None:
                self._lease_limited = _state(self._lease_limited, f"TooManyLeases for {scope}", self.clock())
                await self._release(leases)
                self._give_back(message, LEASE_RETRY_S)
                return False
            leases.append(lease)
        self._lease_limited = None
        rate = self.path.max_connection_rate
        if rate is not None and limits.shares(rate):
            wait = await limits.take("max_connection_rate", self.name, rate)
            if wait > 0:
                self._rate_throttled = _state(self._rate_throttled,
                                              f"max_connection_rate {format_rate(rate)} (shared by the nodes)",
                                              self.clock())
                await self._release(leases)
                self._give_back(message, wait)
                return False
            self._rate_throttled = None
        return True

    async def _release(self, leases: list[Lease]) -> None:
        limits = self.limits
        assert limits is not None
        with trio.CancelScope(shield=True), trio.move_on_after(LEASE_RELEASE_S):
            while leases:
                await limits.release(leases.pop())

    async def _shared_message_turn(self, message: Message, limits: LimitsBackend, dispatcher: Dispatcher) -> bool:
        """Wait for a turn of every message rate shared with the other nodes; False (message
        put back) if a wait is longer than the idle timeout."""
        for limit, scope, rate in self._shared_rates(limits):
            while (wait := await limits.take(limit, scope, rate)) > 0:
                if wait > self.path.idle_timeout_s:
                    self._give_back(message, wait)
                    return False
                dispatcher.enter("MessageRateThrottled", self.clock())
                await trio.sleep(wait)
        return True

    def _message_limiters(self) -> list[Gcra]:
        own = [g for g in (self._message_rate, self.shared.message_rate if self.shared else None) if g]
        return own + list(self.named_rates) if self.named_rates else own

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

    async def _wait_for_message_rate(self, message: Message, dispatcher: Dispatcher, *,
                                     reserve: bool = False) -> bool:
        """Wait for the message rate; False (message put back) if that would idle too long."""
        while (wait := self._message_wait_s(self.clock(), reserve=reserve)) > 0:
            if wait > self.path.idle_timeout_s:
                self._in_flight.pop(message.id, None)
                self._put_back(message)
                self._rate_blocked_until = self.clock() + wait
                self._changed.set()
                return False
            dispatcher.enter("MessageRateThrottled", self.clock())
            await trio.sleep(wait)
        return True

    async def _reserve_message_turn(self, message: Message, dispatcher: Dispatcher) -> _ReservedTurn | None:
        """Wait for the message rate and reserve the turn for a connection about to be
        opened; None (message put back) if that would idle too long."""
        if not await self._wait_for_message_rate(message, dispatcher, reserve=True):
            return None
        # No checkpoint since the reservation: these are the limiters that made it.
        return _ReservedTurn(self._message_limiters())

    async def _use_reserved_turn(self, turn: _ReservedTurn, dispatcher: Dispatcher) -> None:
        """Count the reserved turn's message as it is sent, once the rate's cap has room.

        The connection waits here even past its idle timeout, since it was opened for
        this turn: only until the oldest message in the rate's count is a period old
        (for a limit too large to log, until its next interval).
        """
        while (wait := max((g.redeem_wait_s(self.clock()) for g in turn.limiters), default=0.0)) > 0:
            dispatcher.enter("MessageRateThrottled", self.clock())
            await trio.sleep(wait)
        now = self.clock()
        for g in turn.limiters:
            g.redeem(now)

    async def _open(self, message: Message, dispatcher: Dispatcher) -> Connection | None:
        """Connect for `message`; on failure its outcome is recorded and None returned."""
        resolution = self.resolution
        targets = resolution.targets if resolution is not None else ()
        path = self.mta_sts.path_for(self.path, message.destination)
        try:
            conn = await self.connect(targets, self.source, path, message.destination, dispatcher.session_id)
        except ConnectionFailed as failure:
            dispatcher.transfailed += not failure.outcome.permanent
            dispatcher.failed += failure.outcome.permanent
            outcome = self.mta_sts.failed(message.destination, failure.outcome, failure.failures, self.tls_sink)
            self._failed += 1
            if failure.outcome.connection_failure:
                self._failures += 1
            if self._failures >= self.path.consecutive_connection_failures_before_delay:
                self._paused_until = self.clock() + self.path.delay_after_connection_failures_s
                log.warning("%s: %d connection failures in a row, pausing %.0fs",
                            self.name, self._failures, self.path.delay_after_connection_failures_s)
                self._failures = 0
            if self.observer is not None:
                self.observer.observe(message, outcome, self)
            await self.outcomes.failed(message, outcome, self)
            self._in_flight.pop(message.id, None)
            return None
        self._failures = 0
        self._connections_total += 1
        self.mta_sts.opened(message.destination, conn, path, self.tls_sink)
        return conn

    async def _deliver(self, conn: Connection, message: Message, dispatcher: Dispatcher) -> None:
        """One transaction for `message`, and its outcome recorded; then it is no longer in flight.

        An outcome in hand is recorded even if the connection is being aborted (or the
        daemon stopped) meanwhile: a message the receiver took is never sent again."""
        data = await self.outcomes.load_data(message)
        outcome = await conn.send(message.sender, message.recipient, data, smtputf8=message.reception.smtputf8)
        with trio.CancelScope(shield=True):
            if self.observer is not None:
                self.observer.observe(message, outcome, self)
            if outcome.delivered:
                self._delivered += 1
                dispatcher.delivered += 1
                await self.outcomes.delivered(message, outcome, self)
            elif self.path.try_next_host_on_transport_error and _transport_error(outcome, conn):
                # KumoMTA's option: logged, then straight to the next connection, not to a retry.
                self._failed += 1
                dispatcher.transfailed += 1
                self._in_flight.pop(message.id, None)
                if await self.outcomes.failed_over(message, outcome, self):
                    self._put_back(message)
                    self._changed.set()
                return
            else:
                self._failed += 1
                dispatcher.transfailed += not outcome.permanent
                dispatcher.failed += outcome.permanent
                await self.outcomes.failed(message, outcome, self)
            self._in_flight.pop(message.id, None)

    # --- operator actions ----------------------------------------------------------------------

    def set_automation_rules(self, rules: Sequence[AutomationRule]) -> None:
        self.automation_rules = tuple(rules)

    def set_path(self, path: EgressPathConfig) -> None:
        """New configured options (a reload); a lower connection_limit takes effect as connections end.

        Overrides in force (`set_overrides`) stay laid over them.
        """
        self._configured = path
        self._use_path(apply_options(path, self._overrides))

    def set_overrides(self, overrides: Mapping[str, object]) -> None:
        """Options laid over the configured ones (automation's SetConfig); empty: none."""
        self._overrides = dict(overrides)
        self._use_path(apply_options(self._configured, self._overrides))

    def _use_path(self, path: EgressPathConfig) -> None:
        if path.max_connection_rate != self.path.max_connection_rate:
            self._connection_rate = self._local_limiter(path.max_connection_rate)
        if path.max_message_rate != self.path.max_message_rate:
            self._message_rate = self._local_limiter(path.max_message_rate)
        self.path = path
        self._changed.set()

    def suspend(self, suspended: bool) -> None:
        self.suspended = suspended
        self._changed.set()
        if suspended:
            self._waiting.unpark_all()



# Timeouts and lost connections (4.4.2), protocol errors (4.5.0): the session failed, not the message.
_TRANSPORT_ERRORS = ((4, 4, 2), (4, 5, 0))


def _transport_error(outcome: Outcome, conn: Connection) -> bool:
    """Whether a failed attempt is the connection's fault (``try_next_host_on_transport_error``):
    a timeout, a broken connection, a protocol error, or a refusal before MAIL FROM."""
    if not outcome.transient:
        return False
    if outcome.command == "RSET":
        return True
    return not conn.usable and outcome.reply.enhanced in _TRANSPORT_ERRORS
