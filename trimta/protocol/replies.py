"""SMTP replies as values, and the canned ones trimta sends (RFC 5321 4.2, RFC 3463).

A `Reply` renders itself to wire bytes (multiline with ``code-text``, last line
``code text``). The enhanced status code, when present, prefixes every line, as
RFC 2034 section 4 asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Enhanced = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a three-digit code, an optional enhanced code, text lines."""

    code: int
    enhanced: Enhanced | None = None
    lines: tuple[str, ...] = field(default=("",))
    # The wire form, made on the first `to_bytes`: canned replies are sent thousands of
    # times, and remembering it on the reply costs no hashing (a cache keyed by replies
    # would hash each one, and churn with the replies that are sent once).
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if not self.lines:
            object.__setattr__(self, "lines", ("",))

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @property
    def enhanced_code(self) -> str | None:
        """The enhanced code as text, e.g. ``"5.7.1"``."""
        if self.enhanced is None:
            return None
        return "%d.%d.%d" % self.enhanced

    @property
    def text(self) -> str:
        """All lines joined by newlines, without codes."""
        return "\n".join(self.lines)

    def to_bytes(self) -> bytes:
        wire = self._wire
        if wire is None:
            prefix = "" if self.enhanced is None else "%d.%d.%d " % self.enhanced
            last = len(self.lines) - 1
            out = []
            for i, line in enumerate(self.lines):
                sep = " " if i == last else "-"
                out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" ") + "\r\n")
            wire = "".join(out).encode("utf-8")
            object.__setattr__(self, "_wire", wire)
        return wire

    def __str__(self) -> str:
        """``"550 5.7.1 text"``: the form log records and automation rules match on."""
        parts = [str(self.code)]
        if self.enhanced is not None:
            parts.append(self.enhanced_code or "")
        parts.append(" ".join(self.lines))
        return " ".join(p for p in parts if p)

    def with_text(self, *lines: str) -> Reply:
        return Reply(self.code, self.enhanced, tuple(lines))


def reply(code: int, enhanced: str | None, *lines: str) -> Reply:
    """Shorthand: ``reply(250, "2.0.0", "OK")``."""
    enh: Enhanced | None = None
    if enhanced is not None:
        a, b, c = enhanced.split(".")
        enh = (int(a), int(b), int(c))
    return Reply(code, enh, lines or ("",))


# --- Canned replies. One place for the text trimta says. -------------------------

OK = reply(250, "2.0.0", "OK")
SENDER_OK = reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = reply(250, "2.1.5", "Recipient OK")
RESET_OK = reply(250, "2.0.0", "Reset state")
NOOP_OK = reply(250, "2.0.0", "OK")
START_DATA = reply(354, None, "End data with <CR><LF>.<CR><LF>")
CANNOT_VRFY = reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
READY_TO_START_TLS = reply(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCEEDED = reply(235, "2.7.0", "Authentication succeeded")

SERVICE_SHUTTING_DOWN = reply(421, "4.3.2", "Service shutting down, closing connection")
TOO_MANY_CONNECTIONS = reply(421, "4.3.2", "Too many connections, try again later")
TIMEOUT = reply(421, "4.4.2", "Timeout waiting for client input, closing connection")
TOO_MANY_ERRORS = reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_MESSAGES = reply(421, "4.7.0", "Too many messages on this connection, closing")
SPOOL_ERROR = reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Too many recipients")
TEMP_AUTH_FAILURE = reply(454, "4.7.0", "Temporary authentication failure")
TLS_NOT_AVAILABLE = reply(454, "4.7.0", "TLS not available")

LINE_TOO_LONG = reply(500, "5.5.6", "Line too long")
COMMAND_UNRECOGNIZED = reply(500, "5.5.2", "Command unrecognized")
SYNTAX_ERROR = reply(501, "5.5.4", "Syntax error in parameters or arguments")
NOT_IMPLEMENTED = reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = reply(503, "5.5.1", "Bad sequence of commands")
PARAM_NOT_IMPLEMENTED = reply(504, "5.5.4", "Command parameter not implemented")
AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid")
RELAY_DENIED = reply(550, "5.7.1", "Relaying denied")
MESSAGE_TOO_BIG = reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
PATH_TOO_LONG = reply(501, "5.1.3", "Path too long")
NO_VALID_RECIPIENTS = reply(554, "5.5.1", "No valid recipients")
BARE_LINE_ENDING = reply(554, "5.6.0", "Bare CR or LF in message data is not allowed (RFC 5321 2.3.8)")
NUL_IN_DATA = reply(554, "5.6.0", "NUL in message data is not allowed (RFC 5321 2.3.8, RFC 5322 2.3)")

# Added for the ESMTP server state machine (trimta/protocol/server.py).
GOODBYE = reply(221, "2.0.0", "Bye")
HELP = reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT")  # and STARTTLS, AUTH where offered
AUTH_EMPTY_CHALLENGE = reply(334, None, "")
AUTH_USERNAME_PROMPT = reply(334, None, "VXNlcm5hbWU6")  # base64 of "Username:"
AUTH_PASSWORD_PROMPT = reply(334, None, "UGFzc3dvcmQ6")  # base64 of "Password:"
SEND_HELLO_FIRST = reply(503, "5.5.1", "Send EHLO/HELO first")
NESTED_MAIL = reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = reply(503, "5.5.1", "Need MAIL command first")
DATA_AFTER_BDAT = reply(503, "5.5.1", "DATA not allowed after BDAT in one transaction")
TLS_ALREADY_ACTIVE = reply(503, "5.5.1", "TLS already active")
NOT_IN_TRANSACTION = reply(503, "5.5.1", "Not allowed during a mail transaction")
ALREADY_AUTHENTICATED = reply(503, "5.5.1", "Already authenticated")
AUTH_MECHANISM_UNKNOWN = reply(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_BAD_BASE64 = reply(501, "5.5.2", "Cannot decode authentication response")
AUTH_CANCELLED = reply(501, "5.7.0", "Authentication cancelled")
ENCRYPTION_REQUIRED = reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
BAD_SENDER_SYNTAX = reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = reply(501, "5.1.3", "Bad recipient address syntax")
PARAM_UNRECOGNIZED = reply(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized or not implemented")
SMTPUTF8_REQUIRED = reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
