"""``trimta inject`` and ``trimta top --once`` against the fake API of test_cli_admin."""

from __future__ import annotations

import io
import json

from tests.test_cli_admin import SUMMARY, FakeApi, closed_port, no_environment, run_cli  # noqa: F401 (fixture)

import pytest

from trimta.commands.top import samples, tenant_counters

MESSAGE = "From: app@shop.example\r\nSubject: {{ not a template }}\r\n\r\nHello\r\n"


@pytest.fixture
def api():
    with FakeApi() as fake:
        yield fake


# --- inject --------------------------------------------------------------------------


def test_inject_posts_the_file_as_is_for_each_recipient(api, capsys, tmp_path):
    path = tmp_path / "hello.eml"
    path.write_bytes(MESSAGE.encode())
    api.answer("POST", "/api/inject/v1", {"success_count": 2, "fail_count": 0, "failed_recipients": [], "errors": []})
    status, out, err = run_cli(capsys, "inject", str(path), "--from", "app@shop.example", "--to", "ann@example.net",
                               "--to", "bob@example.org", "--tenant", "acme", "--campaign", "spring",
                               "--endpoint", api.endpoint)
    assert (status, err) == (0, "")
    [request] = api.requests
    assert (request.method, request.path) == ("POST", "/api/inject/v1")
    assert request.body == {
        "envelope_sender": "app@shop.example",
        "recipients": [{"email": "ann@example.net"}, {"email": "bob@example.org"}],
        "content": MESSAGE,
        "template_dialect": "Static",
        "tenant": "acme",
        "campaign": "spring",
    }
    assert out == "accepted 2 of 2 recipients\n"


def test_inject_as_a_template_and_from_standard_input(api, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(MESSAGE.encode())))
    api.answer("POST", "/api/inject/v1", {"success_count": 1, "fail_count": 0, "failed_recipients": [], "errors": []})
    status, _, _ = run_cli(capsys, "inject", "-", "--from", "a@b.example", "--to", "c@d.example", "--template",
                           "--endpoint", api.endpoint)
    assert status == 0
    assert api.requests[0].body == {
        "envelope_sender": "a@b.example", "recipients": [{"email": "c@d.example"}], "content": MESSAGE,
    }


def test_inject_with_some_recipients_refused_says_which_and_fails(api, capsys, tmp_path):
    path = tmp_path / "m.eml"
    path.write_text(MESSAGE)
    api.answer("POST", "/api/inject/v1", {
        "success_count": 1, "fail_count": 1, "failed_recipients": ["bad@@example"],
        "errors": ["recipients[1].email: not a valid address: 'bad@@example'"],
    })
    status, out, _ = run_cli(capsys, "inject", str(path), "--from", "a@b.example", "--to", "ok@example.net",
                             "--to", "bad@@example", "--endpoint", api.endpoint)
    assert status == 1
    assert out.splitlines() == [
        "accepted 1 of 2 recipients",
        "refused: bad@@example",
        "error: recipients[1].email: not a valid address: 'bad@@example'",
    ]


def test_inject_refused_entirely_shows_the_servers_errors(api, capsys, tmp_path):
    path = tmp_path / "m.eml"
    path.write_text(MESSAGE)
    api.answer("POST", "/api/inject/v1", {
        "error": "no recipient could be accepted", "success_count": 0, "fail_count": 1,
        "failed_recipients": ["x"], "errors": ["recipients[0].email: not a valid address: 'x'"],
    }, status=400)
    status, out, err = run_cli(capsys, "inject", str(path), "--from", "a@b.example", "--to", "x",
                               "--endpoint", api.endpoint)
    assert (status, out) == (1, "")
    assert err == ("trimta inject: refused (HTTP 400): no recipient could be accepted\n"
                   "  recipients[0].email: not a valid address: 'x'\n")


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read"), (b"", "is empty"), (b"Subject: \xff\xfe\r\n\r\nx\r\n", "is not UTF-8 text")],
)
def test_inject_files_that_cannot_be_sent(api, capsys, tmp_path, content, words):
    path = tmp_path / "m.eml"
    if content is not None:
        path.write_bytes(content)
    status, out, err = run_cli(capsys, "inject", str(path), "--from", "a@b.example", "--to", "c@d.example",
                               "--endpoint", api.endpoint)
    assert (status, out) == (2, "")
    assert err.startswith("trimta inject: ") and words in err
    assert api.requests == []


def test_inject_to_a_daemon_not_running(capsys, tmp_path):
    path = tmp_path / "m.eml"
    path.write_text(MESSAGE)
    port = closed_port()
    status, _, err = run_cli(capsys, "inject", str(path), "--from", "a@b.example", "--to", "c@d.example",
                             "--endpoint", f"http://127.0.0.1:{port}")
    assert status == 3 and "connection refused; is `trimta serve` running" in err


# --- top -----------------------------------------------------------------------------

METRICS_BEFORE = """\
# HELP trimta_tenant_messages_total Messages by tenant and what happened to them.
# TYPE trimta_tenant_messages_total counter
trimta_tenant_messages_total{tenant="acme",event="received"} 1000.0
trimta_tenant_messages_total{tenant="acme",event="delivered"} 900.0
trimta_tenant_messages_total{tenant="globex",event="received"} 50.0
trimta_tenant_messages_total{tenant="globex",event="delivered"} 50.0
trimta_outbound_connections 3.0
"""
METRICS_AFTER = METRICS_BEFORE.replace("1000.0", "1500.0").replace("900.0", "1300.0")


def summary_with(delivered_gmail: int, delivered_example: int) -> dict:
    summary = json.loads(json.dumps(SUMMARY))
    summary["ready"][0]["delivered"] = delivered_gmail
    summary["ready"][1]["delivered"] = delivered_example
    return summary


def test_top_once_samples_twice_and_shows_rates_and_the_busiest_queues(api, capsys):
    api.answer("GET", "/api/admin/queue-summary/v1", summary_with(1200, 9), summary_with(1400, 9))
    api.answer("GET", "/metrics", METRICS_BEFORE, METRICS_AFTER, text=True)
    status, out, err = run_cli(capsys, "top", "--once", "--interval", "0.05s", "--endpoint", api.endpoint)
    assert (status, err) == (0, "")
    assert [(r.method, r.path) for r in api.requests] == [
        ("GET", "/api/admin/queue-summary/v1"), ("GET", "/metrics"),
    ] * 2
    assert "\x1b[" not in out  # --once prints one frame, no screen control
    lines = out.splitlines()
    assert lines[0].startswith(f"trimta top  {api.endpoint}  ")
    rates = dict(zip(lines[2].split()[1::2], lines[2].split()[2::2]))
    assert list(rates) == ["received", "delivered", "transient", "bounced", "expired"]
    assert float(rates["received"]) > 0 and float(rates["delivered"]) > 0
    assert rates["transient"] == rates["bounced"] == rates["expired"] == "0.0"
    assert lines[3].split() == ["queued", "352", "scheduled", "in", "2", "queues", "25", "ready", "in", "2", "queues",
                                "3", "connections"]
    # Ready queues, busiest first, with their delivery rate; then scheduled queues, fullest first.
    gmail = next(i for i, line in enumerate(lines) if line.startswith("ip-1->"))
    example = next(i for i, line in enumerate(lines) if line.startswith("ip-2->"))
    assert gmail < example
    assert float(lines[gmail].split()[3]) > 0 and lines[example].split()[3] == "0.0"
    scheduled = [line.split()[0] for line in lines if "@" in line and "->" not in line]
    assert scheduled == ["acme@gmail.com", "spring:acme@example.net"]
    # Tenants, busiest first: acme's counters moved, globex's did not.
    tenants = [line.split() for line in lines if line.startswith(("acme ", "globex "))]
    assert [t[0] for t in tenants] == ["acme", "globex"]
    assert float(tenants[0][1]) > 0 and tenants[1][1:] == ["0.0"] * 5


def test_top_once_shows_queues_even_without_metrics(api, capsys):
    api.answer("GET", "/api/admin/queue-summary/v1", SUMMARY)
    api.answer("GET", "/metrics", {"error": "metrics are disabled"}, status=404)
    status, out, _ = run_cli(capsys, "top", "--once", "--interval", "0", "--endpoint", api.endpoint)
    assert status == 0
    assert "messages/s   unknown (/metrics: metrics are disabled)" in out
    assert "ip-1->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client" in out
    assert len(api.requests) == 2  # one sample with --interval 0


def test_top_against_a_daemon_not_running(capsys):
    port = closed_port()
    status, out, err = run_cli(capsys, "top", "--once", "--endpoint", f"http://127.0.0.1:{port}")
    assert (status, out) == (3, "")
    assert "connection refused; is `trimta serve` running" in err


def test_prometheus_text_is_read_with_labels_and_escapes():
    text = 'a_total{x="1",y="q\\"uote"} 3\n# comment\nb 4.5 1700000000\nbad line\nc{} NaN\n'
    assert list(samples(text))[:2] == [("a_total", {"x": "1", "y": 'q"uote'}, 3.0), ("b", {}, 4.5)]
    assert tenant_counters(METRICS_BEFORE) == {
        ("acme", "received"): 1000.0, ("acme", "delivered"): 900.0,
        ("globex", "received"): 50.0, ("globex", "delivered"): 50.0,
    }
