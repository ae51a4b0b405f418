"""Abuse of the real daemon's HTTP listener: hostile templates, numbers, nesting, cross-site requests.

Each case is what an attacker on loopback tried (issue 21); the daemon must answer a
clear 4xx, stay small and stay responsive, and never answer 500.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest
import trio

from .conftest import Daemon

pytestmark = pytest.mark.interop

DEADLINE_S = 60  # a backstop on a loaded machine; no assertion is about time


def request(daemon: Daemon, method: str, path: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=DEADLINE_S)
    try:
        if isinstance(body, str):
            body = body.encode()
        given = {"Content-Type": "application/json"} if body is not None else {}
        given.update(headers or {})
        conn.request(method, path, body=body, headers=given)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw.strip().startswith((b"{", b"[")) else {"raw": raw}
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


RULE_PATHS = {
    "/api/admin/suspend/v1": {"tenant": "t1", "reason": "incident"},
    "/api/admin/bounce/v1": {"tenant": "t1", "reason": "incident"},
    "/api/admin/suspend-ready-q/v1": {"name": "ip-1->mx.example.com@smtp_client", "reason": "incident"},
}

# --- numbers and nesting -------------------------------------------------------------


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    """A daemon whose HTTP listener is up (it starts a moment after the SMTP one)."""
    d = make_daemon().start()
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", d.http_port), timeout=5).close()
            return d
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


DURATIONS = ["1e999", "-1e999", "Infinity", "-Infinity", "NaN", "9" * 4000, "1e300", "9007199254740993",
             '"999999999999d"', "3153600001", '"1e999"']


@pytest.mark.parametrize("path", list(RULE_PATHS))
def test_huge_and_non_finite_durations_are_refused_and_the_list_stays_readable(daemon, path):
    fields = json.dumps(RULE_PATHS[path])[:-1]
    for duration in DURATIONS:
        status, body = request(daemon, "POST", path, f'{fields}, "duration": {duration}}}')
        assert status == 400, (duration, body)
        assert "duration" in body["error"] or "number" in body["error"], (duration, body)
        status, rules = request(daemon, "GET", path)
        assert status == 200 and rules == [], duration


def test_a_hundred_thousand_brackets_are_refused_before_parsing(daemon):
    for path in [*RULE_PATHS, "/api/inject/v1"]:
        for body in ("[" * 100_000, '{"a":' * 100_000):
            status, answer = request(daemon, "POST", path, body)
            assert status == 400 and "deeper than 64" in answer["error"], (path, answer)


def test_a_huge_number_in_substitutions_is_refused(daemon):
    body = ('{"envelope_sender": "s@example.com", "recipients": ["r@h.test"], "content": "Subject: x\\n\\nx",'
            ' "substitutions": {"n": ' + "9" * 4000 + "}}")
    status, answer = request(daemon, "POST", "/api/inject/v1", body)
    assert status == 400 and "out of range" in answer["error"]


# --- cross-site requests ------------------------------------------------------------


SUSPEND = json.dumps({"tenant": "t1", "reason": "cross-site"})


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_body_that_is_not_declared_json_is_refused(daemon, content_type):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=DEADLINE_S)
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request("POST", "/api/admin/suspend/v1", body=SUSPEND.encode(), headers=headers)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 415 and "application/json" in answer["error"]
    assert request(daemon, "GET", "/api/admin/suspend/v1") == (200, [])


def test_a_foreign_origin_is_refused(daemon):
    status, answer = request(daemon, "POST", "/api/admin/suspend/v1", SUSPEND,
                             {"Origin": "http://evil.example"})
    assert status == 403 and "Origin" in answer["error"]
    assert request(daemon, "GET", "/api/admin/suspend/v1") == (200, [])


def test_a_rebound_host_name_is_refused_for_a_client_trusted_by_address(daemon):
    # DNS rebinding: the page's own name now points at 127.0.0.1, so the browser sends it.
    status, answer = request(daemon, "GET", "/api/admin/suspend/v1", headers={"Host": f"evil.example:{daemon.http_port}"})
    assert status == 403 and "Host" in answer["error"]


def test_the_daemons_own_names_are_served(daemon):
    for host in (f"127.0.0.1:{daemon.http_port}", f"localhost:{daemon.http_port}", "localhost"):
        status, _ = request(daemon, "GET", "/api/admin/suspend/v1", headers={"Host": host})
        assert status == 200, host
    status, _ = request(daemon, "POST", "/api/admin/suspend/v1", SUSPEND,
                        {"Origin": f"http://127.0.0.1:{daemon.http_port}"})
    assert status == 200


# --- the header limit ----------------------------------------------------------------


@pytest.mark.parametrize("size_kib, status", [(31, 200), (33, 431), (48, 431)])
def test_the_request_head_limit_is_32_kib(daemon, size_kib, status):
    filler = "x" * (size_kib * 1024 - 200)
    with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=DEADLINE_S) as client:
        client.sendall(f"GET /api/check-liveness/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {filler}\r\n"
                       f"Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


# --- template amplification -----------------------------------------------------------------


def inject(daemon: Daemon, template: str) -> tuple[int, dict]:
    return request(daemon, "POST", "/api/inject/v1", json.dumps({
        "envelope_sender": "s@example.com", "recipients": ["r@h.test"],
        "content": "Subject: x\n\n" + template,
    }))


AMPLIFIERS = [
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'|indent(1000000000) }}",
    "{{ ('x\\n' * 100000)|indent(100000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ 'x'.rjust(1000000000) }}",
    "{{ 'x'.zfill(1000000000) }}",
    "{{ '%1000000000s' % 'x' }}",
    "{{ '%1000000000s'|format('x') }}",
    "{{ '{:1000000000}'.format('x') }}",
    "{{ 'x' * 1000000000 }}",
    "{{ range(100000)|join('x' * 100000) }}",
    "{{ ('x' * 100000).replace('x', 'y' * 100000) }}",
    "{% set a = 'x' * 1000000 %}{% set a = a ~ a ~ a ~ a %}{% set a = a ~ a ~ a ~ a %}{{ a ~ a ~ a ~ a }}",
    "{% set a = 'x' * 1000000 %}{% set a = a + a + a + a %}{% set a = a + a + a + a %}{{ a + a + a }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}",
    "{{ 9 ** (9 ** 9) }}",
    "{{ '\\t'.expandtabs(1000000000) }}",
]


def test_amplifying_templates_are_refused_and_the_daemon_stays_small(daemon):
    before = rss_kib(daemon.proc.pid)
    for template in AMPLIFIERS:
        status, answer = inject(daemon, template)
        assert status == 400, (template, answer)
        assert answer["fail_count"] == 1 and "template refused" in answer["errors"][0], (template, answer)
    # Each refusal is made before the memory is taken: the daemon grows by far less than one gigabyte.
    assert rss_kib(daemon.proc.pid) - before < 200 * 1024


def test_a_template_that_runs_too_long_stops_at_its_time_budget(daemon):
    status, answer = inject(daemon, "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    assert status == 400 and "ran out of time" in answer["errors"][0]


async def test_an_smtp_client_gets_its_banner_while_a_huge_render_runs(daemon):
    """The render runs off the event loop: the banner arrives before the render's answer."""
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    order = []

    def render_request():
        inject(daemon, slow)
        order.append("inject answered")

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, render_request)
            await trio.sleep(0.5)  # the request is on its way (a real daemon: real time)
            stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
            banner = await stream.receive_some(1000)
            order.append("banner")
            await stream.aclose()
    assert banner.startswith(b"220 ")
    assert order == ["banner", "inject answered"]
