"""kcli's spellings and verbs in `trimta`, against a fake API: the requests sent and what is shown.

The same `FakeApi` as test_cli_admin.py (a real HTTP server in a thread recording every
request); the commands against a real daemon are in tests/kumomta_compat/test_kcli_daemon.py.
"""

from __future__ import annotations

import pytest

from tests.test_cli_admin import FakeApi, no_environment, run_cli  # noqa: F401 (the autouse fixture)


@pytest.fixture
def api():
    with FakeApi() as fake:
        yield fake


# --- kcli's spellings of the existing verbs -------------------------------------------------------------


def test_endpoint_before_the_verb_as_kcli_takes_it(api, capsys):
    api.answer("GET", "/api/admin/suspend/v1", [])
    status, out, _ = run_cli(capsys, "--endpoint", api.endpoint, "suspend-list")
    assert status == 0 and out == "no active admin suspensions\n"
    assert [r.path for r in api.requests] == ["/api/admin/suspend/v1"]


def test_the_endpoint_after_the_verb_wins(api, capsys):
    api.answer("GET", "/api/admin/suspend/v1", [])
    status, _, err = run_cli(capsys, "--endpoint", "http://127.0.0.1:9", "suspend-list", "--endpoint", api.endpoint)
    assert status == 0, err


@pytest.mark.parametrize(("verb", "path"), [
    ("suspend-cancel", "/api/admin/suspend/v1"), ("bounce-cancel", "/api/admin/bounce/v1"),
    ("suspend-ready-q-cancel", "/api/admin/suspend-ready-q/v1"),
])
def test_cancel_takes_kclis_id_option(api, capsys, verb, path):
    api.answer("DELETE", path, {"id": "e7541"})
    status, out, _ = run_cli(capsys, verb, "--id", "e7541", "--endpoint", api.endpoint)
    assert status == 0 and out.endswith("e7541 cancelled\n")
    assert api.requests[0].body == {"id": "e7541"}


def test_an_id_given_twice_differently_is_refused(api, capsys):
    status, _, err = run_cli(capsys, "suspend-cancel", "a1", "--id", "b2", "--endpoint", api.endpoint)
    assert status == 2 and "give the id once" in err and api.requests == []
    status, _, err = run_cli(capsys, "suspend-cancel", "--endpoint", api.endpoint)
    assert status == 2 and "say which: give the id" in err


def test_suspend_ready_q_takes_kclis_name_option(api, capsys):
    api.answer("POST", "/api/admin/suspend-ready-q/v1", {"id": "r-1"})
    status, _, _ = run_cli(capsys, "suspend-ready-q", "--name", "ip-1->mx.example.net@smtp_client",
                           "--reason", "421s", "--endpoint", api.endpoint)
    assert status == 0
    assert api.requests[0].body == {"name": "ip-1->mx.example.net@smtp_client", "reason": "421s"}


def test_inspect_message_takes_want_body(api, capsys):
    api.answer("GET", "/api/admin/inspect-message/v1", {"id": "m1", "state": "scheduled", "message": {"data": "x\n"}})
    status, _, _ = run_cli(capsys, "inspect-message", "m1", "--want-body", "--endpoint", api.endpoint)
    assert status == 0 and api.requests[0].query == {"id": "m1", "want_body": "true"}


def test_queue_summary_by_volume_is_accepted(api, capsys):
    api.answer("GET", "/api/admin/queue-summary/v1", {"scheduled": [], "ready": [], "totals": {}})
    status, _, _ = run_cli(capsys, "queue-summary", "--by-volume", "--endpoint", api.endpoint)
    assert status == 0


def test_bounce_with_kclis_selectors(api, capsys):
    api.answer("POST", "/api/admin/bounce/v1", {"id": "b-1", "bounced": {}, "total_bounced": 0})
    run_cli(capsys, "bounce", "--queue", "spring:acme@example.net", "--queue", "acme@example.org",
            "--suppress-logging", "--reason", "bad send", "--endpoint", api.endpoint)
    run_cli(capsys, "bounce", "--routing-domain", "smarthost.example", "--reason", "r", "--endpoint", api.endpoint)
    run_cli(capsys, "bounce", "--everything", "--reason", "r", "--endpoint", api.endpoint)
    assert [r.body for r in api.requests] == [
        {"queue_names": ["spring:acme@example.net", "acme@example.org"], "suppress_logging": True, "reason": "bad send"},
        {"routing_domain": "smarthost.example", "reason": "r"},
        {"everything": True, "reason": "r"},
    ]


def test_suspend_everything_and_queue(api, capsys):
    api.answer("POST", "/api/admin/suspend/v1", {"id": "s-1"})
    run_cli(capsys, "suspend", "--everything", "--reason", "r", "--endpoint", api.endpoint)
    run_cli(capsys, "suspend", "--queue", "acme@example.net", "--reason", "r", "--endpoint", api.endpoint)
    assert [r.body for r in api.requests] == [{"everything": True, "reason": "r"},
                                             {"queue_names": ["acme@example.net"], "reason": "r"}]


@pytest.mark.parametrize(("argv", "says"), [
    (["suspend", "--everything", "--tenant", "acme"], "--everything matches every message"),
    (["bounce", "--queue", "acme@example.net", "--domain", "example.net"], "--queue names exact queues"),
    (["bounce"], "give at least one of --tenant, --campaign, --domain, --queue, or --everything"),
])
def test_selector_mistakes_are_caught_before_sending(api, capsys, argv, says):
    status, _, err = run_cli(capsys, *argv, "--reason", "r", "--endpoint", api.endpoint)
    assert status == 2 and says in err and api.requests == []


# --- the new verbs ------------------------------------------------------------------------------------------

METRICS = """\
# TYPE total_messages_delivered_by_provider counter
total_messages_delivered_by_provider{provider="gmail"} 1200
total_messages_delivered_by_provider{provider="mx.example.net"} 5
# TYPE total_messages_transfail_by_provider counter
total_messages_transfail_by_provider{provider="gmail"} 30
# TYPE total_messages_fail_by_provider counter
total_messages_fail_by_provider{provider="gmail"} 2
# TYPE connection_count_by_provider gauge
connection_count_by_provider{provider="gmail"} 3
# TYPE queued_count_by_provider gauge
queued_count_by_provider{provider="mx.example.net"} 4000
# TYPE total_messages_delivered_by_provider_and_source counter
total_messages_delivered_by_provider_and_source{provider="gmail",source="ip-1",pool="warm"} 1000
total_messages_delivered_by_provider_and_source{provider="gmail",source="ip-2",pool="warm"} 100
total_messages_delivered_by_provider_and_source{provider="gmail",source="ip-3",pool="cold"} 100
"""


def test_provider_summary_from_the_metrics_largest_volume_first(api, capsys):
    api.answer("GET", "/metrics", METRICS, text=True)
    status, out, _ = run_cli(capsys, "provider-summary", "--endpoint", api.endpoint)
    assert status == 0
    assert out.splitlines() == [
        "PROVIDER            D   T  F  C      Q",
        "mx.example.net      5   0  0  0  4,000",
        "gmail           1,200  30  2  3      0",
    ]


def test_provider_summary_by_pool(api, capsys):
    api.answer("GET", "/metrics", METRICS, text=True)
    status, out, _ = run_cli(capsys, "provider-summary", "--by-pool", "--limit", "1", "--endpoint", api.endpoint)
    assert status == 0
    assert out.splitlines() == ["PROVIDER  POOL      D  T  F  C  Q", "gmail     warm  1,100  0  0  -  -"]


SCHEDULED = """\
# TYPE scheduled_count gauge
scheduled_count{queue="acme@example.net"} 3000
scheduled_count{queue="spring:acme@example.org"} 1000
scheduled_count{queue="acme@example.com!relay.example"} 5
scheduled_count{queue="acme@gmail.com"} 7
"""


def test_provider_summary_show_domains_places_the_queued_domains_by_site(api, capsys, monkeypatch):
    import trimta.commands.kumo as kumo

    monkeypatch.setattr(kumo, "SITE_LOOKUPS", 1)  # one lookup at a time: the answers go in domain order
    api.answer("GET", "/metrics", METRICS + SCHEDULED, text=True)
    api.answer("GET", "/api/admin/resolve-egress-path/v1",
               {"mx": {"site_name": "mx.example.net"}},  # example.net
               {"mx": {"site_name": "mx.example.net"}},  # example.org: hosted by the same MX
               {"mx": {"site_name": "gmail-smtp-in.l.google.com"}},  # gmail.com: the "gmail" provider's row
               {"mx": None, "mx_error": "DNS lookup for relay.example timed out"})  # relay.example
    status, out, _ = run_cli(capsys, "provider-summary", "--show-domains", "--endpoint", api.endpoint)
    assert status == 0
    assert sorted(r.query["domain"] for r in api.requests[1:]) == ["example.net", "example.org", "gmail.com",
                                                                  "relay.example"]
    assert out.splitlines() == [
        "PROVIDER            D   T  F  C      Q  DOMAINS",
        "mx.example.net      5   0  0  0  4,000  example.net, example.org",
        "gmail           1,200  30  2  3      0  -",
    ]


def test_inspect_sched_q_asks_for_five_by_default_and_prints_json(api, capsys):
    api.answer("GET", "/api/admin/inspect-sched-q/v1", {"queue_name": "acme@example.net", "messages": []})
    run_cli(capsys, "inspect-sched-q", "acme@example.net", "--endpoint", api.endpoint)
    status, out, _ = run_cli(capsys, "inspect-sched-q", "acme@example.net", "--want-body", "--no-limit",
                             "--endpoint", api.endpoint)
    assert status == 0 and out.startswith('{\n  "queue_name": "acme@example.net"')
    assert [r.query for r in api.requests] == [{"queue_name": "acme@example.net", "limit": "5"},
                                               {"queue_name": "acme@example.net", "want_body": "true"}]


READY_Q = {
    "queue_name": "ip-1->mx.example.net@smtp_client", "egress_source": "ip-1", "egress_pool": "warm",
    "protocol": "smtp_client",
    "state": {"ready_count": 1200, "connection_count": 3, "watchdog_threshold": "5m",
              "suspended": {"id": "r-1", "name": "ip-1->mx.example.net@smtp_client", "reason": "421s",
                            "duration": "55m", "expires": "2026-11-22T07:10:00Z"}},
    "path_config": {"connection_limit": 10, "max_message_rate": "100/s", "ehlo_domain": None,
                    "additional_connection_limits": {}},
    "constraints": {"max_concurrent_dispatchers": {"value": 10.0, "source": {"kind": "primary"}, "display": "10"},
                    "max_connection_rate": None,
                    "max_message_rate": {"value": 20.0, "source": {"kind": "additional", "name": "pool-wide"},
                                         "display": "20/s"},
                    "max_message_rate_declared": "100/s", "max_source_selection_rate": None},
    "dispatchers": [],
    "mx": {"site_name": "mx.example.net", "by_preference": {"10": ["mx.example.net"]}, "is_mx": True,
           "is_domain_literal": False, "is_secure": False},
    "scheduled_queue_names": ["acme@example.net"],
}


def test_inspect_ready_q_as_text(api, capsys):
    api.answer("GET", "/api/admin/inspect-ready-q/v1", READY_Q)
    status, out, _ = run_cli(capsys, "inspect-ready-q", "ip-1->mx.example.net@smtp_client", "--show-config",
                             "--sched-q", "--endpoint", api.endpoint)
    assert status == 0
    assert api.requests[0].query == {"queue_name": "ip-1->mx.example.net@smtp_client",
                                     "include_scheduled_queues": "true"}
    assert out.splitlines() == [
        "queue: ip-1->mx.example.net@smtp_client",
        "",
        "egress pool:        warm",
        "egress source:      ip-1",
        "protocol:           smtp_client",
        "watchdog threshold: 5m",
        "",
        "site: mx.example.net",
        "  mx 10: mx.example.net",
        "",
        "ready: 1,200",
        "",
        "suspended: 421s",
        "  expires in: 55m",
        "",
        "connections: 3",
        "",
        "scheduled queues: 1",
        "  acme@example.net",
        "",
        "ceilings:",
        "  connections: 10 (connection_limit)",
        "  connection rate: unlimited",
        "  message rate: 20/s (pool-wide)",
        "  source selection: unlimited",
        "  (max_message_rate 100/s is declared but not reached)",
        "",
        "config:",
        "  connection_limit = 10",
        '  max_message_rate = "100/s"',
        "  additional_connection_limits = {}",
    ]


def test_inspect_ready_q_connections_as_kcli_shows_its_dispatchers(api, capsys):
    dispatchers = [
        {"session_id": "7f3a8d4e-9c12-4abc-8def-1234567890ab", "started_at": "2026-11-22T06:42:00Z", "age": "8m12s",
         "phase": "DeliveringMessage", "detail": "message 0193e6c1", "time_in_current_phase": "1.2s",
         "messages_delivered": 1391, "messages_transfailed": 4, "messages_failed": 0,
         "delivered_this_connection": 1391, "overall_rate_per_sec": 2.83},
        {"session_id": "c2d35e10-aaaa-bbbb-cccc-dddddddddddd", "started_at": "2026-11-22T06:49:30Z", "age": "31s",
         "phase": {"AcquiringLease": {"label": "shaping-provider-gmail-connection-limit"}}, "detail": None,
         "time_in_current_phase": "300ms", "messages_delivered": 0, "messages_transfailed": 0,
         "messages_failed": 0, "delivered_this_connection": 0, "overall_rate_per_sec": 0.0},
    ]
    api.answer("GET", "/api/admin/inspect-ready-q/v1", {**READY_Q, "dispatchers": dispatchers})
    status, out, _ = run_cli(capsys, "inspect-ready-q", "ip-1->mx.example.net@smtp_client", "--connections",
                             "--endpoint", api.endpoint)
    assert status == 0
    lines = out.splitlines()
    start = lines.index("connections: 3")
    assert lines[start:start + 9] == [
        "connections: 3",
        "  SESSION                               DELIV  TRANS  FAIL    AGE   RATE",
        "  7f3a8d4e-9c12-4abc-8def-1234567890ab  1,391      4     0  8m12s  2.8/s",
        "  DeliveringMessage for 1.2s",
        "  message 0193e6c1",
        "",
        "  c2d35e10-aaaa-bbbb-cccc-dddddddddddd      0      0     0    31s  0.0/s",
        "  AcquiringLease(shaping-provider-gmail-connection-limit) for 300ms",
        "",
    ]


def test_abort_ready_q_conn_as_kcli(api, capsys):
    api.answer("POST", "/api/admin/abort-ready-q-conn/v1", "aborted 7f3a8d4e-9c12-4abc-8def-1234567890ab", text=True)
    status, out, _ = run_cli(capsys, "abort-ready-q-conn", "ip-1->mx.example.net@smtp_client",
                             "7f3a8d4e-9c12-4abc-8def-1234567890ab", "--endpoint", api.endpoint)
    assert (status, out) == (0, "aborted 7f3a8d4e-9c12-4abc-8def-1234567890ab\n")
    assert api.requests[0].body == {"queue_name": "ip-1->mx.example.net@smtp_client",
                                    "session_id": "7f3a8d4e-9c12-4abc-8def-1234567890ab"}
    api.answer("POST", "/api/admin/abort-ready-q-conn/v1", {"error": "no matching dispatcher for queue=q session=s"},
               status=404)
    status, _, err = run_cli(capsys, "abort-ready-q-conn", "q", "7f3a8d4e-9c12-4abc-8def-1234567890ab",
                             "--endpoint", api.endpoint)
    assert status != 0 and "no matching dispatcher" in err


def test_resolve_egress_path_config_only_is_toml(api, capsys):
    import tomllib

    api.answer("GET", "/api/admin/resolve-egress-path/v1", {**READY_Q, "domain": "example.net", "source": "ip-1"})
    status, out, _ = run_cli(capsys, "resolve-egress-path", "example.net", "ip-1", "--show-config",
                             "--endpoint", api.endpoint)
    assert status == 0 and api.requests[0].query == {"domain": "example.net", "source": "ip-1"}
    assert tomllib.loads(out) == {"connection_limit": 10, "max_message_rate": "100/s",
                                  "additional_connection_limits": {}}


def test_rebind_sends_kclis_body(api, capsys):
    api.answer("POST", "/api/admin/rebind/v1", {"matched": 3, "rebound": 3, "flushed": 0,
                                                "queues": {"foo.com": 3}})
    status, out, _ = run_cli(capsys, "rebind", "--domain", "example.com", "--set", "queue=foo.com",
                             "--reason", "move", "--endpoint", api.endpoint)
    run_cli(capsys, "rebind", "--everything", "--data", '{"tenant": "acme"}', "--set", "campaign=fall",
            "--always-flush", "--suppress-logging", "--reason", "r", "--endpoint", api.endpoint)
    assert status == 0
    assert out.splitlines() == ["rebound 3 messages of 3 matched", "QUEUE    MESSAGES", "foo.com         3"]
    assert [r.body for r in api.requests] == [
        {"domain": "example.com", "reason": "move", "data": {"queue": "foo.com"}, "always_flush": False,
         "suppress_logging": False, "trigger_rebind_event": False},
        {"reason": "r", "data": {"tenant": "acme", "campaign": "fall"}, "always_flush": True,
         "suppress_logging": True, "trigger_rebind_event": False},
    ]


@pytest.mark.parametrize(("argv", "says"), [
    (["rebind", "--reason", "r"], "use --everything to rebind every queue"),
    (["rebind", "--everything", "--tenant", "a", "--reason", "r"], "--everything matches every queue"),
    (["rebind", "--tenant", "a", "--data", "{not json", "--reason", "r"], "--data: not JSON"),
    (["rebind", "--tenant", "a", "--set", "tenant", "--reason", "r"], "--set: expected KEY=VALUE"),
    (["resolve-egress-path", "example.net", "--show-config", "--constraints"], "one or the other"),
])
def test_mistakes_in_the_new_verbs_are_caught_before_sending(api, capsys, argv, says):
    status, _, err = run_cli(capsys, *argv, "--endpoint", api.endpoint)
    assert status == 2 and says in err and len(err.strip().splitlines()) == 1 and api.requests == []
