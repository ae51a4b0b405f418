"""The real daemon, driven by swaks: plain, pipelined, STARTTLS."""

import subprocess

import pytest

from .conftest import restored_spool, tool


def swaks(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("swaks"), "--server", f"{daemon.host}:{daemon.port}", "--from", "sender@example.com",
         "--helo", "swaks.example", "--timeout", "20", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_plain(daemon):
    result = swaks(daemon, "--to", "user@example.net", "--add-header", "X-Tenant: acme")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 OK ids=" in result.stdout
    daemon.stop()
    (message,) = restored_spool(daemon.spool_path).messages
    assert message.recipient == "user@example.net"
    assert message.tenant == "acme"
    assert message.queue == "acme@example.net"


def test_pipelined(daemon):
    result = swaks(daemon, "--pipeline", "--to", "a@example.net,b@example.net,c@example.org")
    assert result.returncode == 0, result.stdout + result.stderr
    # swaks writes MAIL, the RCPTs and DATA before reading any reply when PIPELINING is offered.
    assert (
        " -> MAIL FROM:<sender@example.com>\n -> RCPT TO:<a@example.net>\n -> RCPT TO:<b@example.net>\n"
        " -> RCPT TO:<c@example.org>\n -> DATA\n<-  250 2.1.0"
    ) in result.stdout.replace("\r", "")
    daemon.stop()
    assert sorted(m.recipient for m in restored_spool(daemon.spool_path).messages) == [
        "a@example.net", "b@example.net", "c@example.org"]


def test_starttls(make_daemon, tls_files):
    cert, key = tls_files
    d = make_daemon(extra_listener=f'tls_certificate = "{cert}"\ntls_private_key = "{key}"').start()
    result = swaks(d, "--tls", "--to", "user@example.net")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS" in result.stdout
    assert "TLS started" in result.stdout
    d.stop()
    (message,) = restored_spool(d.spool_path).messages
    assert message.reception.protocol == "ESMTPS"
    assert message.reception.tls and message.reception.tls.startswith("TLS")


@pytest.mark.parametrize("flag", ["--tls", "--tls-on-connect"])
def test_tls_refused_without_certificate(daemon, flag):
    result = swaks(daemon, flag, "--to", "user@example.net")
    assert result.returncode != 0
    daemon.stop()
    assert restored_spool(daemon.spool_path).messages == []
