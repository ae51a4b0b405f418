"""Attacks on the real daemon over raw sockets: SMTP smuggling, STARTTLS injection."""

import socket
import ssl
import subprocess

import pytest

from .conftest import restored_spool, tool


class Wire:
    """A raw SMTP client that reads replies exactly as the server wrote them."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buffer = b""

    def reply(self) -> bytes:
        """One complete (possibly multiline) reply."""
        while True:
            lines = self.buffer.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    out = b"\r\n".join(lines[: i + 1]) + b"\r\n"
                    self.buffer = self.buffer[len(out):]
                    return out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buffer!r}")
            self.buffer += chunk

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


SMUGGLING_VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r"]


@pytest.mark.parametrize("end", SMUGGLING_VARIANTS, ids=repr)
def test_smuggled_message_is_never_accepted(daemon, end):
    wire = Wire(daemon.host, daemon.port)
    assert wire.reply().startswith(b"220 ")
    wire.send(b"EHLO attacker.example\r\n")
    assert wire.reply().startswith(b"250")
    wire.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n")
    assert wire.reply().startswith(b"250")
    assert wire.reply().startswith(b"250")
    assert wire.reply().startswith(b"354")
    smuggled = (
        b"Subject: real\r\n\r\nhello" + end
        + b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    wire.send(smuggled)
    first = wire.reply()
    # The fake end is not an end: everything up to the real CRLF.CRLF is one message,
    # refused for its bare line ending; no command inside it ran.
    assert first.startswith(b"554 5.6.0"), first
    wire.send(b"QUIT\r\n")
    assert wire.reply().startswith(b"221")
    wire.close()
    daemon.stop()
    assert restored_spool(daemon.spool_path).messages == []


def test_commands_pipelined_after_starttls_are_not_executed(make_daemon, tls_files):
    cert, key = tls_files
    d = make_daemon(extra_listener=f'tls_certificate = "{cert}"\ntls_private_key = "{key}"').start()
    wire = Wire(d.host, d.port)
    wire.reply()
    wire.send(b"EHLO attacker.example\r\n")
    assert b"STARTTLS" in wire.reply()
    # The injection: plaintext commands in the same packet as STARTTLS.
    wire.send(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
    assert wire.reply().startswith(b"220")
    assert wire.buffer == b""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(wire.sock, server_hostname="localhost")
    wire.sock = tls
    # If the injected MAIL had run, this RCPT would be accepted (and a 250 for the MAIL
    # would arrive first). After TLS, state is fresh: RCPT is out of sequence.
    tls.sendall(b"RCPT TO:<user@example.net>\r\n")
    assert wire.reply().startswith(b"503")
    tls.sendall(b"EHLO attacker.example\r\n")
    ehlo = wire.reply()
    assert b"STARTTLS" not in ehlo  # not offered again inside TLS
    tls.sendall(b"MAIL FROM:<a@example.com>\r\n")
    assert wire.reply().startswith(b"250")
    tls.sendall(b"QUIT\r\n")
    assert wire.reply().startswith(b"221")
    wire.close()


def test_openssl_s_client_starttls_handshake(make_daemon, tls_files):
    cert, key = tls_files
    d = make_daemon(extra_listener=f'tls_certificate = "{cert}"\ntls_private_key = "{key}"').start()
    result = subprocess.run(
        [tool("openssl"), "s_client", "-starttls", "smtp", "-connect", f"{d.host}:{d.port}",
         "-servername", "localhost", "-quiet", "-ign_eof"],
        input=b"EHLO tls.example\r\nQUIT\r\n", capture_output=True, timeout=30,
    )
    out = result.stdout.replace(b"\r", b"")
    assert b"250-mx.trimta.test" in out or b"250 mx.trimta.test" in out
    assert b"STARTTLS" not in out.split(b"250-", 1)[-1]
    assert b"221 " in out


def test_over_long_command_line_gets_500_and_session_continues(daemon):
    wire = Wire(daemon.host, daemon.port)
    wire.reply()
    wire.send(b"EHLO " + b"a" * 2000 + b"\r\n")
    assert wire.reply().startswith(b"500 5.5.6")
    wire.send(b"NOOP\r\n")
    assert wire.reply().startswith(b"250")
    wire.close()


def test_max_connections_answers_421(make_daemon):
    d = make_daemon(extra_listener="max_connections = 2").start()
    first, second = Wire(d.host, d.port), Wire(d.host, d.port)
    assert first.reply().startswith(b"220")
    assert second.reply().startswith(b"220")
    third = Wire(d.host, d.port)
    assert third.reply().startswith(b"421 4.3.2")
    for w in (first, second, third):
        w.close()
