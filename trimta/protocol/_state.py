"""Every state of the SMTP server and client machines, and every move between them.

This module is the transition table of both machines, as h11's ``_state.py`` is for
HTTP. What must live here, and nowhere else:

- the states, `ServerState` and `ClientState`, each named for what the session is
  doing, so that a test (or a log line) can say where a session stands;
- the triggers, `ServerTrigger` and `ClientTrigger`: what happened that may move a
  state (a reply sent or received, the end of message data, a TLS handshake);
- the tables `SERVER_TRANSITIONS` and `CLIENT_TRANSITIONS`: (state, trigger) -> the
  next state. A pair that is not in its table never happens in a correct machine.

The machines (`server.py` with `_session.py`, and `client.py`) never assign a state
themselves: they decide which trigger applies (was the reply positive, was it 354)
and move with `next_state`. The data a session keeps (its sender, recipients, the
extensions a server offered) stays in the machines; the states say which phase that
data belongs to.

ERROR is sticky. A machine enters it after an internal error (an exception that is
not one of the protocol's own answers: a bug, or a pair missing from a table) and,
for the client, after the server broke the protocol. No trigger leads out of it: from
then on every call answers the same way and the session never proceeds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ServerState(enum.Enum):
    """Where an ESMTP server session stands (`ServerConnection.state`)."""

    GREETING = "connected; the greeting has not been sent"
    NO_SERVICE = "greeted with 554 (RFC 5321 3.1): only QUIT is accepted"
    HELLO = "greeted; EHLO or HELO is due (again after STARTTLS)"
    READY = "after EHLO/HELO, outside a transaction"
    MAIL = "MAIL FROM accepted, no recipient yet"
    RCPT = "at least one RCPT TO accepted"
    CHUNKING = "a BDAT chunk accepted: the message continues in BDAT chunks"
    DATA = "354 sent: reading the message content up to CRLF.CRLF"
    AUTH = "334 sent: reading the client's SASL response line"
    TLS = "STARTTLS accepted: waiting for the TLS handshake"
    CLOSED = "221 or 421 sent, or the client closed the connection"
    ERROR = "an internal error: the session answers nothing any more"


class ServerTrigger(enum.Enum):
    """What moves a server session."""

    GREETED = "220 sent as the greeting"
    GREETED_NO_SERVICE = "554 sent as the greeting"
    HELLO_ACCEPTED = "a 2xx to EHLO or HELO (it also ends any transaction)"
    MAIL_ACCEPTED = "a 2xx to MAIL FROM"
    RCPT_ACCEPTED = "a 2xx to RCPT TO"
    DATA_ACCEPTED = "354 to DATA"
    CONTENT_READ = "the message content was read up to CRLF.CRLF"
    CHUNK_ANSWERED = "a reply to a BDAT chunk that is not the last"
    TRANSACTION_ENDED = "the message answered, RSET accepted, or the message refused for good"
    STARTTLS_ACCEPTED = "a 2xx to STARTTLS"
    TLS_STARTED = "the TLS handshake after STARTTLS succeeded"
    AUTH_CHALLENGED = "334 to AUTH"
    AUTH_LINE_READ = "the response line to a 334 was read"
    CLOSE = "221 to QUIT, a 421, or the client's end of the stream"


class ClientState(enum.Enum):
    """Where an SMTP client session stands. Commands in flight are separate: see `awaiting`."""

    GREETING = enum.auto()  # connected, waiting for the banner
    HELLO = enum.auto()  # EHLO or HELO is due: after the banner, after TLS, after EHLO 5xx
    READY = enum.auto()  # session open: transactions, STARTTLS, RSET, NOOP, QUIT
    TRANSACTION = enum.auto()  # from start_transaction until its TransactionResult
    TLS_HANDSHAKE = enum.auto()  # STARTTLS got 220: the shell runs TLS, then tls_started()
    REFUSED = enum.auto()  # the banner refused service: only QUIT is left
    CLOSED = enum.auto()  # QUIT answered, 421 received, or the connection is gone
    ERROR = enum.auto()  # the server broke the protocol, or an internal error


class ClientTrigger(enum.Enum):
    """What moves a client session."""

    BANNER_ACCEPTED = "a 2xx banner"
    BANNER_REFUSED = "a 4xx or 5xx banner"
    HELLO_ACCEPTED = "a 2xx to EHLO or HELO"
    STARTTLS_ACCEPTED = "a 2xx to STARTTLS"
    TLS_STARTED = "the shell's TLS handshake succeeded"
    TRANSACTION_STARTED = "start_transaction sent MAIL FROM"
    TRANSACTION_FINISHED = "every recipient of the transaction has its fate"
    CLOSE = "QUIT answered, a 421, the end of the stream, or abort()"


_SERVER_SESSION = (
    ServerState.HELLO, ServerState.READY, ServerState.MAIL, ServerState.RCPT, ServerState.CHUNKING,
)
_IN_TRANSACTION = (ServerState.MAIL, ServerState.RCPT, ServerState.CHUNKING)

SERVER_TRANSITIONS: Mapping[tuple[ServerState, ServerTrigger], ServerState] = {
    (ServerState.GREETING, ServerTrigger.GREETED): ServerState.HELLO,
    (ServerState.GREETING, ServerTrigger.GREETED_NO_SERVICE): ServerState.NO_SERVICE,
    # EHLO/HELO may come again at any time; it starts the session afresh (RFC 5321 4.1.4).
    **{(s, ServerTrigger.HELLO_ACCEPTED): ServerState.READY for s in _SERVER_SESSION},
    (ServerState.READY, ServerTrigger.MAIL_ACCEPTED): ServerState.MAIL,
    (ServerState.MAIL, ServerTrigger.RCPT_ACCEPTED): ServerState.RCPT,
    (ServerState.RCPT, ServerTrigger.RCPT_ACCEPTED): ServerState.RCPT,
    (ServerState.RCPT, ServerTrigger.DATA_ACCEPTED): ServerState.DATA,
    # The content is read; its reply (pending) ends the transaction.
    (ServerState.DATA, ServerTrigger.CONTENT_READ): ServerState.RCPT,
    (ServerState.RCPT, ServerTrigger.CHUNK_ANSWERED): ServerState.CHUNKING,
    (ServerState.CHUNKING, ServerTrigger.CHUNK_ANSWERED): ServerState.CHUNKING,
    # RSET before EHLO leaves EHLO due; everywhere else the session is READY again.
    (ServerState.HELLO, ServerTrigger.TRANSACTION_ENDED): ServerState.HELLO,
    (ServerState.READY, ServerTrigger.TRANSACTION_ENDED): ServerState.READY,
    **{(s, ServerTrigger.TRANSACTION_ENDED): ServerState.READY for s in _IN_TRANSACTION},
    (ServerState.HELLO, ServerTrigger.STARTTLS_ACCEPTED): ServerState.TLS,
    (ServerState.READY, ServerTrigger.STARTTLS_ACCEPTED): ServerState.TLS,
    # RFC 3207 4.2: after the handshake the client starts again with EHLO.
    (ServerState.TLS, ServerTrigger.TLS_STARTED): ServerState.HELLO,
    (ServerState.READY, ServerTrigger.AUTH_CHALLENGED): ServerState.AUTH,
    (ServerState.AUTH, ServerTrigger.AUTH_LINE_READ): ServerState.READY,
    # A 421 may be sent at any time, and the client may go at any time.
    **{
        (s, ServerTrigger.CLOSE): ServerState.CLOSED
        for s in ServerState
        if s not in (ServerState.CLOSED, ServerState.ERROR)
    },
}

CLIENT_TRANSITIONS: Mapping[tuple[ClientState, ClientTrigger], ClientState] = {
    (ClientState.GREETING, ClientTrigger.BANNER_ACCEPTED): ClientState.HELLO,
    (ClientState.GREETING, ClientTrigger.BANNER_REFUSED): ClientState.REFUSED,
    (ClientState.HELLO, ClientTrigger.HELLO_ACCEPTED): ClientState.READY,
    (ClientState.READY, ClientTrigger.STARTTLS_ACCEPTED): ClientState.TLS_HANDSHAKE,
    # RFC 3207 4.2: nothing learned before TLS is trusted after it; EHLO is due again.
    (ClientState.TLS_HANDSHAKE, ClientTrigger.TLS_STARTED): ClientState.HELLO,
    (ClientState.READY, ClientTrigger.TRANSACTION_STARTED): ClientState.TRANSACTION,
    (ClientState.TRANSACTION, ClientTrigger.TRANSACTION_FINISHED): ClientState.READY,
    # A transaction cut short by a 421 or a lost connection is finished once closed.
    (ClientState.CLOSED, ClientTrigger.TRANSACTION_FINISHED): ClientState.CLOSED,
    **{(s, ClientTrigger.CLOSE): ClientState.CLOSED for s in ClientState if s is not ClientState.ERROR},
}


class InvalidTransition(Exception):
    """A machine fired a trigger its table has no move for: a bug in the machine."""


def next_server_state(state: ServerState, trigger: ServerTrigger) -> ServerState:
    """The state `trigger` moves a server session in `state` to; ERROR stays ERROR."""
    if state is ServerState.ERROR:
        return state
    try:
        return SERVER_TRANSITIONS[state, trigger]
    except KeyError:
        raise InvalidTransition(f"server: no move from {state.name} on {trigger.name}") from None


def next_client_state(state: ClientState, trigger: ClientTrigger) -> ClientState:
    """The state `trigger` moves a client session in `state` to; ERROR stays ERROR."""
    if state is ClientState.ERROR:
        return state
    try:
        return CLIENT_TRANSITIONS[state, trigger]
    except KeyError:
        raise InvalidTransition(f"client: no move from {state.name} on {trigger.name}") from None
