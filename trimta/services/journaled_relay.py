"""The journaled relay: log records to one destination, durably, at least once, in order.

Webhooks (HTTP) and log hooks (AMQP, Redis streams) share this engine; each supplies a
`BatchTransport` that knows how to hand a batch to its destination and when the
destination has taken it. A record goes through three places:

```
emit (hot path) ─▶ offer(): type filter, append to an in-memory list   (never awaits)
                ─▶ journal writer: appends what is in memory to the journal on disk
                ─▶ deliverer: reads up to batch_size records from the journal, gives
                   them to the transport, and removes them from the journal once the
                   destination confirmed them (a 2xx, publisher confirms, XADD's reply)
```

The hot path only appends to a list: a slow, stuck or absent destination never slows
reception or delivery. The in-memory list holds only what arrived while the journal's
previous append was being written (appends are group commits, like the spool's), so
it stays small; while a destination is down its records pile up on disk, not in memory.

Guarantee: **at least once**, in the order emitted, one batch in flight at a time. A
record is removed from the journal only after the destination confirmed the batch that
carried it; it may arrive twice when a confirmation is lost (a timeout after the
destination took the batch, or a stop between the confirmation and the journal's
delete). What is not yet journaled when the process is killed (the last moments'
records, as for the log files) is lost; an orderly shutdown journals everything first.

Back-pressure: with a cap (`max_pending`), a journal that would hold more drops its
oldest records not in flight, counts them (`dropped`) and logs a warning (at most one
per `DROP_WARNING_INTERVAL_S`, with the count since the last one).

Batching: a batch is sent when `batch_size` records wait, or when the oldest waiting
record has waited `max_batch_latency_s`. A failed batch (`TransportError`) is retried
with exponential backoff from `min_retry_interval_s` to `max_retry_interval_s`, longer
if the destination asked for it; a batch is never dropped for failing.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from trimta.adapters.hook_transport import BatchTransport, TransportError
from trimta.adapters.webhook_journal import JournalError, WebhookJournal

JOURNAL_RETRY_S = 1.0
DROP_WARNING_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How one relay batches, retries and bounds its journal."""

    name: str
    destination: str  # for messages: a URL without credentials
    kind: str  # "webhook", "amqp", "redis_stream"
    batch_size: int = 100
    max_batch_latency_s: float = 1.0
    min_retry_interval_s: float = 1.0
    max_retry_interval_s: float = 300.0
    max_pending: int | None = None  # records in the journal, at most; None: unbounded


@dataclass(frozen=True, slots=True)
class RelayStatistics:
    """A snapshot of one relay, for the admin API and metrics."""

    name: str
    kind: str
    destination: str
    queued: int  # records taken (offered and wanted) since start
    buffered: int  # offered, not yet in the journal
    pending: int  # in the journal, not yet confirmed
    sent: int  # records handed to the destination since start, retries included
    confirmed: int  # records the destination confirmed since start
    dropped: int  # oldest records dropped at the journal's cap since start
    batches_confirmed: int
    failures: int  # failed batches since start
    consecutive_failures: int
    journal_errors: int
    connected: bool
    last_error: str | None


class JournaledRelay:
    """Relays the records one hook wants to its destination through its journal.

    Feed it with `offer` (sync, for the hot path) or give it a channel of records
    (`records`, e.g. ``LogSink.subscribe(math.inf)``) that `run` consumes; `wants`
    filters by record. Shutdown: cancel `run`. Everything offered so far is journaled
    first (shielded); the batch in flight, if any, is abandoned and sent again after
    the next start.
    """

    def __init__(
        self,
        settings: RelaySettings,
        *,
        journal: WebhookJournal,
        transport: BatchTransport,
        wants: Callable[[Mapping[str, Any]], bool] | None = None,  # None: every record
        records: trio.abc.ReceiveChannel[Mapping[str, Any]] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.transport = transport
        self._wants = wants
        self._records = records
        self._log = log or logging.getLogger(f"trimta.{settings.kind}")
        self._incoming: list[Mapping[str, Any]] = []
        self._incoming_since = 0.0
        self._wake_writer = trio.Event()
        self._journaled = trio.Event()
        # Read-and-mark-in-flight and drop-at-the-cap exclude each other, so a drop never
        # takes a record the deliverer is sending.
        self._journal_lock = trio.Lock()
        # (last seq, arrival time of the chunk's first record) per journal append not yet
        # fully confirmed: the first one says how long the oldest pending record waited.
        self._chunks: deque[tuple[int, float]] = deque()
        self._pending = 0
        self._journaled_through = 0
        self._in_flight_through = 0
        self._queued = 0
        self._offered = 0  # every record offered, wanted or not
        self._settled = 0  # of those, how many are journaled or were not wanted
        self._settled_event = trio.Event()
        self._appending = False
        self._sent = 0
        self._confirmed = 0
        self._dropped = 0
        self._dropped_unreported = 0
        self._last_drop_warning = -math.inf
        self._batches = 0
        self._failures = 0
        self._consecutive_failures = 0
        self._journal_errors = 0
        self._last_error: str | None = None

    # --- The hot path ----------------------------------------------------------------

    def offer(self, record: Mapping[str, Any]) -> None:
        """Take a record if this hook wants it. Never blocks, never awaits."""
        self._offered += 1
        if self._wants is not None and not self._wants(record):
            if not self._incoming and not self._appending:
                self._settle(self._offered)
            return
        if not self._incoming:
            self._incoming_since = _now()
        self._incoming.append(record)
        self._queued += 1
        self._wake_writer.set()

    def mark(self) -> int:
        """A position covering every record offered so far (see `wait_journaled`)."""
        return self._offered

    async def wait_journaled(self, mark: int) -> None:
        """Until every record offered before `mark` was taken is in the journal (or not wanted)."""
        while self._settled < mark:
            await self._settled_event.wait()

    def _settle(self, through: int) -> None:
        if through > self._settled:
            self._settled = through
            self._settled_event.set()
            self._settled_event = trio.Event()

    def statistics(self) -> RelayStatistics:
        s = self.settings
        return RelayStatistics(
            name=s.name, kind=s.kind, destination=s.destination,
            queued=self._queued, buffered=len(self._incoming), pending=self._pending,
            sent=self._sent, confirmed=self._confirmed, dropped=self._dropped,
            batches_confirmed=self._batches, failures=self._failures,
            consecutive_failures=self._consecutive_failures, journal_errors=self._journal_errors,
            connected=self.transport.connected, last_error=self._last_error,
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

    def _what(self) -> str:
        return f"{self.settings.kind} {self.settings.name}"

    async def _open_journal(self) -> None:
        while True:
            try:
                pending, last_seq = await self.journal.open()
                break
            except JournalError as exc:
                self._journal_errors += 1
                self._last_error = f"cannot open the journal: {exc}"
                self._log.error("%s: cannot open its journal (retrying): %s", self._what(), exc)
                await trio.sleep(JOURNAL_RETRY_S)
        self._pending = pending
        self._journaled_through = last_seq
        if pending:
            # Records from before a restart have waited long enough: due at once.
            self._chunks.append((last_seq, -math.inf))
            self._log.info("%s: %d records pending from before, sending to %s",
                           self._what(), pending, self.settings.destination)

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
                self._log.error("%s: %d records lost at shutdown, journal failed: %s", self._what(), len(batch), exc)
        self._settle(self._offered)
        try:
            await self.journal.close()
        except JournalError as exc:
            self._log.error("%s: closing the journal failed: %s", self._what(), exc)

    async def _write_journal(self) -> None:
        """Group commit: each append takes everything offered since the previous one."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            if not self._incoming:
                continue
            batch, since, through = self._incoming, self._incoming_since, self._offered
            self._incoming = []
            self._appending = True
            try:
                last_seq = await self.journal.append(batch)
            except JournalError as exc:
                # Keep them, in order, ahead of what came meanwhile, and try again.
                self._appending = False
                self._incoming[:0] = batch
                self._incoming_since = since
                self._journal_errors += 1
                self._log.error("%s: cannot journal %d records (kept in memory, retrying): %s",
                                self._what(), len(self._incoming), exc)
                await trio.sleep(JOURNAL_RETRY_S)
                self._wake_writer.set()
                continue
            except BaseException:
                # Cancelled before the journal took them: the shutdown flush will.
                self._appending = False
                self._incoming[:0] = batch
                self._incoming_since = since
                raise
            self._chunks.append((last_seq, since))
            self._pending += len(batch)
            self._journaled_through = last_seq
            # What came meanwhile and is not in memory was not wanted: settled too.
            self._appending = False
            self._settle(self._offered if not self._incoming else through)
            await self._enforce_cap()
            self._journaled.set()

    async def _enforce_cap(self) -> None:
        cap = self.settings.max_pending
        if cap is None or self._pending <= cap:
            return
        async with self._journal_lock:
            excess = self._pending - cap
            try:
                dropped = await self.journal.drop_oldest(excess, after=self._in_flight_through)
            except JournalError as exc:
                self._journal_errors += 1
                self._log.error("%s: cannot drop records over the journal's cap: %s", self._what(), exc)
                return
        self._pending -= dropped
        self._dropped += dropped
        self._dropped_unreported += dropped
        if _now() - self._last_drop_warning >= DROP_WARNING_INTERVAL_S:
            self._last_drop_warning = _now()
            self._log.warning(
                "%s: journal over its cap of %d records (%s not keeping up): dropped the %d oldest "
                "(%d since start)", self._what(), cap, self.settings.destination,
                self._dropped_unreported, self._dropped,
            )
            self._dropped_unreported = 0

    async def _deliver(self) -> None:
        """Send batches from the journal, one at a time, in order; retry failures forever."""
        async with self.transport.session():
            while True:
                await self._deliver_one()

    async def _deliver_one(self) -> None:
        await self._wait_for_batch()
        rows: list[tuple[int, bytes]] | None = None
        async with self._journal_lock:
            try:
                read = await self.journal.read(self.settings.batch_size)
            except JournalError as exc:
                self._journal_errors += 1
                self._log.error("%s: cannot read the journal: %s", self._what(), exc)
            else:
                # Only what this task knows is journaled: an append may be committed in
                # its thread before the writer task has counted it.
                rows = [row for row in read if row[0] <= self._journaled_through]
                if rows:
                    self._in_flight_through = rows[-1][0]
        if rows is None:
            await trio.sleep(JOURNAL_RETRY_S)
            return
        if not rows:  # pragma: no cover (the counts say there are some; trust the journal)
            self._pending = 0
            self._chunks.clear()
            return
        delay = await self._send(rows)
        if delay is not None:
            await trio.sleep(delay)
            return
        last_seq = rows[-1][0]
        while True:
            try:
                await self.journal.remove_through(last_seq)
                break
            except JournalError as exc:
                # Not removed yet: they would be sent again. Keep trying, so they aren't.
                self._journal_errors += 1
                self._log.error("%s: cannot remove confirmed records from the journal: %s", self._what(), exc)
                await trio.sleep(JOURNAL_RETRY_S)
        self._in_flight_through = 0
        self._pending -= len(rows)
        while self._chunks and self._chunks[0][0] <= last_seq:
            self._chunks.popleft()

    async def _wait_for_batch(self) -> None:
        """Until a batch is due: `batch_size` records pending, or the oldest has waited long enough."""
        while True:
            if self._pending >= self.settings.batch_size:
                return
            deadline = math.inf
            if self._pending and self._chunks:
                deadline = self._chunks[0][1] + self.settings.max_batch_latency_s
                if _now() >= deadline:
                    return
            self._journaled = trio.Event()
            with trio.move_on_at(deadline):
                await self._journaled.wait()

    async def _send(self, rows: list[tuple[int, bytes]]) -> float | None:
        """Send one batch: None once confirmed, else how long to wait before trying again."""
        s = self.settings
        self._sent += len(rows)
        try:
            await self.transport.send(rows)
        except TransportError as exc:
            error, retry_after = exc.message, exc.retry_after_s
        else:
            self._confirmed += len(rows)
            self._batches += 1
            if self._consecutive_failures:
                self._log.info("%s: %s takes records again", self._what(), s.destination)
            self._consecutive_failures = 0
            return None
        self._failures += 1
        self._consecutive_failures += 1
        self._last_error = error
        delay = retry_delay(self._consecutive_failures, s.min_retry_interval_s, s.max_retry_interval_s)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.max_retry_interval_s))
        self._log.warning(
            "%s: sending %d records to %s failed (%s), %d records waiting; retrying in %.1fs",
            self._what(), len(rows), s.destination, error, self._pending + len(self._incoming), delay,
        )
        return delay


def retry_delay(failures: int, min_s: float, max_s: float) -> float:
    """Exponential backoff: `min_s` after the first failure, doubling, at most `max_s`."""
    return min(max_s, min_s * 2.0 ** min(failures - 1, 62))


def _now() -> float:
    return trio.current_time()
