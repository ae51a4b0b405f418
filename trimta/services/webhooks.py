"""Webhooks: log records POSTed as JSON arrays to the operator's endpoints, at least once.

One `WebhookSender` per ``[[logs.webhook]]``: a `JournaledRelay` (journal, batching,
retries, the at-least-once guarantee; see `trimta.services.journaled_relay`) whose
transport POSTs each batch as one JSON array and counts it confirmed on a 2xx.

Failures (no connection, timeout, any status other than 2xx) are retried with
exponential backoff from `min_retry_interval` to `max_retry_interval`, longer if the
endpoint asks with ``Retry-After``; a batch is never dropped, whatever the status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from trimta.adapters.http_client import Connector, HttpClient, HttpError, open_stream
from trimta.adapters.webhook_config import WebhookConfig
from trimta.adapters.webhook_journal import SqliteJournal, WebhookJournal
from trimta.adapters.hook_transport import TransportError
from trimta.services.journaled_relay import JournaledRelay, RelaySettings, retry_delay

__all__ = ["WebhookSender", "WebhookStatistics", "retry_delay"]

log = logging.getLogger("trimta.webhooks")


@dataclass(frozen=True, slots=True)
class WebhookStatistics:
    """A snapshot of one webhook's state, for the admin API and metrics."""

    name: str
    url: str
    buffered: int  # offered, not yet in the journal
    pending: int  # in the journal, not yet acknowledged by the endpoint
    sent: int  # acknowledged since start
    batches_sent: int
    failures: int  # failed POSTs since start
    consecutive_failures: int
    journal_errors: int
    last_error: str | None


class HttpBatchTransport:
    """POSTs a batch as one JSON array; confirmed by any 2xx (a `BatchTransport`)."""

    def __init__(self, config: WebhookConfig, connect: Connector) -> None:
        self.config = config
        self._client = HttpClient(config.origin, connect=connect, user_agent="trimta-webhook")
        configured = {name.lower() for name, _ in config.headers}
        self._headers = (
            *((("Content-Type", "application/json"),) if "content-type" not in configured else ()),
            *config.headers,
        )
        self._answered = False

    @property
    def connected(self) -> bool:
        return self._answered

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await self._client.aclose()

    async def send(self, batch: Sequence[tuple[int, bytes]]) -> None:
        config = self.config
        body = b"[" + b",".join(record for _, record in batch) + b"]"
        try:
            response = await self._client.request(
                "POST", config.target, headers=self._headers, body=body, timeout_s=config.timeout_s
            )
        except HttpError as exc:
            self._answered = False
            raise TransportError(exc.message) from None
        self._answered = True
        if not 200 <= response.status < 300:
            raise TransportError(
                f"HTTP {response.status} {response.reason}".rstrip(),
                retry_after_s=_retry_after_s(response.header("retry-after")),
            )


class WebhookSender:
    """Sends the log records one webhook wants to its endpoint, durably.

    Feed it with `offer` (sync, for the hot path) or give it a channel of records
    (`records`, e.g. ``LogSink.subscribe(math.inf)``) that `run` consumes. The journal
    is ``<directory>/<config.name>.sqlite3`` unless one is given (tests pass a memory
    journal); `connect` opens connections (tests pass in-memory ones).

    Shutdown: cancel `run`. Everything offered so far is journaled first (shielded),
    the POST in flight, if any, is abandoned and sent again after the next start.
    """

    def __init__(
        self,
        config: WebhookConfig,
        directory: Path,
        *,
        records: trio.abc.ReceiveChannel[Mapping[str, Any]] | None = None,
        journal: WebhookJournal | None = None,
        connect: Connector = open_stream,
    ) -> None:
        self.config = config
        self.journal = journal if journal is not None else SqliteJournal(Path(directory) / f"{config.name}.sqlite3")
        self.relay = JournaledRelay(
            RelaySettings(
                name=config.name, destination=config.url, kind="webhook",
                batch_size=config.batch_size, max_batch_latency_s=config.max_batch_latency_s,
                min_retry_interval_s=config.min_retry_interval_s, max_retry_interval_s=config.max_retry_interval_s,
            ),
            journal=self.journal, transport=HttpBatchTransport(config, connect),
            wants=config.wants, records=records, log=log,
        )

    def offer(self, record: Mapping[str, Any]) -> None:
        """Take a record if this webhook wants its type. Never blocks, never awaits."""
        self.relay.offer(record)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Journal and POST until cancelled (`JournaledRelay.run`)."""
        await self.relay.run(task_status=task_status)

    def statistics(self) -> WebhookStatistics:
        s = self.relay.statistics()
        return WebhookStatistics(
            name=s.name, url=s.destination, buffered=s.buffered, pending=s.pending, sent=s.confirmed,
            batches_sent=s.batches_confirmed, failures=s.failures, consecutive_failures=s.consecutive_failures,
            journal_errors=s.journal_errors, last_error=s.last_error,
        )


def _retry_after_s(value: str | None) -> float | None:
    # Only the delta-seconds form (RFC 9110, 10.2.3); an HTTP date is ignored.
    if value is not None and value.strip().isdigit():
        return float(value.strip())
    return None
