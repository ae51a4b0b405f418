"""The ESMTP server state machine: greeting, EHLO/HELO, the simple commands, sequence
errors, pipelining, QUIT/EOF/421 and misuse by the application."""

from __future__ import annotations

import pytest
from .server_driver import Session, codes, in_transaction, ready, replies

from trimta.protocol import events as ev
from trimta.protocol import replies as R
from trimta.protocol.errors import LocalProtocolError
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection


def test_greeting_is_220_with_hostname_and_no_enhanced_code():
    assert Session().banner == b"220 mx.example.net ESMTP trimta\r\n"


def test_ehlo_advertises_extensions_in_order_without_enhanced_codes():
    s = Session(max_message_size=20_000_000)
    out = s.send(b"EHLO client.example\r\n")
    assert out == (
        b"250-mx.example.net\r\n"
        b"250-PIPELINING\r\n"
        b"250-SIZE 20000000\r\n"
        b"250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250 CHUNKING\r\n"
    )
    assert s.events == [ev.Hello("client.example", True, s.events[0].reply)]
    assert s.conn.helo_name == "client.example" and s.conn.esmtp


def test_ehlo_advertises_size_without_number_when_unlimited():
    out = Session(max_message_size=0).send(b"EHLO c.example\r\n")
    assert b"250-SIZE\r\n" in out


def test_ehlo_advertises_starttls_when_a_certificate_is_configured():
    out = Session(starttls_available=True).send(b"EHLO c.example\r\n")
    assert out.endswith(b"250-CHUNKING\r\n250 STARTTLS\r\n")


def test_ehlo_does_not_advertise_auth_on_plaintext_unless_allowed():
    out = Session(starttls_available=True, auth_mechanisms=("PLAIN", "LOGIN")).send(b"EHLO c.example\r\n")
    assert b"AUTH" not in out
    out = Session(auth_mechanisms=("PLAIN", "LOGIN"), auth_without_tls=True).send(b"EHLO c.example\r\n")
    assert out.endswith(b"250 AUTH PLAIN LOGIN\r\n")


def test_ehlo_without_any_auth_mechanism_does_not_advertise_auth():
    out = Session(auth_without_tls=True).send(b"EHLO c.example\r\n")
    assert b"AUTH" not in out


def test_helo_gets_plain_250_and_no_extensions():
    s = Session()
    assert s.send(b"HELO client.example\r\n") == b"250 mx.example.net\r\n"
    assert s.conn.helo_name == "client.example" and not s.conn.esmtp


@pytest.mark.parametrize("line", [b"EHLO\r\n", b"HELO \r\n", b"EHLO two words\r\n"])
def test_hello_without_a_single_name_is_a_syntax_error(line):
    s = Session()
    assert codes(s.send(line)) == ["501 5.5.4"]
    assert s.conn.helo_name is None


def test_ehlo_accepts_an_address_literal():
    s = Session()
    assert codes(s.send(b"EHLO [192.0.2.1]\r\n")) == ["250"]
    assert s.conn.helo_name == "[192.0.2.1]"


def test_commands_are_case_insensitive():
    s = Session()
    out = s.send(b"ehlo c.example\r\nmail from:<a@example.com>\r\nRcPt To:<b@example.net>\r\nnoop\r\nrset\r\n")
    assert codes(out) == ["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0"]


def test_commands_may_end_with_bare_lf():
    s = Session()
    assert codes(s.send(b"EHLO c.example\nNOOP\n")) == ["250", "250 2.0.0"]


def test_ehlo_resets_the_transaction():
    s = in_transaction("r@example.net")
    s.send(b"EHLO again.example\r\n")
    assert s.conn.mail_from is None and s.conn.recipients == ()
    assert codes(s.send(b"RCPT TO:<r@example.net>\r\n")) == ["503 5.5.1"]


def test_refused_ehlo_keeps_previous_state():
    s = in_transaction(
        "r@example.net",
        answer=lambda e: R.reply(550, "5.7.1", "no") if isinstance(e, ev.Hello) and e.name == "bad.example" else None,
    )
    assert codes(s.send(b"EHLO bad.example\r\n")) == ["550 5.7.1"]
    assert s.conn.helo_name == "client.example"
    assert s.conn.mail_from is not None


def test_pipelined_batch_yields_events_and_replies_in_order():
    s = Session()
    out = s.send(
        b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
        b"RCPT TO:<c@example.org>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n"
    )
    assert codes(out) == ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    assert [type(e).__name__ for e in s.events] == [
        "Hello", "MailFrom", "RcptTo", "RcptTo", "DataStart", "MessageComplete", "Quit"]
    assert s.events[5].data == b"hello\r\n"
    assert s.conn.closed


def test_rset_clears_the_transaction():
    s = in_transaction("r@example.net")
    assert codes(s.send(b"RSET\r\n")) == ["250 2.0.0"]
    assert s.conn.mail_from is None and s.conn.recipients == ()
    assert codes(s.send(b"MAIL FROM:<a@example.com>\r\n")) == ["250 2.1.0"]


def test_rset_with_argument_is_a_syntax_error_and_keeps_transaction():
    s = in_transaction("r@example.net")
    assert codes(s.send(b"RSET now\r\n")) == ["501 5.5.4"]
    assert s.conn.mail_from is not None


def test_noop_accepts_an_argument():
    assert codes(Session().send(b"NOOP whatever\r\n")) == ["250 2.0.0"]


def test_vrfy_gets_252_and_needs_an_argument():
    s = Session()
    assert codes(s.send(b"VRFY postmaster\r\nVRFY\r\n")) == ["252 2.5.2", "501 5.5.4"]
    assert s.of_type(ev.Verify) == [ev.Verify("postmaster")]


def test_expn_is_not_implemented():
    assert codes(Session().send(b"EXPN staff\r\n")) == ["502 5.5.1"]


def test_help_gets_214_with_or_without_topic():
    s = Session()
    out = s.send(b"HELP\r\nHELP MAIL\r\n")
    assert codes(out) == ["214 2.0.0", "214 2.0.0"]
    assert [e.argument for e in s.of_type(ev.Help)] == ["", "MAIL"]


def test_quit_gets_221_and_closes():
    s = Session()
    assert s.send(b"QUIT\r\nNOOP\r\n") == b"221 2.0.0 Bye\r\n"
    assert s.conn.closed


def test_quit_with_argument_is_a_syntax_error():
    s = Session()
    assert codes(s.send(b"QUIT now\r\n")) == ["501 5.5.4"]
    assert not s.conn.closed


def test_unknown_command_gets_500():
    s = Session()
    assert codes(s.send(b"TURN\r\n\r\nGET / HTTP/1.1\r\n")) == ["500 5.5.2"] * 3
    assert [e.command for e in s.of_type(ev.BadCommand)] == ["", "", ""]
    assert s.conn.errors == 3


@pytest.mark.parametrize(
    "line",
    [b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<a@example.com>\r\n", b"DATA\r\n", b"BDAT 0 LAST\r\n"],
)
def test_transaction_commands_before_hello_get_503(line):
    s = Session()
    assert codes(s.send(line)) == ["503 5.5.1"]


def test_rcpt_before_mail_gets_503():
    assert codes(ready().send(b"RCPT TO:<a@example.net>\r\n")) == ["503 5.5.1"]


def test_second_mail_in_a_transaction_gets_503():
    s = in_transaction()
    out = s.send(b"MAIL FROM:<other@example.com>\r\n")
    assert replies(out) == ["503 5.5.1 Sender already specified"]
    assert s.conn.mail_from.address == "sender@example.com"


def test_data_without_accepted_recipient_gets_554():
    s = ready(answer=lambda e: R.RELAY_DENIED if isinstance(e, ev.RcptTo) else None)
    out = s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nQUIT\r\n")
    assert codes(out) == ["250 2.1.0", "550 5.7.1", "554 5.5.1", "221 2.0.0"]
    assert s.conn.errors == 0  # a normal outcome of pipelining, not a client error


def test_data_with_argument_is_a_syntax_error():
    assert codes(in_transaction().send(b"DATA now\r\n")) == ["501 5.5.4"]


def test_refused_mail_opens_no_transaction():
    s = ready(answer=lambda e: R.reply(550, "5.7.1", "no") if isinstance(e, ev.MailFrom) else None)
    assert codes(s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")) == ["550 5.7.1", "503 5.5.1"]
    assert s.conn.mail_from is None


def test_only_positive_rcpt_replies_add_recipients():
    s = ready(answer=lambda e: R.RELAY_DENIED if isinstance(e, ev.RcptTo) and "denied" in e.address else None)
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<ok@example.net>\r\nRCPT TO:<denied@example.org>\r\n")
    assert [r.address for r in s.conn.recipients] == ["ok@example.net"]


def test_refused_data_start_keeps_reading_commands():
    s = in_transaction(answer=lambda e: R.SPOOL_ERROR if isinstance(e, ev.DataStart) else None)
    out = s.send(b"DATA\r\nNOOP\r\n")
    assert codes(out) == ["452 4.3.1", "250 2.0.0"]


def test_message_reply_ends_transaction_and_counts_only_positive_answers():
    answers = iter([R.SPOOL_ERROR, R.OK])
    s = in_transaction(answer=lambda e: next(answers) if isinstance(e, ev.MessageComplete) else None)
    out = s.send(b"DATA\r\none\r\n.\r\n")
    assert codes(out) == ["354", "452 4.3.1"]
    assert s.conn.mail_from is None and s.conn.messages_accepted == 0
    out = s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\ntwo\r\n.\r\n")
    assert codes(out) == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert s.conn.messages_accepted == 1


def test_greeting_554_accepts_only_quit():
    conn = ServerConnection(ServerConfig(hostname="mx.example.net"))
    conn.send(R.reply(554, "5.3.2", "No service"))
    conn.receive_data(b"EHLO c.example\r\nQUIT\r\n")
    first = conn.next_event()
    assert first.reply.code == 503
    conn.send(first.reply)
    assert isinstance(conn.next_event(), ev.Quit)


def test_eof_reports_connection_closed_after_buffered_commands():
    s = Session()
    s.conn.receive_data(b"NOOP\r\nNOOP")
    s.conn.receive_data(b"")
    out = s.drain()
    assert codes(out) == ["250 2.0.0"]
    assert isinstance(s.events[-1], ev.ConnectionClosed)
    assert s.conn.closed


def test_421_may_be_sent_with_no_event_pending_and_closes():
    s = in_transaction()
    assert s.conn.send(R.TIMEOUT) == b"421 4.4.2 Timeout waiting for client input, closing connection\r\n"
    assert s.conn.closed


def test_421_in_answer_to_an_event_closes():
    s = Session(answer=lambda e: R.SERVICE_SHUTTING_DOWN)
    assert codes(s.send(b"NOOP\r\nNOOP\r\n")) == ["421 4.3.2"]
    assert s.conn.closed


def test_next_event_while_an_event_awaits_its_reply_is_an_error():
    s = Session()
    s.conn.receive_data(b"NOOP\r\nNOOP\r\n")
    assert isinstance(s.conn.next_event(), ev.Noop)
    with pytest.raises(LocalProtocolError):
        s.conn.next_event()


def test_sending_a_non_421_reply_with_nothing_pending_is_an_error():
    s = Session()
    with pytest.raises(LocalProtocolError):
        s.conn.send(R.OK)


def test_next_event_before_greeting_is_an_error():
    conn = ServerConnection(ServerConfig(hostname="mx.example.net"))
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_next_event_after_close_is_an_error():
    s = Session()
    s.send(b"QUIT\r\n")
    with pytest.raises(LocalProtocolError):
        s.conn.next_event()


def test_partial_command_waits_for_more_data():
    s = Session()
    s.conn.receive_data(b"NO")
    assert s.conn.next_event() is NEED_DATA
    assert codes(s.send(b"OP\r\n")) == ["250 2.0.0"]


def test_non_utf8_bytes_get_500_or_501_never_an_exception():
    s = ready()
    out = s.send(b"\xff\xfe\r\nMAIL FROM:<\xe9@example.com>\r\nNOOP \xff\r\n")
    assert codes(out) == ["500 5.5.2", "501 5.5.4", "501 5.5.4"]


def test_unsupported_auth_mechanism_in_config_is_refused():
    with pytest.raises(ValueError):
        ServerConfig(hostname="mx.example.net", auth_mechanisms=("CRAM-MD5",))
