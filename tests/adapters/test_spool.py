"""The durable spool: what is acknowledged is on disk, shared fsyncs, damage and disk errors."""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Sequence

import pytest
import trio

from trimta.adapters.spool import RestoreResult, Spool, SpoolError
from trimta.adapters.spool_storage import Operation
from trimta.adapters.spool_sqlite import SqliteStorage
from trimta.core.message import Message, Reception, new_id

DEADLINE_S = 20


def transaction(*recipients: str, tenant: str | None = "acme", size: int = 100) -> list[Message]:
    """The messages of one SMTP transaction: one per recipient, all sharing one data_id."""
    data_id = new_id()
    reception = Reception(peer_address="127.0.0.1", listener="127.0.0.1:2525", helo="client")
    return [
        Message.new(
            data_id=data_id,
            sender="news@shop.example",
            recipient=r,
            tenant=tenant,
            campaign="spring",
            size=size,
            created=time.time(),
            reception=reception,
        )
        for r in recipients
    ]


def reopened(path) -> tuple[Spool, RestoreResult]:
    spool = Spool(SqliteStorage(path))
    return spool, spool.restore()


class GatedStorage:
    """A real storage whose commits can be held, each until the test releases it.

    Holding a batch in its commit lets a test line up what the next batch will carry,
    deterministically, the way concurrent sessions do while an fsync is under way.
    """

    def __init__(self, inner: SqliteStorage, *, held: bool = False) -> None:
        self.inner = inner
        self.held = held
        self.permits = threading.Semaphore(0)
        self.begun = threading.Semaphore(0)
        self.batches: list[int] = []

    def _gate(self, batch: Sequence[Operation]) -> None:
        self.batches.append(len(batch))
        self.begun.release()
        if self.held:
            assert self.permits.acquire(timeout=DEADLINE_S), "the test never released a commit"

    def commit(self, batch: Sequence[Operation]):
        self._gate(batch)
        return self.inner.commit(batch)

    def stage(self, batch: Sequence[Operation]):
        # Staged in the loop, committed (and held) in the writer's thread, as for real.
        finish = self.inner.stage(batch)
        if finish is None:
            return None

        def gated():
            self._gate(batch)
            return finish()

        return gated

    def release(self, commits: int = 1) -> None:
        self.permits.release(commits)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class FailingDisk(GatedStorage):
    """A real storage on a disk that answers ENOSPC while `full` is set."""

    def __init__(self, inner: SqliteStorage) -> None:
        super().__init__(inner)
        self.full = False

    def commit(self, batch):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().commit(batch)

    def stage(self, batch):
        if self.full:
            return lambda: self.commit(batch)
        return super().stage(batch)


class BuggyStorage(GatedStorage):
    def commit(self, batch):
        raise RuntimeError("a bug in the storage")

    def stage(self, batch):
        return lambda: self.commit(batch)


async def wait_until_committing(storage: GatedStorage) -> None:
    """Wait until the writer's thread has begun one more commit."""
    begun = await trio.to_thread.run_sync(storage.begun.acquire, True, DEADLINE_S)
    assert begun, "the writer never started a commit"


async def wait_until_pending(spool: Spool, count: int) -> None:
    while spool.statistics().pending < count:
        await trio.sleep(0.001)


# --- durability ------------------------------------------------------------------------


async def test_stored_messages_and_data_survive_reopen(tmp_path):
    spool = Spool(SqliteStorage(tmp_path))
    assert spool.restore().messages == []
    messages = transaction("a@gmail.com")
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            await spool.store(b"Subject: hi\r\n\r\nbody\r\n", messages)
            nursery.cancel_scope.cancel()
    spool.close()

    spool, restored = reopened(tmp_path)
    assert [m.to_dict() for m in restored.messages] == [m.to_dict() for m in messages]
    assert restored.damaged == []
    with trio.fail_after(DEADLINE_S):
        assert await spool.load_data(messages[0].data_id) == b"Subject: hi\r\n\r\nbody\r\n"
    spool.close()


async def test_recipients_of_one_transaction_share_one_copy_of_data(tmp_path):
    spool = Spool(SqliteStorage(tmp_path))
    spool.restore()
    messages = transaction("a@gmail.com", "b@yahoo.com", "c@gmail.com")
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            await spool.store(b"x" * 5000, messages)
            stats = spool.statistics()
            nursery.cancel_scope.cancel()
    assert (stats.messages, stats.data_objects, stats.data_bytes) == (3, 1, 5000)
    spool.close()

    spool, restored = reopened(tmp_path)
    assert sorted(m.recipient for m in restored.messages) == ["a@gmail.com", "b@yahoo.com", "c@gmail.com"]
    assert {m.data_id for m in restored.messages} == {messages[0].data_id}
    assert (spool.statistics().messages, spool.statistics().data_objects) == (3, 1)
    spool.close()


async def test_remove_deletes_data_once_no_message_uses_it(tmp_path):
    spool = Spool(SqliteStorage(tmp_path))
    spool.restore()
    a, b = transaction("a@gmail.com", "b@gmail.com")
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            await spool.store(b"shared data", [a, b])
            await spool.remove([a.id])
            assert await spool.load_data(a.data_id) == b"shared data"
            await spool.remove([b.id])
            with pytest.raises(KeyError):
                await spool.load_data(a.data_id)
            stats = spool.statistics()
            nursery.cancel_scope.cancel()
    assert (stats.messages, stats.data_objects, stats.data_bytes) == (0, 0, 0)
    spool.close()

    spool, restored = reopened(tmp_path)
    assert restored.messages == []
    assert spool.statistics().data_objects == 0
    spool.close()


class CountingReads(GatedStorage):
    """A real storage that counts the data it reads back from disk."""

    def __init__(self, inner: SqliteStorage) -> None:
        super().__init__(inner)
        self.reads: list[str] = []

    def load_data(self, data_id: str) -> bytes:
        self.reads.append(data_id)
        return self.inner.load_data(data_id)


async def test_recent_data_is_read_from_memory_until_its_messages_go_or_it_is_crowded_out(tmp_path, monkeypatch):
    monkeypatch.setattr("trimta.adapters.spool.RECENT_DATA_BYTES", 1600)  # 100 octets at most each
    storage = CountingReads(SqliteStorage(tmp_path))
    spool = Spool(storage)
    spool.restore()
    first, big, *others = (transaction(f"{n}@gmail.com") for n in range(19))
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            await spool.store(b"1" * 100, first)
            assert await spool.load_data(first[0].data_id) == b"1" * 100
            assert storage.reads == []  # delivered right after reception: no disk read
            await spool.remove([first[0].id])
            with pytest.raises(KeyError):  # forgotten with its last message
                await spool.load_data(first[0].data_id)
            await spool.store(b"2" * 101, big)  # too big to keep
            assert await spool.load_data(big[0].data_id) == b"2" * 101
            for n, messages in enumerate(others):  # 17 x 100 octets: the oldest is crowded out
                await spool.store(b"%02d" % n * 50, messages)
            assert await spool.load_data(others[0][0].data_id) == b"00" * 50
            assert await spool.load_data(others[-1][0].data_id) == b"16" * 50
            nursery.cancel_scope.cancel()
    assert storage.reads == [first[0].data_id, big[0].data_id, others[0][0].data_id]
    spool.close()


async def test_update_is_durable_and_does_not_revive_a_removed_message(tmp_path):
    spool = Spool(SqliteStorage(tmp_path))
    spool.restore()
    kept, gone = transaction("a@gmail.com", "b@gmail.com")
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            await spool.store(b"data", [kept, gone])
            await spool.remove([gone.id])
            kept.attempts, kept.due = 3, 1_900_000_000.0
            gone.attempts = 1
            await spool.update(kept)
            await spool.update(gone)
            nursery.cancel_scope.cancel()
    spool.close()

    spool, restored = reopened(tmp_path)
    assert [(m.id, m.attempts, m.due) for m in restored.messages] == [(kept.id, 3, 1_900_000_000.0)]
    spool.close()


async def test_restore_returns_many_messages_oldest_first(tmp_path):
    spool = Spool(SqliteStorage(tmp_path))
    spool.restore()
    stored = []
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)

            async def sender(n: int) -> None:
                for _ in range(n):
                    messages = transaction("x@gmail.com", "y@aol.com")
                    await spool.store(b"d" * 2048, messages)
                    stored.extend(m.id for m in messages)

            async with trio.open_nursery() as senders:
                for _ in range(20):
                    senders.start_soon(sender, 50)
            nursery.cancel_scope.cancel()
    spool.close()

    spool, restored = reopened(tmp_path)
    ids = [m.id for m in restored.messages]
    assert ids == sorted(stored) and len(ids) == 2000
    assert spool.statistics().messages == 2000
    spool.close()


# --- group commit ----------------------------------------------------------------------


async def test_concurrent_stores_share_one_commit(tmp_path):
    storage = GatedStorage(SqliteStorage(tmp_path), held=True)
    spool = Spool(storage)
    spool.restore()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            async with trio.open_nursery() as sessions:
                sessions.start_soon(spool.store, b"first", transaction("a@gmail.com"))
                await wait_until_committing(storage)
                for n in range(49):
                    sessions.start_soon(spool.store, b"later", transaction(f"r{n}@gmail.com"))
                await wait_until_pending(spool, 49)
                storage.release(2)
            stats = spool.statistics()
            nursery.cancel_scope.cancel()
    assert (stats.commits, stats.operations, stats.largest_batch) == (2, 50, 49)
    assert stats.messages == 50
    spool.close()
    spool, restored = reopened(tmp_path)
    assert len(restored.messages) == 50
    spool.close()


async def test_twenty_sessions_need_far_fewer_commits_than_messages(tmp_path):
    spool = Spool(SqliteStorage(tmp_path))
    spool.restore()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)

            async def session() -> None:
                for _ in range(10):
                    await spool.store(b"m" * 2048, transaction("a@gmail.com"))

            async with trio.open_nursery() as sessions:
                for _ in range(20):
                    sessions.start_soon(session)
            stats = spool.statistics()
            nursery.cancel_scope.cancel()
    assert stats.operations == 200
    assert stats.commits <= 200 // 4
    spool.close()


async def test_one_refused_store_does_not_fail_its_batch(tmp_path):
    storage = GatedStorage(SqliteStorage(tmp_path), held=True)
    spool = Spool(storage)
    spool.restore()
    original = transaction("a@gmail.com")
    duplicate = transaction("b@gmail.com")
    duplicate[0].id = original[0].id
    outcomes = {}

    async def store(name, messages):
        try:
            await spool.store(b"data", messages)
            outcomes[name] = "stored"
        except SpoolError:
            outcomes[name] = "refused"

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            storage.release()
            await spool.store(b"data", original)
            await wait_until_committing(storage)
            async with trio.open_nursery() as sessions:
                sessions.start_soon(spool.store, b"data", transaction("c@gmail.com"))
                await wait_until_committing(storage)
                sessions.start_soon(store, "duplicate", duplicate)
                sessions.start_soon(store, "other", transaction("d@gmail.com"))
                await wait_until_pending(spool, 2)
                storage.release(2)
            stats = spool.statistics()
            nursery.cancel_scope.cancel()
    assert outcomes == {"duplicate": "refused", "other": "stored"}
    assert stats.messages == 3
    spool.close()
    spool, restored = reopened(tmp_path)
    assert sorted(m.recipient for m in restored.messages) == ["a@gmail.com", "c@gmail.com", "d@gmail.com"]
    spool.close()


# --- cancellation ------------------------------------------------------------------------


async def test_cancelled_store_in_a_committing_batch_leaves_the_others_durable(tmp_path):
    storage = GatedStorage(SqliteStorage(tmp_path), held=True)
    spool = Spool(storage)
    spool.restore()
    cancelled_messages = transaction("gone@gmail.com")
    kept_messages = transaction("kept@gmail.com")
    client_gone = trio.CancelScope()

    async def cancelled_session():
        with client_gone:
            await spool.store(b"cancelled", cancelled_messages)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            async with trio.open_nursery() as sessions:
                sessions.start_soon(spool.store, b"first", transaction("first@gmail.com"))
                await wait_until_committing(storage)
                sessions.start_soon(spool.store, b"kept", kept_messages)
                sessions.start_soon(cancelled_session)
                await wait_until_pending(spool, 2)
                storage.release()
                await wait_until_committing(storage)
                client_gone.cancel()  # while its batch is being written
                await trio.sleep(0)
                storage.release()
            nursery.cancel_scope.cancel()
    assert storage.batches == [1, 2]
    assert client_gone.cancelled_caught
    spool.close()

    spool, restored = reopened(tmp_path)
    assert restored.damaged == []
    # The cancelled store was already in the batch: it is on disk whole, with its data.
    assert sorted(m.recipient for m in restored.messages) == [
        "first@gmail.com", "gone@gmail.com", "kept@gmail.com",
    ]
    with trio.fail_after(DEADLINE_S):
        assert await spool.load_data(kept_messages[0].data_id) == b"kept"
        assert await spool.load_data(cancelled_messages[0].data_id) == b"cancelled"
    spool.close()


async def test_store_cancelled_before_its_batch_is_not_written(tmp_path):
    storage = GatedStorage(SqliteStorage(tmp_path), held=True)
    spool = Spool(storage)
    spool.restore()
    client_gone = trio.CancelScope()

    async def waiting_session():
        with client_gone:
            await spool.store(b"never", transaction("never@gmail.com"))

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            async with trio.open_nursery() as sessions:
                sessions.start_soon(spool.store, b"first", transaction("first@gmail.com"))
                await wait_until_committing(storage)
                sessions.start_soon(waiting_session)
                await wait_until_pending(spool, 1)
                client_gone.cancel()
                await trio.sleep(0)
                storage.release(2)
            await spool.store(b"after", transaction("after@gmail.com"))
            nursery.cancel_scope.cancel()
    assert storage.batches == [1, 1]
    spool.close()

    spool, restored = reopened(tmp_path)
    assert sorted(m.recipient for m in restored.messages) == ["after@gmail.com", "first@gmail.com"]
    spool.close()


async def test_stopping_the_writer_commits_what_was_already_queued(tmp_path):
    storage = GatedStorage(SqliteStorage(tmp_path), held=True)
    spool = Spool(storage)
    spool.restore()
    outcomes = []

    async def session(recipient):
        await spool.store(b"data", transaction(recipient))
        outcomes.append(recipient)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as sessions, trio.open_nursery() as writer:
            await writer.start(spool.run)
            sessions.start_soon(session, "in-flight@gmail.com")
            await wait_until_committing(storage)
            sessions.start_soon(session, "queued@gmail.com")
            await wait_until_pending(spool, 1)
            writer.cancel_scope.cancel()  # shutdown begins mid-commit
            storage.release(2)
        with pytest.raises(SpoolError):
            await spool.store(b"late", transaction("late@gmail.com"))
    assert sorted(outcomes) == ["in-flight@gmail.com", "queued@gmail.com"]
    spool.close()
    spool, restored = reopened(tmp_path)
    assert len(restored.messages) == 2
    spool.close()


# --- disk errors -------------------------------------------------------------------------


async def test_full_disk_fails_the_batch_and_the_spool_recovers(tmp_path):
    storage = FailingDisk(SqliteStorage(tmp_path))
    spool = Spool(storage)
    spool.restore()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            storage.full = True
            with pytest.raises(SpoolError, match="No space left"):
                await spool.store(b"data", transaction("lost@gmail.com"))
            storage.full = False
            await spool.store(b"data", transaction("later@gmail.com"))
            stats = spool.statistics()
            nursery.cancel_scope.cancel()
    assert (stats.failed_commits, stats.commits, stats.messages) == (1, 1, 1)
    spool.close()
    spool, restored = reopened(tmp_path)
    assert [m.recipient for m in restored.messages] == ["later@gmail.com"]
    spool.close()


async def test_spool_over_its_size_limit_refuses_until_mail_is_removed(tmp_path):
    spool = Spool(SqliteStorage(tmp_path, max_size_bytes=400_000))
    spool.restore()
    accepted = []
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            with pytest.raises(SpoolError, match="full"):
                for n in range(100):
                    messages = transaction(f"r{n}@gmail.com")
                    await spool.store(b"z" * 50_000, messages)
                    accepted.extend(messages)
            assert accepted, "the limit should allow a few messages"
            await spool.remove([m.id for m in accepted])
            await spool.store(b"z" * 50_000, transaction("after@gmail.com"))
            nursery.cancel_scope.cancel()
    spool.close()
    spool, restored = reopened(tmp_path)
    assert [m.recipient for m in restored.messages] == ["after@gmail.com"]
    spool.close()


async def test_another_writer_holding_the_database_delays_a_store_without_stalling_the_loop(tmp_path):
    """An operator's sqlite3 session writing to spool.db holds SQLite's write lock.

    The store waits for it in the writer's thread, not in the event loop (where a batch
    is applied only when the lock is free), and then succeeds.
    """
    storage = GatedStorage(SqliteStorage(tmp_path))
    spool = Spool(storage)
    spool.restore()
    operator = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    messages = transaction("a@gmail.com")
    stored = trio.Event()

    async def store() -> None:
        await spool.store(b"Subject: hi\r\n\r\nbody\r\n", messages)
        stored.set()

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            handed_over = time.monotonic()
            nursery.start_soon(store)
            await wait_until_committing(storage)
            # Not a timing measurement: waiting for the lock in the loop would have held
            # it for the whole busy timeout (10 s) before the batch reached the thread.
            assert time.monotonic() - handed_over < 5
            assert not stored.is_set()
            operator.execute("COMMIT")
            await stored.wait()
            nursery.cancel_scope.cancel()
    operator.close()
    spool.close()
    spool, restored = reopened(tmp_path)
    assert [m.id for m in restored.messages] == [m.id for m in messages]
    spool.close()


async def test_writer_crash_fails_callers_instead_of_hanging(tmp_path):
    spool = Spool(BuggyStorage(SqliteStorage(tmp_path)))
    spool.restore()
    with trio.fail_after(DEADLINE_S):
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="a bug in the storage")):
            async with trio.open_nursery() as nursery:
                await nursery.start(spool.run)
                with pytest.raises(SpoolError):
                    await spool.store(b"data", transaction("a@gmail.com"))
                await trio.sleep_forever()
        with pytest.raises(SpoolError):
            await spool.store(b"data", transaction("b@gmail.com"))
    assert not spool.statistics().writer_running
    spool.close()


async def test_store_without_a_running_writer_is_an_error_not_a_hang(tmp_path):
    spool = Spool(SqliteStorage(tmp_path))
    with trio.fail_after(DEADLINE_S):
        with pytest.raises(SpoolError, match="not running"):
            await spool.store(b"data", transaction("a@gmail.com"))
    spool.close()


def test_unreadable_database_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "spool.db").write_bytes(b"this is not a database, just garbage" * 100)
    with pytest.raises(SpoolError, match="spool.db"):
        spool = Spool(SqliteStorage(tmp_path))
        spool.restore()


# --- damaged entries ---------------------------------------------------------------------


async def store_all(path, transactions):
    spool = Spool(SqliteStorage(path))
    spool.restore()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            for messages in transactions:
                await spool.store(b"data of " + messages[0].data_id.encode(), messages)
            nursery.cancel_scope.cancel()
    spool.close()


def damage(path, sql, *params):
    with sqlite3.connect(path / "spool.db") as db:
        db.execute(sql, params)


async def test_entry_with_bad_metadata_is_moved_aside_and_reported(tmp_path):
    good, bad = transaction("good@gmail.com"), transaction("bad@gmail.com")
    await store_all(tmp_path, [good, bad])
    damage(tmp_path, "UPDATE messages SET meta = '{\"id\": truncated' WHERE id = ?", bad[0].id)

    spool, restored = reopened(tmp_path)
    assert [m.recipient for m in restored.messages] == ["good@gmail.com"]
    assert restored.damaged == [bad[0].id]
    assert "metadata" in restored.reasons[bad[0].id]
    assert spool.statistics().damaged == 1
    spool.close()

    # Kept for the operator, with the reason, not deleted; and not reported twice.
    with sqlite3.connect(tmp_path / "spool.db") as db:
        kept = db.execute("SELECT id, meta, reason FROM damaged").fetchall()
    assert [(id, meta) for id, meta, _ in kept] == [(bad[0].id, '{"id": truncated')]
    spool, restored = reopened(tmp_path)
    assert restored.damaged == [] and len(restored.messages) == 1
    with trio.fail_after(DEADLINE_S):
        assert await spool.load_data(bad[0].data_id) == b"data of " + bad[0].data_id.encode()
    spool.close()


async def test_entry_whose_data_is_missing_is_moved_aside_and_reported(tmp_path):
    good, orphan = transaction("good@gmail.com"), transaction("o1@gmail.com", "o2@gmail.com")
    await store_all(tmp_path, [good, orphan])
    damage(tmp_path, "DELETE FROM data WHERE data_id = ?", orphan[0].data_id)

    spool, restored = reopened(tmp_path)
    assert [m.recipient for m in restored.messages] == ["good@gmail.com"]
    assert sorted(restored.damaged) == sorted(m.id for m in orphan)
    assert all("missing" in restored.reasons[m.id] for m in orphan)
    spool.close()


async def test_metadata_that_is_json_but_not_a_message_is_moved_aside(tmp_path):
    good, bad = transaction("good@gmail.com"), transaction("bad@gmail.com")
    await store_all(tmp_path, [good, bad])
    damage(tmp_path, "UPDATE messages SET meta = '[1, 2, 3]' WHERE id = ?", bad[0].id)
    spool, restored = reopened(tmp_path)
    assert restored.damaged == [bad[0].id]
    assert [m.recipient for m in restored.messages] == ["good@gmail.com"]
    spool.close()


async def test_draining_a_backlog_gives_disk_space_back(tmp_path):
    def spool_bytes() -> int:
        return sum(f.stat().st_size for f in tmp_path.glob("spool.db*"))

    spool = Spool(SqliteStorage(tmp_path))
    spool.restore()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            backlog = []
            for n in range(200):
                messages = transaction(f"r{n}@gmail.com")
                await spool.store(b"b" * 100_000, messages)
                backlog.extend(m.id for m in messages)
            full = spool_bytes()
            for start in range(0, 200, 20):
                await spool.remove(backlog[start : start + 20])
            nursery.cancel_scope.cancel()
    spool.close()
    assert full > 20_000_000
    assert spool_bytes() < full / 2
