"""The ESMTP listener: one task per client connection, driving the sans-IO server.

Resource handling: every connection task ends by closing its stream forcefully; a
connection beyond `max_connections` is answered ``421 4.3.2`` and closed; a client
silent for `client_timeout` gets ``421 4.4.2`` (a cancel scope around each read), so
an idle client never holds anything but its own task.

Error handling: nothing a client sends can raise out of a connection task. Stream
errors end that connection; a bug in the session is logged with its traceback and
ends that connection only.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

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
from trimta.services.acceptance import Acceptor, Submission
from trimta.services.logs import LogSink

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
TLS_HANDSHAKE_TIMEOUT_S = 30.0


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
        acceptor: Acceptor,
        logs: LogSink,
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
        task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled; `task_status.started` gets the bound addresses."""
        if listeners is None:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        addresses = [lst.socket.getsockname() for lst in listeners]
        await trio.serve_listeners(
            self.handle,
            listeners,
            handler_nursery=handler_nursery,
            task_status=_Relay(task_status, addresses),
        )

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One client connection, start to end."""
        self._total += 1
        self._open += 1
        counted = True
        try:
            if self._open > self.config.max_connections:
                self._refused += 1
                with trio.move_on_after(1):
                    await stream.send_all(replies.TOO_MANY_CONNECTIONS.to_bytes())
                return
            session = Session(self, stream)
            await session.run()
            # An orderly end (221, 421): the slot is free now; say goodbye properly
            # (TLS close_notify) before the socket closes.
            self._open -= 1
            counted = False
            with trio.move_on_after(1):
                await session.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        except Exception:
            log.exception("SMTP session failed on %s", self.config.name)
        finally:
            if counted:
                self._open -= 1
            await trio.aclose_forcefully(stream)

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


class _Relay:
    """Passes the listeners' addresses, rather than the listeners, to `started`."""

    def __init__(self, task_status: trio.TaskStatus, addresses: list) -> None:
        self.task_status = task_status
        self.addresses = addresses

    def started(self, value: object = None) -> None:
        self.task_status.started(self.addresses)


def _peer_address(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        peer = None
    if isinstance(peer, tuple):
        return str(peer[0])
    return "127.0.0.1" if peer is None else str(peer)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Session:
    """The policy side of one SMTP conversation: relay rules, AUTH, acceptance."""

    def __init__(self, listener: SmtpListener, stream: trio.abc.Stream) -> None:
        self.listener = listener
        self.config = listener.config
        self.stream = stream
        self.peer = _peer_address(stream)
        self.session_id = new_id()
        self.user: AuthUser | None = None
        self.conn = ServerConnection(
            ServerConfig(
                hostname=self.config.hostname,
                max_message_size=self.config.max_message_size_bytes,
                max_recipients=self.config.max_recipients_per_message,
                max_errors=self.config.max_errors,
                max_messages_per_connection=self.config.max_messages_per_connection,
                starttls_available=listener.tls_context is not None,
                auth_mechanisms=("PLAIN", "LOGIN") if self.config.auth else (),
                auth_without_tls=_is_loopback(self.peer),
            )
        )
        self.relay_ok = listener.relay_allowed(self.peer)

    async def run(self) -> None:
        conn = self.conn
        greeting = replies.reply(220, None, f"{self.config.hostname} {self.config.banner}")
        await self.stream.send_all(conn.send(greeting))
        while not conn.closed:
            with trio.move_on_after(self.config.client_timeout_s) as timer:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if timer.cancelled_caught:
                await self.stream.send_all(conn.send(replies.TIMEOUT))
                return
            conn.receive_data(data)
            out = bytearray()
            while not conn.closed:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, ev.ConnectionClosed):
                    if out:
                        await self.stream.send_all(out)
                    return
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

    async def answer(self, event: object) -> Reply:
        """The reply to one event: the machine's suggestion unless policy says otherwise."""
        if isinstance(event, ev.RcptTo):
            if not (self.relay_ok or self.conn.auth_identity):
                self.reject(replies.RELAY_DENIED, "RCPT TO", event.address)
                return replies.RELAY_DENIED
            return event.reply
        if isinstance(event, ev.MessageComplete):
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

    async def accept_message(self, event: ev.MessageComplete) -> Reply:
        conn = self.conn
        mail = conn.mail_from
        assert mail is not None
        reception = Reception(
            peer_address=self.peer,
            listener=self.config.name,
            helo=conn.helo_name or "",
            protocol=with_protocol(conn.esmtp, conn.tls is not None, conn.auth_identity is not None),
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
                protocol=with_protocol(self.conn.esmtp, self.conn.tls is not None, self.conn.auth_identity is not None),
                command=command,
                session_id=self.session_id,
                listener=self.config.name,
            )
        )
