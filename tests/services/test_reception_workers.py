"""A listener served by the daemon and a reception worker process (real processes, loopback)."""

import json
import os
import signal

import pytest
import trio

from trimta.adapters.config import ListenerConfig, TenancyConfig
from trimta.adapters.logfile import JsonLinesWriter
from trimta.adapters.spool import Spool, encode_metadata
from trimta.adapters.spool_sqlite import SqliteStorage
from trimta.core.message import Reception
from trimta.services.acceptance import Acceptor, Submission, encoded, prepare
from trimta.services.logs import LogSink
from trimta.services.reception_workers import (
    FrameReader,
    ReceptionWorkers,
    decode_store,
    encode_frame,
    encode_store,
    make_listener,
)
from trimta.services.smtp_listener import SmtpListener
from trimta.services.smtp_trace import TraceFilter, TraceHub

from .conftest import read_reply

DEADLINE_S = 60  # real processes start in a second or two; this is only a backstop


def test_frames_split_anywhere_come_out_whole():
    frames = [(["store", 1, 2.5, [{"id": "a"}]], b"data\r\n" * 100), (["stop"], b""), (["stats", 1, 2, 3, 4], b"x")]
    wire = b"".join(encode_frame(h, b) for h, b in frames)
    for step in (1, 3, 7, 64, len(wire)):
        reader = FrameReader()
        received = []
        for i in range(0, len(wire), step):
            reader.feed(wire[i : i + step])
            while (frame := reader.next_frame()) is not None:
                received.append(frame)
        assert received == frames


def _prepared(recipients=("a@example.net", "b@example.org")):
    submission = Submission(
        sender="s@example.com", recipients=list(recipients),
        data=b"X-Tenant: acme\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n",
        reception=Reception(peer_address="127.0.0.1", listener="127.0.0.1:25", helo="c.example"),
    )
    return encoded(prepare(submission, tenancy=TenancyConfig(), hostname="mx.test", now=1_700_000_000.5))


def test_store_frames_carry_what_the_daemon_writes_as_encoded_by_the_worker():
    prepared = _prepared()
    reader = FrameReader()
    reader.feed(encode_frame(*encode_store(7, prepared)))
    header, body = reader.next_frame()
    assert header[:3] == ["store", 7, 1_700_000_000.5]
    received = decode_store(header, body)
    assert received.data == prepared.data and received.data.startswith(b"Received: from c.example")
    assert received.messages == prepared.messages
    assert [m.tenant for m in received.messages] == ["acme", "acme"]
    # What the spool stores and the log writes is the worker's text, unchanged.
    assert received.metas == tuple(encode_metadata(m) for m in prepared.messages)
    records = [json.loads(line) for line in received.records]
    assert [(r["type"], r["recipient"], r["tenant"]) for r in records] == [
        ("Reception", "a@example.net", "acme"), ("Reception", "b@example.org", "acme")]
    assert records[0]["response"]["content"] == f"OK ids={prepared.data_id}"


@pytest.mark.parametrize("damage", ["sizes beyond the body", "no message", "sizes that differ"])
def test_a_damaged_store_frame_is_refused(damage):
    header, body = encode_store(1, _prepared())
    if damage == "sizes beyond the body":
        header[3] = [len(body)] + header[3][1:]
    elif damage == "no message":
        header[3], header[4] = [], []
    else:
        header[4] = header[4][:1]
    with pytest.raises(ValueError):
        decode_store(header, body)


def test_one_worker_means_no_worker_process(tmp_path):
    logs = LogSink(JsonLinesWriter(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=60))
    acceptor = Acceptor(spool=None, logs=logs, tenancy=TenancyConfig(), hostname="mx.test")
    assert isinstance(make_listener(ListenerConfig(), workers=1, acceptor=acceptor, logs=logs), SmtpListener)
    two = make_listener(ListenerConfig(max_connections=5), workers=2, acceptor=acceptor, logs=logs)
    assert isinstance(two, ReceptionWorkers)
    # Not split between the processes: each enforces the listener's limit over all of them.
    assert two.process_config.max_connections == 5


class Daemon:
    """The daemon's side: a real spool and log sink, the listener over 2 processes."""

    def __init__(self, tmp_path, trace: TraceHub | None = None, **listener_options) -> None:
        self.spool = Spool(SqliteStorage(tmp_path / "spool"))
        self.logs = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600))
        self.records = self.logs.subscribe()
        acceptor = Acceptor(spool=self.spool, logs=self.logs, tenancy=TenancyConfig(), hostname="mx.test")
        config = ListenerConfig(host="127.0.0.1", port=0, hostname="mx.test", **listener_options)
        self.listener = ReceptionWorkers(config, workers=2, acceptor=acceptor, logs=self.logs, trace=trace)

    async def start(self, nursery: trio.Nursery) -> tuple:
        await nursery.start(self.spool.run)
        await nursery.start(self.logs.run)
        (address,) = await nursery.start(self.listener.serve)
        return address[:2]

    async def next_records(self, kind: str) -> list[dict]:
        """The records of `kind` among the next one and any already waiting."""
        first = await self.records.receive()
        return [r for r in [first, *self.received_all()] if r["type"] == kind]

    def received_all(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.records.receive_nowait())
            except trio.WouldBlock:
                return out

    def received(self, kind: str) -> list[dict]:
        """The records of `kind` among those waiting now."""
        return [r for r in self.received_all() if r["type"] == kind]


async def send_message(address, n: int) -> bytes:
    """One message over one connection; the reply to the end of its data."""
    stream = await trio.open_tcp_stream(*address)
    buf = bytearray()
    await read_reply(stream, buf)
    await stream.send_all(b"EHLO c.example\r\nMAIL FROM:<s@example.com>\r\n"
                          b"RCPT TO:<r%d@example.net>\r\nDATA\r\n" % n)
    replies = [await read_reply(stream, buf) for _ in range(4)]
    if not replies[3].startswith(b"354"):
        await stream.aclose()
        return replies[2]
    await stream.send_all(b"Subject: %d\r\n\r\nbody\r\n.\r\nQUIT\r\n" % n)
    done = await read_reply(stream, buf)
    assert (await read_reply(stream, buf)).startswith(b"221")
    await stream.aclose()
    return done


async def test_messages_taken_by_either_process_are_durable_and_logged_once(tmp_path):
    daemon = Daemon(tmp_path)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            address = await daemon.start(nursery)
            assert len(daemon.listener.worker_pids) == 1
            results = {}

            async def client(n):
                results[n] = await send_message(address, n)

            async with trio.open_nursery() as clients:
                for n in range(40):
                    clients.start_soon(client, n)
            assert all(r.startswith(b"250 2.0.0 OK ids=") for r in results.values()), results
            local = daemon.listener.local.statistics().connections_total
            # The kernel gave some connections to each process, fewer to the daemon
            # (one listening socket to the worker's two; 40 connections at 1/3 each).
            assert 0 < local < 25
            nursery.cancel_scope.cancel()
    daemon.spool.close()
    reopened = Spool(SqliteStorage(tmp_path / "spool"))
    restored = reopened.restore()
    reopened.close()
    assert sorted(m.recipient for m in restored.messages) == sorted(f"r{n}@example.net" for n in range(40))
    assert len(daemon.received("Reception")) == 40


async def test_sessions_of_every_process_are_traced_on_the_daemons_hub(tmp_path):
    hub = TraceHub()
    daemon = Daemon(tmp_path, trace=hub)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            address = await daemon.start(nursery)
            assert not daemon.listener.workers_tracing
            everyone = hub.subscribe(TraceFilter.parse({"source": ["127.0.0.0/8"]}))
            nobody = hub.subscribe(TraceFilter.parse({"source": ["10.0.0.0/8"]}))
            while not daemon.listener.workers_tracing:  # the worker has said it traces
                await trio.sleep(0.01)
            for n in range(20):
                assert (await send_message(address, n)).startswith(b"250 ")
            assert daemon.listener.local.statistics().connections_total < 20  # the worker took some
            events: list[dict] = []
            while sum(e["kind"] == "Closed" for e in events) < 20:
                events.append(await everyone.receive.receive())
            unseen = nobody.receive.statistics().current_buffer_used
            everyone.close()
            nobody.close()
            while daemon.listener.tracing_workers:
                await trio.sleep(0.01)  # tracing ends in the worker too once nobody traces
            nursery.cancel_scope.cancel()
    sessions = {e["session_id"] for e in events}
    assert len(sessions) == 20 and sum(e["kind"] == "Connected" for e in events) == 20
    connected = [e for e in events if e["kind"] == "Connected"]
    assert all(e["session"]["source"] == "127.0.0.1" and e["when"].endswith("Z") for e in connected)
    reads = "".join(e.get("data", "") for e in events if e["kind"] == "Read")
    assert all(f"RCPT TO:<r{n}@example.net>" in reads for n in range(20))  # what every client sent
    assert sum("250 2.0.0 OK ids=" in e.get("data", "") for e in events if e["kind"] == "Write") == 20
    assert unseen == 0  # the other filter admitted no session, in any process


async def test_refusals_in_a_worker_reach_the_daemons_log(tmp_path):
    daemon = Daemon(tmp_path, relay_hosts=())
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            address = await daemon.start(nursery)
            for n in range(20):
                assert (await send_message(address, n)).startswith(b"550 5.7.1")
            assert daemon.listener.local.statistics().connections_total < 20  # the worker took some
            # A worker's record travels to the daemon on its own, after the reply went out.
            refused = []
            while len(refused) < 20:
                refused += [r["recipient"] for r in await daemon.next_records("Rejection")
                            if r["response"]["command"] == "RCPT TO"]
            nursery.cancel_scope.cancel()
    assert sorted(refused) == sorted(f"r{n}@example.net" for n in range(20))


async def test_killed_worker_is_restarted_and_no_session_fails(tmp_path):
    daemon = Daemon(tmp_path)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            address = await daemon.start(nursery)
            (pid,) = daemon.listener.worker_pids
            os.kill(pid, signal.SIGKILL)
            # Connections the kernel gives the dead worker's socket wait in its backlog
            # until the new worker takes them.
            for n in range(20):
                assert (await send_message(address, n)).startswith(b"250 2.0.0")
            assert daemon.listener.local.statistics().connections_total < 20  # the new worker took some
            assert daemon.listener.restarts == 1
            assert len(daemon.listener.worker_pids) == 1 and daemon.listener.worker_pids != [pid]
            nursery.cancel_scope.cancel()


async def test_stopping_ends_the_workers(tmp_path):
    daemon = Daemon(tmp_path)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.spool.run)
            await nursery.start(daemon.logs.run)
            accepting = trio.CancelScope()
            async with trio.open_nursery() as handlers:
                await handlers.start(_serve_until, daemon.listener, handlers, accepting)
                (pid,) = daemon.listener.worker_pids
                accepting.cancel()
            # Told to stop, the worker had no session to finish: it has exited.
            assert daemon.listener.worker_pids == []
            assert daemon.listener.statistics().connections_open == 0
            nursery.cancel_scope.cancel()
    assert not _alive(pid)


async def _serve_until(listener, handlers, scope, *, task_status):
    with scope:
        await listener.serve(handler_nursery=handlers, task_status=task_status)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
