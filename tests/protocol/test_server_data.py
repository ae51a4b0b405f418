"""DATA: the end of data, dot-unstuffing, the SMTP smuggling defence, line and size
limits (RFC 5321 4.1.1.4, 4.5.2, 4.5.3.1, 2.3.8; RFC 1870)."""

from __future__ import annotations

import pytest

from trimta.protocol import events as ev
from trimta.protocol import replies as R

from .server_driver import codes, in_transaction


def data_session(**config):
    s = in_transaction("rcpt@example.net", **config)
    assert codes(s.send(b"DATA\r\n")) == ["354"]
    return s


def messages(s):
    return [e.data for e in s.of_type(ev.MessageComplete)]


def test_data_ends_at_crlf_dot_crlf_and_keeps_crlf_of_last_line():
    s = data_session()
    out = s.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert codes(out) == ["250 2.0.0"]
    assert messages(s) == [b"Subject: hi\r\n\r\nbody\r\n"]
    assert s.conn.mail_from is None and s.conn.messages_accepted == 1


def test_empty_message_is_the_dot_line_right_away():
    s = data_session()
    assert codes(s.send(b".\r\n")) == ["250 2.0.0"]
    assert messages(s) == [b""]


def test_dot_stuffing_is_removed():
    s = data_session()
    s.send(b"..leading dot\r\nmiddle\r\n...two dots\r\n..\r\n.\r\n")
    assert messages(s) == [b".leading dot\r\nmiddle\r\n..two dots\r\n.\r\n"]


def test_terminator_split_across_reads_is_found():
    s = data_session()
    for piece in [b"line one\r", b"\nline two\r\n", b".", b"\r", b"\n"]:
        out = s.send(piece)
    assert codes(out) == ["250 2.0.0"]
    assert messages(s) == [b"line one\r\nline two\r\n"]


def test_commands_after_the_data_are_read_as_commands():
    s = data_session()
    out = s.send(b"x\r\n.\r\nMAIL FROM:<b@example.com>\r\nNOOP\r\n")
    assert codes(out) == ["250 2.0.0", "250 2.1.0", "250 2.0.0"]


def test_mail_from_is_still_available_while_the_message_awaits_its_reply():
    s = data_session()
    s.conn.receive_data(b"x\r\n.\r\n")
    event = s.conn.next_event()
    assert isinstance(event, ev.MessageComplete)
    assert s.conn.mail_from.address == "sender@example.com"
    assert [r.address for r in s.conn.recipients] == ["rcpt@example.net"]


# Each look-alike of the end of data must stay inside the content: the message ends
# at the real CRLF.CRLF and is refused for its bare CR or LF, or its NUL, and the
# commands "smuggled" after the look-alike never run. These are hannob/smtpsmug's
# variants, all of them (lflf ... crlfcr, nullbefore, nullafter).
SMUGGLING_VARIANTS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n",
                      b"\r\n.\r", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n"]


@pytest.mark.parametrize("fake_end", SMUGGLING_VARIANTS, ids=repr)
def test_smuggling_variant_neither_ends_data_nor_runs_commands(fake_end):
    s = data_session()
    out = s.send(
        b"Subject: real\r\n\r\nhello" + fake_end
        + b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nevil\r\n.\r\nNOOP\r\n"
    )
    assert codes(out) == ["554 5.6.0", "250 2.0.0"]
    assert not s.of_type(ev.MessageComplete)
    assert len(s.of_type(ev.MailFrom)) == 1 and len(s.of_type(ev.DataStart)) == 1
    assert s.of_type(ev.BadCommand)[0].command == "DATA"
    assert s.conn.mail_from is None  # the transaction is over


@pytest.mark.parametrize("fake_end", SMUGGLING_VARIANTS, ids=repr)
def test_smuggling_variant_fed_byte_by_byte_is_refused_the_same(fake_end):
    s = data_session()
    wire = b"hello" + fake_end + b"QUIT\r\n\r\n.\r\nNOOP\r\n"
    out = b"".join(s.send(wire[i : i + 1]) for i in range(len(wire)))
    assert codes(out) == ["554 5.6.0", "250 2.0.0"]
    assert not s.of_type(ev.Quit)


@pytest.mark.parametrize("content", [b"bare\nlf\r\n", b"bare\rcr\r\n", b"ends with bare lf\n\r\n", b"\r\r\n"])
def test_bare_cr_or_lf_anywhere_refuses_the_message_at_its_end(content):
    s = data_session()
    assert codes(s.send(content + b".\r\n")) == ["554 5.6.0"]
    assert s.conn.errors == 0


@pytest.mark.parametrize("content", [b"\x00\r\n", b"a\x00b\r\n", b"x\r\n\x00.\r\ny\r\n", b"x\r\n.\x00\r\n"])
def test_a_nul_anywhere_refuses_the_message_at_its_end(content):
    s = data_session()
    out = s.send(content + b".\r\nNOOP\r\n")
    assert out.startswith(b"554 5.6.0 NUL in message data")
    assert codes(out) == ["554 5.6.0", "250 2.0.0"]
    assert not s.of_type(ev.MessageComplete)
    assert s.conn.mail_from is None


def test_text_line_of_1000_octets_is_accepted_and_1001_refused():
    s = data_session()
    ok = b"a" * 998 + b"\r\n"
    assert codes(s.send(ok + b".\r\n")) == ["250 2.0.0"]
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    out = s.send(b"short\r\n" + b"a" * 999 + b"\r\nshort\r\n.\r\n")
    assert codes(out) == ["500 5.5.6"]
    assert s.conn.mail_from is None


def test_first_line_too_long_is_refused():
    s = data_session()
    assert codes(s.send(b"a" * 999 + b"\r\n.\r\n")) == ["500 5.5.6"]


def test_stuffed_dot_does_not_count_toward_line_length():
    s = data_session()
    assert codes(s.send(b"." + b"." * 998 + b"\r\n.\r\n")) == ["250 2.0.0"]
    assert messages(s) == [b"." * 998 + b"\r\n"]


def test_message_of_exactly_max_size_is_accepted():
    s = data_session(max_message_size=100)
    body = b"x" * 98 + b"\r\n"
    assert codes(s.send(body + b".\r\n")) == ["250 2.0.0"]
    assert len(messages(s)[0]) == 100


def test_message_over_max_size_gets_552_at_its_end():
    s = data_session(max_message_size=100)
    assert codes(s.send(b"x" * 99 + b"\r\n.\r\n")) == ["552 5.3.4"]
    assert s.conn.mail_from is None and s.conn.errors == 0


def test_stuffed_dots_do_not_count_toward_the_size():
    s = data_session(max_message_size=100)
    lines = b"..x\r\n" * 25  # 125 octets on the wire, 100 unstuffed
    for i in range(0, len(lines), 7):
        s.send(lines[i : i + 7])
    assert codes(s.send(b".\r\n")) == ["250 2.0.0"]
    assert len(messages(s)[0]) == 100


def test_oversized_message_is_not_buffered_while_streaming():
    s = data_session(max_message_size=10_000)
    chunk = b"y" * 1022 + b"\r\n"
    for _ in range(1000):  # about 1 MB
        assert s.send(chunk) == b""
        assert len(s.conn._buffer) < 20_000  # noqa: SLF001 -- the bound is the point
    assert codes(s.send(b".\r\nNOOP\r\n")) == ["552 5.3.4", "250 2.0.0"]


def test_oversized_message_terminator_split_across_reads_is_found():
    s = data_session(max_message_size=10)
    s.send(b"z" * 100 + b"\r\n")
    s.send(b"z" * 100 + b"\r")
    s.send(b"\n.")
    assert codes(s.send(b"\r\nNOOP\r\n")) == ["552 5.3.4", "250 2.0.0"]


def test_eof_in_the_middle_of_data_reports_connection_closed():
    s = data_session()
    s.send(b"partial message\r\n")
    assert s.close() == b""
    assert isinstance(s.events[-1], ev.ConnectionClosed)
    assert not s.of_type(ev.MessageComplete)
    assert s.conn.closed


def test_421_during_data_closes():
    s = data_session()
    s.send(b"partial")
    assert s.conn.send(R.TIMEOUT).startswith(b"421 4.4.2")
    assert s.conn.closed


def test_data_after_bdat_in_one_transaction_gets_503():
    s = in_transaction()
    out = s.send(b"BDAT 3\r\nabcDATA\r\n")
    assert codes(out) == ["250 2.0.0", "503 5.5.1"]
