"""The SMTP client as a sans-IO state machine (RFC 5321, with RFC 2920, 1870, 3030, 3207, 6531).

The shell (the trio delivery code) owns the socket; this object owns the protocol::

    client = ClientConnection("mta.example.net")
    client.receive_data(bytes_from_server)      # b"" when the server closed
    event = client.next_event()                 # an event, or NEED_DATA
    stream.send_all(client.send_ehlo())         # methods return the bytes to send

One transaction is one call, `start_transaction`, after which the machine drives
itself. With PIPELINING, MAIL, every RCPT and DATA go out in one write (RFC 2920 3.1:
DATA may end a group), or MAIL, the RCPTs, BDAT LAST and the whole message with
CHUNKING (RFC 3030 4.2), so a message costs two round trips (one with BDAT) instead
of three; the message itself follows DATA's 354 only when MAIL and at least one RCPT
were accepted, and a server that says 354 with no recipient gets an empty message (a
lone "."), as RFC 2920 asks. Without PIPELINING each command waits for its reply, and
DATA (or BDAT) is sent only when at least one RCPT was accepted. Each follow-up
arrives as a `BytesToSend` event, and the transaction ends with a `TransactionResult`
naming every recipient's fate. `awaiting` says which reply
is expected, so the shell can pick the timeout for that phase.

Errors: `ClientProtocolError` when the server breaks the protocol (raised by
`next_event`, and again on every later call); `ClientUsageError` when the caller asks
for something the protocol state does not allow (a bug in the shell);
`MessageNotSendable` when a message cannot go to this server at all (over its SIZE,
or needing SMTPUTF8 it lacks): the caller bounces it, with the `Reply` it carries.

A 421 ends the session whenever it comes (RFC 5321 3.8): it answers every command
still waiting, and the machine moves to CLOSED.

LMTP (RFC 2033), with ``lmtp=True``: ``LHLO`` instead of EHLO (there is no HELO to
fall back to), and after the message one reply per accepted recipient, in RCPT order,
each deciding its own recipient. BDAT is not used under LMTP.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trimta.protocol import _client_commands as commands
from trimta.protocol._reply_parser import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_LINES, ReplyParser
from trimta.protocol._state import ClientState, ClientTrigger, next_client_state
from trimta.protocol.client_errors import (
    ClientProtocolError,
    ClientUsageError,
    MessageNotSendable,
)
from trimta.protocol.client_events import (
    NEED_DATA,
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
    _NeedData,
)
from trimta.protocol.dotstuff import dot_stuff, prepare_message
from trimta.protocol.replies import Reply, reply

__all__ = [
    "CONNECTION_LOST",
    "NEED_DATA",
    "ClientConnection",
    "ClientProtocolError",
    "ClientState",
    "ClientUsageError",
    "MessageNotSendable",
]

CRLF = commands.CRLF
# The bounce of a message holding a NUL octet (it came in by HTTP or from an old spool).
NUL_NOT_SENDABLE = reply(554, "5.6.0", "Message data holds a NUL octet, which is never sent (RFC 5321 2.3.8)")

CONNECTION_LOST = reply(451, "4.4.2", "Connection closed by the remote host before it replied")
"""The reason given to recipients whose transaction the server hung up on."""


@dataclass(frozen=True, slots=True)
class _Pending:
    command: Command
    recipient: str | None = None


@dataclass(slots=True)
class _Transaction:
    sender: str
    recipients: tuple[str, ...]
    rcpt_commands: tuple[bytes, ...]
    payload: bytes  # what follows the RCPTs: BDAT command and chunk, or DATA's payload
    use_bdat: bool
    pipelined: bool
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = field(default_factory=list)
    data_reply: Reply | None = None
    data_command: Command | None = None  # what data_reply answers
    lmtp_replies: dict[str, Reply] = field(default_factory=dict)  # LMTP: each recipient's reply to the message
    finished_data: bool = False  # the final DATA/BDAT reply came: the server reset itself
    empty_data: bool = False  # a pipelined DATA got 354 with no recipient: a lone "." went

    @property
    def wanted(self) -> bool:
        """MAIL and at least one RCPT were accepted: the message is to be sent."""
        return _accepted(self.mail_reply) and any(map(_accepted, self.rcpt_replies))


class ClientConnection:
    """One SMTP client session, from the banner to QUIT, without I/O."""

    def __init__(
        self,
        ehlo_domain: str,
        *,
        pipelining_allowed: bool = True,
        chunking_allowed: bool = True,
        max_reply_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_reply_lines: int = DEFAULT_MAX_LINES,
        lmtp: bool = False,
    ) -> None:
        self.ehlo_domain = ehlo_domain
        self._ehlo_argument = commands.check_ehlo_domain(ehlo_domain)
        self.pipelining_allowed = pipelining_allowed
        self.lmtp = lmtp
        self.chunking_allowed = chunking_allowed and not lmtp
        self._parser = ReplyParser(max_line_bytes=max_reply_line_bytes, max_lines=max_reply_lines)
        self._state = ClientState.GREETING
        self._pending: deque[_Pending] = deque([_Pending(Command.BANNER)])
        self._events: deque[Event] = deque()
        self._extensions: dict[str, str] = {}
        self._transaction: _Transaction | None = None
        self._needs_reset = False
        self._tls_active = False
        self._eof = False
        self._error: ClientProtocolError | None = None

    # --- What the shell reads ------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def awaiting(self) -> Command | None:
        """The command whose reply is expected next; picks the shell's read timeout."""
        return self._pending[0].command if self._pending else None

    @property
    def extensions(self) -> Mapping[str, str]:
        """What the last successful EHLO advertised (empty after HELO or STARTTLS)."""
        return dict(self._extensions)

    def offers(self, keyword: str) -> bool:
        return keyword.upper() in self._extensions

    @property
    def max_message_size(self) -> int | None:
        """The server's SIZE limit in bytes (RFC 1870), None when it states none."""
        return commands.size_limit(self._extensions)

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def needs_reset(self) -> bool:
        """A transaction the server still holds open: send RSET before the next one."""
        return self._needs_reset

    # --- Bytes in, events out ------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes received from the server; ``b""`` means it closed the connection."""
        if self._eof:
            if data:
                raise ClientUsageError("data received after the end of the connection")
            return
        if not data:
            self._eof = True
        elif self._state not in (ClientState.CLOSED, ClientState.ERROR):
            self._parser.feed(data)

    def next_event(self) -> Event | _NeedData:
        """The next thing that happened, or `NEED_DATA`. Raises `ClientProtocolError`."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        if self._state is ClientState.CLOSED:
            return ConnectionClosed() if self._eof else NEED_DATA
        try:
            received = self._parser.next_reply()
            if received is not None:
                self._handle(received)
        except ClientProtocolError as exc:
            self._fail(exc)
            raise
        except Exception as exc:
            # A bug in the machine: raised as it is this once, then the session answers
            # every call as a failed one (ERROR is sticky, see _state.py).
            self._fail(ClientProtocolError(f"the client failed with an internal error: {exc!r}"), cause=exc)
            raise
        if received is None:
            if not self._eof:
                return NEED_DATA
            self._connection_lost()
        return self._events.popleft()

    # --- Commands: each returns the bytes to send ----------------------------------

    def send_ehlo(self) -> bytes:
        self._check_idle("EHLO", ClientState.HELLO)
        self._pending.append(_Pending(Command.EHLO))
        return (b"LHLO " if self.lmtp else b"EHLO ") + self._ehlo_argument + CRLF

    def send_helo(self) -> bytes:
        """HELO: the fallback when EHLO got 5xx (RFC 5321 3.2). No extensions follow."""
        if self.lmtp:
            raise ClientUsageError("LMTP has no HELO (RFC 2033 4.1): LHLO is the only greeting")
        self._check_idle("HELO", ClientState.HELLO)
        self._pending.append(_Pending(Command.HELO))
        return b"HELO " + self._ehlo_argument + CRLF

    def send_starttls(self) -> bytes:
        self._check_idle("STARTTLS", ClientState.READY)
        if self._tls_active:
            raise ClientUsageError("STARTTLS on a connection that already has TLS")
        self._pending.append(_Pending(Command.STARTTLS))
        return b"STARTTLS" + CRLF

    def send_auth_plain(self, username: str, password: str) -> bytes:
        """AUTH PLAIN with the initial response (RFC 4954 4, RFC 4616): one round trip.

        The shell decides whether the session is safe for the credential (TLS); the
        machine only checks that the server offers the mechanism.
        """
        self._check_idle("AUTH", ClientState.READY)
        mechanisms = self._extensions.get("AUTH", "").upper().split()
        if "PLAIN" not in mechanisms:
            raise ClientUsageError("the server does not offer AUTH PLAIN")
        token = base64.b64encode(b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8"))
        self._pending.append(_Pending(Command.AUTH))
        return b"AUTH PLAIN " + token + CRLF

    def tls_started(self) -> None:
        """The TLS handshake succeeded: forget what plaintext EHLO said; EHLO is due again.

        RFC 3207 4.2: nothing learned before TLS may be trusted after it.
        """
        if self._state is not ClientState.TLS_HANDSHAKE:
            raise ClientUsageError(f"tls_started() in state {self._state.name}")
        self._parser.clear()
        self._extensions = {}
        self._tls_active = True
        self._move(ClientTrigger.TLS_STARTED)

    def start_transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        smtputf8: bool | None = None,
        mail_params: Mapping[str, str | None] | None = None,
    ) -> bytes:
        """Begin sending `message` from `sender` to `recipients`; returns the first write.

        `message` may have any line endings: they are made CRLF. `smtputf8` says the
        message needs SMTPUTF8 (RFC 6531); None means "if any address is non-ASCII".
        SIZE and BODY=8BITMIME are added when the server offers them; `mail_params`
        adds or overrides MAIL parameters (``{"ENVID": "x", "RET": "HDRS"}``).

        Raises `MessageNotSendable` when the server cannot take the message.
        """
        self._check_idle("MAIL", ClientState.READY)
        if self._needs_reset:
            raise ClientUsageError("the previous transaction is still open: send RSET first")
        recipients = tuple(recipients)
        if not recipients:
            raise ClientUsageError("a transaction needs at least one recipient")
        addresses = (sender, *recipients)
        if smtputf8 is None:
            smtputf8 = not all(address.isascii() for address in addresses)
        commands.check_addresses(addresses, smtputf8)

        prepared = prepare_message(message)
        # Never a NUL on the wire: a receiver that drops it may see an end of data where
        # there is none (smuggling, see protocol/_data.py). No server can take it.
        if b"\x00" in prepared:
            raise MessageNotSendable(NUL_NOT_SENDABLE)
        refusal = commands.refusal(self._extensions, len(prepared), smtputf8)
        if refusal is not None:
            raise MessageNotSendable(refusal)
        params = commands.mail_parameters(self._extensions, prepared, smtputf8, mail_params or {})
        use_bdat = self.chunking_allowed and self.offers("CHUNKING")
        transaction = _Transaction(
            sender=sender,
            recipients=recipients,
            rcpt_commands=tuple(commands.rcpt_to(r) for r in recipients),
            payload=commands.bdat_last(prepared) if use_bdat else dot_stuff(prepared),
            use_bdat=use_bdat,
            pipelined=self.pipelining_allowed and self.offers("PIPELINING"),
        )
        out = commands.mail_from(sender, params)
        self._pending.append(_Pending(Command.MAIL_FROM))
        if transaction.pipelined:
            out += b"".join(transaction.rcpt_commands)
            self._pending.extend(_Pending(Command.RCPT_TO, r) for r in recipients)
            if use_bdat:
                out += transaction.payload
                self._pending.append(_Pending(Command.BDAT))
            else:
                out += b"DATA" + CRLF
                self._pending.append(_Pending(Command.DATA))
        self._transaction = transaction
        self._move(ClientTrigger.TRANSACTION_STARTED)
        return out

    def send_rset(self) -> bytes:
        self._check_idle("RSET", ClientState.READY)
        self._pending.append(_Pending(Command.RSET))
        return b"RSET" + CRLF

    def send_noop(self) -> bytes:
        self._check_idle("NOOP", ClientState.READY, ClientState.HELLO)
        self._pending.append(_Pending(Command.NOOP))
        return b"NOOP" + CRLF

    def send_quit(self) -> bytes:
        self._check_idle("QUIT", ClientState.READY, ClientState.HELLO, ClientState.REFUSED)
        self._pending.append(_Pending(Command.QUIT))
        return b"QUIT" + CRLF

    def abort(self, reason: Reply) -> TransactionResult | None:
        """Give up on the connection (a timeout, a protocol error, a TLS failure).

        Returns the result of the transaction in flight, if any: what the server
        already answered stands (a recipient refused with 550 stays refused), and
        everything still open gets `reason`. The machine is CLOSED afterwards.
        """
        result = self._finish_transaction(reason, emit=False) if self._transaction else None
        self._pending.clear()
        self._events.clear()
        self._parser.clear()
        self._move(ClientTrigger.CLOSE)  # in ERROR, it stays ERROR
        return result

    # --- Replies in ----------------------------------------------------------------

    def _handle(self, received: Reply) -> None:
        if not self._pending:
            if received.code != 421:
                raise ClientProtocolError(f"reply to no command: {received}")
            self._close()
            self._events.append(ServiceClosing(received))
            return
        closing = received.code == 421
        self._dispatch(self._pending.popleft(), received, closing)
        if closing:
            # The server is going away: this 421 answers every command still waiting.
            while self._pending:
                self._dispatch(self._pending.popleft(), received, closing)
            self._close()

    def _dispatch(self, pending: _Pending, received: Reply, closing: bool) -> None:
        code_class = received.code // 100
        match pending.command:
            case Command.BANNER:
                if code_class == 3:
                    raise ClientProtocolError(f"banner with a 3xx code: {received}")
                self._move(ClientTrigger.BANNER_ACCEPTED if code_class == 2 else ClientTrigger.BANNER_REFUSED)
                self._events.append(Greeting(received))
            case Command.EHLO:
                self._extensions = {}
                if code_class == 2:
                    self._extensions = commands.parse_extensions(received.lines[1:])
                    self._move(ClientTrigger.HELLO_ACCEPTED)
                self._events.append(EhloResult(received, dict(self._extensions)))
            case Command.HELO:
                if code_class == 2:
                    self._extensions = {}
                    self._move(ClientTrigger.HELLO_ACCEPTED)
                self._events.append(HeloResult(received))
            case Command.STARTTLS:
                if code_class == 2:
                    if self._parser.buffered:
                        # Sent in plaintext after the 220 yet meant to be read as if
                        # it came over TLS: a response injection (RFC 3207 4.2).
                        raise ClientProtocolError("data after the 220 to STARTTLS, before TLS")
                    self._move(ClientTrigger.STARTTLS_ACCEPTED)
                self._events.append(StartTlsResult(received))
            case Command.AUTH:
                if code_class == 3:
                    # 334: the server wants more than the initial response it was given.
                    raise ClientProtocolError(f"334 to AUTH PLAIN with an initial response: {received}")
                self._events.append(ReplyReceived(Command.AUTH, received))
            case Command.MAIL_FROM:
                self._on_mail(received)
            case Command.RCPT_TO:
                self._on_rcpt(received, pending.recipient, closing)
            case Command.DATA:
                self._on_data(received, closing)
            case Command.DATA_DOT | Command.BDAT:
                if code_class == 3:
                    raise ClientProtocolError(f"3xx reply to the end of the message: {received}")
                if self.lmtp and pending.recipient is not None:
                    self._on_lmtp_reply(pending.recipient, received)
                else:
                    self._on_end_of_data(pending.command, received)
            case Command.RSET:
                if code_class == 2:
                    self._needs_reset = False
                self._events.append(ReplyReceived(Command.RSET, received))
            case Command.NOOP:
                self._events.append(ReplyReceived(Command.NOOP, received))
            case Command.QUIT:
                self._close()
                self._events.append(ReplyReceived(Command.QUIT, received))

    def _on_mail(self, received: Reply) -> None:
        transaction = self._current()
        transaction.mail_reply = received
        self._events.append(ReplyReceived(Command.MAIL_FROM, received))
        if transaction.pipelined:
            return  # the RCPT replies are on their way
        if _accepted(received):
            self._send_next_rcpt(transaction)
        else:
            self._finish_transaction(received)

    def _on_rcpt(self, received: Reply, recipient: str | None, closing: bool) -> None:
        transaction = self._current()
        transaction.rcpt_replies.append(received)
        self._events.append(ReplyReceived(Command.RCPT_TO, received, recipient))
        if closing:
            # No DATA to a server that is leaving, and no RCPT it would not read.
            if not self._pending:
                self._finish_transaction(received)
            return
        if transaction.pipelined:
            return  # DATA or BDAT went with the RCPTs: its reply decides what follows
        if len(transaction.rcpt_replies) < len(transaction.recipients):
            self._send_next_rcpt(transaction)
            return
        if transaction.wanted:
            if transaction.use_bdat:
                self._pending.append(_Pending(Command.BDAT))
                self._events.append(BytesToSend(transaction.payload))
            else:
                self._pending.append(_Pending(Command.DATA))
                self._events.append(BytesToSend(b"DATA" + CRLF))
        else:
            self._finish_transaction(None)

    def _on_data(self, received: Reply, closing: bool) -> None:
        transaction = self._current()
        if closing:
            self._finish_transaction(received)  # a 421 for everything still waiting
            return
        wanted = transaction.wanted  # always, unless DATA was pipelined
        if received.code == 354:
            self._events.append(ReplyReceived(Command.DATA, received))
            if self.lmtp and wanted:
                # RFC 2033 4.2: one reply to the message for each recipient RCPT accepted.
                self._pending.extend(_Pending(Command.DATA_DOT, recipient) for recipient, rcpt
                                     in zip(transaction.recipients, transaction.rcpt_replies) if _accepted(rcpt))
            else:
                self._pending.append(_Pending(Command.DATA_DOT))
            if wanted:
                self._events.append(BytesToSend(transaction.payload))
            else:
                # RFC 2920 3.1: a server that accepted a pipelined DATA though nobody is
                # to receive the message gets an empty one, which ends its transaction.
                transaction.empty_data = True
                self._events.append(BytesToSend(b"." + CRLF))
            return
        if received.code // 100 != 4 and received.code // 100 != 5:
            raise ClientProtocolError(f"DATA answered with neither 354 nor an error: {received}")
        if not wanted:
            # The refusal of a pipelined DATA that had nobody to send to ("no valid
            # recipients"): the MAIL and RCPT replies already decided every recipient.
            self._finish_transaction(None)
            return
        transaction.data_reply = received
        transaction.data_command = Command.DATA
        self._finish_transaction(received)

    def _on_end_of_data(self, command: Command, received: Reply) -> None:
        """The reply to the message's end ("." after DATA) or to BDAT LAST."""
        transaction = self._current()
        if transaction.empty_data:
            transaction.finished_data = True
            self._finish_transaction(None)
        elif transaction.wanted:
            transaction.data_reply = received
            transaction.data_command = command
            transaction.finished_data = True
            self._finish_transaction(received)
        else:
            # A pipelined BDAT with nobody to send to: whatever the server made of it,
            # the RCPT replies decided; RSET before the next transaction, to be sure.
            self._finish_transaction(None)

    def _on_lmtp_reply(self, recipient: str, received: Reply) -> None:
        """One recipient's reply to the message (LMTP); the last one ends the transaction."""
        transaction = self._current()
        transaction.lmtp_replies[recipient] = received
        self._events.append(ReplyReceived(Command.DATA_DOT, received, recipient))
        transaction.data_command = Command.DATA_DOT
        if any(p.command is Command.DATA_DOT for p in self._pending):
            return
        # The transaction's data_reply: the first refusal, else the last acceptance.
        replies = list(transaction.lmtp_replies.values())
        transaction.data_reply = next((r for r in replies if not _accepted(r)), replies[-1])
        transaction.finished_data = True
        self._finish_transaction(received)

    def _send_next_rcpt(self, transaction: _Transaction) -> None:
        index = len(transaction.rcpt_replies)
        self._pending.append(_Pending(Command.RCPT_TO, transaction.recipients[index]))
        self._events.append(BytesToSend(transaction.rcpt_commands[index]))

    def _finish_transaction(self, reason: Reply | None, *, emit: bool = True) -> TransactionResult:
        """Close the books on the transaction; `reason` stands for every missing reply."""
        transaction = self._current()
        mail_ok = _accepted(transaction.mail_reply)
        data_ok = _accepted(transaction.data_reply)
        answered = transaction.rcpt_replies
        results = []
        for index, recipient in enumerate(transaction.recipients):
            rcpt = answered[index] if index < len(answered) else None
            own = transaction.lmtp_replies.get(recipient)  # LMTP only: its own reply to the message
            if not mail_ok:
                decided_by = transaction.mail_reply
            elif not _accepted(rcpt):
                decided_by = rcpt
            elif self.lmtp and transaction.data_command is Command.DATA_DOT:
                decided_by = own  # its own reply, or (connection lost before it) the reason
            else:
                decided_by = transaction.data_reply
            decided_by = decided_by or reason
            assert decided_by is not None, "a recipient's fate needs a reply"
            delivered = mail_ok and _accepted(rcpt) and (_accepted(own) if own is not None else data_ok)
            results.append(RecipientResult(recipient, decided_by, rcpt, delivered))
        result = TransactionResult(
            sender=transaction.sender,
            mail_reply=transaction.mail_reply,
            recipients=tuple(results),
            data_reply=transaction.data_reply,
            data_command=transaction.data_command,
        )
        self._transaction = None
        self._needs_reset = mail_ok and not transaction.finished_data
        self._move(ClientTrigger.TRANSACTION_FINISHED)
        if emit:
            self._events.append(result)
        return result

    def _connection_lost(self) -> None:
        unanswered = tuple(p.command for p in self._pending)
        if self._transaction is not None:
            self._finish_transaction(CONNECTION_LOST)
        self._pending.clear()
        self._close()
        self._events.append(ConnectionClosed(unanswered))

    # --- Helpers -------------------------------------------------------------------

    def _close(self) -> None:
        self._move(ClientTrigger.CLOSE)
        self._parser.clear()

    def _move(self, trigger: ClientTrigger) -> None:
        """Take the move `trigger` makes from the current state (the table in `_state.py`)."""
        self._state = next_client_state(self._state, trigger)

    def _fail(self, error: ClientProtocolError, *, cause: BaseException | None = None) -> None:
        """ERROR, for good: every later `next_event` raises `error`, commands are refused."""
        if cause is not None:
            error.__cause__ = cause
        self._state = ClientState.ERROR
        self._error = error
        self._parser.clear()

    def _current(self) -> _Transaction:
        if self._transaction is None:
            raise ClientProtocolError("transaction reply outside a transaction")
        return self._transaction

    def _check_idle(self, command: str, *states: ClientState) -> None:
        if self._state not in states:
            raise ClientUsageError(f"cannot send {command} in state {self._state.name}")
        if self._pending:
            raise ClientUsageError(f"cannot send {command} while awaiting {self.awaiting}")


def _accepted(received: Reply | None) -> bool:
    return received is not None and received.code // 100 == 2
