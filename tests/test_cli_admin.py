"""The admin subcommands against a fake API: the exact requests sent, and what people see.

`FakeApi` is a real HTTP server (the standard library's, in a thread, on loopback)
answering canned JSON and recording every request, so these tests pin down the
wire format the daemon's API receives without needing the daemon.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from trimta import cli


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # decoded JSON, or None


class FakeApi:
    """Answers (method, path) with canned (status, body); a list of answers is used in turn."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.answers: dict[tuple[str, str], list[tuple[int, Any, str]]] = {}
        self.stall = threading.Event()  # set: requests are read and never answered
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                api.requests.append(Recorded(
                    self.command, url.path, dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)),
                    {k.lower(): v for k, v in self.headers.items()}, json.loads(raw) if raw else None,
                ))
                if api.stall.is_set():
                    api.release.wait(10)
                    return
                queue = api.answers.get((self.command, url.path)) or [(404, {"error": "no such path"}, "json")]
                status, body, kind = queue.pop(0) if len(queue) > 1 else queue[0]
                data = json.dumps(body).encode() if kind == "json" else body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if kind == "json" else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def answer(self, method: str, path: str, *answers: Any, status: int = 200, text: bool = False) -> None:
        self.answers[(method, path)] = [(status, a, "text" if text else "json") for a in answers]

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    with FakeApi() as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    monkeypatch.delenv("TRIMTA_TOKEN", raising=False)
    monkeypatch.delenv("TRIMTA_ENDPOINT", raising=False)
    monkeypatch.delenv("KUMO_KCLI_ENDPOINT", raising=False)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``trimta ARGV...`` in-process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SUMMARY = {
    "scheduled": [
        {"name": "spring:acme@example.net", "tenant": "acme", "campaign": "spring", "domain": "example.net",
         "count": 12, "oldest_created": "2026-11-22T06:10:00Z", "oldest_age_s": 303.2, "suspended_by": ["s-1"]},
        {"name": "acme@gmail.com", "tenant": "acme", "campaign": None, "domain": "gmail.com",
         "count": 340, "oldest_created": "2026-11-22T06:14:00Z", "oldest_age_s": 7.5, "suspended_by": []},
    ],
    "ready": [
        {"name": "ip-1->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client", "source": "ip-1",
         "site": "(alt1|alt2)?.gmail-smtp-in.l.google.com", "ready": 25, "waiting_for_room": 0, "connections": 3,
         "idle_connections": 0, "connection_limit": 10, "delivered": 1200, "failed": 4,
         "consecutive_connection_failures": 0, "paused_until": None, "suspended": False, "suspension": None},
        {"name": "ip-2->mx.example.net@smtp_client", "source": "ip-2", "site": "mx.example.net", "ready": 0,
         "waiting_for_room": 0, "connections": 0, "idle_connections": 0, "connection_limit": 5, "delivered": 9,
         "failed": 0, "consecutive_connection_failures": 0, "paused_until": None, "suspended": True,
         "suspension": {"id": "r-1", "name": "ip-2->mx.example.net@smtp_client", "reason": "blocklisted",
                        "duration": "55m", "expires": "2026-11-22T07:10:00Z"}},
    ],
    "totals": {"scheduled": 352, "scheduled_queues": 2, "ready": 25, "ready_queues": 2, "connections": 3},
}


# --- queue-summary -------------------------------------------------------------------


def test_queue_summary_sends_the_filters_and_shows_both_kinds_of_queue(api, capsys):
    api.answer("GET", "/api/admin/queue-summary/v1", SUMMARY)
    status, out, err = run_cli(capsys, "queue-summary", "--endpoint", api.endpoint,
                               "--tenant", "acme", "--domain", "example.net")
    assert (status, err) == (0, "")
    [request] = api.requests
    assert (request.method, request.path) == ("GET", "/api/admin/queue-summary/v1")
    assert request.query == {"tenant": "acme", "domain": "example.net"}
    lines = out.splitlines()
    assert lines[0].split() == ["SCHEDULED", "QUEUE", "TENANT", "CAMPAIGN", "DOMAIN", "COUNT", "OLDEST", "SUSPENDED", "BY"]
    # Fullest first.
    assert lines[1].split() == ["acme@gmail.com", "acme", "-", "gmail.com", "340", "7s", "-"]
    assert lines[2].split() == ["spring:acme@example.net", "acme", "spring", "example.net", "12", "5m3s", "s-1"]
    assert "352 messages in 2 scheduled queues" in out
    gmail = next(line for line in lines if line.startswith("ip-1->"))
    assert gmail.split()[1:] == ["25", "3/10", "1200", "4", "delivering"]
    example = next(line for line in lines if line.startswith("ip-2->"))
    assert example.split()[-3:] == ["suspended", "(55m", "left)"]


def test_queue_summary_json_is_the_api_answer(api, capsys):
    api.answer("GET", "/api/admin/queue-summary/v1", SUMMARY)
    status, out, _ = run_cli(capsys, "queue-summary", "--endpoint", api.endpoint, "--json")
    assert status == 0
    assert json.loads(out) == SUMMARY
    assert api.requests[0].query == {}


def test_queue_summary_of_an_empty_daemon(api, capsys):
    api.answer("GET", "/api/admin/queue-summary/v1", {"scheduled": [], "ready": [], "totals": {}})
    status, out, _ = run_cli(capsys, "queue-summary", "--endpoint", api.endpoint)
    assert status == 0 and out == "no messages in scheduled queues\n"


# --- suspend -------------------------------------------------------------------------


def test_suspend_posts_the_match_reason_and_duration(api, capsys):
    api.answer("POST", "/api/admin/suspend/v1", {"id": "5b9f0c"})
    status, out, err = run_cli(capsys, "suspend", "--endpoint", api.endpoint, "--tenant", "acme",
                               "--campaign", "spring", "--reason", "complaints from gmail", "--duration", "2h")
    assert (status, err) == (0, "")
    [request] = api.requests
    assert (request.method, request.path) == ("POST", "/api/admin/suspend/v1")
    assert request.headers["content-type"] == "application/json"
    assert request.body == {"tenant": "acme", "campaign": "spring", "reason": "complaints from gmail", "duration": "2h"}
    assert out == "suspension created: 5b9f0c\ncancel it with: trimta suspend-cancel 5b9f0c\n"


def test_suspend_without_duration_leaves_it_to_the_daemon(api, capsys):
    api.answer("POST", "/api/admin/suspend/v1", {"id": "x"})
    status, out, _ = run_cli(capsys, "suspend", "--endpoint", api.endpoint, "--domain", "example.net",
                             "--reason", "r", "--json")
    assert status == 0 and json.loads(out) == {"id": "x"}
    assert api.requests[0].body == {"domain": "example.net", "reason": "r"}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["suspend", "--reason", "r"], "give at least one of --tenant, --campaign, --domain"),
        (["suspend", "--tenant", "acme", "--reason", "r", "--duration", "soon"], "--duration: expected"),
        (["bounce", "--campaign", "c", "--reason", "r", "--duration", "0s"], "--duration: must be longer than zero"),
        (["suspend-ready-q", "gmail.com", "--reason", "r"], "not a ready queue name"),
        (["suspend-list", "--endpoint", "ftp://127.0.0.1:8000"], "--endpoint: expected an http:// or https:// URL"),
        (["suspend-list", "--timeout", "forever"], "--timeout: expected"),
    ],
)
def test_command_line_mistakes_are_reported_before_anything_is_sent(api, capsys, argv, words):
    if "--endpoint" not in argv:
        argv = [*argv, "--endpoint", api.endpoint]
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.startswith(f"trimta {argv[0]}: ") and words in err
    assert "Traceback" not in err
    assert api.requests == []


def test_suspend_without_reason_is_a_usage_error(api, capsys):
    status, _, err = run_cli(capsys, "suspend", "--tenant", "acme", "--endpoint", api.endpoint)
    assert status == 2 and "--reason" in err and api.requests == []


def test_suspend_list_shows_each_rule(api, capsys):
    api.answer("GET", "/api/admin/suspend/v1", [
        {"id": "5b9f0c", "tenant": "acme", "campaign": "spring", "domain": None, "reason": "complaints",
         "duration": "1h59m", "expires": "2026-11-22T08:00:00Z"},
        {"id": "77aa01", "tenant": None, "campaign": None, "domain": "example.net", "reason": "maintenance",
         "duration": "4m", "expires": "2026-11-22T06:20:00Z"},
    ])
    status, out, _ = run_cli(capsys, "suspend-list", "--endpoint", api.endpoint)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TENANT", "CAMPAIGN", "DOMAIN", "REASON", "LEFT", "EXPIRES"]
    assert lines[1].split() == ["5b9f0c", "acme", "spring", "-", "complaints", "1h59m", "2026-11-22T08:00:00Z"]
    assert lines[2].split() == ["77aa01", "-", "-", "example.net", "maintenance", "4m", "2026-11-22T06:20:00Z"]
    assert (api.requests[0].method, api.requests[0].path, api.requests[0].body) == ("GET", "/api/admin/suspend/v1", None)


def test_empty_lists_say_so(api, capsys):
    for path in ("/api/admin/suspend/v1", "/api/admin/bounce/v1", "/api/admin/suspend-ready-q/v1"):
        api.answer("GET", path, [])
    assert run_cli(capsys, "suspend-list", "--endpoint", api.endpoint)[1] == "no active admin suspensions\n"
    assert run_cli(capsys, "bounce-list", "--endpoint", api.endpoint)[1] == "no active admin bounces\n"
    assert run_cli(capsys, "suspend-ready-q-list", "--endpoint", api.endpoint)[1] == \
        "no active ready queue suspensions\n"


@pytest.mark.parametrize(
    ("command", "path"),
    [
        ("suspend-cancel", "/api/admin/suspend/v1"),
        ("bounce-cancel", "/api/admin/bounce/v1"),
        ("suspend-ready-q-cancel", "/api/admin/suspend-ready-q/v1"),
    ],
)
def test_cancel_sends_delete_with_the_id(api, capsys, command, path):
    api.answer("DELETE", path, {"id": "5b9f0c"})
    status, out, _ = run_cli(capsys, command, "5b9f0c", "--endpoint", api.endpoint)
    assert status == 0 and out.endswith("5b9f0c cancelled\n")
    [request] = api.requests
    assert (request.method, request.path, request.body) == ("DELETE", path, {"id": "5b9f0c"})


def test_cancelling_an_unknown_id_shows_the_servers_error(api, capsys):
    api.answer("DELETE", "/api/admin/suspend/v1", {"error": "no active suspension with id 'nope'"}, status=404)
    status, out, err = run_cli(capsys, "suspend-cancel", "nope", "--endpoint", api.endpoint)
    assert status == 1 and out == ""
    assert err == "trimta suspend-cancel: refused (HTTP 404): no active suspension with id 'nope'\n"


# --- bounce --------------------------------------------------------------------------


def test_bounce_posts_the_match_and_shows_what_was_bounced(api, capsys):
    api.answer("POST", "/api/admin/bounce/v1",
               {"id": "b-7", "bounced": {"spring:acme@example.net": 12, "spring:acme@gmail.com": 30}, "total_bounced": 42})
    status, out, _ = run_cli(capsys, "bounce", "--campaign", "spring", "--reason", "sent by mistake",
                             "--duration", "10m", "--endpoint", api.endpoint)
    assert status == 0
    assert api.requests[0].body == {"campaign": "spring", "reason": "sent by mistake", "duration": "10m"}
    lines = out.splitlines()
    assert lines[0] == "bounced 42 messages; admin bounce b-7 stays in force for new matching messages"
    assert lines[1].split() == ["QUEUE", "BOUNCED"]
    assert lines[2].split() == ["spring:acme@gmail.com", "30"]
    assert lines[3].split() == ["spring:acme@example.net", "12"]
    assert lines[4] == "cancel it with: trimta bounce-cancel b-7"


def test_bounce_list(api, capsys):
    api.answer("GET", "/api/admin/bounce/v1", [
        {"id": "b-7", "tenant": None, "campaign": "spring", "domain": None, "reason": "sent by mistake",
         "duration": "9m", "expires": "2026-11-22T06:30:00Z"},
    ])
    status, out, _ = run_cli(capsys, "bounce-list", "--endpoint", api.endpoint)
    assert status == 0
    assert out.splitlines()[1].split()[:4] == ["b-7", "-", "spring", "-"]


# --- suspend-ready-q -----------------------------------------------------------------


def test_suspend_ready_q_posts_the_queue_name(api, capsys):
    api.answer("POST", "/api/admin/suspend-ready-q/v1", {"id": "r-1"})
    name = "ip-1->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"
    status, out, _ = run_cli(capsys, "suspend-ready-q", name, "--reason", "421 rate limited",
                             "--duration", "30m", "--endpoint", api.endpoint)
    assert status == 0
    assert api.requests[0].body == {"name": name, "reason": "421 rate limited", "duration": "30m"}
    assert out == "ready queue suspension created: r-1\ncancel it with: trimta suspend-ready-q-cancel r-1\n"


def test_suspend_ready_q_list(api, capsys):
    api.answer("GET", "/api/admin/suspend-ready-q/v1", [
        {"id": "r-1", "name": "ip-1->mx.example.net@smtp_client", "reason": "blocklisted", "duration": "29m",
         "expires": "2026-11-22T06:45:00Z"},
    ])
    status, out, _ = run_cli(capsys, "suspend-ready-q-list", "--endpoint", api.endpoint)
    assert status == 0
    assert out.splitlines()[0].split() == ["ID", "READY", "QUEUE", "REASON", "LEFT", "EXPIRES"]
    assert out.splitlines()[1].split() == ["r-1", "ip-1->mx.example.net@smtp_client", "blocklisted", "29m",
                                           "2026-11-22T06:45:00Z"]


# --- inspect-message -----------------------------------------------------------------

INSPECTED = {
    "id": "00064a1c0f3b5e21a9c3f0d2",
    "state": "scheduled",
    "message": {
        "sender": "news@shop.example", "recipient": "ann@example.net", "tenant": "acme", "campaign": "spring",
        "domain": "example.net", "queue": "spring:acme@example.net", "size": 52, "num_attempts": 2,
        "reception": {"peer_address": "127.0.0.1", "helo": "app1", "protocol": "ESMTP"},
        "data": "Subject: hi\r\n\r\nHello Ann\r\n",
    },
}


def test_inspect_message_with_body_asks_for_the_data_and_prints_it_last(api, capsys):
    api.answer("GET", "/api/admin/inspect-message/v1", INSPECTED)
    status, out, _ = run_cli(capsys, "inspect-message", "00064a1c0f3b5e21a9c3f0d2", "--body", "--endpoint", api.endpoint)
    assert status == 0
    assert api.requests[0].query == {"id": "00064a1c0f3b5e21a9c3f0d2", "want_body": "true"}
    fields = dict(line.split(None, 1) for line in out.split("\n\n")[0].splitlines())
    assert fields["state"] == "scheduled"
    assert fields["queue"] == "spring:acme@example.net"
    assert fields["num_attempts"] == "2"
    assert fields["reception.peer_address"] == "127.0.0.1"
    assert out.split("\n\n", 1)[1] == "Subject: hi\r\n\r\nHello Ann\r\n"


def test_inspect_message_without_body_does_not_ask_for_it(api, capsys):
    answer = json.loads(json.dumps(INSPECTED))
    del answer["message"]["data"]
    api.answer("GET", "/api/admin/inspect-message/v1", answer)
    status, out, _ = run_cli(capsys, "inspect-message", "abc", "--endpoint", api.endpoint)
    assert status == 0
    assert api.requests[0].query == {"id": "abc"}
    assert "Hello" not in out and "sender" in out


def test_inspecting_a_message_not_queued_shows_the_servers_error(api, capsys):
    api.answer("GET", "/api/admin/inspect-message/v1", {"error": "no queued message with id 'abc'"}, status=404)
    status, _, err = run_cli(capsys, "inspect-message", "abc", "--endpoint", api.endpoint)
    assert status == 1 and "no queued message with id 'abc'" in err


# --- credentials, and what goes wrong ------------------------------------------------


def test_token_is_sent_as_a_bearer_credential(api, capsys, monkeypatch):
    api.answer("GET", "/api/admin/suspend/v1", [])
    run_cli(capsys, "suspend-list", "--endpoint", api.endpoint, "--token", "s3cret")
    monkeypatch.setenv("TRIMTA_TOKEN", "from-env")
    run_cli(capsys, "suspend-list", "--endpoint", api.endpoint)
    assert [r.headers.get("authorization") for r in api.requests] == ["Bearer s3cret", "Bearer from-env"]


def test_credentials_in_the_endpoint_url_are_sent_as_basic(api, capsys):
    api.answer("GET", "/api/admin/suspend/v1", [])
    run_cli(capsys, "suspend-list", "--endpoint", api.endpoint.replace("http://", "http://ops:pa%20ss@"))
    assert api.requests[0].headers["authorization"] == "Basic b3BzOnBhIHNz"  # ops:pa ss


def test_endpoint_from_the_environment_and_its_default(monkeypatch, api, capsys, tmp_path):
    from trimta.commands._api import resolve_endpoint

    monkeypatch.chdir(tmp_path)  # no ./trimta.toml
    monkeypatch.delenv("TRIMTA_ENDPOINT", raising=False)
    assert resolve_endpoint(cli.build_parser().parse_args(["suspend-list"])) == "http://127.0.0.1:8000"
    monkeypatch.setenv("TRIMTA_ENDPOINT", api.endpoint + "/")
    api.answer("GET", "/api/admin/suspend/v1", [])
    assert run_cli(capsys, "suspend-list")[0] == 0
    assert api.requests[0].path == "/api/admin/suspend/v1"


def test_kclis_endpoint_variable_is_understood_after_trimtas(monkeypatch, api, capsys):
    monkeypatch.setenv("KUMO_KCLI_ENDPOINT", api.endpoint)
    api.answer("GET", "/api/admin/suspend/v1", [])
    assert run_cli(capsys, "suspend-list")[0] == 0
    monkeypatch.setenv("TRIMTA_ENDPOINT", "http://127.0.0.1:1")  # trimta's own wins: nothing listens there
    assert run_cli(capsys, "suspend-list")[0] != 0
    assert [r.path for r in api.requests] == ["/api/admin/suspend/v1"]


def test_an_endpoint_with_a_path_prefix_is_kept(api, capsys):
    api.answer("GET", "/mta/api/admin/suspend/v1", [])
    assert run_cli(capsys, "suspend-list", "--endpoint", api.endpoint + "/mta")[0] == 0
    assert run_cli(capsys, "suspend-list", "--endpoint", api.endpoint + "/mta/?ignored=1")[0] == 0
    assert [r.path for r in api.requests] == ["/mta/api/admin/suspend/v1"] * 2


def test_a_daemon_not_running_is_said_plainly(capsys):
    port = closed_port()
    status, out, err = run_cli(capsys, "suspend-list", "--endpoint", f"http://127.0.0.1:{port}")
    assert status == 3
    assert out == ""
    assert err == (
        f"trimta suspend-list: cannot reach trimta at http://127.0.0.1:{port}: connection refused; "
        "is `trimta serve` running with an [http] listener?\n"
    )


def test_a_daemon_that_does_not_answer_times_out(api, capsys):
    api.stall.set()
    status, _, err = run_cli(capsys, "queue-summary", "--endpoint", api.endpoint, "--timeout", "0.2s")
    assert status == 3
    assert f"cannot reach trimta at {api.endpoint}: timed out" in err


def test_a_refused_request_shows_the_servers_json_error(api, capsys):
    api.answer("POST", "/api/admin/suspend/v1", {"error": "tenant: unknown tenant 'acme2'"}, status=400)
    status, out, err = run_cli(capsys, "suspend", "--tenant", "acme2", "--reason", "r", "--endpoint", api.endpoint)
    assert (status, out) == (1, "")
    assert err == "trimta suspend: refused (HTTP 400): tenant: unknown tenant 'acme2'\n"


def test_unauthorized_suggests_a_token(api, capsys):
    api.answer("GET", "/api/admin/bounce/v1", {"error": "credentials required"}, status=401)
    status, _, err = run_cli(capsys, "bounce-list", "--endpoint", api.endpoint)
    assert status == 1
    assert "refused (HTTP 401): credentials required; pass --token or set TRIMTA_TOKEN" in err


def test_something_else_than_trimta_at_the_endpoint(api, capsys):
    api.answer("GET", "/api/admin/suspend/v1", "<html>hello</html>", text=True)
    status, _, err = run_cli(capsys, "suspend-list", "--endpoint", api.endpoint)
    assert status == 1
    assert f"the answer is not JSON (text/plain); is {api.endpoint} trimta?" in err
    api.answer("GET", "/api/admin/suspend/v1", "<html>Bad Gateway</html>", text=True, status=502)
    status, _, err = run_cli(capsys, "suspend-list", "--endpoint", api.endpoint)
    assert status == 1 and err == "trimta suspend-list: refused (HTTP 502): Bad Gateway\n"
