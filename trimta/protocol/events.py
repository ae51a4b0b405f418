"""What the ESMTP server state machine reports: one event per client action.

Every event but `ConnectionClosed` carries `reply`, the machine's suggested answer.
The application sends it as is or substitutes its own `Reply`; the machine moves on
according to the code of what was actually sent (a 2xx to `MailFrom` opens the
transaction, a 550 does not).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from trimta.protocol import replies as R
from trimta.protocol.replies import Reply


class _NeedData(enum.Enum):
    """Sentinel type: the machine needs more bytes before it can say anything.

    A one-member enum, so that ``event is NEED_DATA`` narrows the type for a checker.
    """

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO (`extended`) or HELO. A positive answer resets any transaction."""

    name: str
    extended: bool
    reply: Reply


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS. After a 2xx is sent the machine waits for `tls_started()`."""

    reply: Reply = R.READY_TO_START_TLS


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """A 334 continuation of an AUTH exchange; send `reply` as is."""

    mechanism: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """Credentials to verify. Answer 235 (sets `auth_identity`) or 535."""

    mechanism: str
    authorization_id: str
    username: str
    password: str = field(repr=False)
    reply: Reply = R.AUTH_FAILED


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM, syntax and limits already checked. `address` is "" for `<>`."""

    address: str
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    params: dict[str, str | None] = field(default_factory=dict, hash=False)
    reply: Reply = R.SENDER_OK


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO. Only a 2xx answer adds the recipient to the transaction."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict, hash=False)
    reply: Reply = R.RECIPIENT_OK


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA with a sender and recipients in place. After a 354 the data is read."""

    reply: Reply = R.START_DATA


@dataclass(frozen=True, slots=True)
class BdatChunk:
    """A non-final BDAT chunk of `size` octets has been received (RFC 3030)."""

    size: int
    last: bool = False
    reply: Reply = R.OK


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """The whole message: DATA after the final dot, or the chunks at BDAT LAST.

    `data` is dot-unstuffed with CRLF line ends, including the last line's CRLF.
    Whatever the answer, the transaction is over once it is sent.
    """

    data: bytes = field(repr=False)
    reply: Reply = R.OK


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET."""

    reply: Reply = R.RESET_OK


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP."""

    reply: Reply = R.NOOP_OK


@dataclass(frozen=True, slots=True)
class Verify:
    """VRFY. trimta does not verify; the suggestion is 252."""

    argument: str
    reply: Reply = R.CANNOT_VRFY


@dataclass(frozen=True, slots=True)
class Help:
    """HELP, with or without a topic."""

    argument: str
    reply: Reply = R.HELP


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT. After a 221 is sent the connection is closed."""

    reply: Reply = R.GOODBYE


@dataclass(frozen=True, slots=True)
class BadCommand:
    """The machine's own refusal: syntax, sequence, limits, a refused message.

    `command` is the verb the refusal answers ("MAIL", "DATA", ...), or "" when the
    line could not be read as a command at all.
    """

    reply: Reply
    command: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed its side (EOF), possibly in the middle of a message.

    Nothing is to be answered; afterwards `closed` is True.
    """


# Every event that waits for one reply (all but ConnectionClosed).
Answerable = (
    Hello
    | StartTls
    | AuthChallenge
    | AuthAttempt
    | MailFrom
    | RcptTo
    | DataStart
    | BdatChunk
    | MessageComplete
    | Reset
    | Noop
    | Verify
    | Help
    | Quit
    | BadCommand
)
Event = Answerable | ConnectionClosed
