"""The log sink: records are queued in memory by the hot path and written in batches.

`emit` never blocks and never awaits, so logging costs a list append on the path of a
message. The sink task encodes and writes the batch in a worker thread every
`flush_interval_s`. Records are not part of the durability promise (the spool is), but
on an orderly shutdown every emitted record is written.

A write that fails (the log directory's disk is full, an I/O error) loses nothing at
first: the batch goes back in front of the queue and is tried again at the next flush,
while mail keeps flowing. The outage is reported once when it starts and once when
writes resume. Held records are bounded (`max_held_records`): past that, the oldest are
dropped and counted as lost, so a log disk that never comes back cannot exhaust memory.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from trimta.adapters.logfile import JsonLinesWriter
from trimta.core.records import NO_LOG_FIELDS, REJECTION, LogFields

log = logging.getLogger(__name__)

# How long a flush waits for the hooks' journals before writing the log file anyway
# (a journal whose disk fails must not stop the log files).
JOURNAL_BARRIER_TIMEOUT_S = 2.0


class RecordTap(Protocol):
    """A durable consumer of every record (a log hook): fed on the hot path, journaled by itself.

    The sink writes a record to the log file only after every tap journaled it (within
    `JOURNAL_BARRIER_TIMEOUT_S`), so whatever the log file holds, even after a
    ``kill -9``, is in every hook's journal too.
    """

    def offer(self, record: Mapping[str, Any]) -> None: ...

    def mark(self) -> int:
        """A position covering every record offered so far."""
        ...

    async def wait_journaled(self, mark: int) -> None:
        """Until every record offered before `mark` was taken is journaled (or refused)."""
        ...


# Built once: `json.dumps` with options builds a new encoder on every call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_record(record: dict[str, Any]) -> str:
    """A record as the log file holds it (one JSON text, without the newline)."""
    return _encode_json(record)


class RecordSink(Protocol):
    """Where a service's log records go: the `LogSink`, a reception worker's forwarder, a test's recorder."""

    def emit(self, record: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class LogSinkStatistics:
    emitted: int
    written: int
    pending: int
    write_errors: int
    rejections: int = 0  # Rejection records (KumoMTA's smtp_server_rejections)


class LogSink:
    """Collects log records and writes them as JSON lines.

    Every record is stamped with the node's id (`nodeid`, KumoMTA's field: a UUID) unless
    it has one already, and its ``meta`` narrowed to what ``[logs] meta`` asks for
    (`fields`); records encoded in a reception worker had both done there.
    """

    def __init__(self, writer: JsonLinesWriter, *, flush_interval_s: float = 0.2,
                 max_held_records: int = 200_000, nodeid: str | None = None,
                 fields: LogFields = NO_LOG_FIELDS) -> None:
        self.writer = writer
        self.nodeid = nodeid or fields.nodeid or str(uuid.uuid4())
        self.fields = fields
        self.flush_interval_s = flush_interval_s
        self.max_held_records = max_held_records
        self._failing_since_errors: int | None = None  # the error count when the outage began
        self._lost = 0
        self._pending: list[dict[str, Any] | str] = []  # records, or records encoded
        self._emitted = 0
        self._written = 0
        self._errors = 0
        self._rejections = 0
        self._wakeup = trio.Event()
        self._subscribers: list[trio.MemorySendChannel] = []
        self._taps: list[RecordTap] = []

    def emit(self, record: dict[str, Any]) -> None:
        if "nodeid" not in record:
            record["nodeid"] = self.nodeid
        if record.get("meta"):
            self.fields.select(record)
        self._pending.append(record)
        self._emitted += 1
        if record.get("type") == REJECTION:
            self._rejections += 1
        if self._subscribers or self._taps:
            self._publish(record)

    def emit_encoded(self, line: str) -> None:
        """`emit` for a record already encoded by `encode_record` (in another process)."""
        self._pending.append(line)
        self._emitted += 1
        if self._subscribers or self._taps:
            self._publish(json.loads(line))

    def _publish(self, record: dict[str, Any]) -> None:
        for tap in self._taps:
            tap.offer(record)
        for channel in self._subscribers:
            try:
                channel.send_nowait(record)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def subscribe(self, max_buffer: float = 10_000) -> trio.MemoryReceiveChannel:
        """A channel receiving every record emitted from now on (for webhooks, tests)."""
        send, receive = trio.open_memory_channel(max_buffer)
        self._subscribers.append(send)
        return receive

    def attach(self, tap: RecordTap) -> None:
        """Offer every record emitted from now on to `tap`, and write none before it journaled it."""
        self._taps.append(tap)

    def statistics(self) -> LogSinkStatistics:
        return LogSinkStatistics(self._emitted, self._written, len(self._pending), self._errors, self._rejections)

    def _write_batch(self, batch: list[dict[str, Any] | str]) -> None:
        encode = _encode_json
        payload = "".join([(r if type(r) is str else encode(r)) + "\n" for r in batch])
        self.writer.write(payload.encode("utf-8"))

    async def flush(self) -> None:
        """Write everything emitted so far."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._taps:
            marks = [(tap, tap.mark()) for tap in self._taps]
            with trio.move_on_after(JOURNAL_BARRIER_TIMEOUT_S):
                for tap, mark in marks:
                    await tap.wait_journaled(mark)
        try:
            await trio.to_thread.run_sync(self._write_batch, batch)
        except OSError as exc:
            self._errors += 1
            # Back in front, in order, before what was emitted meanwhile; the oldest go
            # first when there are too many.
            held = batch + self._pending
            dropped = max(0, len(held) - self.max_held_records)
            self._pending = held[dropped:]
            self._lost += dropped
            if self._failing_since_errors is None:
                self._failing_since_errors = self._errors - 1
                log.error("log writes to %s are failing (%s): records are held in memory and "
                          "written when it works again", self.writer.directory, exc)
            if dropped:
                log.error("log writes still failing: %d oldest records dropped (%d in all)", dropped, self._lost)
            return
        self._written += len(batch)
        if self._failing_since_errors is not None:
            failed = self._errors - self._failing_since_errors
            self._failing_since_errors = None
            log.warning("log writes to %s work again after %d failed attempts; %d held records written",
                        self.writer.directory, failed, len(batch))

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Flush periodically until cancelled; a final flush happens on the way out."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.flush_interval_s)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()
                self.writer.close()
