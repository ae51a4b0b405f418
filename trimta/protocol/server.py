"""The ESMTP server as a sans-IO state machine.

Bytes in, events out; replies in, bytes out. The application feeds what the client
sent to `receive_data()`, takes events from `next_event()` until it says `NEED_DATA`,
and answers each event with `send(reply)`, which returns the bytes to write::

    conn = ServerConnection(ServerConfig(hostname="mx.example.net"))
    out = conn.send(conn.greeting())
    conn.receive_data(received)            # b"" when the client closed its side
    while (event := conn.next_event()) is not NEED_DATA:
        if isinstance(event, ConnectionClosed):
            break                          # nothing to answer
        out += conn.send(event.reply)      # or the application's own Reply
        if conn.closed:
            break

Every event but `ConnectionClosed` waits for exactly one reply, so replies come out
in the order of the commands however many a client pipelines (RFC 2920). The state
(`state`, a `ServerState`) moves on according to the reply actually sent, not the one
suggested: `Session.answered` (in `_session.py`) says which trigger each reply to each
event fires, and `_state.py` holds every move. A 421 may be sent at any time
(timeouts, shutdown) and closes the connection.

This module cuts the byte stream into command lines, DATA content and BDAT chunks;
`_session.py` says what they mean; `_commands.py`, `_abnf.py`, `_data.py` and
`_sasl.py` hold the grammar, the content checks and the AUTH exchanges.

What the client gets wrong never raises: it becomes a `BadCommand` whose reply is
the refusal (RFC 5321, 1870, 3030, 3207, 4954, 6531; enhanced codes per RFC 3463).
Misusing the machine raises `LocalProtocolError` and changes nothing. An internal
error (a bug: any other exception out of the machine) is raised once and leaves the
session in `ServerState.ERROR` for good: from then on `next_event` raises
`LocalProtocolError`, data is ignored, and only a 421 may still be sent. No I/O and no
clock here: timeouts belong to whoever owns the socket.
"""

from __future__ import annotations

from trimta.protocol import replies as R
from trimta.protocol._data import ChunkReader, DataReader
from trimta.protocol._session import ChunkStart, Session
from trimta.protocol._state import ServerState, ServerTrigger, next_server_state
from trimta.protocol.errors import LocalProtocolError
from trimta.protocol.events import NEED_DATA, ConnectionClosed, Event, MailFrom, RcptTo, _NeedData
from trimta.protocol.replies import Reply
from trimta.protocol.server_config import ServerConfig

__all__ = ["NEED_DATA", "ServerConfig", "ServerConnection", "ServerState"]

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
MAX_COMMAND_LINE = 512
# RFC 4954 4: a SASL response line may be up to 12288 octets.
MAX_SASL_LINE = 12288


_TOO_LONG = object()  # what `_read_line` returns for a line beyond the limit

# The states in which the client's bytes are command lines (and BDAT chunks).
_COMMAND_STATES = frozenset({
    ServerState.NO_SERVICE, ServerState.HELLO, ServerState.READY,
    ServerState.MAIL, ServerState.RCPT, ServerState.CHUNKING,
})


class ServerConnection:
    """One client's ESMTP session, from the greeting to QUIT, EOF or a 421."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._session = Session(config)
        self._state = ServerState.GREETING
        self._failure: BaseException | None = None  # what put the session in ERROR
        self._buffer = bytearray()
        self._line_scan = 0  # no LF before this offset of the buffer
        self._discarding = False  # dropping the rest of an over-long line
        self._eof = False
        self._pending: Event | None = None
        self._data: DataReader | None = None
        self._chunk: ChunkStart | None = None
        self._chunk_reader: ChunkReader | None = None

    # --- What the application reads. -------------------------------------------

    @property
    def state(self) -> ServerState:
        """Where the session stands; see `ServerState` (the moves are in `_state.py`)."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once 221 or a 421 has been sent, or the client's EOF was reported."""
        return self._state is ServerState.CLOSED

    @property
    def tls(self) -> str | None:
        """The TLS version given to `tls_started()`, or None on a plaintext session."""
        return self._session.tls

    @property
    def helo_name(self) -> str | None:
        return self._session.helo_name

    @property
    def esmtp(self) -> bool:
        """True after a positive answer to EHLO (rather than HELO)."""
        return self._session.esmtp

    @property
    def auth_identity(self) -> str | None:
        """The username of the AUTH attempt answered 235, if any."""
        return self._session.auth_identity

    @property
    def mail_from(self) -> MailFrom | None:
        """The accepted MAIL FROM of the transaction in progress."""
        return self._session.mail_from

    @property
    def recipients(self) -> tuple[RcptTo, ...]:
        """The accepted RCPT TOs of the transaction in progress."""
        return tuple(self._session.recipients)

    @property
    def messages_accepted(self) -> int:
        """Messages answered with a 2xx on this connection."""
        return self._session.messages_accepted

    @property
    def errors(self) -> int:
        """Refused commands counted toward `max_errors`."""
        return self._session.errors

    def greeting(self) -> Reply:
        """The 220 banner (RFC 2034: no enhanced code on it)."""
        return R.reply(220, None, f"{self._config.hostname} ESMTP trimta")

    # --- Bytes in, events out. -------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """What the client sent; b"" when it closed its side.

        While waiting for the TLS handshake after STARTTLS, plaintext is dropped:
        nothing sent in the clear before the handshake may act inside TLS.
        """
        if self._state in (ServerState.CLOSED, ServerState.ERROR):
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        if self._state is ServerState.TLS:
            return
        self._buffer += data

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA; the previous event must have been answered."""
        self._check_usable("next_event()")
        if self._pending is not None:
            raise LocalProtocolError(f"next_event() while {type(self._pending).__name__} awaits its reply")
        if self._state is ServerState.GREETING:
            raise LocalProtocolError("next_event() before the greeting was sent")
        if self._state is ServerState.CLOSED:
            raise LocalProtocolError("next_event() on a closed connection")
        try:
            event = self._read()
            if event is NEED_DATA:
                if self._eof:
                    self._move(ServerTrigger.CLOSE)
                    return ConnectionClosed()
                return NEED_DATA
        except Exception as exc:
            self._fail(exc)
            raise
        self._pending = event
        return event

    def _read(self) -> Event | _NeedData:
        session, state = self._session, self._state
        if self._chunk is not None:  # inside a BDAT command: its octets
            assert self._chunk_reader is not None
            if not self._chunk_reader.read(self._buffer):
                return NEED_DATA
            chunk = self._chunk
            self._chunk, self._chunk_reader = None, None
            return session.chunk_read(chunk)
        if state in _COMMAND_STATES:
            line = self._read_line(MAX_COMMAND_LINE)
            if line is None:
                return NEED_DATA
            if line is _TOO_LONG:
                return session.refuse(R.LINE_TOO_LONG, "")
            result = session.command(line)  # type: ignore[arg-type]
            if isinstance(result, ChunkStart):
                self._chunk = result
                self._chunk_reader = ChunkReader(result.size, result.sink)
                return self._read()
            return result
        if state is ServerState.AUTH:
            line = self._read_line(MAX_SASL_LINE)
            if line is None:
                return NEED_DATA
            self._move(ServerTrigger.AUTH_LINE_READ)
            if line is _TOO_LONG:
                return session.auth_response_too_long()
            return session.auth_response(line)  # type: ignore[arg-type]
        if state is ServerState.DATA:
            assert self._data is not None
            message = self._data.read()
            if message is None:
                return NEED_DATA
            self._data = None
            self._move(ServerTrigger.CONTENT_READ)
            return session.message_read(*message)
        return NEED_DATA  # TLS: nothing to read until the handshake is done

    def _read_line(self, limit: int) -> bytes | object | None:
        """One line without its LF (and the CR before it), `_TOO_LONG`, or None.

        Lines end at LF, with an optional CR before it, as Postfix reads them. A line
        longer than `limit` (terminator included) is reported as soon as that is
        certain and its remainder is dropped as it arrives, never buffered.
        """
        buf = self._buffer
        if self._discarding:
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._discarding = False
        end = buf.find(b"\n", self._line_scan)
        if end < 0:
            if len(buf) >= limit:
                buf.clear()
                self._discarding = True
                self._line_scan = 0
                return _TOO_LONG
            self._line_scan = len(buf)
            return None
        self._line_scan = 0
        if end >= limit:
            del buf[: end + 1]
            return _TOO_LONG
        line = bytes(buf[:end])
        del buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    # --- Replies in, bytes out. ------------------------------------------------

    def send(self, reply: Reply) -> bytes:
        """The bytes of `reply`, answering the pending event (or a 421 at any time).

        The first reply must be the greeting: 220, or 554 for a session that only
        accepts QUIT (RFC 5321 3.1), or 421 to refuse the connection.
        """
        state = self._state
        if state is ServerState.ERROR:
            if reply.code != 421:
                self._check_usable("send()")
            return reply.to_bytes()  # the one goodbye a failed session may still say
        if state is ServerState.CLOSED:
            raise LocalProtocolError("send() on a closed connection")
        if state is ServerState.GREETING:
            if reply.code not in (220, 554, 421):
                raise LocalProtocolError(f"the greeting must be 220, 554 or 421, not {reply.code}")
        elif self._pending is None and reply.code != 421:
            raise LocalProtocolError(f"nothing awaits a reply; only a 421 may be sent, not {reply.code}")
        try:
            if state is ServerState.GREETING:
                if reply.code == 220:
                    self._move(ServerTrigger.GREETED)
                elif reply.code == 554:
                    self._session.no_service = True
                    self._move(ServerTrigger.GREETED_NO_SERVICE)
            elif self._pending is not None:
                event, self._pending = self._pending, None
                trigger = self._session.answered(event, reply)
                if trigger is not None:
                    self._move(trigger)
            if reply.code == 421 and self._state is not ServerState.CLOSED:
                self._move(ServerTrigger.CLOSE)
        except Exception as exc:
            self._fail(exc)
            raise
        if reply.code == 334 and reply.lines == ("",):
            return b"334 \r\n"  # RFC 4954 4: continue-req = "334" SP [base64] CRLF
        return reply.to_bytes()

    def tls_started(self, version: str) -> None:
        """The TLS handshake after STARTTLS succeeded: start afresh (RFC 3207 4.2)."""
        self._check_usable("tls_started()")
        if self._state is not ServerState.TLS:
            raise LocalProtocolError("tls_started() without an accepted STARTTLS")
        try:
            self._move(ServerTrigger.TLS_STARTED)
            self._session.tls_started(version)
        except Exception as exc:
            self._fail(exc)
            raise

    # --- State. ----------------------------------------------------------------

    def _move(self, trigger: ServerTrigger) -> None:
        """Take the move `trigger` makes from the current state (`_state.py`), and enter it."""
        state = self._state = next_server_state(self._state, trigger)
        if state is ServerState.TLS:
            # Whatever the client pipelined after STARTTLS came in the clear and must
            # never run inside TLS (CVE-2011-0411).
            self._buffer.clear()
            self._line_scan = 0
            self._discarding = False
        elif state is ServerState.DATA:
            self._data = DataReader(self._buffer, self._config.max_message_size)
        elif state is ServerState.CLOSED:
            self._pending = None
            self._buffer.clear()

    def _fail(self, exc: BaseException) -> None:
        """An internal error: the session is in ERROR for good (see the module docstring)."""
        self._state = ServerState.ERROR
        self._failure = exc
        self._pending = None
        self._data = self._chunk = self._chunk_reader = None
        self._buffer.clear()

    def _check_usable(self, what: str) -> None:
        if self._state is ServerState.ERROR:
            raise LocalProtocolError(
                f"{what} on a session that failed with an internal error ({self._failure!r})"
            ) from self._failure
