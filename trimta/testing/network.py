"""A fake network of scripted SMTP receivers, for delivery tests without real sockets.

`FakeNetwork` is a `trimta.adapters.network.NetworkBackend`: code under test
connects through it exactly as through the real one, and reaches the
`ScriptedReceiver` registered at that address and port. Receivers speak real SMTP,
byte for byte, by driving trimta's own sans-IO server; a script of `Rule`\\ s says
where they depart from accepting everything::

    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, refusing())
    net.add_receiver("10.0.0.2", 25, ScriptedReceiver("mx2.example.com", greeting=TOO_BUSY))
    mx3 = net.add_receiver("10.0.0.3", 25, deferring("rcpt_to", first=1))
    ...
    assert [m.recipients for m in mx3.messages] == [("a@example.com",)]

Phases are named like the client's timeouts: ``connect``, ``banner``, ``ehlo``,
``helo``, ``starttls``, ``mail_from``, ``rcpt_to``, ``data``, ``data_dot`` (the
complete message, after the final dot or BDAT LAST), ``rset``, ``noop``, ``quit``.
At a phase a rule may answer a `Reply`, `STALL` (never answer again; at
``connect``: the connection never completes), `DROP` (hang up without answering),
or `REFUSE` (``connect`` only); or a function choosing one of those, or None for
the default, from what the client sent (the `MailFrom` / `RcptTo` event, or for
``data_dot`` the `ReceivedMessage`).

Everything happens in the caller's task, with no sockets and no background
tasks: it is deterministic, and under ``autojump_clock`` a stalled receiver makes
the client's timeouts fire at exactly their virtual deadline. TLS is simulated
(`FakeTls`): the handshake succeeds or fails as the receiver's certificate and the
client's SSL context would make it, without cryptography. To run the same script
over real sockets and real TLS, serve it with `ScriptedReceiver.serve` (e.g. under
``trio.serve_tcp``) and give it an `ssl_context`.

Observability: each receiver's `messages` (envelope and data of every accepted
message) and `connections`; the network's `connections_open`, `peak_connections`,
`connection_count`, and per connection its source address, message count, TLS, and
every byte each side wrote.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from trimta.adapters.network import (
    RECEIVE_SIZE,
    ConnectFailed,
    NetworkStream,
    SourceUnavailable,
    TlsFailed,
    TransportError,
)
from trimta.adapters.tls_info import TlsDetails
from trimta.protocol import events as ev
from trimta.protocol.replies import AUTH_FAILED, AUTH_SUCCEEDED, Reply, reply
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection

__all__ = [
    "DEFER",
    "DROP",
    "REFUSE",
    "REJECT",
    "STALL",
    "TOO_BUSY",
    "Action",
    "FakeConnection",
    "FakeNetwork",
    "FakeTls",
    "ReceivedMessage",
    "Rule",
    "ScriptedReceiver",
    "accepting",
    "deferring",
    "dropping",
    "refusing",
    "rejecting",
    "stalling",
]

DEFER = reply(451, "4.3.0", "Temporary failure, try again later")
REJECT = reply(550, "5.1.1", "Mailbox unavailable")
TOO_BUSY = reply(421, "4.3.2", "Too busy, try again later")

PHASES = frozenset(
    {"connect", "banner", "ehlo", "helo", "starttls", "auth", "mail_from", "rcpt_to", "data", "data_dot", "rset",
     "noop", "quit"}
)


class Action(enum.Enum):
    """What a rule may do instead of answering."""

    STALL = "stall"  # never answer again; at connect, never complete the connection
    DROP = "drop"  # close the connection without answering
    REFUSE = "refuse"  # connect only: the connection is refused


STALL = Action.STALL
DROP = Action.DROP
REFUSE = Action.REFUSE

Decision = Reply | Action | None


class FakeTls(enum.Enum):
    """How a fake receiver does STARTTLS."""

    NONE = "none"  # not offered
    VALID = "valid"  # a certificate valid for the receiver's hostname
    SELF_SIGNED = "self_signed"  # only a client that does not verify gets through
    BROKEN = "broken"  # every handshake fails


@dataclass
class Rule:
    """At `at`, do `then` (a reply, an action, or a function of what the client sent).

    `times` limits the rule to its first that many matches over the receiver's life
    (all connections), after which it no longer applies: "defer the first two, then
    accept" is ``Rule("rcpt_to", DEFER, times=2)``. `recipient` limits a rule at
    ``rcpt_to`` to one address.
    """

    at: str
    then: Reply | Action | Callable[[object], Decision]
    times: int | None = None
    recipient: str | None = None
    used: int = 0

    def __post_init__(self) -> None:
        if self.at not in PHASES:
            raise ValueError(f"unknown phase {self.at!r}; expected one of {sorted(PHASES)}")


@dataclass(eq=False)
class FakeConnection:
    """One connection a receiver took: who connected, what was said, what was accepted."""

    id: int
    address: str
    port: int
    source_address: str | None
    receiver: ScriptedReceiver
    opened_at: float
    closed_at: float | None = None
    messages: int = 0
    tls_version: str | None = None
    tls_server_hostname: str | None = None
    tls_verified: bool | None = None
    auth_user: str | None = None  # who logged in with AUTH, and over which TLS (None: plaintext)
    auth_tls: str | None = None
    writes: list[bytes] = field(default_factory=list, repr=False)
    client_bytes: bytearray = field(default_factory=bytearray, repr=False)
    server_bytes: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message a receiver accepted: envelope, data (CRLF, dot-unstuffed) and where from."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes = field(repr=False)
    connection: FakeConnection | None = field(repr=False, compare=False)
    tls_version: str | None = None
    # trio.current_time() when the message was complete (virtual time under MockClock).
    received_at: float = 0.0
    smtputf8: bool = False  # MAIL FROM carried SMTPUTF8


class _Counter:
    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.total = 0

    def opened(self) -> None:
        self.open += 1
        self.total += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        self.open -= 1


class ScriptedReceiver:
    """An SMTP receiver that accepts everything except where its rules say otherwise."""

    def __init__(
        self,
        hostname: str = "mx.fake.test",
        *,
        rules: Iterable[Rule] = (),
        greeting: Reply | None = None,
        tls: FakeTls = FakeTls.NONE,
        without: Iterable[str] = (),
        latency_s: float = 0.0,
        max_message_size: int = 20_000_000,
        ssl_context: ssl.SSLContext | None = None,
        auth: dict[str, str] | None = None,
    ) -> None:
        """`greeting` replaces the 220 banner (a 421 or 554 refuses the session);
        `without` drops EHLO keywords (``"PIPELINING"``, ``"CHUNKING"``); `latency_s`
        delays every reply; `ssl_context` enables real STARTTLS in `serve`; `auth`
        (username to password) offers AUTH PLAIN, with or without TLS."""
        self.auth = dict(auth) if auth is not None else None
        self.hostname = hostname
        self.rules = list(rules)
        if greeting is not None:
            self.rules.insert(0, Rule("banner", greeting))
        self.tls = tls
        self.without = frozenset(k.upper() for k in without)
        self.latency_s = latency_s
        self.max_message_size = max_message_size
        self.ssl_context = ssl_context
        self.messages: list[ReceivedMessage] = []
        self.connections: list[FakeConnection] = []
        self._counter = _Counter()
        self._network: FakeNetwork | None = None

    @property
    def connections_open(self) -> int:
        return self._counter.open

    @property
    def peak_connections(self) -> int:
        return self._counter.peak

    @property
    def connection_count(self) -> int:
        return self._counter.total

    def decide(self, phase: str, subject: object = None) -> Decision:
        """What the script says at `phase`: the first rule that applies, else None."""
        for rule in self.rules:
            if rule.at != phase or (rule.times is not None and rule.used >= rule.times):
                continue
            if rule.recipient is not None and getattr(subject, "address", None) != rule.recipient:
                continue
            decision = rule.then(subject) if callable(rule.then) else rule.then
            if decision is None:
                continue
            rule.used += 1
            return decision
        return None

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Run the script over a real stream (``trio.serve_tcp(receiver.serve, ...)``).

        STARTTLS is offered when the receiver has an `ssl_context`. A listener cannot
        refuse a connection it has accepted: a ``connect`` rule's `REFUSE` closes it at
        once, and `STALL` holds it without a word. Ends when either side closes; never
        raises for what the client does.
        """
        local, port, peer = _socket_names(stream)
        record = self._open_connection(local, port, peer)
        session = _Session(self, record, tls_offered=self.ssl_context is not None)
        try:
            on_connect = self.decide("connect")
            if on_connect is REFUSE or on_connect is DROP:
                return
            if on_connect is STALL:
                session.stalled = True
            else:
                session.start()
            while True:
                if session.outbox:
                    if self.latency_s:
                        await trio.sleep(self.latency_s)
                    out = session.take()
                    await stream.send_all(out)
                if session.closed:
                    break
                if session.awaiting_tls:
                    assert self.ssl_context is not None
                    stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
                    await stream.do_handshake()
                    session.tls_started(stream.version() or "TLS")
                data = await stream.receive_some(RECEIVE_SIZE)
                session.feed(data)
                if not data:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
            pass
        finally:
            self._close_connection(record)
            await trio.aclose_forcefully(stream)

    # --- Bookkeeping shared by both drivers -------------------------------------------

    def _open_connection(self, address: str, port: int, source: str | None) -> FakeConnection:
        network = self._network
        ident = network._next_id() if network else len(self.connections) + 1
        record = FakeConnection(ident, address, port, source, self, opened_at=trio.current_time())
        self.connections.append(record)
        self._counter.opened()
        if network is not None:
            network._opened(record)
        return record

    def _close_connection(self, record: FakeConnection) -> None:
        if record.closed_at is not None:
            return
        record.closed_at = trio.current_time()
        self._counter.closed()
        if self._network is not None:
            self._network._closed(record)

    def _received(self, message: ReceivedMessage) -> None:
        self.messages.append(message)
        if message.connection is not None:
            message.connection.messages += 1
        if self._network is not None:
            self._network._received(message)


class _Session:
    """One connection's receiving side: the sans-IO server plus the script, synchronous.

    `feed` takes what the client wrote; what the receiver answers collects in
    `outbox`. `closed` means the receiver hangs up once `outbox` is delivered.
    """

    def __init__(self, receiver: ScriptedReceiver, record: FakeConnection, *, tls_offered: bool) -> None:
        self.receiver = receiver
        self.record = record
        self.server = ServerConnection(
            ServerConfig(
                hostname=receiver.hostname,
                max_message_size=receiver.max_message_size,
                starttls_available=tls_offered,
                auth_mechanisms=("PLAIN",) if receiver.auth is not None else (),
                auth_without_tls=receiver.auth is not None,
            )
        )
        self.outbox = bytearray()
        self.closed = False
        self.stalled = False
        self.awaiting_tls = False

    def start(self) -> None:
        self._act(self.receiver.decide("banner"), default=self.server.greeting())

    def take(self) -> bytes:
        out = bytes(self.outbox)
        self.outbox.clear()
        return out

    def feed(self, data: bytes | bytearray) -> None:
        self.record.client_bytes += data
        if self.closed or self.stalled or self.server.closed:
            return
        self.server.receive_data(data)
        while not (self.closed or self.stalled or self.server.closed or self.awaiting_tls):
            event = self.server.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, ev.ConnectionClosed):
                self.closed = True
                break
            self._answer(event)
        if self.server.closed:
            self.closed = True

    def tls_started(self, version: str) -> None:
        self.awaiting_tls = False
        self.record.tls_version = version
        self.server.tls_started(version)

    def _answer(self, event: ev.Answerable) -> None:
        phase, subject = _phase(event), event
        message = None
        if isinstance(event, ev.MessageComplete):
            mail = self.server.mail_from
            message = ReceivedMessage(
                sender=mail.address if mail else "",
                recipients=tuple(r.address for r in self.server.recipients),
                data=event.data,
                connection=self.record,
                tls_version=self.server.tls,
                received_at=trio.current_time(),
                smtputf8=bool(mail and mail.smtputf8),
            )
            subject = message  # type: ignore[assignment]  # the rule sees the message, not the event
        default = event.reply
        if isinstance(event, ev.AuthAttempt):
            users = self.receiver.auth or {}
            ok = users.get(event.username) == event.password
            default = AUTH_SUCCEEDED if ok else AUTH_FAILED
            if ok:
                self.record.auth_user = event.username
                self.record.auth_tls = self.server.tls
        without = self.receiver.without
        if isinstance(event, ev.Hello) and event.extended and default.code == 250 and without:
            kept = [line for line in default.lines[1:] if line.split()[0].upper() not in without]
            default = default.with_text(default.lines[0], *kept)
        sent = self._act(self.receiver.decide(phase, subject) if phase else None, default=default)
        if sent is None:
            return
        if message is not None and sent.code // 100 == 2:
            self.receiver._received(message)
        if isinstance(event, ev.StartTls) and sent.code // 100 == 2:
            self.awaiting_tls = True

    def _act(self, decision: Decision, *, default: Reply) -> Reply | None:
        if decision is STALL:
            self.stalled = True
            return None
        if decision is DROP or decision is REFUSE:
            self.closed = True
            return None
        sent = decision if isinstance(decision, Reply) else default
        out = self.server.send(sent)
        self.outbox += out
        self.record.server_bytes += out
        return sent


_PHASE_OF = {
    ev.StartTls: "starttls",
    ev.AuthAttempt: "auth",
    ev.MailFrom: "mail_from",
    ev.RcptTo: "rcpt_to",
    ev.DataStart: "data",
    ev.MessageComplete: "data_dot",
    ev.Reset: "rset",
    ev.Noop: "noop",
    ev.Quit: "quit",
}


def _phase(event: ev.Event) -> str | None:
    if isinstance(event, ev.Hello):
        return "ehlo" if event.extended else "helo"
    return _PHASE_OF.get(type(event))


class FakeStream:
    """The client's end of a fake connection: a `NetworkStream` talking to a `_Session`."""

    def __init__(self, network: FakeNetwork, session: _Session) -> None:
        self._network = network
        self._session = session
        self._record = session.record
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._eof_sent = False

    @property
    def tls_version(self) -> str | None:
        return self._record.tls_version

    @property
    def tls_details(self) -> TlsDetails | None:
        version = self._record.tls_version
        if version is None:
            return None
        return TlsDetails("TLS_AES_256_GCM_SHA384", version, (f"CN={self._session.receiver.hostname}",))

    @property
    def local_address(self) -> str | None:
        # A port of its own per connection, as the kernel would pick one.
        return f"{self._record.source_address or '127.0.0.1'}:{40000 + self._record.id}"

    @property
    def connection(self) -> FakeConnection:
        return self._record

    def peer_certificates(self) -> tuple[bytes, ...]:
        return ()  # scripted receivers present no certificates: DANE is proven on loopback TLS

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        session = self._session
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise TransportError("receive on a closed stream")
        if session.outbox or session.closed:
            await trio.lowlevel.checkpoint()
        while not session.outbox and not session.closed:
            await self._lot.park()  # a stalled receiver parks the client here until its timeout
            if self._closed:
                raise TransportError("receive on a closed stream")
        if session.outbox:
            if self._session.receiver.latency_s:
                await trio.sleep(self._session.receiver.latency_s)
            data = bytes(session.outbox[:max_bytes])
            del session.outbox[:max_bytes]
            return data
        self._hang_up()
        return b""

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise TransportError("send on a closed stream")
        if self._session.closed and not self._session.outbox:
            raise TransportError("Connection reset by peer")
        self._record.writes.append(bytes(data))
        self._session.feed(bytes(data))
        self._lot.unpark_all()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> NetworkStream:
        await trio.lowlevel.checkpoint()
        session, record = self._session, self._record
        if self._closed or not session.awaiting_tls:
            await self.aclose()
            raise TlsFailed("TLS handshake failed: the peer is not expecting a handshake")
        verify = context.verify_mode != ssl.CERT_NONE
        record.tls_server_hostname = server_hostname
        record.tls_verified = verify
        problem = _handshake_problem(session.receiver, verify, context.check_hostname, server_hostname)
        if problem is not None:
            await self.aclose()
            raise TlsFailed(f"TLS handshake failed: {problem}")
        session.tls_started("TLSv1.3")
        return self

    async def aclose(self) -> None:
        # Close first, checkpoint last: under `aclose_forcefully` the scope is already
        # cancelled, and the close must happen anyway.
        if not self._closed:
            self._closed = True
            self._session.feed(b"")
            self._hang_up()
            self._lot.unpark_all()
        await trio.lowlevel.checkpoint()

    def _hang_up(self) -> None:
        self._session.receiver._close_connection(self._record)


def _handshake_problem(receiver: ScriptedReceiver, verify: bool, check_hostname: bool, name: str | None) -> str | None:
    if receiver.tls is FakeTls.BROKEN:
        return "sslv3 alert handshake failure"
    if receiver.tls is FakeTls.SELF_SIGNED and verify:
        return "certificate verify failed: self-signed certificate"
    if verify and check_hostname and (name or "").lower() != receiver.hostname.lower():
        return f"certificate verify failed: Hostname mismatch, certificate is not valid for '{name}'"
    return None


class FakeNetwork:
    """A `NetworkBackend` whose addresses lead to scripted receivers, in virtual time.

    An address with no receiver refuses connections. `local_addresses`, when given,
    are the only source addresses a connection may come from (as a kernel would
    refuse to bind any other).
    """

    def __init__(self, *, local_addresses: Iterable[str] | None = None) -> None:
        self.receivers: dict[tuple[str, int], ScriptedReceiver] = {}
        self.local_addresses = frozenset(local_addresses) if local_addresses is not None else None
        self.connections: list[FakeConnection] = []
        self.messages: list[ReceivedMessage] = []
        self.connect_attempts: list[tuple[str | None, str, int]] = []
        self._counter = _Counter()
        self._ids = 0
        self._lot = trio.lowlevel.ParkingLot()

    def add_receiver(self, address: str, port: int, receiver: ScriptedReceiver) -> ScriptedReceiver:
        """Put `receiver` at `address`:`port` (one receiver may listen at several) and return it."""
        receiver._network = self
        self.receivers[(address, port)] = receiver
        return receiver

    @property
    def connections_open(self) -> int:
        return self._counter.open

    @property
    def peak_connections(self) -> int:
        return self._counter.peak

    @property
    def connection_count(self) -> int:
        """Connections established (refused and timed-out attempts are not counted)."""
        return self._counter.total

    async def wait_messages(self, count: int) -> None:
        """Wait until at least `count` messages were accepted, network-wide."""
        while len(self.messages) < count:
            await self._lot.park()
        await trio.lowlevel.checkpoint()

    async def connect_tcp(
        self,
        address: str,
        port: int,
        *,
        source_address: str | None = None,
        timeout_s: float = 60.0,
    ) -> NetworkStream:
        self.connect_attempts.append((source_address, address, port))
        where = f"{address}:{port}"
        if (self.local_addresses is not None and source_address is not None
                and source_address not in self.local_addresses):
            await trio.lowlevel.checkpoint()
            raise SourceUnavailable(f"cannot use source address {source_address}: Cannot assign requested address")
        receiver = self.receivers.get((address, port))
        if receiver is None:
            await trio.lowlevel.checkpoint()
            raise ConnectFailed(f"connection to {where} failed: Connection refused")
        decision = receiver.decide("connect")
        if decision is STALL:
            await trio.sleep(timeout_s)
            raise ConnectFailed(f"connection to {where} timed out after {timeout_s:g}s")
        if decision is REFUSE or decision is DROP or isinstance(decision, Reply):
            await trio.lowlevel.checkpoint()
            raise ConnectFailed(f"connection to {where} failed: Connection refused")
        if receiver.latency_s:
            await trio.sleep(receiver.latency_s)
        else:
            await trio.lowlevel.checkpoint()
        record = receiver._open_connection(address, port, source_address)
        session = _Session(receiver, record, tls_offered=receiver.tls is not FakeTls.NONE)
        session.start()
        return FakeStream(self, session)

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _opened(self, record: FakeConnection) -> None:
        self.connections.append(record)
        self._counter.opened()

    def _closed(self, record: FakeConnection) -> None:
        self._counter.closed()

    def _received(self, message: ReceivedMessage) -> None:
        self.messages.append(message)
        self._lot.unpark_all()


# --- Receivers for the usual scripts -------------------------------------------------


def accepting(hostname: str = "mx.fake.test", **options: object) -> ScriptedReceiver:
    """Accepts every message."""
    return ScriptedReceiver(hostname, **options)  # type: ignore[arg-type]


def deferring(
    at: str = "rcpt_to",
    *,
    first: int | None = None,
    answer: Reply = DEFER,
    hostname: str = "mx.fake.test",
    **options: object,
) -> ScriptedReceiver:
    """Answers `answer` (451) at `at`: always, or only the `first` times and then accepts."""
    return ScriptedReceiver(hostname, rules=[Rule(at, answer, times=first)], **options)  # type: ignore[arg-type]


def rejecting(
    at: str = "rcpt_to", *, answer: Reply = REJECT, hostname: str = "mx.fake.test", **options: object
) -> ScriptedReceiver:
    """Answers `answer` (550) at `at`, every time."""
    return ScriptedReceiver(hostname, rules=[Rule(at, answer)], **options)  # type: ignore[arg-type]


def stalling(at: str = "banner", *, hostname: str = "mx.fake.test", **options: object) -> ScriptedReceiver:
    """Stops answering at `at` (at ``connect``: the connection never completes)."""
    return ScriptedReceiver(hostname, rules=[Rule(at, STALL)], **options)  # type: ignore[arg-type]


def dropping(at: str = "data", *, hostname: str = "mx.fake.test", **options: object) -> ScriptedReceiver:
    """Hangs up without answering at `at`."""
    return ScriptedReceiver(hostname, rules=[Rule(at, DROP)], **options)  # type: ignore[arg-type]


def refusing(hostname: str = "mx.fake.test", **options: object) -> ScriptedReceiver:
    """Refuses every connection."""
    return ScriptedReceiver(hostname, rules=[Rule("connect", REFUSE)], **options)  # type: ignore[arg-type]


def _socket_names(stream: trio.abc.Stream) -> tuple[str, int, str | None]:
    sock = getattr(stream, "socket", None)
    try:
        local = sock.getsockname() if sock is not None else ("", 0)
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        local, peer = ("", 0), None
    return str(local[0]), int(local[1]), (str(peer[0]) if peer else None)


class _BuggyStream:
    """A stream whose call number `fail_at` of `on` (``"send"`` or ``"receive"``) raises a bug."""

    def __init__(self, inner: NetworkStream, on: str, fail_at: int) -> None:
        self.inner, self.on, self.fail_at, self.calls = inner, on, fail_at, 0

    @property
    def tls_version(self) -> str | None:
        return self.inner.tls_version

    def peer_certificates(self) -> tuple[bytes, ...]:
        return self.inner.peer_certificates()

    @property
    def tls_details(self) -> TlsDetails | None:
        return self.inner.tls_details

    @property
    def local_address(self) -> str | None:
        return self.inner.local_address

    def _count(self, kind: str) -> None:
        if kind == self.on:
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("backend stream bug")

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        self._count("receive")
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        self._count("send")
        await self.inner.send_all(data)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> NetworkStream:
        return await self.inner.start_tls(context, server_hostname)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FirstConnectionBuggy(FakeNetwork):
    """The fake network, except that the first connection's `on` call number `fail_at`
    raises `RuntimeError`, as a broken backend stream would (supervision tests)."""

    def __init__(self, *, on: str = "send", fail_at: int = 1, **options: Any) -> None:
        super().__init__(**options)
        self.on, self.fail_at, self.faulty = on, fail_at, 0

    async def connect_tcp(self, address: str, port: int, *, source_address: str | None = None,
                          timeout_s: float = 60.0) -> NetworkStream:
        stream = await super().connect_tcp(address, port, source_address=source_address, timeout_s=timeout_s)
        if self.faulty:
            return stream
        self.faulty += 1
        return _BuggyStream(stream, self.on, self.fail_at)
