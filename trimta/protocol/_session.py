"""What the ESMTP server knows about its client, and how commands and replies move it.

`Session` is the state machine without the bytes: it turns one command line into an
event, checking sequence, syntax and limits on the way, and `answered()` applies the
reply actually sent to each event, naming the trigger that moves the session's state
(the moves themselves are the table in `_state.py`). `ServerConnection` (server.py)
cuts the byte stream into lines, message data and chunks, asks the session what they
mean, and keeps the state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from trimta.protocol import _commands, _sasl
from trimta.protocol import replies as R
from trimta.protocol._abnf import HELO_NAME
from trimta.protocol._data import content_refusal
from trimta.protocol._state import ServerTrigger
from trimta.protocol.errors import RemoteProtocolError
from trimta.protocol.events import (
    AuthAttempt,
    AuthChallenge,
    BadCommand,
    BdatChunk,
    DataStart,
    Event,
    Hello,
    Help,
    MailFrom,
    MessageComplete,
    Noop,
    Quit,
    RcptTo,
    Reset,
    StartTls,
    Verify,
)
from trimta.protocol.replies import Reply
from trimta.protocol.server_config import ServerConfig


@dataclass(slots=True)
class ChunkStart:
    """A BDAT command: `size` octets follow, kept in `sink` or dropped if refused."""

    size: int
    last: bool
    sink: bytearray | None
    refusal: RemoteProtocolError | None


def _positive(reply: Reply) -> bool:
    return 200 <= reply.code < 300


def _no_argument(text: str) -> None:
    if text.strip(" "):
        raise RemoteProtocolError(R.SYNTAX_ERROR)


@functools.lru_cache(maxsize=64)
def _helo_reply(cfg: ServerConfig) -> Reply:
    return R.reply(250, None, cfg.hostname)


@functools.lru_cache(maxsize=64)
def _ehlo_reply(cfg: ServerConfig, tls_active: bool) -> Reply:
    """What a listener offers (the same for all its sessions in the same TLS state)."""
    lines = [
        cfg.hostname,
        "PIPELINING",
        f"SIZE {cfg.max_message_size}" if cfg.max_message_size else "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ]
    if cfg.starttls_available and not tls_active:
        lines.append("STARTTLS")
    if cfg.auth_mechanisms and (tls_active or cfg.auth_without_tls):
        lines.append("AUTH " + " ".join(cfg.auth_mechanisms))
    # RFC 2034 3: no enhanced status code on the EHLO response.
    return Reply(250, None, tuple(lines))


@functools.lru_cache(maxsize=64)
def _help_reply(cfg: ServerConfig, tls_active: bool) -> Reply:
    """HELP names the commands this session can use now: STARTTLS and AUTH as EHLO offers them."""
    commands = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY"]
    if cfg.starttls_available and not tls_active:
        commands.append("STARTTLS")
    if cfg.auth_mechanisms and (tls_active or cfg.auth_without_tls):
        commands.append("AUTH")
    return R.reply(214, "2.0.0", "Commands: " + " ".join([*commands, "HELP", "QUIT"]))


class Session:
    """Session and transaction state of one ESMTP conversation."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.errors = 0
        self.messages_accepted = 0
        self.no_service = False  # greeted with 554 (RFC 5321 3.1): only QUIT works
        self._refusal_ends_transaction = False
        self._sasl: _sasl.Exchange | None = None
        # Forgotten after STARTTLS (RFC 3207 4.2).
        self.tls: str | None = None
        self.helo_name: str | None = None
        self.esmtp = False
        self.auth_identity: str | None = None
        # Forgotten after the message, RSET, EHLO/HELO.
        self.mail_from: MailFrom | None = None
        self.recipients: list[RcptTo] = []
        self._chunks: bytearray | None = None  # BDAT content so far; None: no BDAT yet
        self._chunks_size = 0  # octets announced by BDAT, kept or not
        self._transaction_refusal: Reply | None = None  # what failed a BDAT transaction

    def end_transaction(self) -> None:
        self.mail_from = None
        self.recipients = []
        self._chunks = None
        self._chunks_size = 0
        self._transaction_refusal = None

    def tls_started(self, version: str) -> None:
        self.tls = version
        self.helo_name = None
        self.esmtp = False
        self.auth_identity = None
        self._sasl = None
        self.end_transaction()

    def refuse(self, reply: Reply, command: str, *, counts: bool = True, ends_transaction: bool = False) -> BadCommand:
        """The machine's own refusal; past `max_errors` counted ones, a 421 instead."""
        if counts:
            self.errors += 1
            if self.config.max_errors and self.errors > self.config.max_errors:
                reply = R.TOO_MANY_ERRORS
        self._refusal_ends_transaction = ends_transaction
        return BadCommand(reply, command)

    # --- Lines and data in, events out. ----------------------------------------

    def command(self, line: bytes) -> Event | ChunkStart:
        """The event for one command line, or the start of a BDAT chunk to read."""
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        handler = self._VERBS.get(verb)
        if handler is None:
            return self.refuse(R.COMMAND_UNRECOGNIZED, "")
        command = verb.decode("ascii")
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError:
            return self.refuse(R.SYNTAX_ERROR, command)
        if self.no_service and command != "QUIT":
            return self.refuse(R.BAD_SEQUENCE, command)
        try:
            return handler(self, text)
        except RemoteProtocolError as e:
            return self.refuse(e.reply, command, counts=e.counts)

    def auth_response(self, line: bytes) -> Event:
        """The event for the line answering a 334."""
        exchange, self._sasl = self._sasl, None
        assert exchange is not None
        try:
            outcome = exchange.respond(line.decode("ascii"))
        except UnicodeDecodeError:
            return self.refuse(R.AUTH_BAD_BASE64, "AUTH")
        except RemoteProtocolError as e:
            return self.refuse(e.reply, "AUTH", counts=e.counts)
        return self._sasl_outcome(exchange, outcome)

    def auth_response_too_long(self) -> BadCommand:
        self._sasl = None
        return self.refuse(R.LINE_TOO_LONG, "AUTH")

    def message_read(self, data: bytes, refusal: Reply | None) -> Event:
        """The event for DATA content read up to its end."""
        if refusal is not None:
            return self.refuse(refusal, "DATA", counts=False, ends_transaction=True)
        return MessageComplete(data)

    def chunk_read(self, chunk: ChunkStart) -> Event:
        """The event for a BDAT chunk read to its end."""
        if chunk.refusal is not None:
            ends = chunk.last and self.mail_from is not None
            return self.refuse(chunk.refusal.reply, "BDAT", counts=chunk.refusal.counts, ends_transaction=ends)
        if not chunk.last:
            return BdatChunk(chunk.size)
        assert self._chunks is not None
        data = bytes(self._chunks)
        refusal = content_refusal(b"\r\n" + data)
        if refusal is not None:
            return self.refuse(refusal, "BDAT", counts=False, ends_transaction=True)
        return MessageComplete(data)

    # --- Commands. -------------------------------------------------------------

    def _hello(self, text: str, extended: bool) -> Hello:
        name = text.strip(" ")
        if HELO_NAME.fullmatch(name) is None:
            raise RemoteProtocolError(R.SYNTAX_ERROR)
        if not extended:
            return Hello(name, False, _helo_reply(self.config))
        return Hello(name, True, _ehlo_reply(self.config, self.tls is not None))

    def _ehlo(self, text: str) -> Hello:
        return self._hello(text, extended=True)

    def _helo(self, text: str) -> Hello:
        return self._hello(text, extended=False)

    def _starttls(self, text: str) -> StartTls:
        _no_argument(text)
        if not self.config.starttls_available:
            raise RemoteProtocolError(R.NOT_IMPLEMENTED)
        if self.tls is not None:
            raise RemoteProtocolError(R.TLS_ALREADY_ACTIVE)
        if self.mail_from is not None:
            raise RemoteProtocolError(R.NOT_IN_TRANSACTION)
        return StartTls()

    def _auth(self, text: str) -> AuthChallenge | AuthAttempt:
        cfg = self.config
        if not cfg.auth_mechanisms:
            raise RemoteProtocolError(R.NOT_IMPLEMENTED)
        if not self.esmtp:
            raise RemoteProtocolError(R.SEND_HELLO_FIRST)
        if self.auth_identity is not None:
            raise RemoteProtocolError(R.ALREADY_AUTHENTICATED)
        if self.mail_from is not None:
            raise RemoteProtocolError(R.NOT_IN_TRANSACTION)
        if self.tls is None and not cfg.auth_without_tls:
            raise RemoteProtocolError(R.ENCRYPTION_REQUIRED, counts=False)
        mechanism, initial = _commands.parse_auth(text)
        if mechanism not in cfg.auth_mechanisms:
            raise RemoteProtocolError(R.AUTH_MECHANISM_UNKNOWN)
        exchange = _sasl.Exchange(mechanism)
        return self._sasl_outcome(exchange, exchange.start(initial))

    def _sasl_outcome(self, exchange: _sasl.Exchange, outcome: Reply | _sasl.Credentials) -> AuthChallenge | AuthAttempt:
        if isinstance(outcome, Reply):
            self._sasl = exchange
            return AuthChallenge(exchange.mechanism, outcome)
        return AuthAttempt(exchange.mechanism, outcome.authorization_id, outcome.username, outcome.password)

    def _mail(self, text: str) -> MailFrom:
        cfg = self.config
        if self.helo_name is None:
            raise RemoteProtocolError(R.SEND_HELLO_FIRST)
        if self.mail_from is not None:
            raise RemoteProtocolError(R.NESTED_MAIL)
        limit = cfg.max_messages_per_connection
        if limit and self.messages_accepted >= limit:
            raise RemoteProtocolError(R.TOO_MANY_MESSAGES, counts=False)
        return _commands.parse_mail(text, max_size=cfg.max_message_size)

    def _rcpt(self, text: str) -> RcptTo:
        if self.mail_from is None:
            raise RemoteProtocolError(R.NEED_MAIL)
        if self._chunks is not None:
            raise RemoteProtocolError(R.BAD_SEQUENCE)
        event = _commands.parse_rcpt(text, smtputf8=self.mail_from.smtputf8)
        limit = self.config.max_recipients
        if limit and len(self.recipients) >= limit:
            raise RemoteProtocolError(R.TOO_MANY_RECIPIENTS, counts=False)
        return event

    def _data(self, text: str) -> DataStart:
        _no_argument(text)
        if self.mail_from is None:
            raise RemoteProtocolError(R.NEED_MAIL)
        if self._chunks is not None or self._transaction_refusal is not None:
            raise RemoteProtocolError(R.DATA_AFTER_BDAT)
        if not self.recipients:
            raise RemoteProtocolError(R.NO_VALID_RECIPIENTS, counts=False)
        return DataStart()

    def _bdat(self, text: str) -> ChunkStart:
        # A BDAT whose size cannot be read leaves nothing to skip: the 501 is all.
        size, last = _commands.parse_bdat(text)
        # Otherwise the chunk is read to its end even when refused, so that the
        # next command is found where the client put it.
        refusal: RemoteProtocolError | None = None
        if self.mail_from is None:
            refusal = RemoteProtocolError(R.NEED_MAIL)
        elif not self.recipients:
            refusal = RemoteProtocolError(R.NO_VALID_RECIPIENTS, counts=False)
        elif self._transaction_refusal is not None:
            refusal = RemoteProtocolError(self._transaction_refusal, counts=False)
        else:
            self._chunks_size += size
            limit = self.config.max_message_size
            if limit and self._chunks_size > limit:
                # RFC 3030 2: once a chunk fails, the transaction has failed.
                self._transaction_refusal = R.MESSAGE_TOO_BIG
                refusal = RemoteProtocolError(R.MESSAGE_TOO_BIG, counts=False)
        sink = None
        if refusal is None:
            if self._chunks is None:
                self._chunks = bytearray()
            sink = self._chunks
        return ChunkStart(size, last, sink, refusal)

    def _rset(self, text: str) -> Reset:
        _no_argument(text)
        return Reset()

    def _noop(self, text: str) -> Noop:
        return Noop()

    def _vrfy(self, text: str) -> Verify:
        argument = text.strip(" ")
        if not argument:
            raise RemoteProtocolError(R.SYNTAX_ERROR)
        return Verify(argument)

    def _expn(self, text: str) -> Event:
        raise RemoteProtocolError(R.NOT_IMPLEMENTED)

    def _help(self, text: str) -> Help:
        return Help(text.strip(" "), _help_reply(self.config, self.tls is not None))

    def _quit(self, text: str) -> Quit:
        _no_argument(text)
        return Quit()

    _VERBS: dict[bytes, Callable[[Session, str], Event | ChunkStart]] = {
        b"EHLO": _ehlo,
        b"HELO": _helo,
        b"STARTTLS": _starttls,
        b"AUTH": _auth,
        b"MAIL": _mail,
        b"RCPT": _rcpt,
        b"DATA": _data,
        b"BDAT": _bdat,
        b"RSET": _rset,
        b"NOOP": _noop,
        b"VRFY": _vrfy,
        b"EXPN": _expn,
        b"HELP": _help,
        b"QUIT": _quit,
    }

    # --- Replies: what each one does. -----------------------------------------

    def answered(self, event: Event, reply: Reply) -> ServerTrigger | None:
        """Apply the reply sent to `event` to the session's data; the trigger it fires.

        None: the state stays. A 421 is not handled here: whatever it answers, it ends
        the session.
        """
        positive = _positive(reply)
        match event:
            case MailFrom() if positive:
                self.end_transaction()
                self.mail_from = event
                return ServerTrigger.MAIL_ACCEPTED
            case RcptTo() if positive:
                self.recipients.append(event)
                return ServerTrigger.RCPT_ACCEPTED
            case DataStart() if reply.code == 354:
                return ServerTrigger.DATA_ACCEPTED
            case BdatChunk():
                if not positive:
                    self._transaction_refusal = reply  # RFC 3030 2: the transaction failed
                return ServerTrigger.CHUNK_ANSWERED
            case MessageComplete():
                if positive:
                    self.messages_accepted += 1
                self.end_transaction()
                return ServerTrigger.TRANSACTION_ENDED
            case BadCommand() if self._refusal_ends_transaction:
                self.end_transaction()
                return ServerTrigger.TRANSACTION_ENDED
            case Hello() if positive:
                self.helo_name = event.name
                self.esmtp = event.extended
                self.end_transaction()
                return ServerTrigger.HELLO_ACCEPTED
            case Reset() if positive:
                self.end_transaction()
                return ServerTrigger.TRANSACTION_ENDED
            case StartTls() if positive:
                return ServerTrigger.STARTTLS_ACCEPTED
            case AuthChallenge():
                if reply.code == 334:
                    return ServerTrigger.AUTH_CHALLENGED
                self._sasl = None
            case AuthAttempt() if positive:
                self.auth_identity = event.username
            case Quit() if reply.code == 221:
                return ServerTrigger.CLOSE
        return None
