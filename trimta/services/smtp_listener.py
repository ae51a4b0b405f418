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
timeouts are watched by one task per listener (`TimeoutWatch`) instead of a deadline
moved on every read; and what every session of a listener shares (its server
configuration, the relay decision for a peer address) is worked out once.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

import trio

from trimta.adapters.config import AuthUser, ListenerConfig
from trimta.adapters.listen import SocketConnection, accept_connections, open_listeners, peer_address
from trimta.adapters.tls import server_context
from trimta.adapters.tls_info import TlsDetails, tls_details
from trimta.core import records
from trimta.core.message import Reception
from trimta.core.outcome import SessionInfo
from trimta.core.report_handling import RecipientPolicy, decide
from trimta.core.trace import with_protocol
from trimta.protocol import events as ev
from trimta.protocol import replies
from trimta.protocol.replies import Reply
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection, ServerState
from trimta.services.acceptance import Receiving, Submission
from trimta.services.logs import RecordSink
from trimta.services.reports import accept_reports
from trimta.services.smtp_trace import TraceHub

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
TLS_HANDSHAKE_TIMEOUT_S = 30.0
# Peer addresses whose relay decision is remembered; beyond, the memory starts afresh.
_PEER_CACHE_SIZE = 4096


AUTHZ_REFUSED = replies.reply(535, "5.7.8", "Authentication credentials invalid: not authorized for that identity")
# Where the next line from the client is message content (DATA, or between BDAT chunks).
_IN_MESSAGE = frozenset({ServerState.DATA, ServerState.CHUNKING})
TOO_MANY_FROM_CLIENT = replies.reply(421, "4.7.0", "Too many connections from your address, try again later")


class ConnectionCounts(Protocol):
    """The open connections of a listener, over every process serving it."""

    def total(self) -> int: ...

    def for_address(self, address: str) -> int: ...

    def opened(self, address: str) -> None: ...

    def closed(self, address: str) -> None: ...


class LocalConnectionCounts:
    """`ConnectionCounts` of a listener served by this process alone."""

    def __init__(self) -> None:
        self._total = 0
        self._by_address: dict[str, int] = {}

    def total(self) -> int:
        return self._total

    def for_address(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def opened(self, address: str) -> None:
        self._total += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1

    def closed(self, address: str) -> None:
        self._total -= 1
        left = self._by_address.get(address, 1) - 1
        if left:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)


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
        acceptor: Receiving,
        logs: RecordSink,
        clock: Callable[[], float] = time.time,
        counts: ConnectionCounts | None = None,
        trace: TraceHub | None = None,
    ) -> None:
        """`counts`: shared with the other processes serving the same listener, if any;
        `trace`: where trace-smtp-server's subscribers are (sessions are traced while any is)."""
        self.config = config
        self.trace = trace
        self.counts: ConnectionCounts = counts if counts is not None else LocalConnectionCounts()
        self.acceptor = acceptor
        self.logs = logs
        self.clock = clock
        self.tls_context: ssl.SSLContext | None = None
        if config.tls_certificate and config.tls_private_key:
            self.tls_context = server_context(config.tls_certificate, config.tls_private_key)
        self._users = {u.username: u for u in config.auth}
        # Some listener domain logs OOB or ARF reports (its messages are looked at once in).
        self.logs_reports = config.listener_domains.logs_reports
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
        self.silence = TimeoutWatch(config.client_timeout_s)
        self._open = 0
        self._total = 0
        self._refused = 0
        self._accepted = 0

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(self._open, self._total, self._refused, self._accepted)

    def count_accepted(self, messages: int) -> None:
        """A session's message was accepted, as `messages` queued messages (one per recipient)."""
        self._accepted += messages

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
            (listeners,) = await open_listeners(
                self.config.host, self.config.port, 1, shared=self.config.shared_port
            )
        addresses = [lst.socket.getsockname() for lst in listeners]
        try:
            async with trio.open_nursery() as nursery:
                handlers = handler_nursery or nursery
                # The silence watch lives where the sessions do: when this call is
                # cancelled (shutdown stops accepting), sessions in `handler_nursery` go
                # on through the grace period, and their client timeouts still hold.
                handlers.start_soon(self.silence.run)

                def start(connection: SocketConnection) -> None:
                    handlers.start_soon(self._serve_tcp, connection)

                refusal = replies.TOO_MANY_CONNECTIONS.to_bytes()
                for listener in listeners:
                    nursery.start_soon(
                        partial(accept_connections, listener, start, name=self.config.name, refusal=refusal)
                    )
                task_status.started(addresses)
        finally:
            self.silence.close()  # the watch ends with the last session

    async def _serve_tcp(self, connection: SocketConnection) -> None:
        try:
            await self._serve(connection, connection.peer, self.silence)
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
                await self._serve(stream, peer_address(stream), self.silence)
            else:
                silence = TimeoutWatch(self.config.client_timeout_s)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(silence.run)
                    await self._serve(stream, peer_address(stream), silence)
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream, peer: str, silence: TimeoutWatch) -> None:
        self._total += 1
        refusal = self.admission(peer)
        if refusal is not None:
            self._refused += 1
            try:
                with trio.move_on_after(1):
                    await stream.send_all(refusal.to_bytes())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            return
        counts = self.counts
        self._open += 1
        counts.opened(peer)
        counted = True
        try:
            session = Session(self, stream, peer, silence)
            await session.run()
            # An orderly end (221, 421): the slot is free now. Over TLS, say goodbye
            # properly (close_notify) before the socket closes.
            self._open -= 1
            counts.closed(peer)
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
                counts.closed(peer)

    def admission(self, peer: str) -> Reply | None:
        """The 421 for a new connection from `peer`, or None if it may be served.

        Both limits count the connections of every process serving this listener:
        `max_connections` in all, `max_connections_per_client` from one address.
        """
        counts = self.counts
        if counts.total() >= self.config.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        cap = self.config.max_connections_per_client
        if cap and counts.for_address(peer) >= cap:
            return TOO_MANY_FROM_CLIENT
        return None

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

    def authorize(self, user: AuthUser, authzid: str) -> AuthUser | None:
        """Whom `user` acts as when it asks to act as `authzid`, or None if it may not.

        Only what the configuration allows (`authorize_as` of the user, "*" for anyone);
        the session then gets the tenant and campaign of `authzid`'s own entry, if it has one.
        """
        if authzid not in user.authorize_as and "*" not in user.authorize_as:
            return None
        return self._users.get(authzid, user)

    def check_credentials(self, username: str, password: str) -> AuthUser | None:
        user = self._users.get(username)
        # Compare even for unknown users, so timing says nothing about which exist.
        expected = user.password if user else "\0unknown"
        if hmac.compare_digest(expected.encode(), password.encode()) and user:
            return user
        return None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class TimeoutWatch:
    """Ends the sessions whose client ran out of time: one task per listener.

    A session tells the watch when it starts waiting for its client (`waiting`, with
    the deadline of the line it is receiving, if any) and when it is busy rather than
    waiting (`busy`, while it stores a message). A waiting session's time runs out at
    the earlier of `timeout_s` of silence (counted from the start of this wait) and its
    line deadline. The watch sleeps until the earliest moment a waiting session can run
    out of time, ends each session that has (`Session.time_out`), and sleeps again.

    A session pays a dictionary store per read; moving a cancel scope's deadline instead
    re-sorts trio's deadline heap each time. The silence timeout is the same for every
    session of a listener, so a session that starts waiting does not run out before the
    moment the watch already sleeps until, unless its line deadline is nearer: only then
    (or when the watch sleeps for good, no session waiting) is the watch woken.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.running = False
        self._deadlines: dict[Session, float | None] = {}  # None: busy, not waiting
        self._wake_at = math.inf
        self._closing = False
        self._wakeup = trio.Event()

    def add(self, session: Session) -> None:
        self._deadlines[session] = None

    def remove(self, session: Session) -> None:
        self._deadlines.pop(session, None)
        if self._closing and not self._deadlines:
            self._wakeup.set()

    def close(self) -> None:
        """No new sessions will come: `run` returns once the last one has ended."""
        self._closing = True
        self._wakeup.set()

    def waiting(self, session: Session, deadline: float = math.inf) -> None:
        """`session` waits for its client from now on; at the latest until `deadline`."""
        at = trio.current_time() + self.timeout_s
        if deadline < at:
            at = deadline
        self._deadlines[session] = at
        if at < self._wake_at:
            self._wake_at = at
            self._wakeup.set()

    def busy(self, session: Session) -> None:
        """`session` is not waiting for its client (it is storing a message)."""
        if session in self._deadlines:
            self._deadlines[session] = None

    async def run(self) -> None:
        """Watch until cancelled, or until closed and the last session has ended."""
        self.running = True
        try:
            while not (self._closing and not self._deadlines):
                now = trio.current_time()
                earliest = math.inf
                for session, at in list(self._deadlines.items()):
                    if at is None:
                        continue
                    if at <= now:
                        session.time_out()
                        del self._deadlines[session]
                    elif at < earliest:
                        earliest = at
                self._wake_at = earliest
                self._wakeup = trio.Event()
                with trio.move_on_at(earliest):
                    await self._wakeup.wait()
        finally:
            self.running = False


class Session:
    """The policy side of one SMTP conversation: relay rules, AUTH, acceptance."""

    def __init__(self, listener: SmtpListener, stream: trio.abc.Stream, peer: str, silence: TimeoutWatch) -> None:
        self.listener = listener
        self.silence = silence
        self.config = listener.config
        self.stream = stream
        self.peer = peer
        self._session_id: str | None = None
        self._tls: TlsDetails | None = None
        self.user: AuthUser | None = None
        self.relay_ok, server_config = listener.peer_policy(peer)
        self.conn = ServerConnection(server_config)
        # Cancelled by the listener's timeout watch when the client is out of time.
        self.timer = trio.CancelScope()
        hub = listener.trace
        # Someone runs trace-smtp-server: this session's bytes are events (nobody: None, no cost).
        self.traced = hub.server_session(peer, self.config.name) if hub is not None and hub.tracing else None

    async def _send(self, data: bytes | bytearray) -> None:
        if self.traced is not None:
            self.traced.hub.event(self.traced, "Write", bytes(data).decode("utf-8", "replace"))
        await self.stream.send_all(data)

    def time_out(self) -> None:
        """The client is out of time: end the conversation (the watch calls this)."""
        self.timer.cancel()

    @property
    def session_id(self) -> str:
        """The session's UUID, KumoMTA's ``session_id`` of its records (made when first needed)."""
        if self._session_id is None:
            self._session_id = str(uuid.uuid4())
        return self._session_id

    def session_info(self) -> SessionInfo:
        """What this session's records say about it: its id and its TLS."""
        tls = self._tls
        if tls is None:
            return SessionInfo(self.session_id)
        return SessionInfo(self.session_id, tls_cipher=tls.cipher, tls_protocol_version=tls.protocol_version,
                           tls_peer_subject_name=tls.peer_subject_name)

    async def run(self) -> None:
        """Serve the conversation until QUIT, a 421, EOF or the client's silence."""
        try:
            await self._run()
        finally:
            if self.traced is not None:
                self.traced.hub.event(self.traced, "Closed")

    async def _run(self) -> None:
        silence = self.silence
        silence.add(self)
        try:
            with self.timer:
                await self._converse()
        finally:
            silence.remove(self)
        if self.timer.cancelled_caught and not self.conn.closed:
            # Silent for too long, a line too slow (or not reading our replies): say why and hang up.
            with trio.move_on_after(1):
                await self._send(self.conn.send(replies.TIMEOUT))

    async def _converse(self) -> None:
        conn = self.conn
        silence = self.silence
        config = self.config
        await self._send(conn.send(self.listener.greeting))
        # When the line being received must be complete (RFC 5321 4.5.3.2): a command
        # line within `command_timeout` of the server being ready for it, each line of
        # message content within `data_timeout` of the previous one. A client trickling
        # a byte at a time is never silent for `client_timeout`, but runs out of these.
        line_deadline: float | None = None
        while not conn.closed:
            if line_deadline is None:
                line_deadline = trio.current_time() + (
                    config.data_timeout_s if conn.state in _IN_MESSAGE else config.command_timeout_s
                )
            # The client's time runs from here: through this read and the writes of
            # the replies to it (a client that does not read them is as good as silent).
            silence.waiting(self, line_deadline)
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if self.traced is not None:
                self.traced.hub.event(self.traced, "Read" if data else "Closed by peer",
                                      data.decode("utf-8", "replace") if data else None)
            if b"\n" in data:
                line_deadline = None  # a line ended: the next one's time starts
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
                    await self._send(out)
                    out.clear()
                    await self.start_tls()
                    break
            if out:
                await self._send(out)

    async def start_tls(self) -> None:
        assert self.listener.tls_context is not None
        tls = trio.SSLStream(self.stream, self.listener.tls_context, server_side=True)
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT_S):
            await tls.do_handshake()
        self.stream = tls
        self._tls = tls_details(tls)
        if self.traced is not None:
            self.traced.hub.event(self.traced, "TLS", tls.version())
        self.conn.tls_started(version=tls.version() or "TLS")
        self.user = None

    async def answer(self, event: ev.Answerable) -> Reply:
        """The reply to one event: the machine's suggestion unless policy says otherwise."""
        if isinstance(event, ev.RcptTo):
            if not (self.relay_ok or self.conn.auth_identity or self._domain_allows_relay(event.address)
                    or self._domain_logs_reports(event.address)):
                self.reject(replies.RELAY_DENIED, "RCPT TO", event.address)
                return replies.RELAY_DENIED
            return event.reply
        if isinstance(event, ev.MessageComplete):
            # Storing takes what the disk takes; the client is not silent meanwhile.
            self.silence.busy(self)
            return await self.accept_message(event)
        if isinstance(event, ev.AuthAttempt):
            user = self.listener.check_credentials(event.username, event.password)
            if user is None:
                return replies.AUTH_FAILED
            authzid = event.authorization_id
            if authzid and authzid != event.username:
                # RFC 4616 2: a server unwilling to let the authenticated user act as the
                # authorization identity must fail the authentication.
                acting = self.listener.authorize(user, authzid)
                if acting is None:
                    return AUTHZ_REFUSED
                user = acting
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

    def _domain_logs_reports(self, recipient: str) -> bool:
        """Whether the recipient's listener domain logs OOB or ARF reports (then any message
        is taken at RCPT, and judged once in: `trimta.core.report_handling`)."""
        if not self.listener.logs_reports:
            return False
        oob, arf = self.config.listener_domains.report_handling(recipient.rpartition("@")[2], self.config.name)
        return oob.logs or arf.logs

    def _recipient_policy(self, recipient: str) -> RecipientPolicy:
        oob, arf = self.config.listener_domains.report_handling(recipient.rpartition("@")[2], self.config.name)
        relay = bool(self.relay_ok or self.conn.auth_identity or self._domain_allows_relay(recipient))
        return RecipientPolicy(recipient, relay, log_oob=oob, log_arf=arf)

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
            session=self.session_info(),
        )
        result = None
        if self.listener.logs_reports:
            decision = decide([self._recipient_policy(r) for r in submission.recipients], event.data)
            if decision.logged or decision.refused:
                result = await accept_reports(self.listener.acceptor, self.listener.logs, submission, decision,
                                              now=self.listener.clock())
        if result is None:
            result = await self.listener.acceptor.accept(submission)
        if result.reply.is_positive:
            self.listener.count_accepted(len(result.messages))
        else:
            self.reject(result.reply, "DATA", None)
        return result.reply

    def reject(self, reply: Reply, command: str, recipient: str | None) -> None:
        mail = self.conn.mail_from
        protocol = with_protocol(
            self.conn.esmtp, self.conn.tls is not None, self.conn.auth_identity is not None,
            mail is not None and mail.smtputf8,
        )
        reception = Reception(peer_address=self.peer, listener=self.config.name, protocol=protocol,
                              auth_identity=self.conn.auth_identity)
        self.listener.logs.emit(
            records.rejection_record(
                reply=reply,
                now=self.listener.clock(),
                sender=mail.address if mail is not None else None,
                recipient=recipient,
                peer_address=self.peer,
                helo=self.conn.helo_name or "",
                protocol=protocol,
                command=command,
                session_id=self.session_id,
                listener=self.config.name,
                meta=records.reception_meta(reception),
                session=self.session_info(),
            )
        )
