"""xfer between two real daemons: node A's queued mail moves to node B, which delivers it
to an aiosmtpd receiver found through dnsmasq; A is killed with ``kill -9`` in the
middle and restarted. The receiver counts by Message-ID: every message arrives once
or, at worst, twice; none is lost."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from email.parser import BytesHeaderParser

import pytest
from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq

from .cluster_nodes import make_cluster  # noqa: F401 (a fixture)
from .conftest import ROOT, Daemon, free_port
from .test_delivery_e2e import wait_for

ZONE = ["--mx-host=xfer.test,mx.xfer.test,10", "--host-record=mx.xfer.test,127.0.0.51"]
TOKEN = "xfer-interop-token"
TOTAL = 10_000


class MessageIdCounter:
    """Counts arrivals by Message-ID."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.parser = BytesHeaderParser()

    async def handle_DATA(self, server, session, envelope):
        message_id = self.parser.parsebytes(envelope.content)["Message-ID"]
        with self.lock:
            self.seen[str(message_id)] += len(envelope.rcpt_tos)
        return "250 2.0.0 OK"


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    handler = MessageIdCounter()
    port = free_port("127.0.0.51")
    controller = Controller(handler, hostname="127.0.0.51", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def node(make_daemon, dns, port: int, name: str, *, token: str | None = TOKEN) -> Daemon:
    cluster = f'[cluster]\nredis = "redis://127.0.0.1:9/0"\nnode_id = "{name}"\n'
    if token is not None:
        cluster += f'token = "{token}"\n'
    return make_daemon(
        dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"',
        extra_config=f"""
[egress.default]
smtp_port = {port}
prohibited_hosts = []
enable_tls = "Disabled"
connection_limit = 8
max_deliveries_per_connection = 1000
{cluster}""",
    )


def api(d: Daemon, method: str, path: str, body=None, headers=None) -> tuple[int, dict | list]:
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=60)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else {}


def url(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.http_port}"


def inject(d: Daemon, first: int, count: int, domain: str = "xfer.test") -> None:
    status, answer = api(d, "POST", "/api/inject/v1", {
        "envelope_sender": "s@shop.test",
        "recipients": [f"u{i}@{domain}" for i in range(first, first + count)],
        "content": "From: s@shop.test\nMessage-ID: <{{ email }}>\nSubject: n\n\nhello {{ email }}\n",
        "tenant": "acme",
    })
    assert status == 200 and answer["success_count"] == count, answer


def cli(d: Daemon, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trimta", *words, "--endpoint", url(d)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def xfer_progress(d: Daemon) -> list | None:
    """The transfers in progress (None while the API does not answer yet, just after a start)."""
    try:
        status, listed = api(d, "GET", "/api/admin/xfer/v1")
    except OSError:
        return None
    assert status == 200
    assert isinstance(listed, list)
    return listed


@pytest.mark.parametrize("killed, total", [("source", TOTAL), ("target", 3000)])
def test_messages_move_to_node_b_through_a_kill_9_none_lost(make_cluster, killed, total):
    """10,000 messages with a kill -9 of the source A in the middle (the Done-when case);
    3,000 with one of the target B."""
    # Two nodes sharing a real redis-server (climits' fixture); the receiver is reached by a
    # domain literal, so no DNS is involved.
    handler = MessageIdCounter()
    port = free_port("127.0.0.51")
    controller = Controller(handler, hostname="127.0.0.51", port=port)
    controller.start()
    try:
        cluster = make_cluster(2, cluster_config=f'token = "{TOKEN}"', extra_config=f"""
[egress.default]
smtp_port = {port}
prohibited_hosts = []
enable_tls = "Disabled"
connection_limit = 8
max_deliveries_per_connection = 1000
""")
        a, b = cluster[0].daemon, cluster[1].daemon
        _move(a, b, handler, total, a if killed == "source" else b)
    finally:
        controller.stop()


def _move(a: Daemon, b: Daemon, handler: MessageIdCounter, total: int, victim: Daemon) -> None:
    # Held so it stays queued until it has moved. The suspension is shared through Redis,
    # so it holds the transferred mail on B too, until it is lifted.
    status, suspension = api(a, "POST", "/api/admin/suspend/v1",
                             {"tenant": "acme", "reason": "drain", "duration": "1h"})
    assert status == 200
    started = time.monotonic()
    for first in range(0, total, 1000):
        inject(a, first, 1000, domain="[127.0.0.51]")
    injected_s = time.monotonic() - started

    started = time.monotonic()
    done = cli(a, "xfer", "--target", url(b), "--tenant", "acme", "--reason", "maintenance")
    assert done.returncode == 0 and "trimta xfer-list" in done.stdout, done.stderr
    wait_for(lambda: len(b.records("XferIn")) >= total // 5, timeout=120, what="a fifth of the messages transferred")
    victim.kill9()
    assert len(b.records("XferIn")) < total, "the xfer finished before the kill; nothing was tested"
    victim.start()
    wait_for(lambda: xfer_progress(a) == [], timeout=180, what="the resumed xfer to finish")
    xfer_s = time.monotonic() - started
    # Nothing is left on A, and nothing was delivered while the suspension held.
    status, summary = api(a, "GET", "/api/admin/queue-summary/v1")
    assert summary["totals"]["scheduled"] == 0
    status, summary = api(b, "GET", "/api/admin/queue-summary/v1")
    assert summary["totals"]["scheduled"] == total  # each kept once, however often it was sent
    assert not handler.seen

    status, _ = api(b, "DELETE", "/api/admin/suspend/v1", {"id": suspension["id"]})
    assert status == 200
    wait_for(lambda: len(handler.seen) >= total, timeout=180, what="every message at the receiver")
    expected = {f"<u{i}@[127.0.0.51]>" for i in range(total)}
    assert set(handler.seen) == expected  # none lost, nothing else
    assert max(handler.seen.values()) <= 2  # at worst twice
    assert a.records("Delivery") == []
    out = a.records("XferOut")
    assert {r["site"] for r in out} == {f"{url(b)}.xfer.kumomta.internal"}
    if victim is a:  # (a target killed may lose XferIn records it had not written yet)
        assert {r["id"] for r in out} <= {r["id"] for r in b.records("XferIn")}
    print(f"\n{total} messages, {'source' if victim is a else 'target'} killed: injected in {injected_s:.1f}s, "
          f"transferred in {xfer_s:.1f}s (with the kill and restart); "
          f"duplicates at the receiver: {sum(handler.seen.values()) - total}")


def test_inject_endpoint_refuses_without_the_token_and_without_one_configured(make_daemon, dns, receiver):
    _, port = receiver
    b = node(make_daemon, dns, port, "node-b").start()
    lone = node(make_daemon, dns, port, "node-c", token=None).start()
    body = {"node": "x", "messages": []}
    status, answer = api(b, "POST", "/api/xfer/inject/v1", body)
    assert status == 401 and "token" in answer["error"]
    status, answer = api(b, "POST", "/api/xfer/inject/v1", body, {"Authorization": "Bearer wrong"})
    assert status == 401
    status, answer = api(b, "POST", "/api/xfer/inject/v1", body, {"Authorization": f"Bearer {TOKEN}"})
    assert (status, answer) == (200, {"ids": [], "errors": {}})
    status, answer = api(lone, "POST", "/api/xfer/inject/v1", body, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 403 and "no [cluster] token" in answer["error"]
    status, answer = api(lone, "POST", "/api/admin/xfer/v1", {"target": url(b), "reason": "x"})
    assert status == 409 and "token" in answer["error"]
    status, answer = api(b, "POST", "/api/admin/xfer/cancel/v1", {"queue_name": "acme@xfer.test", "reason": "x"})
    assert status == 400 and "not an xfer queue" in answer["error"]


def test_a_transfer_to_a_node_that_is_down_keeps_the_mail_and_cancel_puts_it_back(make_daemon, dns, receiver):
    _, port = receiver
    a = node(make_daemon, dns, port, "node-a").start()
    status, _ = api(a, "POST", "/api/admin/suspend/v1", {"domain": "xfer.test", "reason": "hold", "duration": "1h"})
    assert status == 200
    inject(a, 0, 5)
    nobody = f"http://127.0.0.1:{free_port()}"
    done = cli(a, "xfer", "--target", nobody, "--tenant", "acme", "--reason", "drain")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: "connection refused" in cli(a, "xfer-list").stdout, timeout=60, what="a failed batch")
    listed = cli(a, "xfer-list").stdout
    assert f"{nobody}.xfer.kumomta.internal" in listed and " 5 " in listed
    done = cli(a, "xfer-cancel", f"{nobody}.xfer.kumomta.internal", "--reason", "node is gone")
    assert done.returncode == 0 and "cancelled" in done.stdout, done.stderr
    assert cli(a, "xfer-list").stdout.strip() == "no transfer in progress"
    status, summary = api(a, "GET", "/api/admin/queue-summary/v1")
    assert summary["totals"]["scheduled"] == 5
    assert len(a.records("AdminRebind")) == 10  # into the xfer queue and back
    assert a.records("XferOut") == []
    done = cli(a, "xfer-cancel", nobody, "--reason", "again")
    assert done.returncode == 1 and "no xfer" in done.stderr
