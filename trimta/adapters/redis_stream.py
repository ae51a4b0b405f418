"""Log records to Redis streams: one XADD per record, one pipeline per batch (coredis).

Each record becomes a stream entry with one field, ``record``, holding the same JSON
as the log file's line. A batch is one pipeline (the XADDs written together, replies
read together, one round trip); the batch counts as confirmed once every XADD has
answered with an entry ID. With `maxlen`, each XADD trims the stream with
``MAXLEN ~ n`` (approximate: Redis trims whole macro nodes, so the stream keeps at
least `n` entries and a little more, and trimming stays cheap).

coredis runs on trio through anyio; its client lives inside `session()` (its
connection pool owns a task group), reconnecting by itself after Redis comes back.
Errors (no connection, a timeout, an error reply) are translated here into
`TransportError`; a pipeline that failed part way may have added some entries, which
the resent batch adds again (at least once).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import coredis
import coredis.exceptions
import trio
from coredis.tokens import PureToken

from trimta.adapters.hook_transport import TransportError
from trimta.adapters.loghook_config import RedisStreamHookConfig

RECORD_FIELD = b"record"


class RedisStreamTransport:
    """A `BatchTransport` that XADDs every record of a batch to its stream."""

    def __init__(self, config: RedisStreamHookConfig) -> None:
        self.config = config
        self._client: coredis.Redis | None = None
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        timeout = self.config.delivery.timeout_s
        client = coredis.Redis.from_url(
            self.config.url, stream_timeout=timeout, connect_timeout=timeout, verify_version=False,
        )
        try:
            async with client:
                self._client = client
                yield
        finally:
            self._client = None
            self._connected = False

    def streams(self, batch: Sequence[tuple[int, bytes]]) -> list[str]:
        """The stream each record goes to (the template rendered over the record's fields)."""
        template = self.config.stream
        if template.is_constant:
            return [template.text] * len(batch)
        return [template.render(json.loads(record)) for _, record in batch]

    async def send(self, batch: Sequence[tuple[int, bytes]]) -> None:
        client = self._client
        if client is None:  # pragma: no cover (the relay sends inside the session)
            raise TransportError("not connected")
        maxlen = self.config.maxlen
        strategy: Literal[PureToken.MAXLEN] | None = PureToken.MAXLEN if maxlen is not None else None
        approximately: Literal[PureToken.APPROXIMATELY] | None = PureToken.APPROXIMATELY if maxlen is not None else None
        try:
            with trio.fail_after(self.config.delivery.timeout_s):
                async with client.pipeline(transaction=False) as pipe:
                    replies = [
                        pipe.xadd(stream, {RECORD_FIELD: record}, trim_strategy=strategy, threshold=maxlen,
                                  trim_operator=approximately)
                        for stream, (_, record) in zip(self.streams(batch), batch)
                    ]
                ids = [await reply for reply in replies]
        except trio.TooSlowError:
            self._connected = False
            raise TransportError(
                f"no answer from {self.config.display_url} within {self.config.delivery.timeout_s:g}s") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            self._connected = False
            raise TransportError(f"{self.config.display_url}: {exc or type(exc).__name__}") from None
        self._connected = True
        if any(entry_id is None for entry_id in ids):  # pragma: no cover (only with NOMKSTREAM)
            raise TransportError(f"{self.config.display_url}: XADD added no entry")
