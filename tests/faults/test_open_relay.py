"""Open relay, every form, from a client outside relay_hosts: every recipient gets 5xx.

The daemon trusts only 127.0.0.1 (``relay_hosts``); the client connects from
127.0.0.9, so it is the stranger on the Internet. Each form below has made some MTA
an open relay at some time: quoted local parts hiding an address, the %-hack, bang
paths, source routes, address literals (its own address above all), international
domains in both forms, case and trailing-dot variants. None may get a 2xx, and
nothing reaches the spool.
"""

from __future__ import annotations

import socket

import pytest

from tests.interop.test_security import Wire

from .conftest import Daemon, free_port, record_fault, restored_spool

FORMS = [
    "victim@example.org",
    "VICTIM@EXAMPLE.ORG.",
    '"victim@example.org"',
    '"victim@example.org"@mx.trimta.test',
    '"victim%example.org"@mx.trimta.test',
    '"victim@example.org"@[127.0.0.1]',
    "victim%example.org@mx.trimta.test",
    "victim%example.org@[127.0.0.1]",
    "victim%example.org%mx.trimta.test@mx.trimta.test",
    "example.org!victim@mx.trimta.test",
    "@mx.trimta.test:victim@example.org",
    "@a.example,@b.example:user@c.example",
    "victim@[127.0.0.1]",
    "victim@[127.0.0.9]",
    "victim@[192.0.2.1]",
    "victim@[IPv6:::1]",
    "victim@localhost",
    "victim@mx.trimta.test",
    "victim@bücher.example",
    "victim@xn--bcher-kva.example",
    "victim@faß.example",
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(directory=tmp_path_factory.mktemp("open-relay"), port=free_port(),
               extra_listener='relay_hosts = ["127.0.0.1/32"]\n')
    d.start()
    yield d
    d.stop()


class Stranger(Wire):
    """A raw SMTP client connecting from 127.0.0.9, outside relay_hosts."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30, source_address=("127.0.0.9", 0))
        self.buffer = b""


@pytest.mark.parametrize("recipient", FORMS)
def test_every_open_relay_form_is_refused_with_5xx(daemon, recipient):
    wire = Stranger(daemon.host, daemon.port)
    assert wire.reply().startswith(b"220 ")
    wire.send(b"EHLO stranger.example\r\n")
    assert wire.reply().startswith(b"250")
    utf8 = b" SMTPUTF8" if not recipient.isascii() else b""
    wire.send(b"MAIL FROM:<spammer@example.com>" + utf8 + b"\r\n")
    assert wire.reply().startswith(b"250")
    wire.send(b"RCPT TO:<" + recipient.encode() + b">\r\n")
    answer = wire.reply()
    assert answer[:1] == b"5", (recipient, answer)
    wire.send(b"DATA\r\n")
    assert wire.reply()[:1] == b"5"  # no recipient: no data either
    wire.send(b"QUIT\r\n")
    wire.reply()
    wire.close()


def test_nothing_from_the_stranger_reached_the_spool(daemon):
    daemon.stop()
    assert restored_spool(daemon.spool_path).messages == []
    record_fault(f"open relay, {len(FORMS)} forms, from outside relay_hosts",
                 "5xx to every RCPT and to DATA; spool empty", sessions=len(FORMS), tracebacks=0)
