"""The real daemon shaped and operated: connection_limit on real sockets, a tenant
suspended through the HTTP API while another flows, shaping reloaded through the API."""

from __future__ import annotations

import http.client
import json
import smtplib
import subprocess
import sys
import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from tests.dnsmasq import Dnsmasq

from .conftest import ROOT, free_port
from .test_delivery_e2e import wait_for

ZONE = ["--mx-host=ops.test,mx.ops.test,10", "--host-record=mx.ops.test,127.0.0.41",
        # a host that takes the connection and never greets: its ready queue stays open
        "--mx-host=stall.ops.test,mx.stall.ops.test,10", "--host-record=mx.stall.ops.test,127.0.0.42"]


class CountingSMTP(SMTP):
    """aiosmtpd's server, counting how many connections are open at once."""

    lock = threading.Lock()
    open = 0
    peak = 0

    def connection_made(self, transport):
        with CountingSMTP.lock:
            CountingSMTP.open += 1
            CountingSMTP.peak = max(CountingSMTP.peak, CountingSMTP.open)
        super().connection_made(transport)

    def connection_lost(self, exc):
        with CountingSMTP.lock:
            CountingSMTP.open -= 1
        super().connection_lost(exc)


class SlowRecorder:
    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        await asyncio.sleep(0.05)
        self.recipients.extend(envelope.rcpt_tos)
        return "250 2.0.0 OK"


class CountingController(Controller):
    def factory(self):
        return CountingSMTP(self.handler)


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    CountingSMTP.open = CountingSMTP.peak = 0
    handler = SlowRecorder()
    port = free_port("127.0.0.41")
    controller = CountingController(handler, hostname="127.0.0.41", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def daemon_for(make_daemon, dns, port, extra=""):
    return make_daemon(
        dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"',
        extra_config=f"""
[egress.default]
smtp_port = {port}
prohibited_hosts = []
enable_tls = "Disabled"
{extra}
""",
    ).start()


def api(daemon, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=10)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else {}


def test_connection_limit_holds_on_real_sockets(make_daemon, dns, receiver):
    handler, port = receiver
    d = daemon_for(make_daemon, dns, port, '[egress.domains."ops.test"]\nconnection_limit = 3\n'
                                           'max_deliveries_per_connection = 5\n')
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        for i in range(40):
            client.sendmail("s@example.com", [f"u{i}@ops.test"], f"Subject: {i}\r\n\r\nhi\r\n")
    wait_for(lambda: len(handler.recipients) == 40, timeout=120, what="40 deliveries")
    assert CountingSMTP.peak == 3  # used, and never more


def test_suspended_tenant_waits_while_another_flows_then_flows_after_cancel(make_daemon, dns, receiver):
    handler, port = receiver
    d = daemon_for(make_daemon, dns, port)
    status, created = api(d, "POST", "/api/admin/suspend/v1",
                          {"tenant": "acme", "reason": "complaint spike", "duration": "1h"})
    assert status == 200 and created["id"]
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.sendmail("s@example.com", ["a@ops.test"], "Subject: a\r\nX-Tenant: acme\r\n\r\nhi\r\n")
        client.sendmail("s@example.com", ["g@ops.test"], "Subject: g\r\nX-Tenant: globex\r\n\r\nhi\r\n")
    wait_for(lambda: "g@ops.test" in handler.recipients, what="the other tenant's delivery")
    status, summary = api(d, "GET", "/api/admin/queue-summary/v1")
    assert status == 200
    assert "a@ops.test" not in handler.recipients
    status, _ = api(d, "DELETE", "/api/admin/suspend/v1", {"id": created["id"]})
    assert status == 200
    wait_for(lambda: "a@ops.test" in handler.recipients, what="the suspended tenant's mail after cancel")
    (delivery,) = wait_for(lambda: [r for r in d.records("Delivery") if r["tenant"] == "acme"],
                           what="its Delivery record")
    assert delivery["num_attempts"] == 1


def test_shaping_reload_through_the_api_and_the_cli(make_daemon, dns, receiver):
    handler, port = receiver
    d = daemon_for(make_daemon, dns, port)
    shaping = d.directory / "mine.toml"
    shaping.write_text('["ops.test"]\nconnection_limit = 2\n')
    text = d.config_path.read_text()
    d.config_path.write_text(text + f'\n[shaping]\nfiles = ["{shaping}"]\n')
    reload = [sys.executable, "-m", "trimta", "shaping", "reload", "--endpoint", f"http://127.0.0.1:{d.http_port}"]
    result = subprocess.run(reload, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "reloaded: the daemon shapes with the files as they are now\n"
    # A table only a restart applies: the reload says so (and still applies the rest).
    d.config_path.write_text(d.config_path.read_text().replace('flush_interval = "50ms"', 'flush_interval = "1s"'))
    result = subprocess.run(reload, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "not applied until the daemon restarts: [logs]"
    assert api(d, "POST", "/api/admin/shaping/reload/v1", {}) == (200, {"status": "reloaded",
                                                                       "restart_needed": ["[logs]"]})
    assert "reload: [logs] changed in" in d.stderr() and "restart the daemon for it" in d.stderr()
    shaping.write_text('["ops.test"]\nconection_limit = 2\n')
    status, answer = api(d, "POST", "/api/admin/shaping/reload/v1", {})
    assert status == 422
    assert "did you mean 'connection_limit'" in answer["error"]
    assert "mine.toml:2" in answer["error"]
