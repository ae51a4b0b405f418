"""The spool on disk: one SQLite database in WAL mode, one transaction per group commit.

Layout of the spool directory (docs/spool.md says it for operators)::

    spool.db        the database: tables `data`, `messages`, `damaged`
    spool.db-wal    SQLite's write-ahead log: committed batches not yet checkpointed
    spool.db-shm    SQLite's index of the WAL (rebuilt when missing)

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` makes every COMMIT fsync
the WAL before it returns, so a committed batch survives a crash or power loss. A batch
is one transaction; each operation in it runs under its own SAVEPOINT so that one
refused operation (a duplicate id) does not take the others down with it.

Threads: `commit`, `stage` (and the call it returns), `entries`, `move_aside` and
`totals` use the one writing connection and are called by one thread at a time (the
spool's writer and the event loop taking turns, or `restore` before the writer runs).
`load_data` may be called from many threads at once; each call borrows a reading
connection from a small pool. WAL lets readers and the writer proceed side by side.

Every sqlite3 error leaves this module as `SpoolError`, translated once, here.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trimta.adapters.spool_storage import (
    CommitResult,
    Operation,
    RemoveEntries,
    SpoolError,
    StoreData,
    StoredEntry,
    UpdateEntry,
)

log = logging.getLogger("trimta.spool")

DATABASE_NAME = "spool.db"
SCHEMA_VERSION = 1

# Freed pages are given back to the file system in steps, so that draining a large
# backlog shrinks the file without making any single batch slow.
_VACUUM_THRESHOLD_PAGES = 2048
_VACUUM_STEP_PAGES = 4096

# How long a call of ours waits for another process's write lock (an operator's
# sqlite3 session, say) before the spool reports the database as busy.
_BUSY_TIMEOUT_MS = 10000


@dataclass(frozen=True, slots=True)
class _Applied:
    """A batch applied in the open transaction, waiting for its COMMIT."""

    result: CommitResult
    removed: bool  # some data may have been freed: give pages back after COMMIT


_SCHEMA = """
CREATE TABLE IF NOT EXISTS data (
    data_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS data_by_size ON data(size);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    data_id TEXT NOT NULL,
    meta TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_data ON messages(data_id);
CREATE TABLE IF NOT EXISTS damaged (
    id TEXT NOT NULL,
    data_id TEXT,
    meta,
    reason TEXT NOT NULL,
    moved_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS damaged_by_data ON damaged(data_id);
"""
# `data_by_size` lets the totals (count and bytes) be read from a small index instead
# of from every data page; `messages_by_data` answers "does anyone still use this
# data?" when messages are removed; `damaged_by_data` keeps the data of damaged
# entries alive, since they are kept for the operator.

_DATA_UNUSED = (
    "NOT EXISTS (SELECT 1 FROM messages WHERE data_id = :d)"
    " AND NOT EXISTS (SELECT 1 FROM damaged WHERE data_id = :d)"
)


def _describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    return f"{exc} ({name})" if name else str(exc)


class SqliteStorage:
    """A spool directory holding one SQLite database. See the module docstring.

    Opening creates the directory if needed and is cheap: it reads no messages.
    `max_size_bytes` caps the database: past it, stores fail with SpoolError as on a
    full disk, leaving the rest of the disk to the logs and the system. Raises
    SpoolError when the directory or its database cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_size_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_size_bytes = max_size_bytes
        self.database = self.path / DATABASE_NAME
        try:
            # Private: the spool holds other people's mail.
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {self.path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = self._connect_writer()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    # --- connections -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and ended here, explicitly.
        # check_same_thread=False: trio's worker threads take turns; we never share a
        # connection between two threads at the same time.
        conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        try:
            conn = self._connect()
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise SpoolError(
                        f"{self.database} was written by a newer trimta"
                        f" (schema {version}, this one knows {SCHEMA_VERSION})"
                    )
                # auto_vacuum only takes effect on a database without tables yet.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise SpoolError(f"{self.database}: the file system refuses WAL mode ({mode})")
                conn.execute("PRAGMA synchronous = FULL")
                # A bigger WAL between checkpoints means fewer checkpoints under load
                # (each costs a write of the pages and an fsync of the database); the
                # limit truncates it again afterwards.
                conn.execute("PRAGMA wal_autocheckpoint = 4000")
                conn.execute("PRAGMA journal_size_limit = 67108864")
                if self.max_size_bytes is not None:
                    # Past this size SQLite answers SQLITE_FULL, exactly as on a full disk:
                    # new mail is refused (452) while delivery drains the spool.
                    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                    pages = max(1, self.max_size_bytes // page_size)
                    conn.execute(f"PRAGMA max_page_count = {pages}")
                if version < SCHEMA_VERSION:
                    conn.executescript(_SCHEMA)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool database {self.database}: {_describe(exc)}") from exc
        return conn

    def _writer(self) -> sqlite3.Connection:
        if self._closed:
            raise SpoolError("the spool is closed")
        if self._conn is None:
            self._conn = self._connect_writer()
        return self._conn

    def _discard_writer(self) -> None:
        # After an error the connection may be in any state; a fresh one is cheap and
        # sure, and it is what lets the spool recover once the disk is fine again.
        if self._conn is not None:
            try:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    @contextmanager
    def _failing_writer(self) -> Iterator[None]:
        """sqlite3's errors leave as SpoolError; after any error the writer starts afresh."""
        try:
            yield
        except sqlite3.Error as exc:
            self._discard_writer()
            raise SpoolError(_describe(exc)) from exc
        except BaseException:
            self._discard_writer()
            raise

    # --- writing -----------------------------------------------------------------------

    def commit(self, batch: Sequence[Operation]) -> CommitResult:
        conn = self._writer()
        with self._failing_writer():
            conn.execute("BEGIN IMMEDIATE")
        return self._finish(conn, self._apply(conn, batch))

    def stage(self, batch: Sequence[Operation]) -> Callable[[], CommitResult] | None:
        """Apply `batch` in a transaction left open; return the call that commits it.

        The first half of `commit`, for the caller's own thread: it never waits for a
        lock (None if another process holds the database's write lock: then `commit`
        the batch instead, where waiting is allowed) and, for batches of the size
        `Spool` stages, does not wait on the disk either (SQLite keeps the changed
        pages in memory until COMMIT). The returned call is the other half: COMMIT,
        the fsync of the WAL and any checkpoint, for the writer's thread. Nothing else
        may use the storage between the two.
        """
        conn = self._writer()
        with self._failing_writer():
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # or an extended BUSY code
                    raise
                return None
            finally:
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        applied = self._apply(conn, batch)
        return lambda: self._finish(conn, applied)

    def _apply(self, conn: sqlite3.Connection, batch: Sequence[Operation]) -> _Applied:
        """Every operation of `batch`, each under its own SAVEPOINT, in the open transaction."""
        refused: dict[int, str] = {}
        messages = objects = size = 0
        removed = False
        with self._failing_writer():
            for index, op in enumerate(batch):
                conn.execute("SAVEPOINT op")
                try:
                    if isinstance(op, StoreData):
                        self._store(conn, op)
                        messages += len(op.entries)
                        objects += 1
                        size += len(op.data)
                    elif isinstance(op, UpdateEntry):
                        conn.execute(
                            "UPDATE messages SET meta = ? WHERE id = ? AND data_id = ?",
                            (op.entry.meta, op.entry.id, op.entry.data_id),
                        )
                    elif isinstance(op, RemoveEntries):
                        m, o, s = self._remove(conn, op)
                        messages -= m
                        objects -= o
                        size -= s
                        removed = True
                    else:
                        raise TypeError(f"not a spool operation: {op!r}")
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK TO op")
                    refused[index] = f"refused: {exc}"
                conn.execute("RELEASE op")
        return _Applied(CommitResult(refused, messages, objects, size), removed)

    def _finish(self, conn: sqlite3.Connection, applied: _Applied) -> CommitResult:
        """COMMIT what `_apply` did: durable (the WAL fsynced) once this returns."""
        if conn is not self._conn:
            raise SpoolError("the spool's writing connection was replaced before COMMIT")
        with self._failing_writer():
            conn.execute("COMMIT")
        if applied.removed:
            self._give_back_free_pages(conn)
        return applied.result

    @staticmethod
    def _store(conn: sqlite3.Connection, op: StoreData) -> None:
        conn.execute(
            "INSERT INTO data (data_id, size, body) VALUES (?, ?, ?)",
            (op.data_id, len(op.data), op.data),
        )
        conn.executemany(
            "INSERT INTO messages (id, data_id, meta) VALUES (?, ?, ?)",
            [(e.id, e.data_id, e.meta) for e in op.entries],
        )

    @staticmethod
    def _remove(conn: sqlite3.Connection, op: RemoveEntries) -> tuple[int, int, int]:
        messages = objects = size = 0
        data_ids = set()
        for id in op.ids:
            row = conn.execute("DELETE FROM messages WHERE id = ? RETURNING data_id", (id,)).fetchone()
            if row is not None:
                messages += 1
                data_ids.add(row[0])
        for data_id in data_ids:
            row = conn.execute(
                f"DELETE FROM data WHERE data_id = :d AND {_DATA_UNUSED} RETURNING size",
                {"d": data_id},
            ).fetchone()
            if row is not None:
                objects += 1
                size += row[0]
        return messages, objects, size

    def _give_back_free_pages(self, conn: sqlite3.Connection) -> None:
        # After the batch's COMMIT, in a transaction of its own: executescript() is the
        # one sqlite3 call that steps incremental_vacuum to the end (execute() frees one
        # page), and it commits what is open. The batch is durable by now, so a failure
        # here is logged, not reported to its callers.
        try:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free > _VACUUM_THRESHOLD_PAGES:
                conn.executescript(f"PRAGMA incremental_vacuum({_VACUUM_STEP_PAGES})")
        except sqlite3.Error as exc:
            log.warning("spool: could not give free pages back: %s", _describe(exc))
            self._discard_writer()

    # --- restoring ---------------------------------------------------------------------

    def entries(self) -> Iterator[StoredEntry]:
        conn = self._writer()
        try:
            rows = conn.execute(
                "SELECT m.id, m.data_id, m.meta, d.data_id IS NOT NULL"
                " FROM messages AS m LEFT JOIN data AS d ON d.data_id = m.data_id"
                " ORDER BY m.id"
            )
            for id, data_id, meta, has_data in rows:
                yield StoredEntry(id, data_id, meta, bool(has_data))
        except sqlite3.Error as exc:
            raise SpoolError(self._unreadable(exc)) from exc

    def _unreadable(self, exc: sqlite3.Error) -> str:
        if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return (
                f"the spool database {self.database} is damaged ({_describe(exc)}); its"
                " messages are still in it: stop, move the spool directory aside, and"
                " recover them with `sqlite3 spool.db .recover` (see docs/spool.md)"
            )
        return f"cannot read the spool database {self.database}: {_describe(exc)}"

    def move_aside(self, damaged: Sequence[tuple[str, str]]) -> None:
        conn = self._writer()
        now = time.time()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for id, reason in damaged:
                conn.execute(
                    "INSERT INTO damaged (id, data_id, meta, reason, moved_at)"
                    " SELECT id, data_id, meta, ?, ? FROM messages WHERE id = ?",
                    (reason, now, id),
                )
                conn.execute("DELETE FROM messages WHERE id = ?", (id,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._discard_writer()
            raise SpoolError(f"cannot move damaged entries aside: {_describe(exc)}") from exc

    def totals(self) -> tuple[int, int, int]:
        conn = self._writer()
        try:
            (messages,) = conn.execute("SELECT count(*) FROM messages").fetchone()
            objects, size = conn.execute("SELECT count(*), total(size) FROM data").fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(self._unreadable(exc)) from exc
        return messages, objects, int(size)

    # --- reading data ------------------------------------------------------------------

    def load_data(self, data_id: str) -> bytes:
        conn = self._borrow_reader()
        try:
            row = conn.execute("SELECT body FROM data WHERE data_id = ?", (data_id,)).fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise SpoolError(f"cannot read data {data_id!r}: {_describe(exc)}") from exc
        self._return_reader(conn)
        if row is None:
            raise KeyError(data_id)
        return row[0]

    def _borrow_reader(self) -> sqlite3.Connection:
        with self._readers_lock:
            if self._closed:
                raise SpoolError("the spool is closed")
            if self._readers:
                return self._readers.pop()
        try:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool database {self.database}: {_describe(exc)}") from exc
        return conn

    def _return_reader(self, conn: sqlite3.Connection) -> None:
        with self._readers_lock:
            if not self._closed and len(self._readers) < 8:
                self._readers.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
