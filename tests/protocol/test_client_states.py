"""The client's named state (`ClientConnection.state`) through whole sessions, and its sticky ERROR."""

from __future__ import annotations

import pytest

from tests.protocol.test_client import MESSAGE, Peer, only, session
from trimta.protocol._state import CLIENT_TRANSITIONS, ClientTrigger
from trimta.protocol.client import CONNECTION_LOST, ClientConnection, ClientProtocolError, ClientState, ClientUsageError
from trimta.protocol.client_events import TransactionResult


def test_a_session_walks_greeting_hello_ready_transaction_ready_closed():
    peer = Peer(ClientConnection("client.example"))
    assert peer.client.state is ClientState.GREETING
    peer.reply(b"220 mx.example ESMTP\r\n")
    assert peer.client.state is ClientState.HELLO
    peer.send(peer.client.send_ehlo())
    peer.reply(b"250-mx.example\r\n250 PIPELINING\r\n")
    assert peer.client.state is ClientState.READY
    peer.send(peer.client.start_transaction("s@a.example", ["r@b.example"], MESSAGE))
    assert peer.client.state is ClientState.TRANSACTION
    events = peer.reply(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
    assert peer.client.state is ClientState.TRANSACTION  # the message is on its way
    events = peer.reply(b"250 2.0.0 queued\r\n")
    [result] = only(events, TransactionResult)
    assert result.recipients[0].delivered
    assert peer.client.state is ClientState.READY
    peer.send(peer.client.send_quit())
    peer.reply(b"221 2.0.0 bye\r\n")
    assert peer.client.state is ClientState.CLOSED


def test_starttls_waits_in_tls_handshake_then_hello_is_due():
    peer = session("STARTTLS")
    peer.send(peer.client.send_starttls())
    peer.reply(b"220 2.0.0 go ahead\r\n")
    assert peer.client.state is ClientState.TLS_HANDSHAKE
    peer.client.tls_started()
    assert peer.client.state is ClientState.HELLO


def test_a_refusing_banner_leaves_refused():
    peer = Peer(ClientConnection("client.example"))
    peer.reply(b"554 5.3.2 no service\r\n")
    assert peer.client.state is ClientState.REFUSED


def test_a_server_breaking_the_protocol_leaves_error_for_good():
    peer = session()
    peer.client.receive_data(b"250 a reply to nothing\r\n")
    with pytest.raises(ClientProtocolError) as first:
        peer.client.next_event()
    assert peer.client.state is ClientState.ERROR
    for _ in range(3):
        peer.client.receive_data(b"250 more\r\n")  # never read
        with pytest.raises(ClientProtocolError) as again:
            peer.client.next_event()
        assert again.value is first.value
        with pytest.raises(ClientUsageError):
            peer.client.send_noop()
    assert peer.client.abort(CONNECTION_LOST) is None  # no transaction was in flight
    assert peer.client.state is ClientState.ERROR  # abort closes anything but an ERROR


def test_an_internal_error_is_raised_once_then_error_is_sticky(monkeypatch):
    peer = session()
    peer.send(peer.client.send_noop())

    def broken(self, pending, received, closing):
        raise RuntimeError("a bug in the client")

    monkeypatch.setattr(ClientConnection, "_dispatch", broken)
    peer.client.receive_data(b"250 2.0.0 ok\r\n")
    with pytest.raises(RuntimeError):
        peer.client.next_event()
    assert peer.client.state is ClientState.ERROR
    monkeypatch.undo()  # even with the bug gone, the session never proceeds
    for _ in range(3):
        with pytest.raises(ClientProtocolError, match="internal error"):
            peer.client.next_event()
        with pytest.raises(ClientUsageError):
            peer.client.send_quit()
        assert peer.client.state is ClientState.ERROR


def test_every_state_is_reachable_from_the_greeting_and_error_has_no_way_out():
    reached, frontier = {ClientState.GREETING}, [ClientState.GREETING]
    while frontier:
        state = frontier.pop()
        for (source, _), target in CLIENT_TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(ClientState) - {ClientState.ERROR}
    assert not [key for key in CLIENT_TRANSITIONS if key[0] is ClientState.ERROR]
    for state in set(ClientState) - {ClientState.ERROR}:
        assert CLIENT_TRANSITIONS[state, ClientTrigger.CLOSE] is ClientState.CLOSED
