"""Log hooks: every record a hook wants, durably, to an AMQP exchange or a Redis stream.

One `JournaledRelay` per ``[[logs.amqp]]`` and ``[[logs.redis_stream]]`` (the webhooks'
engine: a journal on disk per hook, batches, retries with backoff, at least once, in
order), with the broker's transport from the adapters. Journals live in
``<spool path>/loghooks/<name>.sqlite3`` and are capped at `max_journal_records`.

`run_log_hooks` runs them all. The asyncio loop that AMQP needs (aio-pika through
trio-asyncio) is opened only when an AMQP hook is configured, around the AMQP hooks
alone, and closed after their connections are: on shutdown each relay journals what
it holds, its transport closes its connection (bounded by the adapter's close
timeout), then the loop closes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from trimta.adapters.hook_transport import BatchTransport
from trimta.adapters.loghook_config import AmqpHookConfig, LogHookConfig, RedisStreamHookConfig
from trimta.adapters.webhook_journal import SqliteJournal, WebhookJournal
from trimta.services.journaled_relay import JournaledRelay, RelaySettings
from trimta.services.logs import LogSink

log = logging.getLogger("trimta.loghooks")


def make_log_hook(
    config: LogHookConfig,
    directory: Path,
    *,
    records: trio.abc.ReceiveChannel[Mapping[str, Any]] | None = None,
    journal: WebhookJournal | None = None,
) -> JournaledRelay:
    """The relay for one hook, its journal ``<directory>/<name>.sqlite3`` unless given."""
    d = config.delivery
    transport: BatchTransport
    if isinstance(config, AmqpHookConfig):
        from trimta.adapters.amqp import AmqpTransport  # noqa: PLC0415 (aio-pika only when configured)

        kind, transport = "amqp", AmqpTransport(config)
    else:
        from trimta.adapters.redis_stream import RedisStreamTransport  # noqa: PLC0415

        kind, transport = "redis_stream", RedisStreamTransport(config)
    settings = RelaySettings(
        name=config.name, destination=config.display_url, kind=kind,
        batch_size=d.batch_size, max_batch_latency_s=d.max_batch_latency_s,
        min_retry_interval_s=d.min_retry_interval_s, max_retry_interval_s=d.max_retry_interval_s,
        max_pending=d.max_journal_records,
    )
    return JournaledRelay(
        settings,
        journal=journal if journal is not None else SqliteJournal(Path(directory) / f"{config.name}.sqlite3"),
        transport=transport, wants=d.wants, records=records, log=log,
    )


async def run_log_hooks(
    hooks: Sequence[tuple[LogHookConfig, JournaledRelay]], *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every hook's relay until cancelled; AMQP ones inside the asyncio bridge."""
    amqp = [relay for config, relay in hooks if isinstance(config, AmqpHookConfig)]
    others = [relay for config, relay in hooks if isinstance(config, RedisStreamHookConfig)]
    async with trio.open_nursery() as nursery:
        for relay in others:
            await nursery.start(relay.run)
        if amqp:
            await nursery.start(_run_amqp, amqp)
        task_status.started()


async def _run_amqp(relays: Sequence[JournaledRelay], *, task_status: trio.TaskStatus) -> None:
    from trimta.adapters.amqp import asyncio_bridge  # noqa: PLC0415

    async with asyncio_bridge(), trio.open_nursery() as nursery:
        for relay in relays:
            await nursery.start(relay.run)
        task_status.started()


def attach_all(
    logs: LogSink, configs: Sequence[LogHookConfig], directory: Path
) -> list[tuple[LogHookConfig, JournaledRelay]]:
    """A relay per hook, each attached to the log sink as a tap (from now on): the sink
    offers it every record and writes none to the log file before the relay journaled it."""
    hooks = [(c, make_log_hook(c, directory)) for c in configs]
    for _, relay in hooks:
        logs.attach(relay)
    return hooks
