"""What the SMTP client state machine tells its shell: events, and the commands they answer.

`ClientConnection.next_event()` returns one of these (or `NEED_DATA`). They are small
frozen values; the shell matches on their type. `BytesToSend` is the one event that
asks for action: the machine decided, from a reply, what to send next (the next
RCPT without PIPELINING, DATA, the message itself), and the shell writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import enum
from enum import StrEnum
from typing import Final

from trimta.protocol.replies import Reply


class Command(StrEnum):
    """What a reply answers. The values are the names of the shell's per-phase timeouts."""

    BANNER = "banner"  # not a command: the greeting answers the connection itself
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL_FROM = "mail_from"
    RCPT_TO = "rcpt_to"
    DATA = "data"  # the DATA command, answered by 354
    DATA_DOT = "data_dot"  # the message and its final ".", answered by the final reply
    BDAT = "bdat"
    RSET = "rset"
    NOOP = "noop"
    QUIT = "quit"


class _NeedData(enum.Enum):
    """A one-member enum, so that ``event is NEED_DATA`` narrows the type for a checker."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""`next_event()` needs more bytes from the server before it can say anything."""


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's banner. 220 opens the session; 554 refuses it; 421 closes it."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class EhloResult:
    """The reply to EHLO and, when it is 250, the extensions it advertised.

    Keywords are upper-cased; each maps to its parameters as sent (``"SIZE":
    "35882577"``, ``"AUTH": "PLAIN LOGIN"``, ``"PIPELINING": ""``). A 5xx here means
    the server may still take HELO.
    """

    reply: Reply
    extensions: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class HeloResult:
    """The reply to HELO (the fallback for servers that refuse EHLO)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class StartTlsResult:
    """The reply to STARTTLS. When `ready`, the shell starts TLS on the stream now."""

    reply: Reply

    @property
    def ready(self) -> bool:
        return self.reply.code // 100 == 2


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A reply with no event of its own: MAIL, RCPT, DATA's 354, RSET, NOOP, QUIT."""

    command: Command
    reply: Reply
    recipient: str | None = None  # set for RCPT_TO


@dataclass(frozen=True, slots=True)
class BytesToSend:
    """Bytes the machine decided to send after a reply; the shell writes them now."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome in a transaction.

    `reply` is the reply that decided it: the MAIL reply if the sender was refused,
    else the RCPT reply if the recipient was refused, else the final DATA/BDAT reply
    (or, when the transaction was cut short, the reason it was). `rcpt_reply` is
    the server's own answer to RCPT, None if RCPT was never answered.
    """

    recipient: str
    reply: Reply
    rcpt_reply: Reply | None
    delivered: bool


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The end of a transaction: what happened to each recipient.

    A recipient is delivered when MAIL, its RCPT and the final DATA/BDAT reply were
    all 2xx. `data_reply` is None when no message was sent (every recipient refused,
    or the connection was lost first); `data_command` says what it answers: DATA
    (refused before 354), DATA_DOT (the end of the message) or BDAT.
    """

    sender: str
    mail_reply: Reply | None
    recipients: tuple[RecipientResult, ...]
    data_reply: Reply | None
    data_command: Command | None = None

    @property
    def delivered(self) -> tuple[str, ...]:
        return tuple(r.recipient for r in self.recipients if r.delivered)

    @property
    def not_delivered(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if not r.delivered)


@dataclass(frozen=True, slots=True)
class ServiceClosing:
    """A 421 the server sent on its own, between commands: it is about to hang up."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed the connection. `unanswered` lists the commands it left hanging."""

    unanswered: tuple[Command, ...] = ()


Event = (
    Greeting
    | EhloResult
    | HeloResult
    | StartTlsResult
    | ReplyReceived
    | BytesToSend
    | TransactionResult
    | ServiceClosing
    | ConnectionClosed
)
