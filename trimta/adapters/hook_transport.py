"""What a journaled relay needs of the adapter that reaches its destination.

The relay (`trimta.services.journaled_relay`) keeps the journal, batches and retries;
a `BatchTransport` only hands one batch over and says whether the destination
confirmed it. Library errors are translated at the transport, once, into
`TransportError`, whose message is what the operator reads in the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class TransportError(Exception):
    """A batch was not confirmed: `message` says why; `retry_after_s` if the destination asked."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BatchTransport(Protocol):
    """Hands batches of journaled records to one destination.

    `session()` is held by the relay's deliverer for as long as it runs: connections
    live inside it and are closed on the way out, within a bounded time, even when
    cancelled. `send` returns once the destination confirmed every record of the
    batch, or raises `TransportError`; each row is (journal seq, the record as JSON).
    """

    @property
    def connected(self) -> bool: ...

    def session(self) -> AbstractAsyncContextManager[None]: ...

    async def send(self, batch: Sequence[tuple[int, bytes]]) -> None: ...
