"""The server's named state (`ServerConnection.state`) through whole sessions, and its sticky ERROR."""

from __future__ import annotations

import base64

import pytest

from tests.protocol.server_driver import Session, codes, in_transaction, ready
from trimta.protocol import _session
from trimta.protocol import events as ev
from trimta.protocol import replies as R
from trimta.protocol._state import SERVER_TRANSITIONS, ServerTrigger
from trimta.protocol.errors import LocalProtocolError
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection, ServerState


def test_a_data_transaction_walks_hello_ready_mail_rcpt_data_and_back():
    conn = ServerConnection(ServerConfig(hostname="mx.example.net"))
    assert conn.state is ServerState.GREETING
    conn.send(conn.greeting())
    assert conn.state is ServerState.HELLO
    seen = []
    for line in (b"EHLO c.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>",
                 b"RCPT TO:<c@example.net>", b"DATA"):
        conn.receive_data(line + b"\r\n")
        event = conn.next_event()
        conn.send(event.reply)
        seen.append(conn.state)
    assert seen == [ServerState.READY, ServerState.MAIL, ServerState.RCPT, ServerState.RCPT, ServerState.DATA]
    conn.receive_data(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    event = conn.next_event()
    assert isinstance(event, ev.MessageComplete)
    assert conn.state is ServerState.RCPT  # the content is read; its reply ends the transaction
    conn.send(event.reply)
    assert conn.state is ServerState.READY
    conn.receive_data(b"QUIT\r\n")
    conn.send(conn.next_event().reply)
    assert conn.state is ServerState.CLOSED and conn.closed


def test_the_state_follows_the_reply_sent_not_the_one_suggested():
    s = Session(answer=lambda e: R.reply(550, "5.7.1", "not you") if isinstance(e, ev.MailFrom) else None)
    s.send(b"EHLO c.example\r\n")
    assert codes(s.send(b"MAIL FROM:<a@example.com>\r\n")) == ["550 5.7.1"]
    assert s.conn.state is ServerState.READY


def test_bdat_chunks_move_rcpt_to_chunking_and_last_back_to_ready():
    s = in_transaction("b@example.net")
    assert s.conn.state is ServerState.RCPT
    assert codes(s.send(b"BDAT 5\r\nHello")) == ["250 2.0.0"]
    assert s.conn.state is ServerState.CHUNKING
    s.send(b"BDAT 2 LAST\r\n\r\n")
    assert s.of_type(ev.MessageComplete)
    assert s.conn.state is ServerState.READY


def test_rset_ends_the_transaction_and_before_ehlo_leaves_hello_due():
    s = Session()
    s.send(b"RSET\r\n")
    assert s.conn.state is ServerState.HELLO
    s = in_transaction("b@example.net")
    s.send(b"RSET\r\n")
    assert s.conn.state is ServerState.READY


def test_starttls_waits_in_tls_and_the_handshake_makes_ehlo_due_again():
    s = ready(starttls_available=True)
    s.send(b"STARTTLS\r\n")
    assert s.conn.state is ServerState.TLS
    s.conn.tls_started("TLSv1.3")
    assert s.conn.state is ServerState.HELLO


def test_auth_reads_the_response_line_in_auth_then_is_ready():
    s = ready(auth_mechanisms=("PLAIN",), auth_without_tls=True)
    assert codes(s.send(b"AUTH PLAIN\r\n")) == ["334"]
    assert s.conn.state is ServerState.AUTH
    s.send(base64.b64encode(b"\0user\0secret") + b"\r\n")
    assert s.of_type(ev.AuthAttempt)
    assert s.conn.state is ServerState.READY


def test_554_greeting_is_no_service_and_eof_closes():
    conn = ServerConnection(ServerConfig(hostname="mx.example.net"))
    conn.send(R.reply(554, "5.3.2", "no service"))
    assert conn.state is ServerState.NO_SERVICE
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ev.ConnectionClosed)
    assert conn.state is ServerState.CLOSED


def test_a_421_closes_from_any_state():
    s = in_transaction("b@example.net")
    s.conn.send(R.reply(421, "4.3.2", "shutting down"))
    assert s.conn.state is ServerState.CLOSED


# --- Sticky ERROR -------------------------------------------------------------------------


def broken_command(self, line):
    raise RuntimeError("a bug in the session")


def test_an_internal_error_is_raised_once_then_error_is_sticky(monkeypatch):
    s = ready()
    monkeypatch.setattr(_session.Session, "command", broken_command)
    s.conn.receive_data(b"MAIL FROM:<a@example.com>\r\n")
    with pytest.raises(RuntimeError):
        s.conn.next_event()
    assert s.conn.state is ServerState.ERROR
    monkeypatch.undo()  # even with the bug gone, the session never proceeds
    for _ in range(3):
        s.conn.receive_data(b"NOOP\r\n")  # ignored
        with pytest.raises(LocalProtocolError, match="internal error"):
            s.conn.next_event()
        with pytest.raises(LocalProtocolError, match="internal error"):
            s.conn.send(R.OK)
        with pytest.raises(LocalProtocolError, match="internal error"):
            s.conn.tls_started("TLSv1.3")
        assert s.conn.state is ServerState.ERROR
    # The one thing left to say: goodbye.
    assert s.conn.send(R.reply(421, "4.3.0", "internal error")) == b"421 4.3.0 internal error\r\n"
    assert s.conn.state is ServerState.ERROR


def test_an_internal_error_while_applying_a_reply_is_sticky_too(monkeypatch):
    s = ready()
    s.conn.receive_data(b"MAIL FROM:<a@example.com>\r\n")
    event = s.conn.next_event()
    monkeypatch.setattr(_session.Session, "answered", lambda self, event, reply: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        s.conn.send(event.reply)
    assert s.conn.state is ServerState.ERROR
    with pytest.raises(LocalProtocolError):
        s.conn.next_event()


def test_misuse_is_refused_without_changing_the_state():
    s = in_transaction("b@example.net")
    with pytest.raises(LocalProtocolError):
        s.conn.send(R.OK)  # nothing awaits a reply
    assert s.conn.state is ServerState.RCPT
    assert s.conn.next_event() is NEED_DATA


# --- The table ----------------------------------------------------------------------------


def test_every_state_is_reachable_from_the_greeting_and_error_has_no_way_out():
    reached, frontier = {ServerState.GREETING}, [ServerState.GREETING]
    while frontier:
        state = frontier.pop()
        for (source, _), target in SERVER_TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(ServerState) - {ServerState.ERROR}
    assert not [key for key in SERVER_TRANSITIONS if key[0] is ServerState.ERROR]
    for state in set(ServerState) - {ServerState.CLOSED, ServerState.ERROR}:
        assert SERVER_TRANSITIONS[state, ServerTrigger.CLOSE] is ServerState.CLOSED
