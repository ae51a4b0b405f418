"""MAIL FROM and RCPT TO: address grammar (RFC 5321 4.1.2, RFC 6531) and parameters
(RFC 1870 SIZE, RFC 1652 BODY, RFC 6531 SMTPUTF8, RFC 4954 AUTH)."""

from __future__ import annotations

import pytest

from trimta.protocol import events as ev

from .server_driver import codes, in_transaction, ready, replies


def mail(line: bytes, **config):
    s = ready(**config)
    out = s.send(line + b"\r\n")
    return codes(out), s


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (b"MAIL FROM:<a@example.com>", "a@example.com"),
        (b"MAIL FROM: <a@example.com>", "a@example.com"),
        (b"MAIL FROM:<>", ""),
        (b"MAIL FROM:<@relay.example,@other.example:a@example.com>", "a@example.com"),
        (b'MAIL FROM:<"john doe"@example.com>', '"john doe"@example.com'),
        (b'MAIL FROM:<"a>b\\"c"@example.com>', '"a>b\\"c"@example.com'),
        (b"MAIL FROM:<first.last+tag@sub.example.com>", "first.last+tag@sub.example.com"),
        (b"MAIL FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        (b"MAIL FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
    ],
)
def test_mail_from_accepts_rfc5321_paths(line, address):
    result, s = mail(line)
    assert result == ["250 2.1.0"]
    assert s.conn.mail_from.address == address


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:a@example.com",
        b"MAIL FROM <a@example.com>",
        b"MAIL TO:<a@example.com>",
        b"MAIL FROM:<a@example.com>SIZE=10",
        b"MAIL FROM:<a@example.com",
        b"MAIL",
    ],
)
def test_malformed_mail_command_gets_501_5_5_4(line):
    assert mail(line)[0] == ["501 5.5.4"]


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@>",
        b"MAIL FROM:<@example.com>",
        b"MAIL FROM:<a..b@example.com>",
        b"MAIL FROM:<a@-example.com>",
        b"MAIL FROM:<a@[300.1.1.1]>",
        b"MAIL FROM:<a@[IPv6:zz::1]>",
        b"MAIL FROM:<a b@example.com>",
        b"MAIL FROM:<a@example.com@example.org>",
    ],
)
def test_bad_sender_address_gets_501_5_1_7(line):
    result, s = mail(line)
    assert result == ["501 5.1.7"]
    assert s.conn.mail_from is None


def test_sender_path_longer_than_256_octets_gets_501_5_1_3():
    local = b"a" * 64
    domain = b".".join([b"d" * 60] * 4)  # 243 octets
    ok = b"<" + local[:10] + b"@" + domain + b">"
    assert len(ok) <= 256
    assert mail(b"MAIL FROM:" + ok)[0] == ["250 2.1.0"]
    too_long = b"<" + local + b"@" + domain + b">"
    assert len(too_long) > 256
    assert mail(b"MAIL FROM:" + too_long)[0] == ["501 5.1.3"]


def test_mail_parameters_are_parsed():
    result, s = mail(b"MAIL FROM:<a@example.com> SIZE=1000 BODY=8bitmime AUTH=<>")
    assert result == ["250 2.1.0"]
    assert s.events[-1] == ev.MailFrom(
        "a@example.com", size=1000, body="8BITMIME", params={"SIZE": "1000", "BODY": "8bitmime", "AUTH": "<>"}
    )


def test_size_larger_than_maximum_gets_552_at_mail():
    result, s = mail(b"MAIL FROM:<a@example.com> SIZE=1001", max_message_size=1000)
    assert result == ["552 5.3.4"]
    assert s.conn.errors == 0
    assert mail(b"MAIL FROM:<a@example.com> SIZE=1000", max_message_size=1000)[0] == ["250 2.1.0"]


def test_size_is_not_checked_when_unlimited():
    assert mail(b"MAIL FROM:<a@example.com> SIZE=99999999999", max_message_size=0)[0] == ["250 2.1.0"]


@pytest.mark.parametrize(
    ("param", "code"),
    [
        (b"SIZE=abc", "501 5.5.4"),
        (b"SIZE", "501 5.5.4"),
        (b"BODY=BINARYMIME", "555 5.5.4"),
        (b"BODY", "501 5.5.4"),
        (b"SMTPUTF8=yes", "501 5.5.4"),
        (b"RET=FULL", "555 5.5.4"),
        (b"X-UNKNOWN", "555 5.5.4"),
        (b"SIZE=1 SIZE=2", "501 5.5.4"),
        (b"=x", "501 5.5.4"),
    ],
)
def test_bad_mail_parameters_are_refused(param, code):
    result, s = mail(b"MAIL FROM:<a@example.com> " + param)
    assert result == [code]
    assert s.conn.mail_from is None


def test_non_ascii_sender_requires_smtputf8():
    address = "jos\u00e9@ex\u00e4mple.com".encode()
    assert mail(b"MAIL FROM:<" + address + b">")[0] == ["553 5.6.7"]
    result, s = mail(b"MAIL FROM:<" + address + b"> SMTPUTF8")
    assert result == ["250 2.1.0"]
    assert s.conn.mail_from.address == "jos\u00e9@ex\u00e4mple.com"
    assert s.conn.mail_from.smtputf8


def test_non_ascii_recipient_requires_smtputf8_on_the_transaction():
    rcpt = "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a".encode()
    s = ready()
    out = s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<" + rcpt + b">\r\nRSET\r\n")
    assert codes(out) == ["250 2.1.0", "553 5.6.7", "250 2.0.0"]
    out = s.send(b"MAIL FROM:<a@example.com> SMTPUTF8\r\nRCPT TO:<" + rcpt + b">\r\n")
    assert codes(out) == ["250 2.1.0", "250 2.1.5"]
    assert s.conn.recipients[0].address == rcpt.decode()


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (b"RCPT TO:<b@example.net>", "b@example.net"),
        (b"RCPT TO: <b@example.net>", "b@example.net"),
        (b"RCPT TO:<@hop.example:b@example.net>", "b@example.net"),
        (b"RCPT TO:<Postmaster>", "Postmaster"),
        (b"RCPT TO:<postmaster@example.net>", "postmaster@example.net"),
        (b'RCPT TO:<"quoted local"@example.net>', '"quoted local"@example.net'),
    ],
)
def test_rcpt_to_accepts_rfc5321_paths(line, address):
    s = in_transaction("first@example.net")
    assert codes(s.send(line + b"\r\n")) == ["250 2.1.5"]
    assert s.conn.recipients[-1].address == address


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"RCPT TO:<>", "501 5.1.3"),
        (b"RCPT TO:<b@>", "501 5.1.3"),
        (b"RCPT TO:b@example.net", "501 5.5.4"),
        (b"RCPT FROM:<b@example.net>", "501 5.5.4"),
        (b"RCPT TO:<b@example.net> NOTIFY=NEVER", "555 5.5.4"),
    ],
)
def test_bad_rcpt_is_refused(line, code):
    s = in_transaction("first@example.net")
    assert codes(s.send(line + b"\r\n")) == [code]
    assert len(s.conn.recipients) == 1


def test_recipient_path_longer_than_256_octets_gets_501_5_1_3():
    s = in_transaction("first@example.net")
    path = b"<" + b"a" * 60 + b"@" + b".".join([b"d" * 60] * 4) + b">"
    out = s.send(b"RCPT TO:" + path + b"\r\n")
    assert replies(out) == ["501 5.1.3 Path too long"]
