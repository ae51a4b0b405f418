"""The real daemon's HTTP API with the standard library's `http.client`: injection that
survives kill -9, the admin endpoints while a receiver is down, metrics, credentials.

dnsmasq serves MX records pointing at a loopback address where an aiosmtpd receiver
runs (or, while a test wants mail to stay queued, nothing does).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from tests.dnsmasq import Dnsmasq

from .conftest import Daemon, free_port, restored_spool

pytestmark = pytest.mark.interop

MX = "127.0.0.31"
ZONE = ["--mx-host=h.test,mx.h.test,10", f"--host-record=mx.h.test,{MX}"]


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append({"sender": envelope.mail_from, "recipients": list(envelope.rcpt_tos),
                                  "data": envelope.content})
        return "250 2.0.0 Message accepted"


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mx_port() -> int:
    return free_port(MX)


@pytest.fixture
def daemon(make_daemon, dns, mx_port) -> Daemon:
    """A daemon delivering to `MX`; nothing listens there unless a test starts a receiver."""
    return make_daemon(
        dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"',
        extra_config=f"""
[queues]
retry_interval = "1s"
max_retry_interval = "1s"
[egress.default]
smtp_port = {mx_port}
prohibited_hosts = []
enable_tls = "Disabled"
""",
    )


def call(d: Daemon, method: str, path: str, body: Any = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, (json.loads(data) if kind.startswith("application/json") else data.decode())
    finally:
        conn.close()


def start(d: Daemon) -> Daemon:
    d.start()
    wait_for(lambda: _alive(d), what="the HTTP API")
    return d


def _alive(d: Daemon) -> bool:
    try:
        return call(d, "GET", "/api/check-liveness/v1")[0] == 200
    except OSError:
        return False


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def personalised(recipients: list[str], **fields) -> dict:
    return {
        "envelope_sender": "app@sender.example",
        "content": {"subject": "Order {{ order }}", "from": {"email": "shop@sender.example"},
                    "text_body": "Hello {{ name }}, order {{ order }} shipped."},
        "recipients": [{"email": r, "name": f"N{i}", "substitutions": {"order": f"o-{i}"}}
                       for i, r in enumerate(recipients)],
        **fields,
    }


def test_injected_mail_survives_kill_9_and_is_delivered_after_restart(daemon, mx_port):
    d = start(daemon)
    recipients = [f"u{i}@h.test" for i in range(20)]
    status, answer = call(d, "POST", "/api/inject/v1", personalised(recipients, tenant="acme"))
    assert status == 200, answer
    assert answer == {"success_count": 20, "fail_count": 0, "failed_recipients": [], "errors": []}
    d.kill9()  # right after the 200: nothing was delivered (nobody listens at the MX)

    spooled = restored_spool(d.spool_path).messages
    assert sorted(m.recipient for m in spooled) == sorted(recipients)
    assert {m.tenant for m in spooled} == {"acme"}

    handler = Recorder()
    receiver = Controller(handler, hostname=MX, port=mx_port)
    receiver.start()
    try:
        start(d)
        wait_for(lambda: len(handler.messages) >= 20, what="every injected message at the receiver")
    finally:
        receiver.stop()
    by_recipient = {m["recipients"][0]: m for m in handler.messages}
    assert set(by_recipient) == set(recipients)
    assert b"Subject: Order o-7" in by_recipient["u7@h.test"]["data"]
    assert b"Hello N7, order o-7 shipped." in by_recipient["u7@h.test"]["data"]
    assert by_recipient["u7@h.test"]["sender"] == "app@sender.example"


def test_admin_endpoints_while_the_receiver_is_down(daemon):
    d = start(daemon)
    assert call(d, "POST", "/api/inject/v1", personalised(["a1@h.test", "a2@h.test"], tenant="acme"))[0] == 200
    assert call(d, "POST", "/api/inject/v1",
                personalised(["s1@h.test", "s2@h.test", "s3@h.test"], tenant="globex", campaign="spring"))[0] == 200
    wait_for(lambda: len(d.records("TransientFailure")) >= 5, what="first attempts failing")

    status, summary = call(d, "GET", "/api/admin/queue-summary/v1")
    assert status == 200
    counts = {q["name"]: q["count"] for q in summary["scheduled"]}
    assert counts == {"acme@h.test": 2, "spring:globex@h.test": 3}

    status, created = call(d, "POST", "/api/admin/suspend/v1", {"tenant": "acme", "reason": "complaints",
                                                                "duration": "1h"})
    assert status == 200
    status, listed = call(d, "GET", "/api/admin/suspend/v1")
    assert [(e["id"], e["tenant"], e["reason"]) for e in listed] == [(created["id"], "acme", "complaints")]

    status, bounced = call(d, "POST", "/api/admin/bounce/v1", {"campaign": "spring", "reason": "bad list"})
    assert status == 200
    assert bounced["bounced"] == {"spring:globex@h.test": 3} and bounced["total_bounced"] == 3
    wait_for(lambda: len(d.records("AdminBounce")) == 3, what="AdminBounce records")
    assert {r["recipient"] for r in d.records("AdminBounce")} == {"s1@h.test", "s2@h.test", "s3@h.test"}

    status, summary = call(d, "GET", "/api/admin/queue-summary/v1")
    assert [(q["name"], q["count"], q["suspended_by"]) for q in summary["scheduled"]] == [
        ("acme@h.test", 2, [created["id"]])]  # the bounced campaign is gone, the suspended tenant waits

    acme_id = next(r["id"] for r in d.records("Reception") if r["recipient"] == "a1@h.test")
    status, inspected = call(d, "GET", f"/api/admin/inspect-message/v1?id={acme_id}&want_body=true")
    assert status == 200
    assert inspected["message"]["tenant"] == "acme" and inspected["message"]["num_attempts"] >= 1
    assert "Hello N0, order o-0 shipped." in inspected["message"]["data"]

    status, _ = call(d, "DELETE", "/api/admin/suspend/v1", {"id": created["id"]})
    assert status == 200
    assert call(d, "DELETE", "/api/admin/suspend/v1", {"id": created["id"]})[0] == 404

    status, text = call(d, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    received = {s.labels["tenant"]: s.value for s in families["trimta_tenant_messages"].samples
                if s.labels["event"] == "received"}
    assert received == {"acme": 2, "globex": 3}
    assert [s.value for s in families["trimta_spool_messages"].samples] == [2]
    assert [s.value for s in families["trimta_smtp_connections_open"].samples] == [0]

    assert call(d, "GET", "/api/admin/nothing/v1")[0] == 404
    assert call(d, "PATCH", "/api/admin/suspend/v1", {})[0] == 405
    status, error = call(d, "POST", "/api/admin/suspend/v1", {"tenant": "acme"})
    assert status == 400 and error == {"error": "reason: missing"}


def test_an_untrusted_client_needs_a_token(daemon):
    # Trust no network: even loopback clients must present the token.
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text.replace("[http]\n", '[http]\ntrusted_hosts = []\ntokens = ["t0k3n"]\n', 1))
    daemon.start()
    token = {"Authorization": "Bearer t0k3n"}
    wait_for(lambda: _answers(daemon, token), what="the HTTP API")
    status, error = call(daemon, "POST", "/api/inject/v1", personalised(["a@h.test"]))
    assert status == 401 and "credentials required" in error["error"]
    status, _ = call(daemon, "POST", "/api/inject/v1", personalised(["a@h.test"]), headers=token)
    assert status == 200
    wait_for(lambda: daemon.records("Reception"), what="the Reception record")
    assert [r["recipient"] for r in daemon.records("Reception")] == ["a@h.test"]


def _answers(d: Daemon, headers: dict) -> bool:
    try:
        return call(d, "GET", "/api/check-liveness/v1", headers=headers)[0] == 200
    except OSError:
        return False
