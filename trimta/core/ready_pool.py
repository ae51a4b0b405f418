"""The ready queue's connection decisions, as pure functions over a snapshot.

A ready queue's task applies these; it decides nothing itself (the shape of
httpcore's connection pool: decide in pure code, do the I/O after). The snapshot
is small and immutable, so a test can ask "with 5 messages, 1 idle connection and
a limit of 3, how many open?" without a clock, a network or trio.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PoolState:
    """One ready queue's pool at one moment, as the opening decision sees it."""

    queued: int  # messages waiting in the ready queue
    idle: int  # connections waiting for a message
    starting: int  # connections started that have not yet taken a message or gone idle
    connections: int  # open or opening connections
    connection_limit: int
    provider_room: int | None  # connections a provider-wide limit still allows; None: no such limit
    held: bool  # suspended, paused after connection failures, or closed by a message rate
    message_rate_wait_s: float  # until the message rate allows one more message


def connections_to_open(state: PoolState) -> int:
    """How many connections to start now: one per message no connection can take, within limits.

    None while the queue is held. None either while connections are open and the
    message rate says wait: those connections send the next message when it
    allows, and a new one would only wait beside them.
    """
    if state.held:
        return 0
    if state.connections and state.message_rate_wait_s > 0:
        return 0
    wanted = state.queued - state.idle - state.starting
    room = state.connection_limit - state.connections
    if state.provider_room is not None:
        room = min(room, state.provider_room)
    return max(0, min(wanted, room))


def connection_limited(state: PoolState) -> str | None:
    """Which connection limit keeps messages waiting with no connection to take them:
    ``"connection_limit"`` (the path's), ``"shared"`` (a provider or named limit), or
    None when none does (no such message, the queue held, or room to open one)."""
    if state.held or state.queued - state.idle - state.starting <= 0:
        return None
    if state.connections >= state.connection_limit:
        return "connection_limit"
    if state.provider_room is not None and state.provider_room <= 0:
        return "shared"
    return None


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """One connection after a message: what the closing decision sees."""

    usable: bool  # the session can take another transaction
    sent: int  # messages this connection has sent
    max_deliveries: int  # max_deliveries_per_connection
    connections: int  # the queue's open connections, this one included
    connection_limit: int  # the path's limit now (a reload may have lowered it)


def should_close(state: ConnectionState) -> bool:
    """Whether the connection QUITs instead of taking the next message.

    It does when the session is no longer usable (421, a timeout), when it has sent
    its `max_deliveries_per_connection`, and when the queue has more connections
    than a reload's lower limit allows: connections above the limit end one by one
    as their messages finish, none is cut mid-transaction.
    """
    return (
        not state.usable
        or state.sent >= state.max_deliveries
        or state.connections > state.connection_limit
    )
