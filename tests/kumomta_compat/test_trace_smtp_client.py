"""`trimta trace-smtp-client` (kcli's verb) against a real daemon delivering to a real
SMTP receiver (aiosmtpd): the session as it happens, and the filters' refusals."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.interop.conftest import Daemon
from tests.kumomta_compat.daemon import ACCEPT_ADDRESS, StallingListener, call, start_daemon


class Accepting:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 queued here"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    stall = StallingListener()
    receiver = Controller(Accepting(), hostname=ACCEPT_ADDRESS, port=stall.port)
    receiver.start()
    d = start_daemon(tmp_path_factory.mktemp("trace"), stall.port)
    try:
        yield d
    finally:
        d.stop()
        receiver.stop()
        stall.close()


def trimta(daemon: Daemon, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trimta", "--endpoint", f"http://127.0.0.1:{daemon.http_port}",
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_one_session_traced_live_as_kcli_shows_it(daemon):
    tracer = trimta(daemon, "trace-smtp-client", "--domain", "ok.example", "--only-one")
    try:
        assert tracer.stderr.readline() == "tracing outgoing SMTP sessions (Ctrl-C to stop)\n"
        status, answer = call(daemon, "POST", "/api/inject/v1", {
            "envelope_sender": "app@sender.example", "content": "Subject: traced\n\nHello\n",
            "recipients": ["x@ok.example"], "tenant": "acme"})
        assert status == 200, answer
        out, err = tracer.communicate(timeout=60)
    finally:
        tracer.kill()
    assert tracer.returncode == 0, err
    lines = out.splitlines()
    tag = lines[0].split()[0]
    assert all(line.startswith(tag + " ") for line in lines)  # one session
    assert f"connected to [{ACCEPT_ADDRESS}][{ACCEPT_ADDRESS}]:" in lines[0] and "from unspecified" in lines[0]
    assert any(line.startswith(f"{tag} <- 220 ") for line in lines)
    assert any(line.startswith(f"{tag} -> EHLO mx.trimta.test") for line in lines)
    assert f"{tag} === message from <app@sender.example> to <x@ok.example> (tenant=acme, egress_pool=unspecified," \
           f" ready_queue=unspecified->{ACCEPT_ADDRESS}@smtp_client)" in lines
    assert f"{tag} -> Subject: traced" in lines
    assert any(line.startswith(f"{tag} <- 250 2.0.0 queued here") for line in lines)
    assert lines[-1] == f"{tag} === Closed"


def test_a_bad_filter_is_refused_in_one_line(daemon):
    tracer = trimta(daemon, "trace-smtp-client", "--source", "10.0.0.300")
    out, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 1 and out == ""
    assert err == ("trimta trace-smtp-client: refused (HTTP 400): source: expected an address or a CIDR like "
                   "10.0.0.0/8: '10.0.0.300' does not appear to be an IPv4 or IPv6 network\n")


def test_trace_smtp_server_shows_an_incoming_session(daemon):
    import smtplib

    tracer = trimta(daemon, "trace-smtp-server", "--source", "127.0.0.0/8", "--only-one")
    try:
        assert tracer.stderr.readline() == "tracing incoming SMTP sessions (Ctrl-C to stop)\n"
        with smtplib.SMTP(daemon.host, daemon.port, timeout=20) as smtp:
            smtp.ehlo("client.example")
            smtp.sendmail("a@client.example", ["r@example.org"], b"Subject: in\r\n\r\nHello\r\n")
        out, err = tracer.communicate(timeout=60)
    finally:
        tracer.kill()
    assert tracer.returncode == 0, err
    lines = out.splitlines()
    tag = lines[0].split()[0]
    assert "connection from 127.0.0.1 to listener" in lines[0]
    assert lines[1].startswith(f"{tag} <- 220 mx.trimta.test")
    assert f"{tag} -> ehlo client.example" in lines
    assert f"{tag} -> rcpt TO:<r@example.org>" in lines and f"{tag} -> Subject: in" in lines  # smtplib's case
    assert any(line.startswith(f"{tag} <- 250 ") and "ids=" in line for line in lines)
    assert lines[-1] == f"{tag} === Closed"


def test_trace_smtp_server_filters_by_source_only(daemon):
    tracer = trimta(daemon, "trace-smtp-server", "--source", "::1")
    try:
        assert tracer.stderr.readline() == "tracing incoming SMTP sessions (Ctrl-C to stop)\n"
    finally:
        tracer.kill()
        tracer.communicate(timeout=10)
    status, answer = call(daemon, "GET", "/api/admin/trace-smtp-server/v1?domain=example.org")
    assert status == 400 and answer["error"] == "domain: trace-smtp-server filters by source only"

