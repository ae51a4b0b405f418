"""One ESMTP listener served by several processes: reception on more than one core.

A Python process runs its event loop on one core. With ``workers = N`` in a
``[[listener]]`` table, the daemon serves that listener itself and with N - 1
reception workers (``python -m trimta.services.reception_workers``), each a process
with its own trio loop and an ordinary `SmtpListener`. A worker accepts connections,
speaks SMTP and prepares each message (tenancy headers, trace header, one message per
recipient: `acceptance.prepare`), and also encodes what the daemon would otherwise
encode for it: each message's spool metadata and its Reception record
(`acceptance.encoded`). It stores nothing: it hands the prepared message to the daemon
over a Unix socket, the daemon commits it with everything else
(`Acceptor.commit_all`: the one spool writer and its group commit, the Reception
records, the scheduled queues) and answers, and only then does the worker send its
250. (The daemon leaving all SMTP to N workers and only committing was measured too:
3 busy processes on 2 cores cost ~40% more CPU per message, mostly in wake-ups of a
daemon that then commits a message at a time; see docs/performance.md.)

Connections: the daemon opens listening sockets on the listener's address, all with
SO_REUSEPORT, one for itself and two for each worker (`WORKER_SOCKETS`), so the kernel
spreads new connections over the sockets (a worker takes twice the daemon's share:
the daemon also commits for everyone) and wakes only the process that is to take a
connection. (On one shared socket every process is woken for every connection; on a
2-core machine that cost more than the second process gained, see
docs/performance.md.) `max_connections` is divided between the processes.

Durability: the 250 goes out only after the daemon said the message is fsynced, as
in one process. A worker that crashes loses at most messages it never acknowledged
(their clients retry); the daemon sees its socket end and restarts it, and the
worker's listening socket, which the daemon keeps open, queues new connections
meanwhile. A message the daemon received from a worker is committed, logged and
queued even if the worker dies before hearing the answer: at worst the client sends
it again and it is delivered twice, never lost. If the daemon dies, every worker
sees its socket end and exits.

Tracing (trace-smtp-server): while anyone traces on the daemon's hub, the daemon tells
every worker so (a ``trace`` frame, acknowledged); a worker then traces its sessions and
sends each event to the daemon with its session's properties, and the daemon's hub
filters them for its subscribers as it does its own sessions' events.

Shutdown follows the daemon's: `serve` being cancelled makes every process stop
accepting and finish its sessions; cancelling the handler nursery (the end of the
grace period) closes the workers' sockets, which makes them cancel what is left.

The wire between daemon and worker is a sequence of frames: an 8-octet prefix
(header and body lengths), a JSON header (a list whose first item names the frame)
and raw octets (the message data and its encoded metadata and records, or the
worker's set-up). See `FrameReader`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from trimta.adapters.config import ListenerConfig, TenancyConfig
from trimta.adapters.listen import (
    SharedConnectionCounts,
    connection_from_fd,
    listener_from_fd,
    open_listeners,
    socket_pair,
)
from trimta.adapters.spool import MetadataDecoder
from trimta.core.dkim import SigningRefused
from trimta.core.message import Message
from trimta.core.records import NO_LOG_FIELDS, LogFields
from trimta.protocol import replies
from trimta.services.acceptance import (
    Accepted,
    Acceptor,
    MessageSigner,
    Prepared,
    Submission,
    accepted_reply,
    encoded,
    prepare,
)
from trimta.services.logs import LogSink
from trimta.services.smtp_listener import ListenerStatistics, SmtpListener
from trimta.services.smtp_trace import RelayedTraceHub, TraceHub

log = logging.getLogger(__name__)

# Listening sockets per worker, against one for the daemon: the kernel spreads new
# connections evenly over the sockets, so each worker takes twice the daemon's share,
# because the daemon also commits every worker's messages (measured with workers = 2:
# with equal shares the daemon used 8.4 CPU s to the worker's 4.2 for 20,000 messages).
WORKER_SOCKETS = 2
# How often a worker reports its connection counts (when they changed).
STATISTICS_INTERVAL_S = 0.1
# A worker that does not say it is ready within this time is taken for failed.
START_TIMEOUT_S = 30.0
# After the daemon closed its socket, how long a worker gets to exit before it is killed.
EXIT_TIMEOUT_S = 5.0
# Restarts of a failing worker are spaced out, up to this interval.
MAX_RESTART_DELAY_S = 10.0


# --- frames -----------------------------------------------------------------------------

_PREFIX = struct.Struct("!II")


def encode_frame(header: list[Any], body: bytes = b"") -> bytes:
    """One frame: the lengths of header and body, the header as JSON, the body."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(len(head), len(body)) + head + body


class FrameReader:
    """Cuts received octets into frames (sans-IO: `feed` octets, then `next_frame`)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # the next frame begins here

    def feed(self, data: bytes | bytearray) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self) -> tuple[list[Any], bytes] | None:
        """The next complete frame as (header, body), or None until more octets come."""
        buf, start = self._buffer, self._start
        if len(buf) - start < _PREFIX.size:
            return None
        head_size, body_size = _PREFIX.unpack_from(buf, start)
        head_end = start + _PREFIX.size + head_size
        end = head_end + body_size
        if len(buf) < end:
            return None
        header = json.loads(buf[start + _PREFIX.size : head_end])
        body = bytes(buf[head_end:end])
        self._start = end
        return header, body


class Channel:
    """Frames over a trio stream: `send` queues, one writer task writes them in batches.

    Frames queued while a write is under way go out together in the next one, so many
    sessions' requests cost one system call.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._out = bytearray()
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._reader = FrameReader()

    def send(self, header: list[Any], body: bytes = b"") -> None:
        self._out += encode_frame(header, body)
        self._wakeup.set()

    async def run_writer(self) -> None:
        """Write queued frames until cancelled (or the stream breaks)."""
        while True:
            if not self._out:
                self._idle.set()
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                self._idle = trio.Event()
            out, self._out = self._out, bytearray()
            await self.stream.send_all(out)

    async def wait_flushed(self) -> None:
        """Wait until everything queued so far has been written (needs `run_writer`)."""
        while self._out or not self._idle.is_set():
            await self._idle.wait()

    async def receive_frames(self, handle: Callable[[list[Any], bytes], None]) -> None:
        """Pass every frame received to `handle` until the other side closes."""
        reader = self._reader
        while True:
            frame = reader.next_frame()
            while frame is not None:
                handle(*frame)
                frame = reader.next_frame()
            data = await self.stream.receive_some(1 << 20)
            if not data:
                return
            reader.feed(data)

    async def receive_frame(self) -> tuple[list[Any], bytes] | None:
        """The next frame, or None if the other side closed first."""
        while True:
            frame = self._reader.next_frame()
            if frame is not None:
                return frame
            data = await self.stream.receive_some(1 << 20)
            if not data:
                return None
            self._reader.feed(data)


# --- the daemon's side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a worker is told when it starts (pickled: it comes from the daemon itself)."""

    index: int
    listener: ListenerConfig
    tenancy: TenancyConfig
    hostname: str
    processes: int  # of the listener, the daemon included: rows of the connection counts
    counts_key: bytes  # of the connection counts' address buckets
    signer: MessageSigner | None = None  # DKIM (pickled: its keys are read again from their octets)
    log_fields: LogFields = LogFields()  # [logs] headers and meta, and the node's id


class WorkerFailed(Exception):
    """A reception worker could not be started."""


class ReceptionWorkers:
    """A listener served by `workers` processes: the daemon and `workers - 1` reception workers.

    `serve` and `statistics` have `SmtpListener`'s contract, so the daemon drives both
    the same way: `serve` gives the bound addresses to `task_status` once every worker
    is ready, and `statistics().connections_open` counts the sessions of every process
    (it falls to 0 when they have all ended).
    """

    def __init__(self, config: ListenerConfig, *, workers: int, acceptor: Acceptor, logs: LogSink,
                 trace: TraceHub | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config = config
        self.workers = workers
        self.acceptor = acceptor
        self.logs = logs
        # Every process enforces the listener's limits over all of them, through counts
        # in shared memory (row 0 is the daemon's, row i worker i's).
        self.process_config = config
        self.counts = SharedConnectionCounts.create(workers)
        self.local = SmtpListener(config, acceptor=acceptor, logs=logs, counts=self.counts, trace=trace)
        self.trace = trace
        if trace is not None:
            trace.watchers.append(self._tell_tracing)
            trace.relays.append(lambda: self.workers_tracing)
        self._decoder = MetadataDecoder(max_receptions=4096)
        self._stopping = False
        self._channels: dict[int, Channel] = {}
        self._pids: dict[int, int] = {}
        self._statistics: dict[int, tuple[int, int, int, int]] = {}
        self._tracing: dict[int, bool] = {}  # what each worker last said it does: trace or not
        self._finished = ListenerStatistics(0, 0, 0, 0)  # of workers that have exited
        self.restarts = 0

    def set_signer(self, signer: MessageSigner | None) -> None:
        """Sign with `signer` from now on, here and in every worker (a reload's new keys)."""
        self.acceptor.signer = signer
        for channel in self._channels.values():
            channel.send(["signer"], pickle.dumps(signer))

    def _tell_tracing(self, tracing: bool) -> None:
        for channel in self._channels.values():
            channel.send(["trace", tracing])

    @property
    def tracing_workers(self) -> int:
        """How many running workers trace their sessions now, as they last said."""
        return sum(self._tracing.values())

    @property
    def workers_tracing(self) -> bool:
        """Every running worker has acknowledged that it traces its sessions now."""
        return self.trace is not None and self.trace.tracing and all(self._tracing.values())

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the workers running now (for operators)."""
        return sorted(self._pids.values())

    def statistics(self) -> ListenerStatistics:
        counts = [_counts(self.local.statistics()), _counts(self._finished), *self._statistics.values()]
        return ListenerStatistics(*(sum(column) for column in zip(*counts)))

    async def serve(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; then every process stops accepting and finishes its sessions.

        Without `listeners`, SO_REUSEPORT sockets are opened on the configured address:
        one for the daemon, `WORKER_SOCKETS` for each worker; given `listeners` (tests),
        all processes share them. Sessions of the daemon and the supervisors of the
        workers run in `handler_nursery` (by default in a nursery of this call):
        cancelling it ends the sessions still running, in the workers too.
        """
        if listeners is None:
            count = 1 + WORKER_SOCKETS * (self.workers - 1)
            groups = await open_listeners(self.config.host, self.config.port, count, shared=self.config.shared_port)
            daemons = groups[0]
            workers = [
                [listener for group in groups[first : first + WORKER_SOCKETS] for listener in group]
                for first in range(1, count, WORKER_SOCKETS)
            ]
        else:
            groups = [listeners]
            daemons, workers = listeners, [listeners] * (self.workers - 1)
        try:
            async with trio.open_nursery() as own:
                handlers = handler_nursery or own
                for index, theirs in enumerate(workers, start=1):
                    await handlers.start(self._supervise, index, theirs)
                await self.local.serve(daemons, handler_nursery=handlers, task_status=task_status)
        finally:
            self._stopping = True
            for channel in self._channels.values():
                channel.send(["stop"])
            for group in groups:
                for listener in group:
                    listener.socket.close()

    async def _supervise(
        self, index: int, listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus
    ) -> None:
        """Keep worker `index` running, restarting it when it exits until the daemon stops."""
        delay = 0.1
        first = True
        while True:
            started_at = trio.current_time()
            returncode = await self._run_worker(index, listeners, task_status if first else None)
            first = False
            if self._stopping:
                return
            self.restarts += 1
            log.error("reception worker %d of %s exited (%s); restarting it", index, self.config.name, returncode)
            # A worker that keeps failing at once is restarted less and less often.
            if trio.current_time() - started_at > MAX_RESTART_DELAY_S:
                delay = 0.1
            else:
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
            await trio.sleep(delay)

    async def _run_worker(
        self, index: int, listeners: list[trio.SocketListener], task_status: trio.TaskStatus | None
    ) -> int | None:
        """Start worker `index`, serve its requests until its socket ends; its exit status.

        With `task_status`, report started once the worker is ready, or raise
        `WorkerFailed` if it is not.
        """
        ours, theirs = socket_pair()
        listen_fds = [lst.socket.fileno() for lst in listeners]
        command = [sys.executable, "-m", "trimta.services.reception_workers", "--ipc-fd", str(theirs.fileno()),
                   "--counts-fd", str(self.counts.fd)]
        for fd in listen_fds:
            command += ["--listen-fd", str(fd)]
        try:
            process = await trio.lowlevel.open_process(
                command, pass_fds=[theirs.fileno(), self.counts.fd, *listen_fds], stdin=subprocess.DEVNULL
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._pids[index] = process.pid
        link = _Link(Channel(ours))
        # What a previous worker of this index counted is gone with it.
        self.counts.clear_row(index)
        setup = WorkerSetup(index, self.process_config, self.acceptor.tenancy, self.acceptor.hostname,
                            self.workers, self.counts.key, self.acceptor.signer, self.acceptor.log_fields)
        link.channel.send(["setup"], pickle.dumps(setup))
        self._channels[index] = link.channel
        self._tracing[index] = False
        if self.trace is not None and self.trace.tracing:
            link.channel.send(["trace", True])
        try:
            # The committer runs in a nursery of its own, which a worker's end does not
            # cancel: what the daemon received is committed, logged and queued in any case.
            async with trio.open_nursery() as stores:
                stores.start_soon(self._commit, link)
                async with trio.open_nursery() as io:
                    io.start_soon(_write_until_broken, link.channel)
                    io.start_soon(self._receive, index, link)
                    if task_status is not None:
                        with trio.move_on_after(START_TIMEOUT_S):
                            await link.ready.wait()
                        if not link.is_ready:
                            raise WorkerFailed(
                                f"reception worker {index} of {self.config.name} did not start;"
                                " see its messages above"
                            )
                        task_status.started()
                    await link.closed.wait()
                    io.cancel_scope.cancel()
        finally:
            del self._channels[index]
            del self._pids[index]
            del self._tracing[index]
            with trio.CancelScope(shield=True):
                await link.channel.stream.aclose()
                with trio.move_on_after(EXIT_TIMEOUT_S):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            self._retire(index)
        return process.returncode

    def _retire(self, index: int) -> None:
        """Keep the totals of a worker that has exited; its sessions are over."""
        counts = self._statistics.pop(index, None)
        if counts is not None:
            _, total, refused, accepted = counts
            f = self._finished
            self._finished = ListenerStatistics(
                0, f.connections_total + total, f.connections_refused + refused, f.messages_accepted + accepted
            )

    async def _receive(self, index: int, link: _Link) -> None:
        """Act on the worker's frames until its socket ends."""

        def handle(header: list[Any], body: bytes) -> None:
            kind = header[0]
            if kind == "store":
                request = header[1]
                try:
                    prepared = decode_store(header, body, self._decoder)
                except (KeyError, TypeError, ValueError) as exc:
                    log.error("reception worker %d sent a message that does not decode: %s", index, exc)
                    link.channel.send(["stored", [[request, "the message did not decode"]]])
                    return
                link.stores.append((request, prepared))
                link.stores_arrived.set()
            elif kind == "stats":
                self._statistics[index] = tuple(header[1:5])
            elif kind == "record":
                self.logs.emit(header[1])
            elif kind == "trace-event":
                if self.trace is not None:
                    self.trace.deliver(header[1], header[2])
            elif kind == "tracing":
                self._tracing[index] = bool(header[1])
            elif kind == "ready":
                link.is_ready = True
                link.ready.set()
            else:
                log.error("reception worker %d sent an unknown frame %r", index, kind)

        try:
            await link.channel.receive_frames(handle)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            link.ready.set()
            link.closed.set()
            link.stores_arrived.set()

    async def _commit(self, link: _Link) -> None:
        """Commit what a worker sends, until its socket has ended and all of it is done.

        Everything that arrived while the previous commit was under way is committed
        together (one call, one group commit), and each worker is told how it went.
        """
        while True:
            await link.stores_arrived.wait()
            link.stores_arrived = trio.Event()
            batch, link.stores = link.stores, []
            if not batch:
                if link.closed.is_set():
                    return
                continue
            results = await self.acceptor.commit_all([prepared for _, prepared in batch])
            # One frame answers the whole batch: [request, error or None, routing domains] for
            # each; the routing domains (the queue settings' routing_domain, given here) let
            # the worker's messages name the queues they are in (a report's records do).
            link.channel.send(["stored", [
                [request, None if accepted.reply.is_positive else str(accepted.reply),
                 [m.routing_domain for m in accepted.messages]]
                for (request, _), accepted in zip(batch, results)
            ]])


def encode_store(request: int, prepared: Prepared) -> tuple[list[Any], bytes]:
    """The "store" frame of a prepared message (`encoded`: metadata and records included).

    The header gives the request number, the reception time and the octet lengths of
    each metadata text and each record; the body holds the data, then those texts.
    """
    metas = [meta.encode() for meta in prepared.metas or ()]
    lines = [line.encode() for line in prepared.records or ()]
    header = ["store", request, prepared.now, [len(m) for m in metas], [len(r) for r in lines]]
    return header, b"".join([prepared.data, *metas, *lines])


def decode_store(header: list[Any], body: bytes, decoder: MetadataDecoder | None = None) -> Prepared:
    """The prepared message of a "store" frame; ValueError (or KeyError, TypeError) if damaged.

    `decoder` makes the messages share their repeated strings and receptions with
    those decoded before (a queue of them is most of the daemon's memory).
    """
    _, _, now, meta_sizes, line_sizes = header
    end = len(body) - sum(meta_sizes) - sum(line_sizes)
    if end < 0 or len(meta_sizes) != len(line_sizes) or not meta_sizes:
        raise ValueError("the sizes in a store frame do not fit its body")
    data = body[:end]
    texts = []
    for size in (*meta_sizes, *line_sizes):
        texts.append(body[end : end + size].decode())
        end += size
    metas, lines = tuple(texts[: len(meta_sizes)]), tuple(texts[len(meta_sizes) :])
    decode = (decoder or MetadataDecoder()).decode
    messages = tuple(decode(meta) for meta in metas)
    return Prepared(data, messages, now, metas=metas, records=lines)


def make_listener(
    config: ListenerConfig, *, workers: int, acceptor: Acceptor, logs: LogSink, trace: TraceHub | None = None
) -> SmtpListener | ReceptionWorkers:
    """The listener for one ``[[listener]]`` table: in the daemon alone, or over `workers`
    processes; its sessions, in every process, are traced on `trace` while anyone traces."""
    if workers <= 1:
        return SmtpListener(config, acceptor=acceptor, logs=logs, trace=trace)
    return ReceptionWorkers(config, workers=workers, acceptor=acceptor, logs=logs, trace=trace)


def _counts(s: ListenerStatistics) -> tuple[int, int, int, int]:
    return s.connections_open, s.connections_total, s.connections_refused, s.messages_accepted


class _Link:
    """The daemon's end of one worker's socket, and what it has said so far."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.ready = trio.Event()  # set when the worker is ready, or gone
        self.is_ready = False
        self.closed = trio.Event()
        self.stores: list[tuple[int, Prepared]] = []  # (request, message) not yet committed
        self.stores_arrived = trio.Event()


async def _write_until_broken(channel: Channel) -> None:
    try:
        await channel.run_writer()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# --- the worker's side ----------------------------------------------------------------


class RemoteAcceptor:
    """The worker's acceptor: prepares here, has the daemon commit, then answers."""

    def __init__(
        self, channel: Channel, *, tenancy: TenancyConfig, hostname: str, signer: MessageSigner | None = None,
        log_fields: LogFields = NO_LOG_FIELDS,
    ) -> None:
        self.channel = channel
        self.tenancy = tenancy
        self.hostname = hostname
        self.signer = signer
        self.log_fields = log_fields
        self._next_request = 0
        self._waiting: dict[int, trio.lowlevel.Task] = {}  # request -> its session's task
        # request -> the daemon's answer (error, routing domains), until read
        self._answers: dict[int, tuple[str | None, Sequence[str | None]]] = {}

    def unstored(self, submission: Submission) -> tuple[Message, ...]:
        return prepare(submission, tenancy=self.tenancy, hostname=self.hostname, now=time.time(),
                       log_fields=self.log_fields).messages

    async def accept(self, submission: Submission) -> Accepted:
        signer = self.signer
        make = partial(prepare, submission, tenancy=self.tenancy, hostname=self.hostname, now=time.time(),
                       signer=signer, log_fields=self.log_fields)
        try:
            # Signing in a thread: the private-key operation releases the GIL, so this
            # process's other sessions go on meanwhile.
            prepared = encoded(make() if signer is None else await trio.to_thread.run_sync(make),
                               self.log_fields)
        except SigningRefused as exc:
            return Accepted(exc.reply, ())
        self._next_request += 1
        request = self._next_request
        # The session task sleeps until `stored` reschedules it with the daemon's answer
        # (no Event per message: this is the path of every message a worker takes).
        self._waiting[request] = trio.lowlevel.current_task()
        self.channel.send(*encode_store(request, prepared))

        def abort(_: object) -> trio.lowlevel.Abort:
            del self._waiting[request]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        error, routing = self._answers.pop(request)
        if error is not None:
            log.error("the daemon could not store a message: %s", error)
            return Accepted(replies.SPOOL_ERROR, ())
        for message, target in zip(prepared.messages, routing):
            if target and message.routing_domain is None:
                message.rebind(tenant=message.tenant, campaign=message.campaign, routing_domain=target)
        return Accepted(accepted_reply(prepared.data_id), prepared.messages)

    def stored(self, request: int, error: str | None, routing: Sequence[str | None] = ()) -> None:
        """The daemon's answer to `request`: its error (None: stored), each message's routing domain."""
        task = self._waiting.pop(request, None)
        if task is not None:  # else its session was cancelled meanwhile
            self._answers[request] = (error, routing)
            trio.lowlevel.reschedule(task)

    def fail_all(self, error: str) -> None:
        for request in list(self._waiting):
            self.stored(request, error)


class ForwardingLogs:
    """The worker's log sink: records (rejections) go to the daemon's log."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def emit(self, record: dict[str, Any]) -> None:
        self.channel.send(["record", record])


async def run_worker(ipc_fd: int, listen_fds: list[int], counts_fd: int | None = None) -> None:
    """A worker's life: set-up from the daemon, serve until told to stop, then exit."""
    channel = Channel(connection_from_fd(ipc_fd))
    frame = await channel.receive_frame()
    if frame is None or frame[0] != ["setup"]:
        raise SystemExit("reception worker: no set-up from the daemon")
    setup: WorkerSetup = pickle.loads(frame[1])
    acceptor = RemoteAcceptor(channel, tenancy=setup.tenancy, hostname=setup.hostname, signer=setup.signer,
                              log_fields=setup.log_fields)
    counts = None
    if counts_fd is not None:
        counts = SharedConnectionCounts.attach(counts_fd, processes=setup.processes, row=setup.index,
                                               key=setup.counts_key)
    trace = RelayedTraceHub(lambda properties, event: channel.send(["trace-event", dict(properties), event]))
    listener = SmtpListener(setup.listener, acceptor=acceptor, logs=ForwardingLogs(channel), counts=counts,
                            trace=trace)
    listeners = [listener_from_fd(fd) for fd in listen_fds]
    accepting = trio.CancelScope()

    def handle(header: list[Any], body: bytes) -> None:
        if header[0] == "stored":
            for request, error, *routing in header[1]:
                acceptor.stored(request, error, routing[0] if routing else ())
        elif header[0] == "signer":
            acceptor.signer = pickle.loads(body)
        elif header[0] == "trace":
            trace.on = bool(header[1])
            channel.send(["tracing", trace.on])
        elif header[0] == "stop":
            accepting.cancel()

    async def from_daemon(root: trio.CancelScope) -> None:
        try:
            await channel.receive_frames(handle)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The daemon closed our socket (it stops, or it died): nothing can be stored
        # any more, so every session ends now.
        acceptor.fail_all("the daemon has gone")
        root.cancel()

    async def serve(sessions: trio.Nursery, *, task_status: trio.TaskStatus) -> None:
        with accepting:
            await listener.serve(listeners, handler_nursery=sessions, task_status=task_status)

    async with trio.open_nursery() as root:
        root.start_soon(_write_until_broken, channel)
        root.start_soon(from_daemon, root.cancel_scope)
        root.start_soon(_report_statistics, channel, listener)
        async with trio.open_nursery() as sessions:
            await sessions.start(serve, sessions)
            channel.send(["ready"])
        # Told to stop, and every session has ended.
        _send_statistics(channel, listener.statistics())
        with trio.move_on_after(EXIT_TIMEOUT_S):
            await channel.wait_flushed()
        root.cancel_scope.cancel()


def _send_statistics(channel: Channel, s: ListenerStatistics) -> None:
    channel.send(["stats", *_counts(s)])


async def _report_statistics(channel: Channel, listener: SmtpListener) -> None:
    last = None
    while True:
        current = listener.statistics()
        if current != last:
            _send_statistics(channel, current)
            last = current
        await trio.sleep(STATISTICS_INTERVAL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a trimta reception worker (started by `trimta serve`)")
    parser.add_argument("--ipc-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", default=[])
    parser.add_argument("--counts-fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s",
    )
    # Ctrl-C reaches the whole process group: the daemon handles it and tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    trio.run(run_worker, args.ipc_fd, args.listen_fd, args.counts_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
