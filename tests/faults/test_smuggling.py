"""SMTP smuggling against the real daemon: every hannob/smtpsmug end-of-data variant.

Each look-alike of CRLF.CRLF, NUL-padded ones included, must neither end the message
nor let the commands after it run: the message is refused whole (``554 5.6.0``) at
the real end, and nothing reaches the spool. By DATA and by BDAT.
"""

from __future__ import annotations

import pytest

from tests.interop.test_security import Wire

from .conftest import restored_spool

# hannob/smtpsmug's tests, by its names (the "pipelining" one is not an end variant).
SMTPSMUG = {
    "lflf": b"\n.\n",
    "crcr": b"\r.\r",
    "crlf": b"\r.\n",
    "lfcr": b"\n.\r",
    "lfcrlf": b"\n.\r\n",
    "crlflf": b"\r\n.\n",
    "crcrlf": b"\r.\r\n",
    "crlfcr": b"\r\n.\r",
    "nullbefore": b"\r\n\x00.\r\n",
    "nullafter": b"\r\n.\x00\r\n",
}

SMUGGLED = (b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil\r\n")


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    from .conftest import Daemon, free_port

    d = Daemon(directory=tmp_path_factory.mktemp("smuggling"), port=free_port()).start()
    yield d
    d.stop()


def _open_transaction(daemon) -> Wire:
    wire = Wire(daemon.host, daemon.port)
    assert wire.reply().startswith(b"220 ")
    wire.send(b"EHLO attacker.example\r\n")
    assert b"CHUNKING" in wire.reply()
    wire.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<victim@example.net>\r\n")
    assert wire.reply().startswith(b"250")
    assert wire.reply().startswith(b"250")
    return wire


@pytest.mark.parametrize("end", SMTPSMUG.values(), ids=SMTPSMUG.keys())
def test_smtpsmug_variant_by_data_is_refused_whole(shared_daemon, end):
    wire = _open_transaction(shared_daemon)
    wire.send(b"DATA\r\n")
    assert wire.reply().startswith(b"354")
    wire.send(b"Subject: real\r\n\r\nThis is a test mail with a bad ending." + end + SMUGGLED + b".\r\nNOOP\r\n")
    assert wire.reply().startswith(b"554 5.6.0 ")
    assert wire.reply().startswith(b"250 ")  # the NOOP: the session goes on, no command ran
    wire.send(b"QUIT\r\n")
    assert wire.reply().startswith(b"221")
    wire.close()


@pytest.mark.parametrize("end", SMTPSMUG.values(), ids=SMTPSMUG.keys())
def test_smtpsmug_variant_by_bdat_is_refused_whole(shared_daemon, end):
    wire = _open_transaction(shared_daemon)
    chunk = b"Subject: real\r\n\r\nbad ending" + end + SMUGGLED
    wire.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert wire.reply().startswith(b"554 5.6.0 ")
    assert wire.reply().startswith(b"250 ")
    wire.send(b"QUIT\r\n")
    assert wire.reply().startswith(b"221")
    wire.close()


def test_nothing_smuggled_reached_the_spool(shared_daemon):
    # Runs after the variants above (same module, same daemon): a clean message still
    # goes through, and it is the only thing in the spool.
    wire = _open_transaction(shared_daemon)
    wire.send(b"DATA\r\n")
    assert wire.reply().startswith(b"354")
    wire.send(b"Subject: clean\r\n\r\nfine\r\n.\r\nQUIT\r\n")
    assert wire.reply().startswith(b"250 ")
    wire.close()
    shared_daemon.stop()
    messages = restored_spool(shared_daemon.spool_path).messages
    assert [m.recipient for m in messages] == ["victim@example.net"]
