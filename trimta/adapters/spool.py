"""The durable spool: accepted messages and their data, made durable in group commits.

The SMTP listener and the HTTP injector answer 250 / 200 only after `Spool.store`
returns, so `store` returns only once the data and every recipient's metadata are on
disk and fsynced. Durability is paid for per *batch*, not per message: callers queue
their operations and one writer task (`Spool.run`) takes everything pending, hands it
to a worker thread that writes it as one transaction and fsyncs once, then wakes every
caller of that batch. While one batch is being fsynced the next one collects, so the
batch size follows the load by itself: one message alone is committed at once, twenty
concurrent sessions share one fsync. The event loop never blocks on the disk.

What is on disk, and how, is the business of a `SpoolStorage` (sync, called from
worker threads; its types are in `trimta.adapters.spool_storage`), given to the
constructor. The daemon uses SQLite (`trimta.adapters.spool_sqlite.SqliteStorage`),
chosen by measurement (`bench/spool_designs.py`, `docs/spool.md`); the benchmark's
alternative designs and tests' failing disks plug in the same way.

Errors: a disk that refuses a batch (full, read-only, I/O error) fails every operation
of that batch with `SpoolError`, and nothing of it is on disk; the writer carries on
and the next batch is tried afresh, so the spool recovers by itself when space is back.
An operation that is wrong on its own (a duplicate id) is refused alone. If the writer
task is gone (cancelled, or crashed on a bug), waiting and later callers get
`SpoolError` instead of hanging.

Cancellation: a caller cancelled while waiting leaves its operation behind. If the
writer has not taken it yet it is dropped; otherwise it is committed with its batch
and the caller simply does not hear about it, so a cancelled store is either wholly on
disk or not at all, and never damages the batch of the others. (An SMTP client that
got no 250 sends again: at worst a message is delivered twice, never lost.)
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from trimta.adapters.spool_storage import (
    CommitResult,
    Entry,
    Operation,
    RemoveEntries,
    SpoolError,
    SpoolStorage,
    StoreData,
    UpdateEntry,
)
from trimta.adapters.threads import DedicatedThread
from trimta.core.message import Message, Sharing

log = logging.getLogger("trimta.spool")


# The data of recently stored messages is kept in memory up to this many bytes, so that
# delivering a message right after its reception does not read it back from disk.
RECENT_DATA_BYTES = 16 * 1024 * 1024
# A batch with more new data than this in all is applied in the writer's thread; a
# smaller one may be applied in the event loop's, only its COMMIT in the writer's
# (`Spool._staged`).
STAGE_INLINE_BYTES = 512 * 1024


# --- What callers see ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """The spool's content at start: messages to queue again, and entries moved aside.

    `damaged` holds the ids of entries that could not be restored (bad metadata,
    missing data); they are kept out of the spool, not deleted. `reasons` says why,
    per id.
    """

    messages: list[Message]
    damaged: list[str]
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpoolStatistics:
    """A snapshot of the spool, for the admin API and metrics.

    `commits` counts durable batches (each one fsync of the spool's log) and
    `operations` the stores, updates and removes they carried, so the mean batch size
    is `operations / commits`.
    """

    messages: int
    data_objects: int
    data_bytes: int
    commits: int
    operations: int
    largest_batch: int
    last_batch: int
    failed_commits: int
    pending: int
    damaged: int
    writer_running: bool


class _Job:
    """One caller's operation on its way through the writer."""

    __slots__ = ("op", "done", "error", "abandoned")

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.done = trio.Event()
        self.error: str | None = None
        self.abandoned = False


_IDLE, _RUNNING, _STOPPED, _CLOSED = "idle", "running", "stopped", "closed"


class Spool:
    """Durable storage of accepted messages, shared by all sessions through group commit.

    Lifecycle: `Spool(SqliteStorage(path))` (sync), `restore()` (sync, before serving), then
    ``await nursery.start(spool.run)`` and the async operations; `close()` after `run`
    has ended.
    """

    def __init__(self, storage: SpoolStorage) -> None:
        self._storage = storage
        self._state = _IDLE
        self._pending: list[_Job] = []
        self._wakeup = trio.Event()
        self._committer: DedicatedThread | None = None
        self._counted = False
        self._messages = 0
        self._data_objects = 0
        self._data_bytes = 0
        self._commits = 0
        self._operations = 0
        self._largest_batch = 0
        self._last_batch = 0
        self._failed_commits = 0
        self._damaged = 0
        # Recently stored data (see RECENT_DATA_BYTES): data id -> (data, ids of the
        # stored messages using it), oldest first; and message id -> data id.
        self._recent: OrderedDict[str, tuple[bytes, set[str]]] = OrderedDict()
        self._recent_users: dict[str, str] = {}
        self._recent_bytes = 0

    # --- start and stop --------------------------------------------------------------

    def restore(self) -> RestoreResult:
        """Read every stored message back, moving damaged entries aside. Sync; call before serving.

        Entries whose metadata does not decode, or whose data is missing, are moved out
        of the spool (kept for the operator, see docs/spool.md), logged and reported;
        they never stop the start. Raises SpoolError only when the storage as a whole
        cannot be read.
        """
        if self._state == _RUNNING:
            raise RuntimeError("restore() must be called before the spool's writer runs")
        messages: list[Message] = []
        damaged: list[tuple[str, str]] = []
        decoder = MetadataDecoder()
        try:
            for stored in self._storage.entries():
                reason = None
                if not stored.has_data:
                    reason = f"its data {stored.data_id!r} is missing"
                else:
                    try:
                        message = decoder.decode(stored.meta)
                    except (ValueError, TypeError, KeyError, AttributeError) as exc:
                        reason = f"its metadata does not decode: {exc}"
                    else:
                        if message.id != stored.id or message.data_id != stored.data_id:
                            reason = "its metadata names another message or data"
                if reason is None:
                    messages.append(message)
                else:
                    damaged.append((stored.id, reason))
            if damaged:
                self._storage.move_aside(damaged)
            totals = self._storage.totals()
        except OSError as exc:
            raise SpoolError(f"cannot read the spool: {exc}") from exc
        for id, reason in damaged:
            log.warning("spool entry %s moved aside: %s", id, reason)
        self._messages, self._data_objects, self._data_bytes = totals
        self._counted = True
        self._damaged = len(damaged)
        return RestoreResult(
            messages=messages, damaged=[id for id, _ in damaged], reasons=dict(damaged)
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The group-commit writer. Start it with ``nursery.start``; it runs until cancelled.

        On cancellation it commits what callers had already queued (shielded: the disk is
        given the time it takes), then fails anything later with SpoolError.
        """
        if self._state != _IDLE:
            raise RuntimeError(f"the spool's writer cannot start: it is {self._state}")
        if not self._counted:
            counts = await trio.to_thread.run_sync(self._storage.totals)
            self._messages, self._data_objects, self._data_bytes = counts
            self._counted = True
        # The writer has a thread of its own (`DedicatedThread`: far cheaper per commit
        # than trio's thread cache), so reads (load_data) filling trio's default limiter
        # never hold a commit back.
        self._state = _RUNNING
        async with DedicatedThread("trimta spool writer") as self._committer:
            task_status.started()
            try:
                while True:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    await self._commit_pending()
            except trio.Cancelled:
                with trio.CancelScope(shield=True):
                    await self._commit_pending()
                raise
            finally:
                self._state = _STOPPED
                self._fail(self._pending, "the spool's writer has stopped")
                self._pending = []

    def close(self) -> None:
        """Release the storage. The writer must have stopped; later operations raise SpoolError."""
        if self._state == _RUNNING:
            raise RuntimeError("close() while the spool's writer runs: cancel it first")
        if self._state != _CLOSED:
            self._state = _CLOSED
            self._storage.close()

    # --- operations ------------------------------------------------------------------

    async def store(self, data: bytes, messages: Sequence[Message]) -> None:
        """Store one transaction's data and its messages; return once all of it is durable.

        The messages share the data (same `data_id`). Raises SpoolError if it could not
        be made durable; then none of it is stored.
        """
        await self._submit(_store_operation(data, messages))

    async def store_all(
        self, transactions: Sequence[tuple[bytes, Sequence[Message], Sequence[str] | None]]
    ) -> list[str | None]:
        """Store several transactions, as one `store` call each made at the same moment would.

        For a caller holding many transactions at once (the reception workers' hand-over):
        they join the same group commit without a task each. A transaction is (data,
        messages, metadata): the metadata, if not None, is each message's
        `encode_metadata`, already done by whoever prepared it (a reception worker, on
        another core). Each transaction is durable or not on its own; the result gives,
        in order, None for one that is durable, or why it is not (what `store` would
        raise as SpoolError).
        """
        jobs = [_Job(_store_operation(data, messages, metas)) for data, messages, metas in transactions]
        if self._state != _RUNNING:
            return [f"the spool's writer is not running ({self._state})"] * len(jobs)
        self._pending.extend(jobs)
        self._wakeup.set()
        try:
            for job in jobs:
                # They are committed in one batch: after the first wait, the others are
                # done too and need no trip through the scheduler each.
                if not job.done.is_set():
                    await job.done.wait()
        except BaseException:
            for job in jobs:  # as in _submit: dropped if not yet taken
                job.abandoned = True
            raise
        return [job.error for job in jobs]

    async def update(self, message: Message) -> None:
        """Durably replace a message's metadata (attempts, due); a removed message stays removed."""
        await self._submit(UpdateEntry(_encode(message)))

    async def remove(self, ids: Sequence[str]) -> None:
        """Durably delete messages; their data goes too once no message uses it."""
        if isinstance(ids, str):
            raise TypeError("remove() takes a sequence of ids, not one id")
        if ids:
            await self._submit(RemoveEntries(tuple(ids)))

    async def load_data(self, data_id: str) -> bytes:
        """The data of a stored message. KeyError if unknown, SpoolError if unreadable."""
        if self._state == _CLOSED:
            raise SpoolError("the spool is closed")
        recent = self._recent.get(data_id)
        if recent is not None:
            return recent[0]  # no thread hand-off: the common case, delivery right after reception
        try:
            return await trio.to_thread.run_sync(self._storage.load_data, data_id)
        except OSError as exc:
            raise SpoolError(f"cannot read data {data_id!r}: {exc}") from exc

    def statistics(self) -> SpoolStatistics:
        return SpoolStatistics(
            messages=self._messages,
            data_objects=self._data_objects,
            data_bytes=self._data_bytes,
            commits=self._commits,
            operations=self._operations,
            largest_batch=self._largest_batch,
            last_batch=self._last_batch,
            failed_commits=self._failed_commits,
            pending=len(self._pending),
            damaged=self._damaged,
            writer_running=self._state == _RUNNING,
        )

    # --- the writer ------------------------------------------------------------------

    async def _submit(self, op: Operation) -> None:
        if self._state != _RUNNING:
            raise SpoolError(f"the spool's writer is not running ({self._state})")
        job = _Job(op)
        self._pending.append(job)
        self._wakeup.set()
        try:
            await job.done.wait()
        except BaseException:
            # Not yet taken: the writer drops it. Already taken: it is committed with its
            # batch regardless; either way the batch of the others is untouched.
            job.abandoned = True
            raise
        if job.error is not None:
            raise SpoolError(job.error)

    def _staged(self, batch: list[Operation]) -> Callable[[], CommitResult]:
        """What the writer's thread is to run to make `batch` durable.

        A storage that can `stage` gets a batch applied here, in the event loop's
        thread, and only the COMMIT (the fsync) goes to the writer's thread. SQLite
        releases the GIL around every statement: run from the thread, a batch's dozen
        statements make the GIL change hands between the thread and the busy event
        loop a dozen times, each a wake-up across cores; staged, once.

        Only batches that cannot make the loop wait on the disk are staged. New
        messages go to the database's newest pages, and so do updates and removals of
        messages stored recently (those whose data is still kept in memory, the last
        16 MB: delivered at once, as most mail is); an older message's pages may have
        to be read from disk. Data beyond `STAGE_INLINE_BYTES` in all is copied into
        the database in the thread.
        """
        if self._stageable(batch):
            finish = self._storage.stage(batch)
            if finish is not None:
                return finish
        return partial(self._storage.commit, batch)

    def _stageable(self, batch: Sequence[Operation]) -> bool:
        recent = self._recent_users
        size = 0
        for op in batch:
            if isinstance(op, StoreData):
                size += len(op.data)
            elif isinstance(op, RemoveEntries):
                if not all(id in recent for id in op.ids):
                    return False
            elif not (isinstance(op, UpdateEntry) and op.entry.id in recent):
                return False
        return size <= STAGE_INLINE_BYTES

    async def _commit_pending(self) -> None:
        jobs = [job for job in self._pending if not job.abandoned]
        self._pending = []
        if not jobs:
            return
        batch = [job.op for job in jobs]
        try:
            assert self._committer is not None
            result = await self._committer.run_sync(self._staged(batch))
        except (SpoolError, OSError) as exc:
            self._failed_commits += 1
            log.error("spool commit of %d operations failed: %s", len(jobs), exc)
            self._fail(jobs, f"the spool could not store: {exc}")
            return
        except BaseException as exc:
            self._failed_commits += 1
            self._fail(jobs, f"the spool's writer failed: {exc!r}")
            raise
        self._commits += 1
        self._operations += len(jobs)
        self._last_batch = len(jobs)
        self._largest_batch = max(self._largest_batch, len(jobs))
        self._messages += result.messages_delta
        self._data_objects += result.data_objects_delta
        self._data_bytes += result.data_bytes_delta
        for index, job in enumerate(jobs):
            job.error = result.refused.get(index)
            job.done.set()
            if job.error is None:
                self._note_recent(job.op)

    def _note_recent(self, op: Operation) -> None:
        """Keep what a durable operation means for the recent data: stored, or no longer used."""
        if isinstance(op, StoreData):
            if len(op.data) <= RECENT_DATA_BYTES // 16:
                ids = {entry.id for entry in op.entries}
                self._recent[op.data_id] = (op.data, ids)
                self._recent_users.update(dict.fromkeys(ids, op.data_id))
                self._recent_bytes += len(op.data)
                while self._recent_bytes > RECENT_DATA_BYTES:
                    self._forget_recent(next(iter(self._recent)))
        elif isinstance(op, RemoveEntries):
            for id in op.ids:
                data_id = self._recent_users.pop(id, None)
                if data_id is not None:
                    users = self._recent[data_id][1]
                    users.discard(id)
                    if not users:
                        self._forget_recent(data_id)

    def _forget_recent(self, data_id: str) -> None:
        data, users = self._recent.pop(data_id)
        self._recent_bytes -= len(data)
        for id in users:
            self._recent_users.pop(id, None)

    @staticmethod
    def _fail(jobs: Sequence[_Job], reason: str) -> None:
        for job in jobs:
            job.error = reason
            job.done.set()


# --- metadata encoding -----------------------------------------------------------------


def _store_operation(data: bytes, messages: Sequence[Message], metas: Sequence[str] | None = None) -> StoreData:
    if not messages:
        raise ValueError("store() needs at least one message")
    data_id = messages[0].data_id
    if any(m.data_id != data_id for m in messages):
        raise ValueError("the messages of one store() must share one data_id")
    if metas is None:
        entries = tuple(_encode(m) for m in messages)
    elif len(metas) != len(messages):
        raise ValueError("store() needs one metadata text per message")
    else:
        entries = tuple(Entry(m.id, data_id, meta) for m, meta in zip(messages, metas))
    return StoreData(data_id, bytes(data), entries)


# Built once: `json.dumps` with options builds a new encoder on every call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_metadata(message: Message) -> str:
    """A message's metadata as the spool stores it (JSON text)."""
    return _encode_json(message.to_dict())


def _encode(message: Message) -> Entry:
    # Encoded on the caller's side, at call time: what is stored is the message as it
    # was when store()/update() was called, whatever the caller does with it afterwards.
    return Entry(message.id, message.data_id, encode_metadata(message))


class MetadataDecoder:
    """Decodes `encode_metadata`'s text into messages that share what repeats (`Sharing`).

    At restore its table of receptions lives as long as the restore (no limit); a
    long-lived decoder (the reception workers' hand-over) bounds it.
    """

    def __init__(self, max_receptions: int | None = None) -> None:
        self._sharing = Sharing(max_receptions)

    def decode(self, meta: str | bytes) -> Message:
        d = json.loads(meta)
        if not isinstance(d, dict):
            raise ValueError("metadata is not a JSON object")
        return self._sharing.share(Message.from_dict(d))
