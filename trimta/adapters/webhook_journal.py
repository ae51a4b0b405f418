"""The hook journal: records waiting for one webhook or log hook, on disk, oldest first.

Every record meant for a webhook is appended here before it is sent, and removed
once the endpoint has acknowledged the batch that carried it. So whatever the
endpoint does (down for a day, slow, answering 500) the records wait on disk rather
than in memory, and a restart resends from the first unacknowledged one.

One SQLite file per webhook (``<directory>/<name>.sqlite3``): a table of
``(seq, record)`` rows where ``seq`` only ever grows. SQLite because appends,
reads in order and deletes of a prefix are each one statement and one transaction,
a torn write is rolled back by SQLite rather than by code of ours, and the spool
already depends on it. The journal runs in WAL mode with ``synchronous = NORMAL``:
a committed append survives the process being killed (``kill -9``); a power failure
may lose the last commits, as it may lose the last lines of the log files.

Every method that touches the disk runs in a worker thread, one at a time, so the
event loop never waits for the disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

JournalError = (OSError, sqlite3.Error)


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record as compact JSON (what is stored and what is sent)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


class WebhookJournal(Protocol):
    """Where a webhook's pending records wait. `SqliteJournal` on disk; a memory one in tests.

    Errors: the disk-backed journal raises ``OSError`` or ``sqlite3.Error``
    (`JournalError`); an append that raised stored nothing.
    """

    async def open(self) -> tuple[int, int]:
        """Open (creating if needed); returns (records pending, highest seq pending or 0)."""
        ...

    async def append(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Store records after every other; returns the seq of the last one."""
        ...

    async def read(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` pending records, as (seq, JSON) in order."""
        ...

    async def remove_through(self, seq: int) -> None:
        """Forget every record up to and including `seq` (they were acknowledged)."""
        ...

    async def drop_oldest(self, count: int, *, after: int = 0) -> int:
        """Forget the oldest `count` records whose seq is above `after`; returns how many went."""
        ...

    async def close(self) -> None: ...


class SqliteJournal:
    """A `WebhookJournal` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> tuple[int, int]:
        return await trio.to_thread.run_sync(self._open)

    async def append(self, records: Sequence[Mapping[str, Any]]) -> int:
        return await trio.to_thread.run_sync(self._append, records)

    async def read(self, limit: int) -> list[tuple[int, bytes]]:
        return await trio.to_thread.run_sync(self._read, limit)

    async def remove_through(self, seq: int) -> None:
        await trio.to_thread.run_sync(self._remove_through, seq)

    async def drop_oldest(self, count: int, *, after: int = 0) -> int:
        return await trio.to_thread.run_sync(self._drop_oldest, count, after)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._close)

    # The blocking halves, run in worker threads.

    def _open(self) -> tuple[int, int]:
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                os.chmod(self.path, 0o600)
                db.execute("PRAGMA busy_timeout = 10000")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS pending ("
                    " seq INTEGER PRIMARY KEY AUTOINCREMENT, record BLOB NOT NULL)"
                )
                count, last = db.execute("SELECT count(*), coalesce(max(seq), 0) FROM pending").fetchone()
            except BaseException:
                db.close()
                raise
            self._db = db
            return count, last

    def _append(self, records: Sequence[Mapping[str, Any]]) -> int:
        rows = [(encode_record(r),) for r in records]
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO pending (record) VALUES (?)", rows)
                last = db.execute("SELECT max(seq) FROM pending").fetchone()[0]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(last)

    def _read(self, limit: int) -> list[tuple[int, bytes]]:
        with self._lock:
            cursor = self._connection().execute("SELECT seq, record FROM pending ORDER BY seq LIMIT ?", (limit,))
            return [(seq, bytes(record)) for seq, record in cursor]

    def _remove_through(self, seq: int) -> None:
        with self._lock:
            self._connection().execute("DELETE FROM pending WHERE seq <= ?", (seq,))

    def _drop_oldest(self, count: int, after: int) -> int:
        with self._lock:
            cursor = self._connection().execute(
                "DELETE FROM pending WHERE seq IN (SELECT seq FROM pending WHERE seq > ? ORDER BY seq LIMIT ?)",
                (after, count),
            )
            return cursor.rowcount

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError(f"webhook journal {self.path} is not open")
        return self._db
