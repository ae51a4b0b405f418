"""The SMTP client state machine against scripted servers: exact bytes out, replies in."""

from __future__ import annotations

import pytest

from trimta.protocol.client import (
    CONNECTION_LOST,
    NEED_DATA,
    ClientConnection,
    ClientProtocolError,
    ClientState,
    ClientUsageError,
    MessageNotSendable,
)
from trimta.protocol.client_events import (
    BytesToSend,
    Command,
    ConnectionClosed,
    EhloResult,
    Greeting,
    HeloResult,
    ReplyReceived,
    ServiceClosing,
    StartTlsResult,
    TransactionResult,
)
from trimta.protocol.replies import reply

MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


class Peer:
    """Plays the server: feeds replies, collects events, records what the client wrote."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.wire = bytearray()

    def send(self, data: bytes) -> bytes:
        """Bytes a client method returned: they go on the wire."""
        self.wire += data
        return data

    def reply(self, data: bytes) -> list:
        """The server says `data`; returns the events up to NEED_DATA, writing BytesToSend."""
        self.client.receive_data(data)
        events = []
        while True:
            event = self.client.next_event()
            if event is NEED_DATA:
                return events
            events.append(event)
            if isinstance(event, BytesToSend):
                self.wire += event.data
            if isinstance(event, ConnectionClosed):
                return events

    def written(self) -> bytes:
        """What the client wrote since the last call."""
        data = bytes(self.wire)
        self.wire.clear()
        return data


def session(*extensions: str, **options) -> Peer:
    """A client past the banner and EHLO, the server advertising `extensions`."""
    peer = Peer(ClientConnection("client.example", **options))
    peer.reply(b"220 mx.example ESMTP\r\n")
    peer.send(peer.client.send_ehlo())
    lines = ["mx.example greets client.example", *extensions]
    text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
    [event] = peer.reply(text.encode())
    assert isinstance(event, EhloResult)
    assert peer.written() == b"EHLO client.example\r\n"
    return peer


def only(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


# --- Greeting and EHLO -------------------------------------------------------------


def test_banner_then_ehlo_reads_extensions_upper_cased_with_parameters():
    client = ClientConnection("client.example")
    assert client.awaiting is Command.BANNER
    client.receive_data(b"220 mx.example ESMTP ready\r\n")
    assert client.next_event() == Greeting(reply(220, None, "mx.example ESMTP ready"))
    assert client.send_ehlo() == b"EHLO client.example\r\n"
    assert client.awaiting is Command.EHLO
    client.receive_data(
        b"250-mx.example Hello\r\n250-SIZE 35882577\r\n250-pipelining\r\n"
        b"250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
    )
    event = client.next_event()
    assert isinstance(event, EhloResult)
    assert event.extensions == {
        "SIZE": "35882577",
        "PIPELINING": "",
        "AUTH": "PLAIN LOGIN",
        "8BITMIME": "",
        "SMTPUTF8": "",
        "ENHANCEDSTATUSCODES": "",
        "CHUNKING": "",
        "STARTTLS": "",
    }
    assert client.state is ClientState.READY
    assert client.max_message_size == 35882577
    assert client.offers("starttls")


def test_helo_fallback_when_ehlo_gets_5xx():
    peer = Peer(ClientConnection("client.example"))
    peer.reply(b"220 old.example SMTP\r\n")
    peer.send(peer.client.send_ehlo())
    [event] = peer.reply(b"502 5.5.1 Command not implemented\r\n")
    assert event == EhloResult(reply(502, "5.5.1", "Command not implemented"), {})
    assert peer.client.state is ClientState.HELLO
    peer.send(peer.client.send_helo())
    [event] = peer.reply(b"250 old.example\r\n")
    assert event == HeloResult(reply(250, None, "old.example"))
    assert peer.client.state is ClientState.READY
    assert peer.client.extensions == {}
    assert peer.written() == b"EHLO client.example\r\nHELO client.example\r\n"


def test_554_banner_leaves_only_quit():
    peer = Peer(ClientConnection("client.example"))
    [event] = peer.reply(b"554 5.7.1 go away\r\n")
    assert event == Greeting(reply(554, "5.7.1", "go away"))
    assert peer.client.state is ClientState.REFUSED
    with pytest.raises(ClientUsageError):
        peer.client.send_ehlo()
    assert peer.client.send_quit() == b"QUIT\r\n"


def test_421_banner_closes_the_session():
    peer = Peer(ClientConnection("client.example"))
    [event] = peer.reply(b"421 4.3.2 busy\r\n")
    assert event == Greeting(reply(421, "4.3.2", "busy"))
    assert peer.client.state is ClientState.CLOSED
    assert peer.reply(b"") == [ConnectionClosed()]


# --- Transactions ------------------------------------------------------------------


def test_pipelining_sends_mail_all_rcpts_and_data_in_one_write():
    peer = session("PIPELINING", "SIZE 100000")
    first = peer.client.start_transaction("s@a.example", ["r1@b.example", "r2@b.example"], MESSAGE)
    assert first == (
        b"MAIL FROM:<s@a.example> SIZE=23\r\n"
        b"RCPT TO:<r1@b.example>\r\n"
        b"RCPT TO:<r2@b.example>\r\n"
        b"DATA\r\n"
    )
    events = peer.reply(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n")
    assert peer.written() == b""  # the message waits for DATA's 354
    events = peer.reply(b"250 2.1.5 ok\r\n")
    assert peer.written() == b""
    assert peer.client.awaiting is Command.DATA
    events = peer.reply(b"354 go ahead\r\n")
    assert peer.written() == MESSAGE + b".\r\n"
    assert peer.client.awaiting is Command.DATA_DOT
    events = peer.reply(b"250 2.0.0 queued as X\r\n")
    [result] = events
    assert isinstance(result, TransactionResult)
    assert result.delivered == ("r1@b.example", "r2@b.example")
    assert result.data_reply == reply(250, "2.0.0", "queued as X")
    assert result.data_command is Command.DATA_DOT
    assert peer.client.state is ClientState.READY
    assert not peer.client.needs_reset


def test_all_replies_of_a_pipelined_group_in_one_read_give_the_message_at_once():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["r@b"], MESSAGE))
    peer.written()
    events = peer.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert events[-1] == BytesToSend(MESSAGE + b".\r\n")
    assert peer.written() == MESSAGE + b".\r\n"
    [result] = peer.reply(b"250 2.0.0 ok\r\n")
    assert result.delivered == ("r@b",)


def test_only_recipients_whose_rcpt_got_2xx_are_delivered():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["ok@b", "gone@b", "later@b"], MESSAGE))
    events = peer.reply(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n450 4.2.1 try later\r\n")
    assert [(e.command, e.recipient, e.reply.code) for e in only(events, ReplyReceived)] == [
        (Command.MAIL_FROM, None, 250),
        (Command.RCPT_TO, "ok@b", 250),
        (Command.RCPT_TO, "gone@b", 550),
        (Command.RCPT_TO, "later@b", 450),
    ]
    events = peer.reply(b"354 go\r\n") + peer.reply(b"250 2.0.0 ok\r\n")
    [result] = only(events, TransactionResult)
    assert result.delivered == ("ok@b",)
    assert [(r.recipient, str(r.reply)) for r in result.not_delivered] == [
        ("gone@b", "550 5.1.1 no such user"),
        ("later@b", "450 4.2.1 try later"),
    ]


def test_no_message_when_every_recipient_is_refused_and_rset_is_then_required():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["x@b", "y@b"], MESSAGE))
    peer.written()
    events = peer.reply(b"250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    assert peer.written() == b""
    [result] = only(events, TransactionResult)
    assert result.delivered == ()
    assert result.data_reply is None  # no message was sent
    assert [str(r.reply) for r in result.recipients] == ["550 5.1.1 no", "550 5.1.1 no"]
    # The server still holds the transaction MAIL opened.
    assert peer.client.needs_reset
    with pytest.raises(ClientUsageError):
        peer.client.start_transaction("s@a", ["z@b"], MESSAGE)
    assert peer.client.send_rset() == b"RSET\r\n"
    assert peer.reply(b"250 2.0.0 reset\r\n") == [
        ReplyReceived(Command.RSET, reply(250, "2.0.0", "reset"))
    ]
    assert peer.client.start_transaction("s@a", ["z@b"], MESSAGE).startswith(b"MAIL FROM:<s@a>")


def test_354_to_a_pipelined_data_with_no_recipient_gets_an_empty_message():
    # RFC 2920 3.1: some servers accept DATA though every RCPT failed; the client then
    # ends the data at once rather than send the message to nobody.
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["x@b"], MESSAGE))
    peer.written()
    peer.reply(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    assert peer.written() == b".\r\n"
    assert peer.client.awaiting is Command.DATA_DOT
    [result] = peer.reply(b"250 2.0.0 nothing\r\n")
    assert result.delivered == ()
    assert [str(r.reply) for r in result.recipients] == ["550 5.1.1 no"]
    assert result.data_reply is None
    assert not peer.client.needs_reset  # the end of data closed the server's transaction


def test_refused_sender_fails_every_recipient_with_the_mail_reply_under_pipelining():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["r1@b", "r2@b"], MESSAGE))
    peer.written()
    events = peer.reply(b"553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n"
                        b"503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert peer.written() == b""
    [result] = only(events, TransactionResult)
    assert [str(r.reply) for r in result.recipients] == ["553 5.7.1 sender rejected"] * 2
    assert not peer.client.needs_reset


def test_pipelined_data_refused_after_accepted_recipients_fails_them_with_its_reply():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["r@b"], MESSAGE))
    peer.written()
    [result] = only(peer.reply(b"250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n"), TransactionResult)
    assert result.data_reply == reply(451, "4.3.0", "try later")
    assert result.data_command is Command.DATA
    assert [str(r.reply) for r in result.recipients] == ["451 4.3.0 try later"]
    assert peer.written() == b""
    assert peer.client.needs_reset


def test_without_pipelining_each_command_waits_for_its_reply():
    peer = session("8BITMIME")
    assert peer.send(peer.client.start_transaction("s@a", ["r1@b", "r2@b"], MESSAGE)) == (
        b"MAIL FROM:<s@a>\r\n"
    )
    peer.written()
    assert peer.client.awaiting is Command.MAIL_FROM
    peer.reply(b"250 ok\r\n")
    assert peer.written() == b"RCPT TO:<r1@b>\r\n"
    peer.reply(b"550 no\r\n")  # a refused recipient does not stop the others
    assert peer.written() == b"RCPT TO:<r2@b>\r\n"
    peer.reply(b"250 ok\r\n")
    assert peer.written() == b"DATA\r\n"
    peer.reply(b"354 go\r\n")
    assert peer.written() == MESSAGE + b".\r\n"
    [result] = peer.reply(b"250 ok\r\n")
    assert result.delivered == ("r2@b",)


def test_pipelining_not_used_when_not_allowed_even_if_offered():
    peer = session("PIPELINING", pipelining_allowed=False)
    assert peer.client.start_transaction("s@a", ["r1@b", "r2@b"], MESSAGE) == b"MAIL FROM:<s@a>\r\n"


def test_mail_refused_without_pipelining_sends_no_rcpt():
    peer = session()
    peer.send(peer.client.start_transaction("s@a", ["r1@b", "r2@b"], MESSAGE))
    peer.written()
    events = peer.reply(b"553 5.7.1 sender rejected\r\n")
    assert peer.written() == b""
    [result] = only(events, TransactionResult)
    assert [(r.recipient, str(r.reply), r.rcpt_reply) for r in result.recipients] == [
        ("r1@b", "553 5.7.1 sender rejected", None),
        ("r2@b", "553 5.7.1 sender rejected", None),
    ]
    assert not peer.client.needs_reset


def test_final_reply_failure_fails_every_recipient():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["r1@b", "r2@b"], MESSAGE))
    peer.reply(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    [result] = peer.reply(b"451 4.3.0 local error\r\n")
    assert result.delivered == ()
    assert {str(r.reply) for r in result.recipients} == {"451 4.3.0 local error"}
    assert not peer.client.needs_reset  # the end of data resets the server's side


def test_data_refused_before_354_fails_the_transaction():
    peer = session()
    peer.send(peer.client.start_transaction("s@a", ["r@b"], MESSAGE))
    peer.reply(b"250 ok\r\n")
    peer.reply(b"250 ok\r\n")
    [result] = only(peer.reply(b"554 5.5.1 no valid recipients\r\n"), TransactionResult)
    assert result.data_reply == reply(554, "5.5.1", "no valid recipients")
    assert result.delivered == ()
    assert b"Hello." not in peer.written()


def test_message_is_normalised_and_dot_stuffed_on_the_wire():
    peer = session("PIPELINING")
    message = b"Subject: dots\n\n.leading\r\nbare\rcr\n..two\n."
    peer.send(peer.client.start_transaction("s@a", ["r@b"], message))
    peer.reply(b"250 ok\r\n250 ok\r\n")
    peer.written()
    peer.reply(b"354 go\r\n")
    assert peer.written() == (
        b"Subject: dots\r\n\r\n..leading\r\nbare\r\ncr\r\n...two\r\n..\r\n.\r\n"
    )


def test_bdat_carries_the_message_unstuffed_in_the_pipelined_group_when_chunking_is_offered():
    peer = session("PIPELINING", "CHUNKING")
    message = b".dot\nline\n"
    first = peer.client.start_transaction("s@a", ["r@b"], message)
    # One write, one round trip: RFC 3030 lets BDAT and its chunk join the group.
    assert first == b"MAIL FROM:<s@a>\r\nRCPT TO:<r@b>\r\nBDAT 12 LAST\r\n.dot\r\nline\r\n"
    events = peer.reply(b"250 ok\r\n250 ok\r\n")
    assert peer.written() == b""
    assert peer.client.awaiting is Command.BDAT
    [result] = only(events + peer.reply(b"250 2.0.0 ok\r\n"), TransactionResult)
    assert result.delivered == ("r@b",)
    assert result.data_command is Command.BDAT
    assert not peer.client.needs_reset


def test_bdat_without_pipelining_waits_for_the_rcpt_replies():
    peer = session("CHUNKING")
    peer.send(peer.client.start_transaction("s@a", ["r@b"], b"x\n"))
    peer.reply(b"250 ok\r\n")
    peer.reply(b"250 ok\r\n")
    assert peer.written() == b"MAIL FROM:<s@a>\r\nRCPT TO:<r@b>\r\nBDAT 3 LAST\r\nx\r\n"
    [result] = peer.reply(b"250 2.0.0 ok\r\n")
    assert result.delivered == ("r@b",)


def test_pipelined_bdat_with_every_recipient_refused_delivers_nothing_and_resets():
    peer = session("PIPELINING", "CHUNKING")
    peer.send(peer.client.start_transaction("s@a", ["x@b"], MESSAGE))
    peer.written()
    events = peer.reply(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    [result] = only(events, TransactionResult)
    assert result.delivered == ()
    assert [str(r.reply) for r in result.recipients] == ["550 5.1.1 no"]
    assert result.data_reply is None
    assert peer.client.needs_reset


def test_chunking_not_used_when_not_allowed():
    peer = session("PIPELINING", "CHUNKING", chunking_allowed=False)
    assert peer.client.start_transaction("s@a", ["r@b"], MESSAGE).endswith(b"RCPT TO:<r@b>\r\nDATA\r\n")
    peer.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert peer.written() == MESSAGE + b".\r\n"


def test_rset_between_messages_on_a_reused_connection():
    peer = session("PIPELINING")
    for recipient in ("one@b", "two@b"):
        if recipient == "two@b":
            peer.send(peer.client.send_rset())
            peer.reply(b"250 2.0.0 ok\r\n")
        peer.send(peer.client.start_transaction("s@a", [recipient], MESSAGE))
        peer.reply(b"250 ok\r\n250 ok\r\n")
        peer.reply(b"354 go\r\n")
        [result] = peer.reply(b"250 ok\r\n")
        assert result.delivered == (recipient,)
    assert peer.written() == (
        b"MAIL FROM:<s@a>\r\nRCPT TO:<one@b>\r\nDATA\r\n" + MESSAGE + b".\r\n"
        b"RSET\r\n"
        b"MAIL FROM:<s@a>\r\nRCPT TO:<two@b>\r\nDATA\r\n" + MESSAGE + b".\r\n"
    )


def test_quit_then_close():
    peer = session()
    assert peer.client.send_quit() == b"QUIT\r\n"
    assert peer.client.awaiting is Command.QUIT
    assert peer.reply(b"221 2.0.0 bye\r\n") == [
        ReplyReceived(Command.QUIT, reply(221, "2.0.0", "bye"))
    ]
    assert peer.client.state is ClientState.CLOSED
    assert peer.reply(b"") == [ConnectionClosed(())]


def test_null_sender_and_extra_mail_parameters():
    peer = session("SIZE", "DSN")
    out = peer.client.start_transaction(
        "", ["r@b"], MESSAGE, mail_params={"ret": "HDRS", "ENVID": "abc123"}
    )
    # SIZE with no value means "no limit" but still takes SIZE=.
    assert out == b"MAIL FROM:<> SIZE=23 RET=HDRS ENVID=abc123\r\n"


# --- SIZE and SMTPUTF8 --------------------------------------------------------------


def test_message_over_the_advertised_size_is_not_sendable():
    peer = session("PIPELINING", "SIZE 23")
    with pytest.raises(MessageNotSendable) as caught:
        peer.client.start_transaction("s@a", ["r@b"], MESSAGE + b"x")
    assert caught.value.reply.code == 552
    assert caught.value.reply.enhanced_code == "5.3.4"
    assert peer.client.state is ClientState.READY  # nothing was sent; try the next one
    assert peer.client.start_transaction("s@a", ["r@b"], MESSAGE).startswith(
        b"MAIL FROM:<s@a> SIZE=23\r\n"
    )


@pytest.mark.parametrize("data", [b"Subject: x\r\n\r\na\r\n\x00.\r\nb\r\n", b"a\r\n.\x00\r\nb"], ids=["nullbefore", "nullafter"])
def test_a_message_with_a_nul_is_never_sent(data):
    peer = session("PIPELINING", "SIZE 1000", "CHUNKING")
    with pytest.raises(MessageNotSendable) as caught:
        peer.client.start_transaction("s@a", ["r@b"], data)
    assert (caught.value.reply.code, caught.value.reply.enhanced_code) == (554, "5.6.0")
    assert caught.value.reply.is_permanent
    assert peer.client.state is ClientState.READY  # nothing went out


def test_size_counts_crlf_line_endings_before_dot_stuffing():
    peer = session("SIZE 1000")
    # Four bytes become seven with CRLF line ends and a final CRLF; the stuffed dot
    # does not count (RFC 1870).
    out = peer.client.start_transaction("s@a", ["r@b"], b".a\nb")
    assert out == b"MAIL FROM:<s@a> SIZE=7\r\n"


def test_smtputf8_message_is_not_sendable_to_a_server_without_it():
    peer = session("PIPELINING", "8BITMIME")
    with pytest.raises(MessageNotSendable) as caught:
        peer.client.start_transaction("s@a", ["usér@b"], MESSAGE)
    assert caught.value.reply.enhanced_code == "5.6.7"
    assert caught.value.reply.is_permanent
    # Non-ASCII headers with ASCII addresses: the caller says so.
    with pytest.raises(MessageNotSendable):
        peer.client.start_transaction("s@a", ["r@b"], MESSAGE, smtputf8=True)


def test_smtputf8_addresses_go_out_in_utf8_with_the_parameter():
    peer = session("PIPELINING", "SMTPUTF8", "8BITMIME")
    out = peer.client.start_transaction("sé@a", ["usér@b"], "Subject: é\r\n\r\nx\r\n".encode())
    assert out == (
        "MAIL FROM:<sé@a> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<usér@b>\r\nDATA\r\n".encode()
    )


# --- STARTTLS ----------------------------------------------------------------------


def test_starttls_then_extensions_are_forgotten_and_ehlo_is_due_again():
    peer = session("PIPELINING", "STARTTLS")
    assert peer.send(peer.client.send_starttls()) == b"STARTTLS\r\n"
    assert peer.client.awaiting is Command.STARTTLS
    [event] = peer.reply(b"220 2.0.0 ready\r\n")
    assert event == StartTlsResult(reply(220, "2.0.0", "ready")) and event.ready
    assert peer.client.state is ClientState.TLS_HANDSHAKE
    peer.client.tls_started()
    assert peer.client.tls_active
    assert peer.client.extensions == {}
    with pytest.raises(ClientUsageError):
        peer.client.start_transaction("s@a", ["r@b"], MESSAGE)
    peer.send(peer.client.send_ehlo())
    [event] = peer.reply(b"250-mx.example\r\n250 SIZE 10\r\n")
    assert event.extensions == {"SIZE": "10"}
    assert peer.written() == b"STARTTLS\r\nEHLO client.example\r\n"
    with pytest.raises(ClientUsageError):
        peer.client.send_starttls()


def test_starttls_refused_leaves_the_session_usable_in_plaintext():
    peer = session("STARTTLS")
    peer.send(peer.client.send_starttls())
    [event] = peer.reply(b"454 4.7.0 TLS not available\r\n")
    assert not event.ready
    assert peer.client.state is ClientState.READY
    assert peer.client.send_quit() == b"QUIT\r\n"


def test_bytes_after_the_starttls_220_are_refused_as_injection():
    peer = session("STARTTLS")
    peer.send(peer.client.send_starttls())
    peer.client.receive_data(b"220 ready\r\n250-injected\r\n250 AUTH PLAIN\r\n")
    with pytest.raises(ClientProtocolError):
        peer.client.next_event()
    assert peer.client.state is ClientState.ERROR


# --- 421, lost connections, timeouts ------------------------------------------------


def test_421_in_a_pipelined_group_answers_everything_still_waiting():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["r1@b", "r2@b", "r3@b"], MESSAGE))
    peer.written()
    events = peer.reply(b"250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n")
    assert peer.written() == b""  # and no message to a server that is leaving
    [result] = only(events, TransactionResult)
    assert result.delivered == ()
    assert [str(r.reply) for r in result.recipients] == ["421 4.3.2 shutting down"] * 3
    assert peer.client.state is ClientState.CLOSED
    with pytest.raises(ClientUsageError):
        peer.client.send_rset()


def test_421_without_pipelining_fails_the_recipients_never_sent():
    peer = session()
    peer.send(peer.client.start_transaction("s@a", ["r1@b", "r2@b"], MESSAGE))
    peer.reply(b"250 ok\r\n")
    events = peer.reply(b"421 4.4.2 timeout\r\n")
    [result] = only(events, TransactionResult)
    assert [(r.recipient, r.reply.code, r.rcpt_reply) for r in result.recipients] == [
        ("r1@b", 421, reply(421, "4.4.2", "timeout")),
        ("r2@b", 421, None),
    ]
    assert peer.written() == b"MAIL FROM:<s@a>\r\nRCPT TO:<r1@b>\r\n"


def test_unsolicited_421_between_commands_is_service_closing():
    peer = session()
    assert peer.reply(b"421 4.4.2 idle too long\r\n") == [
        ServiceClosing(reply(421, "4.4.2", "idle too long"))
    ]
    assert peer.client.state is ClientState.CLOSED


def test_connection_lost_mid_transaction_keeps_what_was_answered():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["ok@b", "gone@b"], MESSAGE))
    peer.reply(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n")
    assert peer.client.awaiting is Command.DATA
    events = peer.reply(b"")
    [result] = only(events, TransactionResult)
    assert [(r.recipient, r.reply) for r in result.recipients] == [
        ("ok@b", CONNECTION_LOST),
        ("gone@b", reply(550, "5.1.1", "unknown")),
    ]
    assert events[-1] == ConnectionClosed((Command.DATA,))
    assert peer.client.state is ClientState.CLOSED


def test_abort_on_timeout_gives_open_recipients_the_reason():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["slow@b", "gone@b"], MESSAGE))
    peer.reply(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
    assert peer.client.awaiting is Command.DATA_DOT
    timed_out = reply(451, "4.4.2", "timed out waiting for data_dot")
    result = peer.client.abort(timed_out)
    assert [(r.recipient, r.reply) for r in result.recipients] == [
        ("slow@b", timed_out),
        ("gone@b", reply(550, "5.1.1", "unknown")),
    ]
    assert peer.client.state is ClientState.CLOSED
    assert peer.client.abort(timed_out) is None


# --- Misuse and hostile servers ------------------------------------------------------


def test_commands_out_of_turn_are_usage_errors():
    client = ClientConnection("client.example")
    with pytest.raises(ClientUsageError):
        client.send_ehlo()  # before the banner
    client.receive_data(b"220 hi\r\n")
    client.next_event()
    with pytest.raises(ClientUsageError):
        client.start_transaction("s@a", ["r@b"], MESSAGE)  # before EHLO
    client.send_ehlo()
    with pytest.raises(ClientUsageError):
        client.send_noop()  # while EHLO awaits its reply


@pytest.mark.parametrize("address", ["r@b>\r\nRCPT TO:<evil@c", "r@b\n", "<r@b>", "r\x00@b"])
def test_addresses_that_could_inject_commands_are_refused(address):
    peer = session("PIPELINING")
    with pytest.raises(ClientUsageError):
        peer.client.start_transaction("s@a", [address], MESSAGE)
    with pytest.raises(ClientUsageError):
        peer.client.start_transaction(address, ["r@b"], MESSAGE)


def test_reply_to_no_command_is_a_protocol_error_and_stays_one():
    peer = session()
    peer.client.receive_data(b"250 surprise\r\n")
    with pytest.raises(ClientProtocolError):
        peer.client.next_event()
    with pytest.raises(ClientProtocolError):
        peer.client.next_event()
    with pytest.raises(ClientUsageError):
        peer.client.send_quit()


def test_garbage_instead_of_a_reply_is_a_protocol_error():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["r@b"], MESSAGE))
    peer.client.receive_data(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(ClientProtocolError):
        peer.client.next_event()
    result = peer.client.abort(reply(451, "4.5.0", "protocol error"))
    assert [r.reply.code for r in result.recipients] == [451]


def test_354_to_the_end_of_data_is_a_protocol_error():
    peer = session("PIPELINING")
    peer.send(peer.client.start_transaction("s@a", ["r@b"], MESSAGE))
    peer.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    peer.client.receive_data(b"354 again\r\n")
    with pytest.raises(ClientProtocolError):
        peer.client.next_event()


def test_8bit_body_gets_body_8bitmime_when_offered():
    peer = session("8BITMIME")
    assert peer.client.start_transaction("s@a", ["r@b"], b"caf\xe9\r\n") == (
        b"MAIL FROM:<s@a> BODY=8BITMIME\r\n"
    )
    peer = session("8BITMIME")
    assert peer.client.start_transaction("s@a", ["r@b"], MESSAGE) == b"MAIL FROM:<s@a>\r\n"


@pytest.mark.parametrize("params", [{"ENVID": "x\r\nRSET"}, {"ENVID": "a b"}, {"BAD KEY": None}])
def test_mail_parameters_that_could_inject_commands_are_refused(params):
    peer = session()
    with pytest.raises(ClientUsageError):
        peer.client.start_transaction("s@a", ["r@b"], MESSAGE, mail_params=params)


def test_connection_closed_before_the_banner():
    peer = Peer(ClientConnection("client.example"))
    assert peer.reply(b"220 partial") == []
    assert peer.reply(b"") == [ConnectionClosed((Command.BANNER,))]


# --- LMTP (RFC 2033) -----------------------------------------------------------------


def lmtp_session(*extensions: str) -> Peer:
    peer = Peer(ClientConnection("client.example", lmtp=True))
    peer.reply(b"220 mailstore.example LMTP\r\n")
    assert peer.send(peer.client.send_ehlo()) == b"LHLO client.example\r\n"
    lines = ["mailstore.example", *extensions]
    peer.reply(("".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n").encode())
    peer.written()
    return peer


def test_lmtp_reads_one_reply_per_accepted_recipient_after_the_message():
    peer = lmtp_session("PIPELINING", "CHUNKING", "8BITMIME")
    peer.send(peer.client.start_transaction("s@a", ["full@b", "gone@b", "ok@b"], MESSAGE))
    assert peer.written().endswith(b"DATA\r\n")  # never BDAT under LMTP, though CHUNKING is offered
    peer.reply(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n")
    assert peer.written().endswith(b"\r\n.\r\n")
    # RFC 2033 4.2: a reply for full@b, then one for ok@b (gone@b was refused at RCPT).
    [event] = peer.reply(b"452 4.2.2 mailbox full\r\n")
    assert (event.command, event.recipient, event.reply.code) == (Command.DATA_DOT, "full@b", 452)
    assert peer.client.awaiting is Command.DATA_DOT
    [result] = only(peer.reply(b"250 2.1.5 ok@b delivered\r\n"), TransactionResult)
    assert result.delivered == ("ok@b",)
    assert [(r.recipient, str(r.reply)) for r in result.not_delivered] == [
        ("full@b", "452 4.2.2 mailbox full"),
        ("gone@b", "550 5.1.1 no such user"),
    ]
    assert peer.client.state is ClientState.READY
    peer.send(peer.client.start_transaction("s@a", ["next@b"], MESSAGE))  # no RSET needed


def test_lmtp_connection_lost_between_replies_keeps_the_replies_that_came():
    peer = lmtp_session()
    peer.send(peer.client.start_transaction("s@a", ["one@b", "two@b"], MESSAGE))
    peer.reply(b"250 ok\r\n")
    peer.reply(b"250 ok\r\n")
    peer.reply(b"250 ok\r\n")
    peer.reply(b"354 go\r\n")
    peer.reply(b"250 2.0.0 one@b delivered\r\n")
    [result] = only(peer.reply(b""), TransactionResult)
    assert result.delivered == ("one@b",)
    assert [(r.recipient, r.reply) for r in result.not_delivered] == [("two@b", CONNECTION_LOST)]


def test_lmtp_has_no_helo():
    peer = Peer(ClientConnection("client.example", lmtp=True))
    peer.reply(b"220 mailstore.example LMTP\r\n")
    with pytest.raises(ClientUsageError):
        peer.client.send_helo()
