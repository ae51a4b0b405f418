"""One outbound SMTP connection: the trio shell around the sans-IO client.

`OutboundConnection.open` walks a destination's (host, address) targets in MX
order until one gives a usable session: TCP from the egress source address,
banner, EHLO (HELO when EHLO is refused with 5xx), STARTTLS as `enable_tls` says,
EHLO again inside TLS. `send` then runs one transaction per call and says what
happened as an `Outcome`: delivered (2xx), transient (4xx, timeout, lost
connection) or permanent (5xx, or a message this server cannot take at all).

Resource handling: the connection owns its stream. Every failure that leaves the
session unusable (a 421, a timeout, a broken stream, a protocol error) closes the
stream at once, and `usable` turns False; the caller opens a new connection.
`quit()` and `aclose()` are safe at any time, any number of times.

Timeouts are trio cancel scopes, one per phase, chosen by the command whose reply
is awaited (RFC 5321 4.5.3.2 names the phases; the values are the path's
``*_timeout_s`` options). A phase's clock starts when its command is written and
covers every read until the reply is complete. The idle time between messages is
the caller's: it waits for work inside its own cancel scope.

Error handling: nothing the peer does raises out of `send`; it becomes an
`Outcome`. `open` raises `ConnectionFailed`, carrying the `Outcome` to record for
the message and the failure of each target tried (`trimta.services.smtp_targets`: the
plan of targets, their failures, the memory of broken TLS).

DANE (RFC 7672), on a path with ``enable_dane``: before connecting to an MX host its
TLSA records are looked up (`TlsaLookups`, the DNS adapter). Secure usable records
make TLS required and the certificate must match one of them, checked right after
the handshake, before EHLO (`trimta.core.dane.check`, with the DANE-TA signature
path); a secure RRset without a usable record makes TLS required without
authentication; a failed or bogus lookup skips the host. Whatever the path's
`enable_tls`, MTA-STS or `remember_broken_tls` say, such a host never gets plaintext.
Each session under DANE is reported to the `TlsSessionSink`, when one is given.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, TypeVar

import trio

from trimta.adapters.certificates import issued_by_at, outside_validity, presented_certificate
from trimta.adapters.network import (
    ConnectFailed,
    NetworkBackend,
    NetworkError,
    NetworkStream,
    SourceUnavailable,
    TlsFailed,
    tls_context,
)
from trimta.core.dane import (
    DaneDecision,
    Verdict,
    check,
    decide,
    usage_label,
)
from trimta.core.egress import ClientTls, EgressPathConfig, KeySource, TlsPolicy
from trimta.core.outcome import Outcome, OutcomeKind, SessionInfo, outcome_kind
from trimta.core.pools import EgressSource
from trimta.core.tls_report import ResultType, TlsSessionSink
from trimta.protocol.client import CONNECTION_LOST, NEED_DATA, ClientConnection, ClientState
from trimta.protocol.client_errors import ClientProtocolError, ClientUsageError, MessageNotSendable
from trimta.protocol.client_events import (
    BytesToSend,
    Command,
    ConnectionClosed,
    EhloResult,
    Event,
    Greeting,
    HeloResult,
    RecipientResult,
    ReplyReceived,
    ServiceClosing,
    StartTlsResult,
    TransactionResult,
)
from trimta.protocol.proxy_header import proxy_v2_header
from trimta.protocol.replies import Reply, reply
from trimta.services.smtp_targets import (
    BrokenTls,
    ConnectionFailed,
    DaneTarget,
    TargetFailed,
    TargetFailure,
    TlsaLookups,
    all_failed,
    connection_plan,
    report_dane_session,
)

__all__ = [
    "QUIT_TIMEOUT_S",
    "BrokenTls",
    "ConnectionFailed",
    "EgressSource",
    "OutboundConnection",
    "Outcome",
    "OutcomeKind",
    "TargetFailure",
    "TlsaLookups",
    "connection_plan",
    "outcome_kind",
]

# The SSL context for a TLS policy and the path's client side (`trimta.adapters.network.tls_context`).
TlsContexts = Callable[[TlsPolicy, ClientTls], ssl.SSLContext]

log = logging.getLogger(__name__)

_E = TypeVar("_E")

QUIT_TIMEOUT_S = 5.0
"""How long `quit()` waits for the 221 (and a TLS goodbye) before closing anyway."""

# How a command is named in outcomes and log records ("in reply to RCPT TO").
_SPELLING = {
    Command.BANNER: "banner",
    Command.EHLO: "EHLO",
    Command.HELO: "HELO",
    Command.STARTTLS: "STARTTLS",
    Command.AUTH: "AUTH",
    Command.MAIL_FROM: "MAIL FROM",
    Command.RCPT_TO: "RCPT TO",
    Command.DATA: "DATA",
    Command.DATA_DOT: ".",
    Command.BDAT: "BDAT",
    Command.RSET: "RSET",
    Command.NOOP: "NOOP",
    Command.QUIT: "QUIT",
}


# How a failed DANE certificate check is reported (RFC 8460 section 4.3).
_VERDICT_RESULTS = {
    Verdict.NO_MATCH: ResultType.VALIDATION_FAILURE,
    Verdict.NAME_MISMATCH: ResultType.CERTIFICATE_HOST_MISMATCH,
    Verdict.CHAIN_INVALID: ResultType.CERTIFICATE_NOT_TRUSTED,
}


class _SessionLost(Exception):
    """The session cannot go on: timeout, broken stream, protocol error. `reason` stands in
    for every reply still missing."""

    def __init__(self, reason: Reply, command: Command | None) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.command = command


class OutboundConnection:
    """An open SMTP session with one peer, ready for transactions."""

    def __init__(
        self,
        stream: NetworkStream,
        client: ClientConnection,
        *,
        host: str,
        address: str,
        path: EgressPathConfig,
        source: EgressSource,
        session_id: str | None = None,
    ) -> None:
        self._stream: NetworkStream | None = stream
        self._client = client
        self.peer_host = host
        self.peer_address = address
        self.path = path
        self.source = source
        self.deliveries = 0  # messages handed to `send` here: what max_deliveries_per_connection counts
        # The targets that gave no session before this one (for TLS reporting).
        self.skipped: tuple[TargetFailure, ...] = ()
        self._tls_version: str | None = None
        self._dane: DaneTarget | None = None
        # The DANE outcome of the session, for records: "dane-ee", "dane-ta", "insecure"; None without DANE.
        self.dane: str | None = None
        # What the records of this session's outcomes say about it (made once established).
        self.session: SessionInfo = SessionInfo(session_id or str(uuid.uuid4()), delivery_protocol="ESMTP",
                                                source_address=stream.local_address)
        if source.ha_proxy_server is not None and source.ha_proxy_source_address is not None:
            proxy_host, proxy_port = source.ha_proxy_server
            self.session = dataclasses.replace(
                self.session, source_address=_host_port(source.ha_proxy_source_address, 0),
                proxy_server=_host_port(proxy_host, proxy_port), proxy_protocol="haproxy")
        # The running transaction's deadline, and what it was last set for: (command
        # awaited, its timeout, whether sending).
        self._timer: trio.CancelScope | None = None
        self._phase: tuple[Command | None, float, bool] = (None, 0.0, False)
        self._timeouts: dict[Command, float] = {
            Command.BANNER: path.banner_timeout_s,
            Command.EHLO: path.ehlo_timeout_s,
            Command.HELO: path.ehlo_timeout_s,
            Command.STARTTLS: path.starttls_timeout_s,
            Command.AUTH: path.auth_timeout_s,
            Command.MAIL_FROM: path.mail_from_timeout_s,
            Command.RCPT_TO: path.rcpt_to_timeout_s,
            Command.DATA: path.data_timeout_s,
            Command.DATA_DOT: path.data_dot_timeout_s,
            Command.BDAT: path.data_dot_timeout_s,
            Command.RSET: path.rset_timeout_s,
            Command.NOOP: path.rset_timeout_s,
            Command.QUIT: QUIT_TIMEOUT_S,
        }

    # --- Opening ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        network: NetworkBackend,
        targets: Sequence[tuple[str, str]],
        *,
        source: EgressSource,
        path: EgressPathConfig,
        hostname: str,
        tls_contexts: TlsContexts = tls_context,
        broken_tls: BrokenTls | None = None,
        dane: TlsaLookups | None = None,
        tls_sink: TlsSessionSink | None = None,
        domain: str = "",
        session_id: str | None = None,
    ) -> OutboundConnection:
        """A session with the first target that gives one; raises `ConnectionFailed`.

        `targets` are (host, address) pairs in connection order (`MxResolution.targets`).
        The next target is tried when one refuses or does not answer the connection,
        greets with anything but 2xx, refuses EHLO and HELO, or fails the TLS that
        `path.enable_tls` asks for. `tls_contexts` gives the SSL context for a policy
        (tests pass one that trusts their own CA). `session_id` (a UUID) is the session's
        in its records: the ready queue's dispatcher's; a new one if not given.

        With ``opportunistic_tls_reconnect_on_failed_handshake``, an opportunistic
        handshake that fails (or the EHLO after it) reconnects to the same target
        without TLS before moving on. With ``remember_broken_tls``, `broken_tls`
        remembers the hosts whose TLS failed: until the memory ends an opportunistic
        path to them sends in plaintext, and a required one fails saying why.

        With ``enable_dane`` and `dane`, each host's TLSA records decide its TLS first
        (see the module docstring); sessions under DANE are reported to `tls_sink` for
        `domain` (the recipient domain: where TLS reports go).
        """
        # The path's ehlo_domain wins over the source's, as in KumoMTA; the node's name last.
        ehlo_domain = path.ehlo_domain or source.ehlo_domain or hostname
        plan, refusal = connection_plan(targets, path)
        if refusal is not None:
            raise ConnectionFailed(refusal)
        failures: list[TargetFailure] = []
        for host, address in plan:
            target_path = path
            target_dane: DaneTarget | None = None
            if path.enable_dane and dane is not None:
                lookup = await dane.lookup_tlsa(host, source.remote_port or path.smtp_port)
                decision = decide(lookup)
                if decision is DaneDecision.DEFER:
                    text = f"DANE: {lookup.detail}; {host} is not used until its TLSA records are known"
                    failure = TargetFailure(host, address, reply(451, "4.7.5", text), "connect", False,
                                            dane="failed", dane_result=ResultType.DNSSEC_INVALID)
                    failures.append(failure)
                    report_dane_session(tls_sink, domain, lookup, address, source, ResultType.DNSSEC_INVALID, lookup.detail)
                    continue
                if decision is not DaneDecision.NOT_APPLICABLE:
                    # DANE wins over enable_tls and MTA-STS for this host; the check is ours.
                    target_dane = DaneTarget(lookup, decision)
                    target_path = dataclasses.replace(path, enable_tls=TlsPolicy.REQUIRED_INSECURE)
            if target_dane is None and path.remember_broken_tls_s and broken_tls is not None \
                    and broken_tls.is_broken(host):
                if path.enable_tls.required:
                    text = (f"TLS with {host} failed earlier and remember_broken_tls is set "
                            f"({path.remember_broken_tls_s:g}s); enable_tls = {path.enable_tls.value} needs it")
                    failures.append(TargetFailure(host, address, reply(451, "4.7.5", text), "STARTTLS", False))
                    continue
                if path.enable_tls is not TlsPolicy.DISABLED:
                    target_path = dataclasses.replace(path, enable_tls=TlsPolicy.DISABLED)
            try:
                connection = await cls._open_target(network, host, address, source, target_path, ehlo_domain,
                                                    tls_contexts, target_dane, session_id)
            except TargetFailed as exc:
                log.debug("no session with %s[%s]: %s", host, address, exc.failure.reply)
                if target_dane is not None:
                    exc.failure = dataclasses.replace(exc.failure, dane=target_dane.label)
                    if exc.failure.dane_result is not None:
                        report_dane_session(tls_sink, domain, target_dane.lookup, address, source, exc.failure.dane_result,
                                str(exc.failure.reply))
                failures.append(exc.failure)
                if not exc.failure.tls:
                    continue
                if path.remember_broken_tls_s and broken_tls is not None:
                    broken_tls.remember(host, path.remember_broken_tls_s)
                if path.opportunistic_tls_reconnect_on_failed_handshake and not target_path.enable_tls.required:
                    plaintext = dataclasses.replace(path, enable_tls=TlsPolicy.DISABLED)
                    try:
                        connection = await cls._open_target(network, host, address, source, plaintext,
                                                            ehlo_domain, tls_contexts, None, session_id)
                        connection.skipped = tuple(failures)
                        return connection
                    except TargetFailed as again:
                        failures.append(again.failure)
                continue
            connection.skipped = tuple(failures)
            if target_dane is None:
                return connection
            if target_dane.decision is DaneDecision.UNAUTHENTICATED:
                # Delivered over TLS as RFC 7672 says, yet the records are of no use: the domain wants to know.
                report_dane_session(tls_sink, domain, target_dane.lookup, address, source, ResultType.TLSA_INVALID,
                        "no usable TLSA record: TLS without authentication")
            else:
                report_dane_session(tls_sink, domain, target_dane.lookup, address, source, None)
            return connection
        raise ConnectionFailed(all_failed(failures), failures)

    @classmethod
    async def _open_target(
        cls,
        network: NetworkBackend,
        host: str,
        address: str,
        source: EgressSource,
        path: EgressPathConfig,
        ehlo_domain: str,
        tls_contexts: TlsContexts,
        dane: DaneTarget | None = None,
        session_id: str | None = None,
    ) -> OutboundConnection:
        # Made first: a bad EHLO domain (a configuration error) raises before any connection.
        client = ClientConnection(ehlo_domain, pipelining_allowed=path.enable_pipelining, lmtp=path.use_lmtp)
        port = source.remote_port or path.smtp_port  # a source's remote_port wins over the path's smtp_port
        if source.proxied:
            stream = await _through_proxy(network, source, host, address, port, path.connect_timeout_s)
        else:
            try:
                stream = await network.connect_tcp(address, port, source_address=source.source_address,
                                                   timeout_s=path.connect_timeout_s)
            except ConnectFailed as exc:
                answer = reply(451, "4.4.1", f"Connection to {host}[{address}] failed: {exc.message}")
                raise TargetFailed(TargetFailure(host, address, answer, "connect", connected=False,
                                                 source_unavailable=isinstance(exc, SourceUnavailable))) from None
        connection = cls(stream, client, host=host, address=address, path=path, source=source,
                         session_id=session_id)
        connection._dane = dane
        if dane is not None:
            # DANE applies only to a host whose TLSA answer was DNSSEC-secure: the record's
            # peer_address.is_secure, KumoMTA's mark of a DNSSEC-validated peer.
            connection.session = dataclasses.replace(connection.session, peer_is_secure=True)
        try:
            await connection._establish(tls_contexts)
        except BaseException:
            await connection.aclose()
            raise
        return connection

    async def _establish(self, tls_contexts: TlsContexts) -> None:
        """Banner, EHLO/HELO, and STARTTLS per policy; raises `TargetFailed`."""
        greeting = await self._expect(Greeting)
        if greeting.reply.code // 100 != 2:
            await self._goodbye()
            self._fail(greeting.reply, Command.BANNER)
        await self._hello()
        await self._negotiate_tls(tls_contexts)
        if self.path.smtp_auth_plain_username is not None:
            await self._authenticate()

    async def _negotiate_tls(self, tls_contexts: TlsContexts) -> None:
        policy = self.path.enable_tls
        if policy is TlsPolicy.DISABLED:
            return
        no_tls = ResultType.STARTTLS_NOT_SUPPORTED if self._dane is not None else None
        if not self._client.offers("STARTTLS"):
            if policy.required:
                text = f"TLS is required ({self._required_by()}) but {self.peer_host} does not offer STARTTLS"
                await self._goodbye()
                self._fail(reply(451, "4.7.10", text), Command.EHLO, dane_result=no_tls)
            return
        try:  # before STARTTLS: a client setting OpenSSL refuses is the operator's to fix, not the host's
            context = tls_contexts(policy, self.path.client_tls)
        except TlsFailed as exc:
            await self._goodbye()
            self._fail(reply(451, "4.7.5", f"TLS with {self._where()} not attempted: {exc.message}"),
                       Command.STARTTLS, tls=False)
        await self._write(self._client.send_starttls())
        answer = (await self._expect(StartTlsResult)).reply
        if answer.code // 100 != 2:
            if policy.required or self._client.state is not ClientState.READY:
                await self._goodbye()
                self._fail(answer, Command.STARTTLS, dane_result=no_tls)
            return  # Opportunistic: the session goes on in plaintext.
        await self._start_tls(context)
        if self._dane is not None:
            await self._check_dane(self._dane)
        await self._hello()

    def _required_by(self) -> str:
        if self._dane is not None:
            return f"DANE: {self.peer_host} has DNSSEC-signed TLSA records"
        return f"enable_tls = {self.path.enable_tls.value}"

    async def _check_dane(self, dane: DaneTarget) -> None:
        """RFC 7672 section 3: the certificates the server sent against its TLSA records, before EHLO.

        No usable record: TLS without authentication is all DANE asks. Otherwise one
        record must match (DANE-TA: names and the signature path too, validity as of now);
        if none does, the session ends here, over TLS, and the target failed.
        """
        if dane.decision is DaneDecision.UNAUTHENTICATED:
            self.dane = "insecure"
            return
        assert self._stream is not None
        chain = [c for c in map(presented_certificate, self._stream.peer_certificates()) if c is not None]
        now = datetime.datetime.now(datetime.timezone.utc)
        result = check(dane.lookup.records, chain, dane.lookup.reference_names, issued_by_at(now))
        if result.matched is not None and result.authenticated:
            self.dane = usage_label(result.matched)
            return
        why = result.verdict.value
        report = _VERDICT_RESULTS.get(result.verdict, ResultType.VALIDATION_FAILURE)
        if result.verdict is Verdict.CHAIN_INVALID and outside_validity(chain[0].der, now):
            why, report = f"{why}: the server certificate is outside its validity dates", ResultType.CERTIFICATE_EXPIRED
        text = f"DANE: the certificate of {self._where()} does not match its TLSA records ({why}; {dane.label})"
        await self._goodbye()
        self._fail(reply(451, "4.7.5", text), Command.STARTTLS, tls=True, dane_result=report)

    async def _authenticate(self) -> None:
        """AUTH PLAIN as ``smtp_auth_plain_username``, only where the credential is safe.

        Never over plaintext unless ``allow_smtp_auth_plain_without_tls``; never over
        TLS whose certificate was not verified (``*Insecure`` policies) unless
        ``allow_smtp_auth_plain_without_valid_certificate`` (a certificate DANE
        authenticated counts as verified): the attempt fails first, saying why, and the
        credential is not sent.
        """
        path = self.path
        assert path.smtp_auth_plain_username is not None
        if not self._client.tls_active and not path.allow_smtp_auth_plain_without_tls:
            await self._goodbye()
            self._fail(reply(451, "4.7.11", f"AUTH PLAIN to {self.peer_host} not attempted: the session has no TLS "
                                            "(allow_smtp_auth_plain_without_tls = false)"), Command.AUTH, tls=False)
        # A certificate DANE authenticated is verified (RFC 7672); DANE's "insecure" is not.
        verified = path.enable_tls.verify or self.dane in ("dane-ee", "dane-ta")
        if self._client.tls_active and not verified \
                and not path.allow_smtp_auth_plain_without_valid_certificate:
            await self._goodbye()
            self._fail(reply(451, "4.7.11", f"AUTH PLAIN to {self.peer_host} not attempted: its certificate was not "
                                            f"verified (enable_tls = {path.enable_tls.value}, "
                                            "allow_smtp_auth_plain_without_valid_certificate = false)"),
                       Command.AUTH, tls=False)
        try:
            password = await _secret(path.smtp_auth_plain_password)
        except (OSError, UnicodeDecodeError) as exc:
            await self._goodbye()
            self._fail(reply(451, "4.7.11", f"AUTH PLAIN to {self.peer_host} not attempted: cannot read "
                                            f"smtp_auth_plain_password: {exc}"), Command.AUTH, tls=False)
        try:
            command = self._client.send_auth_plain(path.smtp_auth_plain_username, password)
        except ClientUsageError as exc:
            await self._goodbye()
            self._fail(reply(451, "4.7.11", f"AUTH PLAIN to {self.peer_host} not attempted: {exc}"), Command.AUTH,
                       tls=False)
        await self._write(command)
        answer = (await self._expect(ReplyReceived)).reply
        if answer.code // 100 != 2:
            await self._goodbye()
            self._fail(answer, Command.AUTH, tls=False)

    async def _hello(self) -> None:
        await self._write(self._client.send_ehlo())
        answer = (await self._expect(EhloResult)).reply
        if answer.code // 100 == 2:
            return
        command = Command.EHLO
        if answer.code // 100 == 5 and self._client.state is ClientState.HELLO and not self._client.lmtp:
            # RFC 5321 3.2: a server that does not know EHLO may still know HELO.
            await self._write(self._client.send_helo())
            answer = (await self._expect(HeloResult)).reply
            if answer.code // 100 == 2:
                return
            command = Command.HELO
        await self._goodbye()
        self._fail(answer, command)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        assert self._stream is not None
        timeout_s = self.path.starttls_timeout_s
        where = self._where()
        stream = self._stream
        failed = ResultType.VALIDATION_FAILURE if self._dane is not None else None
        try:
            with trio.move_on_after(timeout_s) as scope:
                self._stream = await stream.start_tls(context, _tls_server_name(self.peer_host))
        except TlsFailed as exc:
            self._fail(reply(451, "4.7.5", f"TLS with {where} failed: {exc.message}"), Command.STARTTLS, tls=True,
                       dane_result=failed)
        if scope.cancelled_caught:
            text = f"TLS handshake with {where} timed out after {timeout_s:g}s"
            self._fail(reply(451, "4.7.5", text), Command.STARTTLS, tls=True, dane_result=failed)
        self._client.tls_started()
        self._tls_version = self._stream.tls_version or "TLS"
        details = self._stream.tls_details
        if details is not None:
            self.session = dataclasses.replace(
                self.session, tls_cipher=details.cipher, tls_protocol_version=details.protocol_version or
                self._tls_version, tls_peer_subject_name=details.peer_subject_name)

    def _fail(self, answer: Reply, command: Command, *, tls: bool | None = None,
              dane_result: ResultType | None = None) -> NoReturn:
        if tls is None:
            tls = self._client.tls_active  # the handshake or the EHLO after it: TLS failing
        failure = TargetFailure(self.peer_host, self.peer_address, answer, _SPELLING[command], connected=True,
                                tls=tls, dane_result=dane_result)
        raise TargetFailed(failure)

    async def _expect(self, kind: type[_E]) -> _E:
        """The next event during session setup, which must be `kind`; else the target failed."""
        try:
            event = await self._next_event()
        except _SessionLost as lost:
            self._fail(lost.reason, lost.command or Command.BANNER)
        if isinstance(event, kind):
            return event
        if isinstance(event, ServiceClosing):
            self._fail(event.reply, self._client.awaiting or Command.BANNER)
        unanswered = event.unanswered if isinstance(event, ConnectionClosed) else ()
        command = unanswered[0] if unanswered else Command.BANNER
        self._fail(self._lost_reply(command), command)

    # --- What the caller reads ---------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def usable(self) -> bool:
        """True while a transaction may be started; False after 421, timeout or breakage."""
        return self._stream is not None and self._client.state is ClientState.READY

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the session (``"TLSv1.3"``), None if it is plaintext."""
        return self._tls_version

    @property
    def extensions(self) -> Mapping[str, str]:
        """What the peer's last EHLO advertised (inside TLS, when TLS is on)."""
        return self._client.extensions

    @property
    def ehlo_domain(self) -> str:
        return self._client.ehlo_domain

    # --- Transactions ------------------------------------------------------------------

    async def send(self, sender: str, recipient: str, data: bytes, *, smtputf8: bool = False) -> Outcome:
        """Send `data` from `sender` to `recipient`: one transaction, one `Outcome`."""
        (outcome,) = await self.send_many(sender, [recipient], data, smtputf8=smtputf8)
        return outcome

    async def send_many(
        self, sender: str, recipients: Sequence[str], data: bytes, *, smtputf8: bool = False
    ) -> list[Outcome]:
        """One transaction for several recipients; one `Outcome` each, in order.

        RSET goes first when the previous transaction was left open. A message this
        server cannot take (over its SIZE, or with a non-ASCII address and no SMTPUTF8
        offered) is a permanent outcome and nothing is sent. `smtputf8` says the message
        came with SMTPUTF8: MAIL asks for it again when the server offers it; one that
        does not gets the message without it if every address is ASCII (its UTF-8
        headers as 8-bit data, as Postfix does). Raises `ClientUsageError` when the
        connection is not `usable`: the caller checks that first.
        """
        if not self.usable:
            raise ClientUsageError(f"connection to {self._where()} is not usable")
        self.deliveries += 1
        # One cancel scope for the whole transaction, its deadline moved phase by phase
        # by `_write` and `_next_event`: a scope entered per write and per read cost
        # more than the rest of this shell.
        timer = self._timer = trio.CancelScope()
        outcomes: list[Outcome] | None = None
        try:
            with timer:
                outcomes = await self._transaction(sender, recipients, data, smtputf8)
        finally:
            self._timer = None
        if outcomes is None:  # a phase's deadline passed
            outcomes = await self._lost(self._timed_out(), recipients)
        return outcomes

    async def _transaction(
        self, sender: str, recipients: Sequence[str], data: bytes, smtputf8: bool
    ) -> list[Outcome]:
        client = self._client
        try:
            # enable_rset: RSET between messages even when the last transaction ended cleanly.
            if client.needs_reset or (self.path.enable_rset and self.deliveries > 1):
                reset = await self._reset()
                if reset is not None:
                    # Whatever RSET got, this message was never offered: try it again later.
                    return [self._outcome(reset, r, "RSET", kind=OutcomeKind.TRANSIENT) for r in recipients]
            try:
                # None: SMTPUTF8 only if an address needs it (the client checks that).
                first = client.start_transaction(
                    sender, recipients, data, smtputf8=True if smtputf8 and client.offers("SMTPUTF8") else None
                )
            except MessageNotSendable as exc:
                return [self._outcome(exc.reply, r, "MAIL FROM") for r in recipients]
            except ClientUsageError as exc:
                # The state was checked above: what is left is an address or parameter
                # that cannot be put on a command line. No server will ever take it.
                refusal = reply(553, "5.1.3", f"Not sendable: {exc}")
                return [self._outcome(refusal, r, "MAIL FROM") for r in recipients]
            await self._write(first)
            result, cut_at = await self._run_transaction()
        except _SessionLost as lost:
            return await self._lost(lost, recipients)
        if client.state is not ClientState.READY:
            await self.aclose()  # 421 or the peer hung up: nothing more on this connection
        return self._outcomes(result, cut_at)

    async def _lost(self, lost: _SessionLost, recipients: Sequence[str]) -> list[Outcome]:
        """The outcomes of a transaction the session died in; the connection is closed."""
        result = self._client.abort(lost.reason)
        await self.aclose()
        if result is None:  # lost before MAIL was even written (during RSET)
            return [self._outcome(lost.reason, r, "RSET", kind=OutcomeKind.TRANSIENT) for r in recipients]
        return self._outcomes(result, lost.command)

    def _outcomes(self, result: TransactionResult, cut_at: Command | None) -> list[Outcome]:
        return [
            self._outcome(r.reply, r.recipient, _decided_by(result, r, cut_at), delivered=r.delivered)
            for r in result.recipients
        ]

    async def _run_transaction(self) -> tuple[TransactionResult, Command | None]:
        """Drive the machine to its `TransactionResult`.

        Also returns the last command awaited, which is the one a lost connection cut
        short.
        """
        client = self._client
        while True:
            awaited = client.awaiting
            event = await self._next_event()
            match event:
                case BytesToSend(data=data):
                    await self._write(data)
                case TransactionResult():
                    return event, awaited
                case ReplyReceived() | ServiceClosing():
                    pass
                case _:
                    # The machine finishes the transaction before it reports the end of
                    # the connection, so anything else here is a broken promise.
                    raise _SessionLost(_protocol_error(f"unexpected {type(event).__name__}"), awaited)

    async def _reset(self) -> Reply | None:
        """RSET before a transaction; None when it worked, else the reply to fail with."""
        await self._write(self._client.send_rset())
        event = await self._next_event()
        if isinstance(event, ReplyReceived) and event.reply.code // 100 == 2:
            return None
        answer = event.reply if isinstance(event, (ReplyReceived, ServiceClosing)) else CONNECTION_LOST
        await self.aclose()  # a server that will not reset cannot be trusted with the next MAIL
        return answer

    def _outcome(
        self, answer: Reply, recipient: str, command: str, *, delivered: bool = False, kind: OutcomeKind | None = None
    ) -> Outcome:
        return Outcome(
            kind=kind or outcome_kind(answer, delivered),
            reply=answer,
            peer_host=self.peer_host,
            peer_address=self.peer_address,
            command=command,
            recipient=recipient,
            dane=self.dane,
            session=self.session,
        )

    # --- Closing -----------------------------------------------------------------------

    async def quit(self) -> None:
        """Say QUIT and wait briefly for the 221, then close. Safe at any time."""
        stream = self._stream
        if stream is None:
            return
        try:
            with trio.move_on_after(QUIT_TIMEOUT_S):
                await self._goodbye()
                await stream.aclose()  # with a TLS close_notify, when there is time
        finally:
            await self.aclose()  # streams close idempotently; this one just forgets it

    async def aclose(self) -> None:
        """Close the connection at once, without a goodbye. Safe at any time."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._client.abort(CONNECTION_LOST)
        await trio.aclose_forcefully(stream)  # type: ignore[arg-type]

    async def __aenter__(self) -> OutboundConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.quit()

    async def _goodbye(self) -> None:
        """QUIT when the session is in a state to take it; errors and timeouts ignored."""
        if self._stream is None or self._client.awaiting is not None:
            return
        if self._client.state not in (ClientState.READY, ClientState.HELLO, ClientState.REFUSED):
            return
        try:
            with trio.move_on_after(QUIT_TIMEOUT_S):
                await self._write(self._client.send_quit())
                while True:
                    event = await self._next_event()
                    if isinstance(event, ReplyReceived | ConnectionClosed):
                        break
        except _SessionLost:
            pass

    # --- Bytes ------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        """Write `data`, bounded by the timeout of the reply it is waiting for."""
        stream = self._require_stream()
        command = self._client.awaiting
        timeout_s = self._timeouts.get(command, QUIT_TIMEOUT_S) if command else QUIT_TIMEOUT_S
        timer = self._timer
        try:
            if timer is not None:  # in a transaction: move its deadline
                timer.deadline = trio.current_time() + timeout_s
                self._phase = (command, timeout_s, True)
                await stream.send_all(data)
                return
            with trio.move_on_after(timeout_s) as scope:
                await stream.send_all(data)
        except NetworkError as exc:
            raise _SessionLost(self._lost_reply(command, exc.message), command) from None
        if scope.cancelled_caught:
            raise self._timeout(command, timeout_s, sending=True)

    async def _next_event(self) -> Event:
        """The machine's next event, reading as needed; raises `_SessionLost`.

        The deadline is set once per call, when the first read is needed: the time
        the peer has for the reply to `awaiting`, however many reads it takes.
        """
        client = self._client
        deadline: float | None = None
        while True:
            try:
                event = client.next_event()
            except ClientProtocolError as exc:
                raise _SessionLost(_protocol_error(str(exc)), client.awaiting) from None
            if event is not NEED_DATA:
                return event
            command = client.awaiting
            timeout_s = self._timeouts[command] if command is not None else self.path.rset_timeout_s
            stream = self._require_stream()
            timer = self._timer
            try:
                if timer is not None:  # in a transaction: move its deadline
                    if deadline is None:
                        deadline = timer.deadline = trio.current_time() + timeout_s
                        self._phase = (command, timeout_s, False)
                    data = await stream.receive_some()
                else:
                    if deadline is None:
                        deadline = trio.current_time() + timeout_s
                    with trio.move_on_at(deadline) as scope:
                        data = await stream.receive_some()
                    if scope.cancelled_caught:
                        raise self._timeout(command, timeout_s, sending=False)
            except NetworkError as exc:
                raise _SessionLost(self._lost_reply(command, exc.message), command) from None
            client.receive_data(data)

    def _timed_out(self) -> _SessionLost:
        """What the transaction's timer passing means: the phase it was set for timed out."""
        command, timeout_s, sending = self._phase
        return self._timeout(command, timeout_s, sending=sending)

    def _timeout(self, command: Command | None, timeout_s: float, *, sending: bool) -> _SessionLost:
        if sending:
            text = f"Timed out after {timeout_s:g}s sending to {self._where()} before {_spell(command)}"
        else:
            awaited = "the banner" if command is Command.BANNER else f"the reply to {_spell(command)}"
            text = f"Timed out after {timeout_s:g}s waiting for {awaited} from {self._where()}"
        return _SessionLost(reply(451, "4.4.2", text), command)

    def _require_stream(self) -> NetworkStream:
        if self._stream is None:
            raise _SessionLost(self._lost_reply(self._client.awaiting, "connection closed"), self._client.awaiting)
        return self._stream

    def _where(self) -> str:
        return f"{self.peer_host}[{self.peer_address}]"

    def _lost_reply(self, command: Command | None, detail: str = "connection closed by the peer") -> Reply:
        return reply(451, "4.4.2", f"Connection to {self._where()} lost waiting for {_spell(command)}: {detail}")


async def _secret(source: KeySource | None) -> str:
    """The password a keysource holds: inline, or a file's contents (its final newline dropped)."""
    if source is None:
        return ""
    if source.data is not None:
        return source.data
    assert source.path is not None
    text = await trio.Path(source.path).read_text(encoding="utf-8")
    return text.removesuffix("\n").removesuffix("\r")


async def _through_proxy(network: NetworkBackend, source: EgressSource, host: str, address: str, port: int,
                         timeout_s: float) -> NetworkStream:
    """A stream to `address`:`port` through the source's HAProxy server: connected to the
    proxy, the PROXY v2 header sent (connect from ``ha_proxy_source_address``); then SMTP.
    Whether the proxy reached the MX host shows in the banner (it closes if it did not)."""
    assert source.ha_proxy_server is not None and source.ha_proxy_source_address is not None
    proxy_host, proxy_port = source.ha_proxy_server
    proxy = _host_port(proxy_host, proxy_port)
    try:
        header = proxy_v2_header(source.ha_proxy_source_address, address, port)
    except ValueError as exc:  # an IPv6 MX address for an IPv4 proxy source: this host cannot be reached so
        answer = reply(451, "4.4.1", f"{host}[{address}] skipped: {exc}")
        raise TargetFailed(TargetFailure(host, address, answer, "connect", connected=False)) from None
    try:
        stream = await network.connect_tcp(proxy_host, proxy_port, source_address=source.source_address,
                                           timeout_s=timeout_s)
    except ConnectFailed as exc:
        answer = reply(451, "4.4.1", f"Connection to {host}[{address}] through proxy {proxy} failed: "
                                     f"the proxy: {exc.message}")
        raise TargetFailed(TargetFailure(host, address, answer, "connect", connected=False, proxy_unhealthy=True,
                                         source_unavailable=isinstance(exc, SourceUnavailable))) from None
    try:
        await stream.send_all(header)
    except NetworkError as exc:
        await trio.aclose_forcefully(stream)  # type: ignore[arg-type]
        answer = reply(451, "4.4.1", f"Connection to {host}[{address}] through proxy {proxy} failed: "
                                     f"the proxy closed it: {exc}")
        raise TargetFailed(TargetFailure(host, address, answer, "connect", connected=False,
                                         proxy_unhealthy=True)) from None
    return stream


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _spell(command: Command | None) -> str:
    return _SPELLING[command] if command is not None else "a reply"


def _tls_server_name(host: str) -> str:
    """The name the certificate must match: the MX host, or the address of a literal.

    A domain literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, RFC 5321 4.1.3) is its own
    host; its certificate can only name the address.
    """
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        return inner[5:] if inner[:5].lower() == "ipv6:" else inner
    return host


def _protocol_error(detail: str) -> Reply:
    return reply(451, "4.5.0", f"SMTP protocol error from peer: {detail}")


def _decided_by(result: TransactionResult, recipient: RecipientResult, cut_at: Command | None) -> str:
    """The command whose reply decided a recipient's fate (for the outcome and the log)."""
    answer = recipient.reply
    if answer is result.mail_reply:
        return "MAIL FROM"
    if answer is recipient.rcpt_reply:
        return "RCPT TO"
    if answer is result.data_reply and result.data_command is not None:
        return _SPELLING[result.data_command]
    # Cut short (timeout, lost connection): the command that was awaiting its reply.
    return _SPELLING[cut_at] if cut_at is not None else "connect"



