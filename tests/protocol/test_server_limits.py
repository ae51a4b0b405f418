"""Per-session limits: command line length (RFC 5321 4.5.3.1.4), recipients
(4.5.3.1.10), the error cap and the messages-per-connection cap."""

from __future__ import annotations

from trimta.protocol import events as ev
from trimta.protocol import replies as R

from .server_driver import Session, codes, in_transaction, ready


def test_command_line_of_512_octets_is_read():
    s = Session()
    line = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(line) == 512
    assert codes(s.send(line)) == ["250 2.0.0"]


def test_command_line_of_513_octets_gets_500_5_5_6_and_session_continues():
    s = Session()
    line = b"NOOP " + b"x" * (513 - 7) + b"\r\n"
    assert codes(s.send(line + b"NOOP\r\n")) == ["500 5.5.6", "250 2.0.0"]


def test_long_line_is_refused_before_its_end_arrives_and_not_buffered():
    s = Session()
    out = s.send(b"MAIL FROM:<" + b"a" * 600)
    assert codes(out) == ["500 5.5.6"]
    for _ in range(100):
        assert s.send(b"b" * 10_000) == b""
        assert len(s.conn._buffer) <= 10_000  # noqa: SLF001 -- the bound is the point
    # The rest of the long line, up to its LF, is dropped; the next line is a command.
    assert codes(s.send(b"c>\r\nNOOP\r\n")) == ["250 2.0.0"]
    assert not s.of_type(ev.MailFrom)


def test_rcpt_beyond_limit_gets_452():
    s = ready(max_recipients=3)
    script = b"MAIL FROM:<a@example.com>\r\n" + b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(5))
    out = s.send(script)
    assert codes(out) == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3", "452 4.5.3"]
    assert len(s.conn.recipients) == 3
    assert s.conn.errors == 0  # clients are expected to retry these later


def test_refused_recipients_do_not_count_toward_the_limit():
    s = ready(max_recipients=1, answer=lambda e: R.RELAY_DENIED if isinstance(e, ev.RcptTo) and "no" in e.address else None)
    out = s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<no@example.net>\r\nRCPT TO:<yes@example.net>\r\n")
    assert codes(out) == ["250 2.1.0", "550 5.7.1", "250 2.1.5"]


def test_errors_beyond_cap_get_421_and_close():
    s = Session(max_errors=3)
    out = s.send(b"BOGUS\r\n" * 5)
    assert codes(out) == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]
    assert s.conn.closed
    assert s.conn.errors == 4


def test_policy_refusals_do_not_count_as_errors():
    s = in_transaction(max_errors=1, max_recipients=1, max_message_size=10)
    out = s.send(b"RCPT TO:<x@example.net>\r\n" * 3 + b"RSET\r\nMAIL FROM:<a@example.com> SIZE=11\r\n")
    assert codes(out) == ["452 4.5.3"] * 3 + ["250 2.0.0", "552 5.3.4"]
    assert not s.conn.closed


def test_messages_beyond_per_connection_cap_get_421_at_next_mail():
    s = ready(max_messages_per_connection=2)
    one = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    out = s.send(one + b"x\r\n.\r\n" + one + b"y\r\n.\r\n")
    assert codes(out) == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"] * 2
    out = s.send(one)
    assert codes(out) == ["421 4.7.0"]
    assert s.conn.closed and s.conn.messages_accepted == 2


def test_zero_means_no_limit():
    s = ready(max_recipients=0, max_errors=0, max_message_size=0)
    s.send(b"MAIL FROM:<a@example.com>\r\n")
    out = s.send(b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(2000)))
    assert len(s.conn.recipients) == 2000
    assert codes(s.send(b"BOGUS\r\n" * 50)) == ["500 5.5.2"] * 50
    assert not s.conn.closed
    assert out.count(b"250 2.1.5") == 2000
