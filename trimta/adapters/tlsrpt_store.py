"""TLS reporting's durable state: session counts and the reports waiting to be sent, in SQLite.

One file, ``tlsrpt.sqlite`` in the spool directory, with two tables:

- ``counts``: sessions per (UTC day, policy domain, policy, failure detail), added to
  by each flush of the in-memory counts (one transaction per flush, so a crash loses
  at most what was counted since the last flush, never half of one).
- ``outbox``: each built report once per destination, gzipped, with its attempts and
  the time of the next one. A day's counts of a domain are deleted in the same
  transaction that queues its reports, so a crash in between neither loses a report
  nor sends one twice from the counts.

The writes are small transactions in WAL mode with ``synchronous=NORMAL``: a commit
does not fsync (checkpoints do), so the reporting service calls the methods on the
event loop, once per flush or send. A committed transaction survives the process being
killed; a power loss may lose the last few.
"""

from __future__ import annotations

import datetime
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimta.core.tls_report import PolicyRef, PolicyType, ResultType
from trimta.core.tlsrpt import CountRow, FailureKey

FILE_NAME = "tlsrpt.sqlite"
log = logging.getLogger("trimta.tls_reporting")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    day TEXT NOT NULL, domain TEXT NOT NULL, policy TEXT NOT NULL, failure TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (day, domain, policy, failure)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, report_id TEXT NOT NULL, domain TEXT NOT NULL, day TEXT NOT NULL,
    destination TEXT NOT NULL, report BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (report_id, destination)
);
"""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One report for one destination, waiting to be sent."""

    id: int
    report_id: str
    policy_domain: str
    day: datetime.date
    destination: str  # the rua URI as published: mailto:ADDRESS or https://...
    gzipped: bytes
    attempts: int
    next_attempt: float
    last_error: str


def _policy_text(policy: PolicyRef) -> str:
    return json.dumps([policy.policy_type.value, policy.policy_domain, list(policy.policy_strings),
                       list(policy.mx_host), policy.mode], separators=(",", ":"))


def _policy(text: str) -> PolicyRef:
    kind, domain, strings, mx, mode = json.loads(text)
    return PolicyRef(PolicyType(kind), domain, tuple(strings), tuple(mx), mode)


def _failure_text(failure: FailureKey | None) -> str:
    if failure is None:
        return ""
    return json.dumps([failure.result_type.value, failure.sending_mta_ip, failure.receiving_mx_hostname,
                       failure.receiving_ip, failure.additional_information, failure.failure_reason_code],
                      separators=(",", ":"))


def _failure(text: str) -> FailureKey | None:
    if not text:
        return None
    kind, *rest = json.loads(text)
    return FailureKey(ResultType(kind), *rest)


class TlsReportStore:
    """The counts and the outbox (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:
            # Reports must never keep mail from flowing: a damaged file is moved aside
            # (its counts are lost, and the log says so) and a new one started.
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            log.error("TLS reports: %s is damaged (%s); moved to %s, counting starts again", path, exc, aside)
            path.replace(aside)
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @classmethod
    def in_spool(cls, spool_dir: Path) -> TlsReportStore:
        return cls(spool_dir / FILE_NAME)

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> Any:
        return _Transaction(self._db)

    # --- counts

    def add(self, rows: Iterable[CountRow]) -> None:
        """Add counted sessions to the stored counts, all or nothing."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO counts (day, domain, policy, failure, n) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (day, domain, policy, failure) DO UPDATE SET n = n + excluded.n",
                [(row.day.isoformat(), row.policy.policy_domain, _policy_text(row.policy), _failure_text(row.failure),
                  row.count) for row in rows],
            )

    def rows_before(self, day: datetime.date) -> list[CountRow]:
        """Every stored count of a day before `day`."""
        cursor = self._db.execute("SELECT day, policy, failure, n FROM counts WHERE day < ? ORDER BY day, domain",
                                  (day.isoformat(),))
        return [CountRow(datetime.date.fromisoformat(d), _policy(p), _failure(f), n) for d, p, f, n in cursor]

    def count_rows(self) -> int:
        (n,) = self._db.execute("SELECT COUNT(*) FROM counts").fetchone()
        return int(n)

    # --- the outbox

    def queue_reports(self, day: datetime.date, domain: str, reports: Sequence[tuple[str, str, bytes]],
                      now: float) -> None:
        """Queue (report id, destination, gzipped report) for sending and forget the counts
        they were built from, in one transaction. With no reports (the domain wants none)
        the counts are just forgotten."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (report_id, domain, day, destination, report, next_attempt)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(rid, domain, day.isoformat(), destination, body, now) for rid, destination, body in reports],
            )
            self._db.execute("DELETE FROM counts WHERE day = ? AND domain = ?", (day.isoformat(), domain))

    def due(self, now: float) -> list[OutboxEntry]:
        """Reports whose next attempt is due, oldest first."""
        cursor = self._db.execute(
            "SELECT id, report_id, domain, day, destination, report, attempts, next_attempt, last_error FROM outbox"
            " WHERE next_attempt <= ? ORDER BY next_attempt, id", (now,))
        return [OutboxEntry(i, rid, dom, datetime.date.fromisoformat(d), dest, bytes(body), a, t, e)
                for i, rid, dom, d, dest, body, a, t, e in cursor]

    def next_attempt(self) -> float | None:
        """When the next report falls due, or None with none waiting."""
        (at,) = self._db.execute("SELECT MIN(next_attempt) FROM outbox").fetchone()
        return None if at is None else float(at)

    def pending(self) -> int:
        (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def remove(self, entry_id: int) -> None:
        """A report sent (or given up on): out of the outbox."""
        with self._transaction():
            self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def failed(self, entry_id: int, error: str, next_attempt: float) -> None:
        """An attempt failed: count it, keep why, and when to try again."""
        with self._transaction():
            self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt = ?"
                             " WHERE id = ?", (error, next_attempt, entry_id))


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
