"""Log records to an AMQP 0-9-1 broker (RabbitMQ), with aio-pika through trio-asyncio.

aio-pika is asyncio-only; this module is the only place that knows it. `asyncio_bridge`
opens the one asyncio loop of the process (``trio_asyncio.open_loop()``), and every
call into aio-pika goes through ``trio_asyncio.aio_as_trio`` here: one crossing per
batch (connect if needed, publish every message, wait for every confirmation), never
one per record. What crosses back is None or a `TransportError`; no asyncio object
leaves this module.

A batch is confirmed by **publisher confirms** (the channel is opened in confirm
mode): the broker acks each message once it has taken responsibility for it (for a
persistent message on a durable queue, once written to disk). A nack, a closed
channel, a lost connection or no confirmation within `timeout` fails the batch; the
connection is dropped and opened again for the next attempt, and the relay resends
the whole batch (at least once).

Messages: the body is the record's JSON, as in the log file; ``content_type`` is
``application/json``, ``type`` the record's type, ``message_id`` ``<hook name>:<journal
seq>`` (the same for a resent copy, so a consumer can drop duplicates), ``app_id``
``trimta``; delivery mode 2 when `persistent`; `headers` rendered over the record.
Messages are published with ``mandatory`` off: a record the exchange routes nowhere
is confirmed and discarded by the broker, as with any publisher, so bind a queue (or
an alternate exchange) before pointing trimta at an exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq.exceptions
import pamqp.commands
import trio
import trio_asyncio

from trimta.adapters.hook_transport import TransportError
from trimta.adapters.loghook_config import AMQP_MAX_SHORT_STRING, AmqpHookConfig

CLOSE_TIMEOUT_S = 5.0

# What aio-pika and the layers under it raise for a broker or network failure.
_FAILURES = (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, OSError, asyncio.TimeoutError,
             ConnectionError, RuntimeError)


@asynccontextmanager
async def asyncio_bridge() -> AsyncIterator[None]:
    """The asyncio loop AMQP transports run on, for as long as this is entered (trio side).

    Close it only after every transport's session has ended.
    """
    async with trio_asyncio.open_loop():
        yield


class AmqpTransport:
    """A `BatchTransport` that publishes every record of a batch as one AMQP message."""

    def __init__(self, config: AmqpHookConfig) -> None:
        self.config = config
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await trio_asyncio.aio_as_trio(self._aio_close)()

    async def send(self, batch: Sequence[tuple[int, bytes]]) -> None:
        messages = [self._message(seq, record) for seq, record in batch]
        await trio_asyncio.aio_as_trio(self._aio_publish)(messages)

    def _message(self, seq: int, body: bytes) -> tuple[aio_pika.Message, str]:
        config = self.config
        record: dict[str, Any] = json.loads(body)
        routing_key = config.routing_key.render(record)
        if len(routing_key.encode("utf-8")) > AMQP_MAX_SHORT_STRING:
            routing_key = routing_key.encode("utf-8")[:AMQP_MAX_SHORT_STRING].decode("utf-8", "ignore")
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if config.persistent else aio_pika.DeliveryMode.NOT_PERSISTENT,
            message_id=f"{config.name}:{seq}",
            type=str(record.get("type", ""))[:AMQP_MAX_SHORT_STRING],
            app_id="trimta",
            headers={name: template.render(record) for name, template in config.headers} or None,
        )
        return message, routing_key

    # --- asyncio side (called only through aio_as_trio) ------------------------------------

    async def _aio_publish(self, messages: list[tuple[aio_pika.Message, str]]) -> None:
        timeout = self.config.delivery.timeout_s
        try:
            exchange = self._exchange
            if exchange is None or not self.connected:
                exchange = await asyncio.wait_for(self._aio_connect(), timeout)
            # return_exceptions: every publish is awaited to its end, none left unretrieved.
            confirmations = await asyncio.wait_for(
                asyncio.gather(*(exchange.publish(message, routing_key=key, mandatory=False)
                                 for message, key in messages), return_exceptions=True),
                timeout,
            )
            failed = next((c for c in confirmations if isinstance(c, BaseException)), None)
            if failed is not None:
                raise failed
        except asyncio.TimeoutError:
            await self._aio_close()
            raise TransportError(f"no confirmation from {self.config.display_url} within {timeout:g}s") from None
        except _FAILURES as exc:
            await self._aio_close()
            raise TransportError(f"{self.config.display_url}: {_describe(exc)}") from None
        refused = sum(1 for c in confirmations if not isinstance(c, pamqp.commands.Basic.Ack))
        if refused:
            raise TransportError(f"{self.config.display_url} refused (nacked) {refused} of {len(messages)} messages")

    async def _aio_connect(self) -> aio_pika.abc.AbstractExchange:
        await self._aio_close()
        connection = await aio_pika.connect(self.config.url, timeout=self.config.delivery.timeout_s)
        try:
            channel = await connection.channel(publisher_confirms=True)
            if self.config.exchange:
                exchange = await channel.get_exchange(self.config.exchange, ensure=True)
            else:
                exchange = channel.default_exchange
        except BaseException:
            await connection.close()
            raise
        self._connection, self._exchange = connection, exchange
        return exchange

    async def _aio_close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except _FAILURES:
                pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return f"not found: {exc}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
