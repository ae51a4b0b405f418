"""Webhooks: log records POSTed as JSON arrays to the operator's endpoints, at least once.

One `WebhookSender` per ``[[logs.webhook]]``. A record goes through three places:

```
emit (hot path) ─▶ offer(): type filter, append to an in-memory list   (never awaits)
                ─▶ journal writer: appends what is in memory to the journal on disk
                ─▶ deliverer: reads up to batch_size records from the journal, POSTs
                   them, and removes them from the journal once answered with 2xx
```

The hot path only appends to a list: a slow, stuck or absent endpoint never slows
reception or delivery. The in-memory list holds only what arrived while the journal's
previous append was being written (appends are group commits, like the spool's), so
it stays small; while an endpoint is down, its records pile up on disk, not in memory.

Guarantee: **at least once**. A record is removed from the journal only after the
endpoint acknowledged the POST that carried it, so every record journaled reaches
the endpoint eventually, through outages and restarts; it may arrive twice when an
acknowledgement is lost (a timeout after the endpoint took the batch, or a stop
between the 2xx and the journal's delete). Records are sent in the order they were
emitted, one POST at a time per webhook. What is not yet journaled when the process
is killed (the records emitted in the last moments, as for the log files) is lost;
an orderly shutdown journals everything first.

Batching: a POST is made when `batch_size` records wait, or when the oldest waiting
record has waited `max_batch_latency`. Failures (no connection, timeout, any status
other than 2xx) are retried with exponential backoff from `min_retry_interval` to
`max_retry_interval`, longer if the endpoint asks with ``Retry-After``; a batch is
never dropped, whatever the status.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from trimta.adapters.http_client import Connector, HttpClient, HttpError, open_stream
from trimta.adapters.webhook_config import WebhookConfig
from trimta.adapters.webhook_journal import JournalError, SqliteJournal, WebhookJournal

log = logging.getLogger("trimta.webhooks")

JOURNAL_RETRY_S = 1.0


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
        self._records = records
        self._client = HttpClient(config.origin, connect=connect, user_agent="trimta-webhook")
        configured = {name.lower() for name, _ in config.headers}
        self._headers = (
            *((("Content-Type", "application/json"),) if "content-type" not in configured else ()),
            *config.headers,
        )
        self._incoming: list[Mapping[str, Any]] = []
        self._incoming_since = 0.0
        self._wake_writer = trio.Event()
        self._journaled = trio.Event()
        # (last seq, arrival time of the chunk's first record) per journal append not yet
        # fully acknowledged: the first one says how long the oldest pending record waited.
        self._chunks: deque[tuple[int, float]] = deque()
        self._pending = 0
        self._journaled_through = 0
        self._sent = 0
        self._batches = 0
        self._failures = 0
        self._consecutive_failures = 0
        self._journal_errors = 0
        self._last_error: str | None = None

    # --- The hot path ----------------------------------------------------------------

    def offer(self, record: Mapping[str, Any]) -> None:
        """Take a record if this webhook wants its type. Never blocks, never awaits."""
        if not self.config.wants(record):
            return
        if not self._incoming:
            self._incoming_since = _now()
        self._incoming.append(record)
        self._wake_writer.set()

    def statistics(self) -> WebhookStatistics:
        return WebhookStatistics(
            name=self.config.name,
            url=self.config.url,
            buffered=len(self._incoming),
            pending=self._pending,
            sent=self._sent,
            batches_sent=self._batches,
            failures=self._failures,
            consecutive_failures=self._consecutive_failures,
            journal_errors=self._journal_errors,
            last_error=self._last_error,
        )

    # --- The service -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Journal and send until cancelled.

        Started at once: a journal that cannot be opened (a directory not writable) is
        logged and tried again every `JOURNAL_RETRY_S`, records waiting in memory
        meanwhile; it never holds up the daemon's start.
        """
        try:
            async with trio.open_nursery() as nursery:
                if self._records is not None:
                    nursery.start_soon(self._consume, self._records)
                task_status.started()
                await self._open_journal()
                nursery.start_soon(self._write_journal)
                nursery.start_soon(self._deliver)
        finally:
            with trio.CancelScope(shield=True):
                await self._shut_down()

    async def _open_journal(self) -> None:
        while True:
            try:
                pending, last_seq = await self.journal.open()
                break
            except JournalError as exc:
                self._journal_errors += 1
                self._last_error = f"cannot open the journal: {exc}"
                log.error("webhook %s: cannot open its journal (retrying): %s", self.config.name, exc)
                await trio.sleep(JOURNAL_RETRY_S)
        self._pending = pending
        self._journaled_through = last_seq
        if pending:
            # Records from before a restart have waited long enough: due at once.
            self._chunks.append((last_seq, -math.inf))
            log.info("webhook %s: %d records pending from before, sending to %s", self.config.name, pending, self.config.url)

    async def _consume(self, records: trio.abc.ReceiveChannel[Mapping[str, Any]]) -> None:
        async for record in records:
            self.offer(record)

    async def _shut_down(self) -> None:
        if self._records is not None:
            while True:
                try:
                    self.offer(self._records.receive_nowait())  # type: ignore[attr-defined]
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError, AttributeError):
                    break
            await self._records.aclose()
        if self._incoming:
            batch, self._incoming = self._incoming, []
            try:
                await self.journal.append(batch)
            except JournalError as exc:
                log.error("webhook %s: %d records lost at shutdown, journal failed: %s", self.config.name, len(batch), exc)
        await self._client.aclose()
        try:
            await self.journal.close()
        except JournalError as exc:
            log.error("webhook %s: closing the journal failed: %s", self.config.name, exc)

    async def _write_journal(self) -> None:
        """Group commit: each append takes everything offered since the previous one."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            if not self._incoming:
                continue
            batch, since = self._incoming, self._incoming_since
            self._incoming = []
            try:
                last_seq = await self.journal.append(batch)
            except JournalError as exc:
                # Keep them, in order, ahead of what came meanwhile, and try again.
                self._incoming[:0] = batch
                self._incoming_since = since
                self._journal_errors += 1
                log.error("webhook %s: cannot journal %d records (kept in memory, retrying): %s",
                          self.config.name, len(self._incoming), exc)
                await trio.sleep(JOURNAL_RETRY_S)
                self._wake_writer.set()
                continue
            except BaseException:
                # Cancelled before the journal took them: the shutdown flush will.
                self._incoming[:0] = batch
                self._incoming_since = since
                raise
            self._chunks.append((last_seq, since))
            self._pending += len(batch)
            self._journaled_through = last_seq
            self._journaled.set()

    async def _deliver(self) -> None:
        """POST batches from the journal, one at a time, in order; retry failures forever."""
        while True:
            await self._wait_for_batch()
            try:
                rows = await self.journal.read(self.config.batch_size)
            except JournalError as exc:
                self._journal_errors += 1
                log.error("webhook %s: cannot read the journal: %s", self.config.name, exc)
                await trio.sleep(JOURNAL_RETRY_S)
                continue
            # Only what this task knows is journaled: an append may be committed in its
            # thread before the writer task has counted it.
            rows = [row for row in rows if row[0] <= self._journaled_through]
            if not rows:  # pragma: no cover (the counts say there are some; trust the journal)
                self._pending = 0
                self._chunks.clear()
                continue
            body = b"[" + b",".join(record for _, record in rows) + b"]"
            delay = await self._post(body, len(rows))
            if delay is not None:
                await trio.sleep(delay)
                continue
            last_seq = rows[-1][0]
            while True:
                try:
                    await self.journal.remove_through(last_seq)
                    break
                except JournalError as exc:
                    # Not removed yet: they would be sent again. Keep trying, so they aren't.
                    self._journal_errors += 1
                    log.error("webhook %s: cannot remove sent records from the journal: %s", self.config.name, exc)
                    await trio.sleep(JOURNAL_RETRY_S)
            self._pending -= len(rows)
            while self._chunks and self._chunks[0][0] <= last_seq:
                self._chunks.popleft()

    async def _wait_for_batch(self) -> None:
        """Until a batch is due: `batch_size` records pending, or the oldest has waited long enough."""
        while True:
            if self._pending >= self.config.batch_size:
                return
            deadline = math.inf
            if self._pending and self._chunks:
                deadline = self._chunks[0][1] + self.config.max_batch_latency_s
                if _now() >= deadline:
                    return
            self._journaled = trio.Event()
            with trio.move_on_at(deadline):
                await self._journaled.wait()

    async def _post(self, body: bytes, count: int) -> float | None:
        """POST one batch: None once acknowledged, else how long to wait before trying again."""
        config = self.config
        retry_after = None
        try:
            response = await self._client.request(
                "POST", config.target, headers=self._headers, body=body, timeout_s=config.timeout_s
            )
        except HttpError as exc:
            error = exc.message
        else:
            if 200 <= response.status < 300:
                self._sent += count
                self._batches += 1
                if self._consecutive_failures:
                    log.info("webhook %s: %s answers again", config.name, config.url)
                self._consecutive_failures = 0
                return None
            error = f"HTTP {response.status} {response.reason}".rstrip()
            retry_after = _retry_after_s(response.header("retry-after"))
        self._failures += 1
        self._consecutive_failures += 1
        self._last_error = error
        delay = retry_delay(self._consecutive_failures, config.min_retry_interval_s, config.max_retry_interval_s)
        if retry_after is not None:
            delay = max(delay, min(retry_after, config.max_retry_interval_s))
        log.warning(
            "webhook %s: POST of %d records to %s failed (%s), %d records waiting; retrying in %.1fs",
            config.name, count, config.url, error, self._pending + len(self._incoming), delay,
        )
        return delay


def retry_delay(failures: int, min_s: float, max_s: float) -> float:
    """Exponential backoff: `min_s` after the first failure, doubling, at most `max_s`."""
    return min(max_s, min_s * 2.0 ** min(failures - 1, 62))


def _retry_after_s(value: str | None) -> float | None:
    # Only the delta-seconds form (RFC 9110, 10.2.3); an HTTP date is ignored.
    if value is not None and value.strip().isdigit():
        return float(value.strip())
    return None


def _now() -> float:
    return trio.current_time()
