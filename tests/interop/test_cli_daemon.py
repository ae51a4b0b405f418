"""The real daemon: webhooks through outages and restarts, and the operator CLI over its API.

Mail goes in with `smtplib`; records come out at a webhook receiver that is the
standard library's HTTP server; the CLI is `python -m trimta` as an operator runs it.
"""

from __future__ import annotations

import json
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.interop.conftest import ROOT, Daemon, free_port

pytestmark = pytest.mark.interop

MESSAGE = "From: app@shop.example\r\nTo: {rcpt}\r\nSubject: n{n}\r\nX-Tenant: acme\r\n\r\nHello {n}\r\n"


class Receiver:
    """A webhook endpoint on loopback recording each POSTed JSON array."""

    def __init__(self, port: int) -> None:
        self.batches: list[list[dict]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.batches.append(json.loads(body))
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def records(self) -> list[dict]:
        return [r for batch in list(self.batches) for r in batch]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def send(daemon: Daemon, numbers: range) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        for n in numbers:
            rcpt = f"user{n}@example.net"
            client.sendmail("app@shop.example", [rcpt], MESSAGE.format(rcpt=rcpt, n=n))


def journal_count(daemon: Daemon) -> int:
    total = 0
    for path in (daemon.spool_path / "webhooks").glob("*.sqlite3"):
        with sqlite3.connect(path) as db:
            total += db.execute("select count(*) from pending").fetchone()[0]
    return total


def webhook(port: int) -> str:
    return (
        f'[[logs.webhook]]\nurl = "http://127.0.0.1:{port}/events"\nrecord_types = ["Reception"]\n'
        'batch_size = 5\nmax_batch_latency = "50ms"\nheaders = { Authorization = "Bearer hook-token" }\n'
        'min_retry_interval = "50ms"\nmax_retry_interval = "200ms"\n'
    )


def recipients(records: list[dict]) -> list[str]:
    return sorted({r["recipient"] for r in records})


def test_webhook_records_wait_through_an_outage_and_a_restart(make_daemon):
    port = free_port()
    daemon = make_daemon(extra_config=webhook(port)).start()
    send(daemon, range(0, 6))
    wait_until(lambda: journal_count(daemon) == 6, what="6 records in the webhook journal")
    assert daemon.stop() == 0  # orderly: SIGTERM
    daemon.start()
    send(daemon, range(6, 9))
    receiver = Receiver(port)
    try:
        wait_until(lambda: len(recipients(receiver.records)) == 9, what="9 records at the receiver")
    finally:
        receiver.close()
    assert recipients(receiver.records) == sorted(f"user{n}@example.net" for n in range(9))
    assert {r["type"] for r in receiver.records} == {"Reception"}
    assert all(h["authorization"] == "Bearer hook-token" for h in receiver.headers)
    assert all(len(batch) <= 5 for batch in receiver.batches)
    wait_until(lambda: journal_count(daemon) == 0, what="the journal to empty")


def test_webhook_records_survive_kill_9(make_daemon):
    port = free_port()
    daemon = make_daemon(extra_config=webhook(port)).start()
    send(daemon, range(0, 4))
    wait_until(lambda: journal_count(daemon) == 4, what="4 records in the webhook journal")
    daemon.kill9()
    receiver = Receiver(port)
    try:
        daemon.start()
        wait_until(lambda: len(recipients(receiver.records)) == 4, what="4 records at the receiver")
    finally:
        receiver.close()
    assert recipients(receiver.records) == [f"user{n}@example.net" for n in range(4)]


def trimta(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trimta", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_cli_against_the_daemon(make_daemon, tmp_path):
    daemon = make_daemon().start()
    endpoint = f"http://127.0.0.1:{daemon.http_port}"
    live = trimta("queue-summary", "--endpoint", endpoint, "--json")
    assert live.returncode == 0, live.stderr
    message = tmp_path / "hello.eml"
    message.write_text("From: app@shop.example\nSubject: hello\n\nHello\n")
    injected = trimta("inject", str(message), "--from", "app@shop.example", "--to", "ann@example.net",
                      "--to", "bob@example.net", "--tenant", "acme", "--campaign", "spring", "--endpoint", endpoint)
    assert (injected.returncode, injected.stdout) == (0, "accepted 2 of 2 recipients\n"), injected.stderr

    suspended = trimta("suspend", "--tenant", "acme", "--reason", "testing", "--duration", "1h",
                       "--endpoint", endpoint, "--json")
    assert suspended.returncode == 0, suspended.stderr
    rule_id = json.loads(suspended.stdout)["id"]
    listed = trimta("suspend-list", "--endpoint", endpoint)
    assert listed.returncode == 0 and rule_id in listed.stdout and "testing" in listed.stdout

    def scheduled() -> dict:
        out = trimta("queue-summary", "--endpoint", endpoint, "--tenant", "acme", "--json")
        return {q["name"]: q["count"] for q in json.loads(out.stdout)["scheduled"]}

    wait_until(lambda: scheduled() == {"spring:acme@example.net": 2}, what="the queue summary")
    cancelled = trimta("suspend-cancel", rule_id, "--endpoint", endpoint)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"admin suspension {rule_id} cancelled\n")
    again = trimta("suspend-cancel", rule_id, "--endpoint", endpoint)
    assert again.returncode == 1 and "refused (HTTP 404)" in again.stderr

    bounced = trimta("bounce", "--campaign", "spring", "--reason", "wrong list", "--endpoint", endpoint, "--json")
    assert bounced.returncode == 0, bounced.stderr
    assert json.loads(bounced.stdout)["total_bounced"] == 2
    wait_until(lambda: len(daemon.records("AdminBounce")) == 2, what="AdminBounce records")

    frame = trimta("top", "--once", "--interval", "0.2s", "--endpoint", endpoint)
    assert frame.returncode == 0 and frame.stdout.startswith(f"trimta top  {endpoint}")


def test_cli_when_the_daemon_is_down():
    port = free_port()
    result = trimta("suspend-list", "--endpoint", f"http://127.0.0.1:{port}")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr == (
        f"trimta suspend-list: cannot reach trimta at http://127.0.0.1:{port}: connection refused; "
        "is `trimta serve` running with an [http] listener?\n"
    )


@pytest.mark.parametrize("taken", ["smtp", "http"])
def test_an_address_in_use_is_named_and_the_daemon_exits_1(tmp_path, taken):
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        busy = occupant.getsockname()[1]
        smtp, http = (busy, free_port()) if taken == "smtp" else (free_port(), busy)
        config = tmp_path / "trimta.toml"
        config.write_text(
            f'hostname = "mx.test"\n[[listener]]\nlisten = "127.0.0.1:{smtp}"\n'
            f'[http]\nlisten = "127.0.0.1:{http}"\n'
            f'[spool]\npath = "{tmp_path / "spool"}"\n[logs]\npath = "{tmp_path / "logs"}"\n'
        )
        done = subprocess.run([sys.executable, "-m", "trimta", "serve", "--config", str(config)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    what = f"ESMTP listener 127.0.0.1:{busy}" if taken == "smtp" else f"HTTP API on 127.0.0.1:{busy}"
    assert done.stderr.splitlines()[-1] == f"trimta serve: [Errno 98] {what}: Address already in use"
    assert "Traceback" not in done.stderr
