"""Abuse of the HTTP API of the real daemon: every bad request gets a clear 4xx, nothing
is half-spooled, and the daemon stays up.

The requests are sent with http.client (and raw sockets where a client library would
refuse to send them). "Nothing half-spooled": after the abuse, the spool holds exactly
the messages of the good injections made around it.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from .conftest import Daemon, free_port, record_fault, restored_spool

GOOD = {"envelope_sender": "sender@example.com", "content": "Subject: hi\r\n\r\nhello\r\n",
        "recipients": [{"email": "good@example.net"}]}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(directory=tmp_path_factory.mktemp("http-abuse"), port=free_port())
    d.start()
    yield d
    d.stop()


def post(daemon, body: bytes, content_type: str = "application/json", path: str = "/api/inject/v1",
         headers: dict | None = None) -> tuple[int, dict | str]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def inject(daemon, request: dict) -> tuple[int, dict | str]:
    return post(daemon, json.dumps(request).encode())


def is_clear_4xx(status: int, answer) -> bool:
    """A 4xx whose body says what is wrong, in one JSON object (no traceback)."""
    return 400 <= status < 500 and isinstance(answer, dict) and "Traceback" not in json.dumps(answer)


BAD_BODIES = {
    "malformed JSON": b'{"envelope_sender": "a@b.example", "recipients": [',
    "JSON not an object": b'["a", "b"]',
    "invalid UTF-8": b'{"content": "\xff\xfe"}',
    "huge number": b'{"envelope_sender": 1' + b"0" * 100_000 + b"}",
    "empty": b"",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_bodies_get_400(daemon, body):
    status, answer = post(daemon, body)
    assert is_clear_4xx(status, answer), (status, answer)


def test_deeply_nested_json_gets_400(make_daemon):
    # Its own daemon: the 500 leaves a traceback in the daemon's output.
    d = make_daemon().start()
    status, answer = post(d, b"[" * 100_000 + b"]" * 100_000)
    assert is_clear_4xx(status, answer), (status, answer)
    assert "Traceback" not in d.stderr()


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded", ""])
def test_wrong_content_types_get_a_clear_4xx(daemon, content_type):
    request = dict(GOOD, recipients=[{"email": "content-type@example.net"}])
    status, answer = post(daemon, json.dumps(request).encode(), content_type=content_type)
    assert is_clear_4xx(status, answer), (status, answer)


def test_a_huge_body_is_refused_with_413_without_reading_it_all(daemon):
    with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=60) as s:
        s.sendall(b"POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 500000000\r\n\r\n" + b" " * 65536)
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 "), head[:200]


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ request.environ }}{{ namespace.__init__.__globals__ }}",
    "{{ config.items() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{% for x in range(10**9) %}{{ x }}{% endfor %}",
    "{{ 'x' * 10**10 }}",
    "{{ (9**9)**(9**9) }}",
    "{{ [1] * 10**9 }}",
]


@pytest.mark.parametrize("template", SANDBOX_ESCAPES)
def test_jinja_sandbox_escapes_are_refused(daemon, template):
    request = dict(GOOD, content=f"Subject: t\r\n\r\n{template}\r\n",
                   recipients=[{"email": "sandbox@example.net"}])
    status, answer = inject(daemon, request)
    assert is_clear_4xx(status, answer), (status, answer)
    assert "uid=" not in json.dumps(answer)


CRLF_INJECTIONS = {
    "header value": {"content": {"subject": "hi", "text_body": "x",
                                 "headers": {"X-Tag": "a\r\nBcc: victim@example.org"}}},
    "subject": {"content": {"subject": "hi\r\nBcc: victim@example.org", "text_body": "x"}},
    "envelope sender": {"envelope_sender": "a@example.com>\r\nRCPT TO:<victim@example.org"},
    "recipient": {"recipients": [{"email": "b@example.net>\r\nRCPT TO:<victim@example.org"}]},
    "recipient LF": {"recipients": [{"email": "b@example.net\nx"}]},
}


@pytest.mark.parametrize("fields", CRLF_INJECTIONS.values(), ids=CRLF_INJECTIONS.keys())
def test_crlf_in_headers_and_envelope_addresses_is_refused(daemon, fields):
    request = {**GOOD, "recipients": [{"email": "crlf@example.net"}], **fields}
    status, answer = inject(daemon, request)
    assert is_clear_4xx(status, answer), (status, answer)


def test_a_hundred_thousand_recipients_in_one_inject_get_a_clear_4xx(daemon):
    request = dict(GOOD, recipients=[{"email": f"r{i}@example.net"} for i in range(100_000)])
    status, answer = inject(daemon, request)
    assert is_clear_4xx(status, answer), (status, str(answer)[:300])


def test_after_the_abuse_the_daemon_is_up_and_nothing_was_half_spooled(daemon):
    status, answer = inject(daemon, GOOD)
    assert status == 200, answer
    assert daemon.proc.poll() is None and "Traceback" not in daemon.stderr()
    daemon.stop()
    recipients = sorted(m.recipient for m in restored_spool(daemon.spool_path).messages)
    # (The content-type requests, served until issue 21 lands, are whole messages.)
    assert [r for r in recipients if r != "content-type@example.net"] == ["good@example.net"]
    record_fault("HTTP API abuse: malformed JSON, 500 MB body, Jinja escapes, CRLF, 100,000 recipients",
                 "clear 4xx each; nothing half-spooled; daemon alive (deep nesting: 500, content types: served; issue 21)",
                 sessions=len(BAD_BODIES) + 1 + len(SANDBOX_ESCAPES) + len(CRLF_INJECTIONS) + 1,
                 tracebacks=0)
