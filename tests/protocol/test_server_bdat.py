"""BDAT (RFC 3030 CHUNKING): chunks by octet count, pipelined with commands."""

from __future__ import annotations

from trimta.protocol import events as ev
from trimta.protocol import replies as R

from .server_driver import codes, in_transaction, ready


def bdat(chunk: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def test_pipelined_chunks_with_last_make_one_message():
    s = in_transaction()
    out = s.send(bdat(b"Subject: x\r\n") + bdat(b"\r\nHello, ") + bdat(b"world\r\n", last=True) + b"QUIT\r\n")
    assert codes(out) == ["250 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"]
    assert s.of_type(ev.BdatChunk) == [ev.BdatChunk(12), ev.BdatChunk(9)]
    (message,) = s.of_type(ev.MessageComplete)
    assert message.data == b"Subject: x\r\n\r\nHello, world\r\n"
    assert s.conn.messages_accepted == 1


def test_a_nul_in_any_chunk_refuses_the_message_at_last():
    s = in_transaction()
    out = s.send(bdat(b"Subject: x\r\n\r\na\r\n\x00") + bdat(b".\r\nb\r\n", last=True) + b"NOOP\r\n")
    assert codes(out) == ["250 2.0.0", "554 5.6.0", "250 2.0.0"]
    assert not s.of_type(ev.MessageComplete)
    assert s.conn.mail_from is None


def test_bdat_last_ends_the_transaction():
    s = in_transaction()
    out = s.send(bdat(b"body\r\n", last=True) + b"RCPT TO:<x@example.net>\r\n")
    assert codes(out) == ["250 2.0.0", "503 5.5.1"]
    assert s.conn.mail_from is None


def test_chunk_octets_that_look_like_commands_are_data():
    s = in_transaction()
    payload = b"QUIT\r\n.\r\nRSET\r\n"
    out = s.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
    assert codes(out) == ["250 2.0.0"]
    assert s.of_type(ev.MessageComplete)[0].data == payload
    assert not s.of_type(ev.Quit) and not s.of_type(ev.Reset)


def test_chunk_split_across_many_reads():
    s = in_transaction()
    wire = b"BDAT 10 LAST\r\n0123456789NOOP\r\n"
    out = b"".join(s.send(wire[i : i + 3]) for i in range(0, len(wire), 3))
    assert codes(out) == ["250 2.0.0", "250 2.0.0"]
    assert s.of_type(ev.MessageComplete)[0].data == b"0123456789"


def test_bdat_zero_last_ends_the_message():
    s = in_transaction()
    out = s.send(b"BDAT 4\r\nabc\nBDAT 0 LAST\r\n")
    assert codes(out) == ["250 2.0.0", "554 5.6.0"]  # "abc\n" has a bare LF
    out = s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT 5\r\nabc\r\nBDAT 0 LAST\r\n")
    assert codes(out)[-1] == "250 2.0.0"
    assert s.of_type(ev.MessageComplete)[0].data == b"abc\r\n"


def test_bdat_without_recipients_consumes_the_chunk_and_gets_554():
    s = ready(answer=lambda e: R.RELAY_DENIED if isinstance(e, ev.RcptTo) else None)
    out = s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert codes(out) == ["250 2.1.0", "550 5.7.1", "554 5.5.1", "250 2.0.0"]
    assert not s.of_type(ev.Quit)
    assert s.conn.mail_from is None


def test_bdat_without_mail_consumes_the_chunk_and_gets_503():
    s = ready()
    out = s.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert codes(out) == ["503 5.5.1", "250 2.0.0"]
    assert not s.of_type(ev.Quit)


def test_bdat_with_bad_size_gets_501():
    s = in_transaction()
    assert codes(s.send(b"BDAT ten\r\nBDAT\r\nBDAT 5 FIRST\r\n")) == ["501 5.5.4"] * 3


def test_chunks_beyond_max_size_are_refused_with_552_and_consumed():
    s = in_transaction(max_message_size=10)
    out = s.send(b"BDAT 6\r\n123456BDAT 6\r\n789012BDAT 1 LAST\r\nxNOOP\r\n")
    assert codes(out) == ["250 2.0.0", "552 5.3.4", "552 5.3.4", "250 2.0.0"]
    assert s.conn.mail_from is None and s.conn.errors == 0
    assert not s.of_type(ev.MessageComplete)


def test_huge_refused_chunk_is_not_buffered():
    s = in_transaction(max_message_size=1000)
    s.send(b"BDAT 5000000 LAST\r\n")
    for _ in range(76):
        s.send(b"z" * 65536)
        assert len(s.conn._buffer) == 0  # noqa: SLF001 -- the bound is the point
    out = s.send(b"z" * (5_000_000 - 76 * 65536) + b"NOOP\r\n")
    assert codes(out) == ["552 5.3.4", "250 2.0.0"]


def test_refused_chunk_fails_the_transaction_until_last():
    answers = iter([R.SPOOL_ERROR])
    s = in_transaction(answer=lambda e: next(answers) if isinstance(e, ev.BdatChunk) else None)
    out = s.send(b"BDAT 3\r\nabcBDAT 3\r\ndefBDAT 2 LAST\r\n\r\n")
    assert codes(out) == ["452 4.3.1", "452 4.3.1", "452 4.3.1"]
    assert s.conn.mail_from is None


def test_rcpt_after_bdat_gets_503():
    s = in_transaction()
    assert codes(s.send(b"BDAT 3\r\nabcRCPT TO:<x@example.net>\r\n")) == ["250 2.0.0", "503 5.5.1"]


def test_long_line_in_bdat_content_is_refused():
    s = in_transaction()
    payload = b"a" * 999 + b"\r\n"
    assert codes(s.send(b"BDAT %d LAST\r\n" % len(payload) + payload)) == ["500 5.5.6"]


def test_eof_in_the_middle_of_a_chunk_reports_connection_closed():
    s = in_transaction()
    s.send(b"BDAT 100\r\nonly some")
    s.close()
    assert isinstance(s.events[-1], ev.ConnectionClosed)
