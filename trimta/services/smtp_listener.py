"""The ESMTP listener: one task per client connection, driving the sans-IO server.

Resource handling: every connection task ends by closing its stream forcefully; a
connection beyond `max_connections` is answered ``421 4.3.2`` and closed; a client
silent for `client_timeout` gets ``421 4.4.2``, so an idle client never holds anything
but its own task.

Error handling: nothing a client sends can raise out of a connection task. Stream
errors end that connection; a bug in the session is logged with its traceback and
ends that connection only.

Cost: a session of the common kind (one message per connection, as smtp-source and
many applications send) is a dozen reads and writes, so what each costs in the
scheduler shows in the throughput. Accepted TCP connections are served through
`SocketConnection`, which goes through the scheduler only when it has to wait; client
timeouts are watched by one task per listener (`SilenceWatch`) instead of a deadline
moved on every read; and what every session of a listener shares (its server
configuration, the relay decision for a peer address) is worked out once.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, replace

import trio

from trimta.adapters.config import AuthUser, ListenerConfig
from trimta.adapters.tls import server_context
from trimta.core import records
from trimta.core.message import Reception, new_id
from trimta.core.trace import with_protocol
from trimta.protocol import events as ev
from trimta.protocol import replies
from trimta.protocol.replies import Reply
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection
from trimta.services.acceptance import Accepting, Submission
from trimta.services.logs import RecordSink

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
TLS_HANDSHAKE_TIMEOUT_S = 30.0
# accept() failures that say "not now" rather than "never": back off and retry.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_S = 0.1
# accept() failures that concern one connection the client already gave up on.
_ACCEPT_IGNORED_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
# Peer addresses whose relay decision is remembered; beyond, the memory starts afresh.
_PEER_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    connections_open: int
    connections_total: int
    connections_refused: int
    messages_accepted: int


class SmtpListener:
    """Serves ESMTP on one configured address."""

    def __init__(
        self,
        config: ListenerConfig,
        *,
        acceptor: Accepting,
        logs: RecordSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.acceptor = acceptor
        self.logs = logs
        self.clock = clock
        self.tls_context: ssl.SSLContext | None = None
        if config.tls_certificate and config.tls_private_key:
            self.tls_context = server_context(config.tls_certificate, config.tls_private_key)
        self._users = {u.username: u for u in config.auth}
        # Every session of this listener offers the same; only AUTH without TLS depends
        # on the client (loopback or not).
        self._server_config = ServerConfig(
            hostname=config.hostname,
            max_message_size=config.max_message_size_bytes,
            max_recipients=config.max_recipients_per_message,
            max_errors=config.max_errors,
            max_messages_per_connection=config.max_messages_per_connection,
            starttls_available=self.tls_context is not None,
            auth_mechanisms=("PLAIN", "LOGIN") if config.auth else (),
        )
        self._loopback_server_config = replace(self._server_config, auth_without_tls=True)
        self.greeting = replies.reply(220, None, f"{config.hostname} {config.banner}")
        self._peers: dict[str, tuple[bool, ServerConfig]] = {}
        self.silence = SilenceWatch(config.client_timeout_s)
        self._open = 0
        self._total = 0
        self._refused = 0
        self._accepted = 0

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(self._open, self._total, self._refused, self._accepted)

    async def serve(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled; `task_status.started` gets the bound addresses.

        Like `trio.serve_listeners`: connection tasks run in `handler_nursery` (by default
        a nursery of this call), and the listeners are closed when this returns.
        """
        if listeners is None:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        addresses = [lst.socket.getsockname() for lst in listeners]
        try:
            async with trio.open_nursery() as nursery:
                # The silence watch lives where the sessions do: when this call is
                # cancelled (shutdown stops accepting), sessions in `handler_nursery` go
                # on through the grace period, and their client timeouts still hold.
                (handler_nursery or nursery).start_soon(self.silence.run)
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, handler_nursery or nursery)
                task_status.started(addresses)
        finally:
            self.silence.close()  # the watch ends with the last session

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        """Accept TCP connections one by one and start a task for each.

        Connections are taken with the standard library's `accept` on a duplicate of the
        listening descriptor and served as `SocketConnection`s, so no trio socket object is
        made only to be taken apart again; the client's address comes with `accept`, so
        no session asks the kernel for it. Like trio's own accept loop, this yields to the
        scheduler after each connection: several processes sharing the listening socket
        (`reception_workers`) each take connections only as fast as their loop is free.
        """
        async with listener:
            with socket.socket(fileno=os.dup(listener.socket.fileno())) as listening:
                listening.setblocking(False)
                # Set on the listening socket, TCP_NODELAY is inherited by the accepted
                # ones on Linux: one system call less per connection. Whether it was is
                # checked on the first connection; if not, each gets its own.
                inherited: bool | None = None
                try:
                    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    inherited = False
                while True:
                    try:
                        sock, address = listening.accept()
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(listening)
                        continue
                    except OSError as exc:
                        if exc.errno in _ACCEPT_IGNORED_ERRNOS:
                            continue
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        log.error("accept on %s failed (%s); retrying", self.config.name, errno.errorcode[exc.errno])
                        await trio.sleep(_ACCEPT_RETRY_S)
                        continue
                    if inherited is None:
                        try:
                            inherited = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                        except OSError:
                            inherited = False
                    connection = SocketConnection(sock, nodelay=not inherited)
                    handlers.start_soon(self._serve_tcp, connection, _address_text(address))
                    await trio.lowlevel.checkpoint()

    async def _serve_tcp(self, connection: SocketConnection, peer: str) -> None:
        try:
            await self._serve(connection, peer, self.silence)
        finally:
            connection.close()

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One client connection on any trio stream, start to end.

        For connections `serve` does not accept (memory streams in tests, other entry
        points): unless `serve` runs the listener's silence watch, the session gets one
        of its own for as long as it lasts.
        """
        try:
            if self.silence.running:
                await self._serve(stream, _peer_address(stream), self.silence)
            else:
                silence = SilenceWatch(self.config.client_timeout_s)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(silence.run)
                    await self._serve(stream, _peer_address(stream), silence)
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream, peer: str, silence: SilenceWatch) -> None:
        self._total += 1
        self._open += 1
        counted = True
        try:
            if self._open > self.config.max_connections:
                self._refused += 1
                with trio.move_on_after(1):
                    await stream.send_all(replies.TOO_MANY_CONNECTIONS.to_bytes())
                return
            session = Session(self, stream, peer, silence)
            await session.run()
            # An orderly end (221, 421): the slot is free now. Over TLS, say goodbye
            # properly (close_notify) before the socket closes.
            self._open -= 1
            counted = False
            if session.stream is not stream:
                with trio.move_on_after(1):
                    await session.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        except Exception:
            log.exception("SMTP session failed on %s", self.config.name)
        finally:
            if counted:
                self._open -= 1

    def peer_policy(self, address: str) -> tuple[bool, ServerConfig]:
        """Whether `address` may relay, and the server configuration its sessions get.

        Remembered per address: a busy client connects thousands of times with the same
        address, and the answer only depends on the address and this listener's config.
        """
        known = self._peers.get(address)
        if known is None:
            loopback = _is_loopback(address)
            config = self._loopback_server_config if loopback else self._server_config
            known = (self.relay_allowed(address), config)
            if len(self._peers) >= _PEER_CACHE_SIZE:
                self._peers.clear()
            self._peers[address] = known
        return known

    def relay_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.config.relay_hosts)

    def check_credentials(self, username: str, password: str) -> AuthUser | None:
        user = self._users.get(username)
        # Compare even for unknown users, so timing says nothing about which exist.
        expected = user.password if user else "\0unknown"
        if hmac.compare_digest(expected.encode(), password.encode()) and user:
            return user
        return None


class SocketConnection(trio.abc.Stream):
    """A connected stream socket as a trio stream that enters the scheduler only to wait.

    trio's `SocketStream` makes every call a checkpoint: each write and each read passes
    through the scheduler even when the kernel completes it at once, and an SMTP session
    is mostly short writes and reads. Here:

    - `send_all` is not a checkpoint when the kernel takes all the bytes at once (it
      nearly always does: a reply is tens of octets); it waits only for a full buffer.
      The session's next `receive_some` is its checkpoint.
    - `receive_some` is exactly one checkpoint: the wait for data, or, when data was
      there already, a plain yield, so that a client streaming a large message cannot
      keep the other sessions from running. Cancellation is checked before reading, so
      no received byte is lost to a cancellation.

    Used for the listener's TCP connections and the reception workers' Unix sockets.
    One task sends and one receives at a time, so there is no conflict detection.
    Errors are trio's: `BrokenResourceError` for a failed socket, `ClosedResourceError`
    once closed.
    """

    def __init__(self, sock: socket.socket, *, nodelay: bool = True) -> None:
        """`nodelay=False`: the socket has TCP_NODELAY already (inherited from its listener)."""
        sock.setblocking(False)
        if nodelay:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.socket = sock

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        try:
            with memoryview(data) as view:
                sent = 0
                while True:
                    try:
                        sent += sock.send(view[sent:])
                    except BlockingIOError:
                        pass
                    if sent >= len(view):
                        return
                    await trio.lowlevel.wait_writable(sock)
        except OSError as exc:
            raise self._translate(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        try:
            await trio.lowlevel.wait_writable(self.socket)
        except OSError as exc:
            raise self._translate(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        sock = self.socket
        size = RECEIVE_SIZE if max_bytes is None else max_bytes
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        return sock.recv(size)
                    except BlockingIOError:
                        pass
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        except OSError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: OSError) -> Exception:
        if self.socket.fileno() == -1 or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("the connection was closed")
        return trio.BrokenResourceError(f"the connection failed: {exc}")

    def close(self) -> None:
        """Close at once (sync): nothing is waiting on the socket any more."""
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def _address_text(address: object) -> str:
    if isinstance(address, tuple):
        return str(address[0])
    return "127.0.0.1" if not address else str(address)


def _peer_address(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        peer = None
    return _address_text(peer)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class SilenceWatch:
    """Ends the sessions whose client has been silent for `timeout_s`: one task per listener.

    A session notes when it starts waiting for its client (`waiting`) or that it is busy
    (its `waiting_since` is None while it stores a message). The watch sleeps until the
    earliest moment a waiting session can run out of time, cancels the `timer` scope of
    each session that has, and sleeps again. A session pays one attribute write per
    read; moving a cancel scope's deadline instead re-sorts trio's deadline heap each
    time. Every session of a listener has the same timeout, so a session that starts
    waiting never runs out before the moment the watch already sleeps until, unless it
    sleeps for good (no session was waiting): only then is the watch woken.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.running = False
        self._sessions: set[Session] = set()
        self._idle = True  # sleeping until woken: no session was waiting
        self._closing = False
        self._wakeup = trio.Event()

    def add(self, session: Session) -> None:
        self._sessions.add(session)

    def remove(self, session: Session) -> None:
        self._sessions.discard(session)
        if self._closing and not self._sessions:
            self._wakeup.set()

    def close(self) -> None:
        """No new sessions will come: `run` returns once the last one has ended."""
        self._closing = True
        self._wakeup.set()

    def waiting(self, session: Session) -> None:
        """`session` waits for its client from now on."""
        session.waiting_since = trio.current_time()
        if self._idle:
            self._idle = False
            self._wakeup.set()

    async def run(self) -> None:
        """Watch until cancelled, or until closed and the last session has ended."""
        self.running = True
        try:
            while not (self._closing and not self._sessions):
                now = trio.current_time()
                earliest = math.inf
                for session in list(self._sessions):
                    since = session.waiting_since
                    if since is None:
                        continue
                    if now - since >= self.timeout_s:
                        session.timer.cancel()
                        self._sessions.discard(session)
                    else:
                        earliest = min(earliest, since + self.timeout_s)
                self._idle = earliest == math.inf
                self._wakeup = trio.Event()
                with trio.move_on_at(earliest):
                    await self._wakeup.wait()
        finally:
            self.running = False


class Session:
    """The policy side of one SMTP conversation: relay rules, AUTH, acceptance."""

    def __init__(self, listener: SmtpListener, stream: trio.abc.Stream, peer: str, silence: SilenceWatch) -> None:
        self.listener = listener
        self.silence = silence
        self.config = listener.config
        self.stream = stream
        self.peer = peer
        self._session_id: str | None = None
        self.user: AuthUser | None = None
        self.relay_ok, server_config = listener.peer_policy(peer)
        self.conn = ServerConnection(server_config)
        # Cancelled by the listener's silence watch when the client is silent too long.
        self.timer = trio.CancelScope()
        self.waiting_since: float | None = None

    @property
    def session_id(self) -> str:
        """An id for the records of this session's refusals (made when first needed)."""
        if self._session_id is None:
            self._session_id = new_id()
        return self._session_id

    async def run(self) -> None:
        """Serve the conversation until QUIT, a 421, EOF or the client's silence."""
        silence = self.silence
        silence.add(self)
        try:
            with self.timer:
                await self._converse()
        finally:
            silence.remove(self)
        if self.timer.cancelled_caught and not self.conn.closed:
            # Silent for too long (or not reading our replies): say why and hang up.
            with trio.move_on_after(1):
                await self.stream.send_all(self.conn.send(replies.TIMEOUT))

    async def _converse(self) -> None:
        conn = self.conn
        silence = self.silence
        await self.stream.send_all(conn.send(self.listener.greeting))
        while not conn.closed:
            # The client's time runs from here: through this read and the writes of
            # the replies to it (a client that does not read them is as good as silent).
            silence.waiting(self)
            data = await self.stream.receive_some(RECEIVE_SIZE)
            conn.receive_data(data)
            # Replies to everything the client pipelined go out in one write.
            out = bytearray()
            while not conn.closed:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, ev.ConnectionClosed):
                    break
                reply = await self.answer(event)
                out += conn.send(reply)
                if isinstance(event, ev.StartTls) and reply.is_positive:
                    await self.stream.send_all(out)
                    out.clear()
                    await self.start_tls()
                    break
            if out:
                await self.stream.send_all(out)

    async def start_tls(self) -> None:
        assert self.listener.tls_context is not None
        tls = trio.SSLStream(self.stream, self.listener.tls_context, server_side=True)
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT_S):
            await tls.do_handshake()
        self.stream = tls
        self.conn.tls_started(version=tls.version() or "TLS")
        self.user = None

    async def answer(self, event: ev.Answerable) -> Reply:
        """The reply to one event: the machine's suggestion unless policy says otherwise."""
        if isinstance(event, ev.RcptTo):
            if not (self.relay_ok or self.conn.auth_identity or self._domain_allows_relay(event.address)):
                self.reject(replies.RELAY_DENIED, "RCPT TO", event.address)
                return replies.RELAY_DENIED
            return event.reply
        if isinstance(event, ev.MessageComplete):
            # Storing takes what the disk takes; the client is not silent meanwhile.
            self.waiting_since = None
            return await self.accept_message(event)
        if isinstance(event, ev.AuthAttempt):
            user = self.listener.check_credentials(event.username, event.password)
            if user is None:
                return replies.AUTH_FAILED
            self.user = user
            return replies.AUTH_SUCCEEDED
        if isinstance(event, ev.BadCommand) and event.command in ("DATA", "BDAT") and self.conn.mail_from:
            # A refused message (too big, bare CR/LF, long line) is a rejection worth a record.
            self.reject(event.reply, event.command, None)
        return event.reply

    def _domain_allows_relay(self, recipient: str) -> bool:
        """KumoMTA's listener domains: relay_to for the recipient's domain, relay_from for the sender's."""
        rules = self.config.listener_domains
        if not rules:
            return False
        mail = self.conn.mail_from
        sender_domain = mail.address.rpartition("@")[2] if mail is not None and "@" in mail.address else None
        return rules.relay_allowed(listener=self.config.name, peer=self.peer, sender_domain=sender_domain,
                                   recipient_domain=recipient.rpartition("@")[2], authz_id=self.conn.auth_identity)

    async def accept_message(self, event: ev.MessageComplete) -> Reply:
        conn = self.conn
        mail = conn.mail_from
        assert mail is not None
        reception = Reception(
            peer_address=self.peer,
            listener=self.config.name,
            helo=conn.helo_name or "",
            protocol=with_protocol(conn.esmtp, conn.tls is not None, conn.auth_identity is not None, mail.smtputf8),
            tls=conn.tls,
            auth_identity=conn.auth_identity,
        )
        submission = Submission(
            sender=mail.address,
            recipients=[r.address for r in conn.recipients],
            data=event.data,
            reception=reception,
            tenant=self.user.tenant if self.user else None,
            campaign=self.user.campaign if self.user else None,
        )
        result = await self.listener.acceptor.accept(submission)
        if result.reply.is_positive:
            self.listener._accepted += len(result.messages)
        else:
            self.reject(result.reply, "DATA", None)
        return result.reply

    def reject(self, reply: Reply, command: str, recipient: str | None) -> None:
        mail = self.conn.mail_from
        self.listener.logs.emit(
            records.rejection_record(
                reply=reply,
                now=self.listener.clock(),
                sender=mail.address if mail is not None else None,
                recipient=recipient,
                peer_address=self.peer,
                helo=self.conn.helo_name or "",
                protocol=with_protocol(
                    self.conn.esmtp, self.conn.tls is not None, self.conn.auth_identity is not None,
                    mail is not None and mail.smtputf8,
                ),
                command=command,
                session_id=self.session_id,
                listener=self.config.name,
            )
        )
