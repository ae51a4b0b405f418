"""The admin API over loopback: every endpoint and its errors, with `http.client`.

The engine is the real `DeliveryEngine` on a fake network and an in-memory spool
(`DeliveryHarness`), served by the real HTTP server on a real loopback listener; the
client is the standard library's `http.client`, run in a worker thread. Time is real
(threads and sockets), so nothing here waits for a timer.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from trimta.adapters.config import TenancyConfig
from trimta.adapters.http_config import HttpConfig, HttpUser
from trimta.core import units
from trimta.services.acceptance import Acceptor
from trimta.services.http_api import HttpApi, format_duration, parse_time, serve_api
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import refusing, stalling

DELIVERY = """
[egress.default]
prohibited_hosts = []
[queues]
retry_interval = "10m"
"""


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Api:
    """A running API: its address, the harness behind it, and a client."""

    host: str
    port: int
    harness: DeliveryHarness
    api: HttpApi

    def _call(self, method: str, path: str, body: Any = None, headers: dict | None = None,
              source: str | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10,
                                          source_address=(source, 0) if source else None)
        try:
            payload = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=payload, headers=all_headers)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    async def call(self, method: str, path: str, body: Any = None, **kwargs) -> Reply:
        return await trio.to_thread.run_sync(partial(self._call, method, path, body, **kwargs))

    async def inject(self, recipients: list[str], **fields) -> Reply:
        body = {"envelope_sender": "app@sender.example", "content": "Subject: hi\n\nHello\n",
                "recipients": [{"email": r} for r in recipients], **fields}
        return await self.call("POST", "/api/inject/v1", body)


@asynccontextmanager
async def running_api(config: HttpConfig | None = None, *, spool=None, harness: DeliveryHarness | None = None,
                      **api_options) -> AsyncIterator[Api]:
    h = harness or DeliveryHarness(config=DELIVERY)
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.resolver.add_domain("other.example", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, refusing())  # everything stays queued
    h.resolver.add_domain("stall.example", "127.0.0.11")
    h.network.add_receiver("127.0.0.11", 25, stalling())  # a connection stays open, a message in flight
    spool = spool if spool is not None else h.spool
    acceptor = Acceptor(spool=spool, logs=h.logs, tenancy=TenancyConfig(), hostname="mx.trimta.test",
                        on_accepted=h.engine.accept, clock=trio.current_time)
    api = HttpApi(acceptor=acceptor, engine=h.engine, rules=h.engine.rules, spool=spool if hasattr(spool, "statistics") else None,
                  logs=None, clock=trio.current_time, **api_options)
    config = config or HttpConfig(port=0)
    async with h.running(), trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        (address,) = await nursery.start(partial(serve_api, config, api, listeners=listeners))
        try:
            yield Api(address[0], address[1], h, api)
        finally:
            nursery.cancel_scope.cancel()


# --- liveness, routing ---------------------------------------------------------------------------


async def test_liveness():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await api.call("GET", "/api/check-liveness/v1")
    assert reply.status == 200 and reply.json == {"status": "ok"}


async def test_unknown_path_is_404_json():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await api.call("GET", "/api/nothing/v1")
    assert reply.status == 404
    assert reply.json == {"error": "no such endpoint: /api/nothing/v1"}


async def test_wrong_method_is_405_with_allow():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await api.call("PUT", "/api/admin/suspend/v1", {})
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, POST, DELETE"
    assert "PUT is not allowed" in reply.json["error"]


# --- authentication --------------------------------------------------------------------------------


def untrusting(**kwargs) -> HttpConfig:
    """Trusts only 127.0.0.2; the client connects from 127.0.0.1."""
    return HttpConfig(port=0, trusted_hosts=(__import__("ipaddress").ip_network("127.0.0.2/32"),), **kwargs)


async def test_untrusted_host_without_credentials_gets_401_on_every_path():
    with trio.fail_after(10):
        async with running_api(untrusting(tokens=("t0k3n",))) as api:
            replies = [await api.call("GET", path) for path in
                       ("/api/admin/suspend/v1", "/metrics", "/api/check-liveness/v1", "/no/such/path")]
            injected = await api.inject(["a@example.net"])
    for reply in [*replies, injected]:
        assert reply.status == 401
        assert "credentials required" in reply.json["error"]
        assert "Bearer" in reply.headers["WWW-Authenticate"]
    assert api.harness.spool.messages == {}


async def test_trusted_host_needs_no_credentials():
    with trio.fail_after(10):
        async with running_api(untrusting()) as api:
            reply = await api.call("GET", "/api/check-liveness/v1", source="127.0.0.2")
    assert reply.status == 200


async def test_bearer_token_lets_an_untrusted_host_in_and_a_wrong_one_does_not():
    with trio.fail_after(10):
        async with running_api(untrusting(tokens=("t0k3n", "other"))) as api:
            good = await api.call("GET", "/api/check-liveness/v1", headers={"Authorization": "Bearer t0k3n"})
            bad = await api.call("GET", "/api/check-liveness/v1", headers={"Authorization": "Bearer t0k3"})
    assert good.status == 200
    assert bad.status == 401


async def test_basic_credentials_let_an_untrusted_host_in_and_wrong_ones_do_not():
    def basic(user: str, password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    with trio.fail_after(10):
        async with running_api(untrusting(users=(HttpUser("ops", "pw"),))) as api:
            good = await api.call("GET", "/api/check-liveness/v1", headers=basic("ops", "pw"))
            wrong = await api.call("GET", "/api/check-liveness/v1", headers=basic("ops", "pW"))
            unknown = await api.call("GET", "/api/check-liveness/v1", headers=basic("eve", "pw"))
            garbage = await api.call("GET", "/api/check-liveness/v1", headers={"Authorization": "Basic !!!"})
    assert good.status == 200
    assert [r.status for r in (wrong, unknown, garbage)] == [401, 401, 401]


# --- suspensions ----------------------------------------------------------------------------------


async def test_suspend_list_and_cancel():
    with trio.fail_after(10):
        async with running_api() as api:
            created = await api.call("POST", "/api/admin/suspend/v1",
                                     {"tenant": "acme", "reason": "complaints", "duration": "2h"})
            listed = await api.call("GET", "/api/admin/suspend/v1")
            injected = await api.inject(["a@example.net"], tenant="acme")
            (message_id,) = api.harness.spool.messages
            await wait_for(lambda: api.harness.engine.find_message(message_id) is not None)  # past routing
            inspected = await api.call("GET", f"/api/admin/inspect-message/v1?id={message_id}")
            cancelled = await api.call("DELETE", "/api/admin/suspend/v1", {"id": created.json["id"]})
            after = await api.call("GET", "/api/admin/suspend/v1")
            again = await api.call("DELETE", "/api/admin/suspend/v1", {"id": created.json["id"]})
    assert created.status == 200
    (entry,) = listed.json
    assert entry["id"] == created.json["id"]
    assert (entry["tenant"], entry["campaign"], entry["domain"], entry["reason"]) == ("acme", None, None, "complaints")
    assert 7190 <= units.parse_duration(entry["duration"]) <= 7200
    assert entry["expires"].endswith("Z")
    assert injected.status == 200
    assert inspected.json["state"] == "suspended"
    assert cancelled.status == 200 and cancelled.json == {"id": created.json["id"]}
    assert after.json == []
    assert again.status == 404
    assert "no active suspension" in again.json["error"]


async def test_suspend_errors_say_what_is_wrong():
    bodies = [
        (b"{not json", "not valid JSON"),
        (b"", "expected a JSON body"),
        ([1, 2], "expected a JSON object, got an array"),
        ({"reason": "x"}, "give at least one of tenant, campaign, domain"),
        ({"tenant": "acme"}, "reason: missing"),
        ({"tenant": 5, "reason": "x"}, "tenant: expected a string, got a number"),
        ({"tenant": "acme", "reason": "x", "duration": "soon"}, "duration: expected a number of seconds"),
        ({"tenant": "acme", "reason": "x", "duration": 0}, "duration: must be in the future"),
        ({"tenant": "acme", "reason": "x", "expires": "yesterday"}, "expires: expected an RFC 3339 timestamp"),
        ({"tenant": "acme", "reason": "x", "tenent": "typo"}, "tenent: unknown field"),
    ]
    with trio.fail_after(20):
        async with running_api() as api:
            replies = [await api.call("POST", "/api/admin/suspend/v1", body) for body, _ in bodies]
            listed = await api.call("GET", "/api/admin/suspend/v1")
    for reply, (_, words) in zip(replies, bodies):
        assert reply.status == 400, reply.json
        assert words in reply.json["error"], (words, reply.json)
    assert listed.json == []


async def test_suspend_with_expires_and_default_duration():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.call("POST", "/api/admin/suspend/v1", {"domain": "Example.NET", "reason": "x"})
            await api.call("POST", "/api/admin/suspend/v1",
                           {"campaign": "spring", "reason": "y", "expires": "2099-01-01T00:00:00Z"})
            # Both given: expires wins, as in KumoMTA.
            await api.call("POST", "/api/admin/suspend/v1",
                           {"campaign": "fall", "reason": "z", "duration": "1h", "expires": "2098-01-01T00:00:00Z"})
            listed = await api.call("GET", "/api/admin/suspend/v1")
    by_reason = {e["reason"]: e for e in listed.json}
    assert 290 <= units.parse_duration(by_reason["x"]["duration"]) <= 300  # KumoMTA's default: 5 minutes
    assert by_reason["x"]["domain"] == "example.net"
    assert by_reason["y"]["expires"] == "2099-01-01T00:00:00Z"
    # (the clocks of the engine and of the wall are read a moment apart: within a second)
    assert abs(parse_time(by_reason["z"]["expires"]) - parse_time("2098-01-01T00:00:00Z")) <= 1


async def test_delete_needs_an_id():
    with trio.fail_after(10):
        async with running_api() as api:
            missing = await api.call("DELETE", "/api/admin/bounce/v1", {})
            typed = await api.call("DELETE", "/api/admin/suspend-ready-q/v1", {"id": 7})
    assert missing.status == 400 and missing.json["error"] == "id: missing"
    assert typed.status == 400 and "expected a string" in typed.json["error"]


# --- admin bounce ------------------------------------------------------------------------------------


async def test_admin_bounce_removes_exactly_the_matching_messages():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject(["s1@example.net", "s2@example.net"], tenant="acme", campaign="spring")
            await api.inject(["u1@example.net"], tenant="acme", campaign="summer")
            bounced = await api.call("POST", "/api/admin/bounce/v1",
                                     {"campaign": "spring", "reason": "bad list", "duration": "1h"})
            listed = await api.call("GET", "/api/admin/bounce/v1")
            cancelled = await api.call("DELETE", "/api/admin/bounce/v1", {"id": bounced.json["id"]})
            left = await api.call("GET", "/api/admin/bounce/v1")
            records = api.harness.records("AdminBounce")
            remaining = [m.recipient for m in api.harness.spool.messages.values()]
    assert bounced.status == 200
    assert bounced.json["bounced"] == {"spring:acme@example.net": 2}
    assert bounced.json["total_bounced"] == 2
    assert [e["id"] for e in listed.json] == [bounced.json["id"]]
    assert listed.json[0]["campaign"] == "spring" and listed.json[0]["reason"] == "bad list"
    assert cancelled.status == 200 and left.json == []
    assert sorted(r["recipient"] for r in records) == ["s1@example.net", "s2@example.net"]
    assert remaining == ["u1@example.net"]


async def test_admin_bounce_needs_a_match():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject(["a@example.net"])
            refused = await api.call("POST", "/api/admin/bounce/v1", {"reason": "everything?"})
    assert refused.status == 400
    assert len(api.harness.spool.messages) == 1


# --- ready queue suspensions ---------------------------------------------------------------------------


async def test_suspend_ready_queue_list_cancel_and_queue_summary_shows_it():
    name = "unspecified->mx.stall.example@smtp_client"
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject(["a@stall.example"])
            await wait_for(lambda: any(q.connections for q in api.harness.engine.queue_summary().ready))
            created = await api.call("POST", "/api/admin/suspend-ready-q/v1",
                                     {"name": name, "reason": "provider asked", "duration": "10m"})
            listed = await api.call("GET", "/api/admin/suspend-ready-q/v1")
            summary = await api.call("GET", "/api/admin/queue-summary/v1")
            cancelled = await api.call("DELETE", "/api/admin/suspend-ready-q/v1", {"id": created.json["id"]})
            after = await api.call("GET", "/api/admin/suspend-ready-q/v1")
    (entry,) = listed.json
    assert (entry["id"], entry["name"], entry["reason"]) == (created.json["id"], name, "provider asked")
    assert 590 <= units.parse_duration(entry["duration"]) <= 600
    (ready,) = summary.json["ready"]
    assert (ready["name"], ready["source"], ready["site"]) == (name, "unspecified", "mx.stall.example")
    assert ready["suspended"] is True
    assert ready["suspension"]["id"] == created.json["id"]
    assert ready["connections"] == 1 and ready["connection_limit"] >= 1
    assert summary.json["totals"]["connections"] == 1
    assert cancelled.status == 200 and after.json == []


async def test_suspend_ready_queue_errors():
    with trio.fail_after(10):
        async with running_api() as api:
            no_name = await api.call("POST", "/api/admin/suspend-ready-q/v1", {"reason": "x"})
            bad_name = await api.call("POST", "/api/admin/suspend-ready-q/v1", {"name": "gmail.com", "reason": "x"})
            unknown = await api.call("DELETE", "/api/admin/suspend-ready-q/v1", {"id": "nope"})
    assert no_name.status == 400 and no_name.json["error"] == "name: missing"
    assert bad_name.status == 400 and "ready queue name like" in bad_name.json["error"]
    assert unknown.status == 404


async def test_suspend_ready_queue_understands_the_old_name_form():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject(["a@stall.example"])
            await wait_for(lambda: any(q.connections for q in api.harness.engine.queue_summary().ready))
            created = await api.call("POST", "/api/admin/suspend-ready-q/v1",
                                     {"name": "unspecified->mx.stall.example@smtp", "reason": "old habits"})
            listed = await api.call("GET", "/api/admin/suspend-ready-q/v1")
            summary = await api.call("GET", "/api/admin/queue-summary/v1")
    assert created.status == 200
    (entry,) = listed.json
    assert entry["name"] == "unspecified->mx.stall.example@smtp_client"
    (ready,) = summary.json["ready"]
    assert ready["suspended"] is True and ready["suspension"]["id"] == created.json["id"]


async def test_suspend_ready_queue_that_does_not_exist_says_so():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject(["a@stall.example"])
            await wait_for(lambda: any(q.connections for q in api.harness.engine.queue_summary().ready))
            missing = await api.call("POST", "/api/admin/suspend-ready-q/v1",
                                     {"name": "unspecified->mx.nowhere.example@smtp_client", "reason": "typo"})
            listed = await api.call("GET", "/api/admin/suspend-ready-q/v1")
    assert missing.status == 404
    assert "no ready queue named 'unspecified->mx.nowhere.example@smtp_client'" in missing.json["error"]
    assert listed.json == []


async def test_ready_queue_states_show_a_suspension_as_kumomta_names_it():
    name = "unspecified->mx.stall.example@smtp_client"
    with trio.fail_after(10):
        async with running_api() as api:
            before = await api.call("GET", "/api/admin/ready-q-states/v1")
            await api.inject(["a@stall.example"])
            await wait_for(lambda: any(q.connections for q in api.harness.engine.queue_summary().ready))
            await api.call("POST", "/api/admin/suspend-ready-q/v1", {"name": name, "reason": "provider asked"})
            states = await api.call("GET", "/api/admin/ready-q-states/v1")
            some = await api.call("GET", f"/api/admin/ready-q-states/v1?queues={name}")
            other = await api.call("GET", "/api/admin/ready-q-states/v1?queues=ip-9->mx.other.example@smtp_client")
    assert before.status == 200 and before.json == {"states_by_ready_queue": {}}
    (state,) = states.json["states_by_ready_queue"][name].items()
    assert state[0] == "suspended" and state[1]["context"] == "provider asked"
    assert state[1]["since"].endswith("Z")
    assert some.json == states.json
    assert other.json == {"states_by_ready_queue": {}}


# --- inspection and summaries ---------------------------------------------------------------------------


async def test_inspect_message_metadata_and_body():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject(["a@example.net"], tenant="acme", campaign="spring")
            (message_id,) = api.harness.spool.messages
            await wait_for(lambda: api.harness.records("TransientFailure"))  # back in its scheduled queue
            plain = await api.call("GET", f"/api/admin/inspect-message/v1?id={message_id}")
            with_body = await api.call("GET", f"/api/admin/inspect-message/v1?id={message_id}&want_body=true")
    assert plain.status == 200
    meta = plain.json["message"]
    assert plain.json["id"] == message_id
    assert plain.json["state"] == "scheduled"
    assert meta["num_attempts"] == 1 and meta["due"].endswith("Z")
    assert (meta["sender"], meta["recipient"], meta["tenant"], meta["campaign"]) == (
        "app@sender.example", "a@example.net", "acme", "spring")
    assert meta["queue"] == "spring:acme@example.net"
    assert meta["reception"]["protocol"] == "HTTP" and meta["reception"]["peer_address"] == "127.0.0.1"
    assert "data" not in meta
    data = with_body.json["message"]["data"]
    assert data.startswith("Received: from ") and data.endswith("Subject: hi\r\n\r\nHello\r\n")


async def test_inspect_message_errors():
    with trio.fail_after(10):
        async with running_api() as api:
            no_id = await api.call("GET", "/api/admin/inspect-message/v1")
            unknown = await api.call("GET", "/api/admin/inspect-message/v1?id=0123")
            bad_flag = await api.call("GET", "/api/admin/inspect-message/v1?id=0123&want_body=maybe")
    assert no_id.status == 400 and "id: missing" in no_id.json["error"]
    assert unknown.status == 404 and unknown.json == {"error": "no queued message with id '0123'"}
    assert bad_flag.status == 400 and "want_body" in bad_flag.json["error"]


async def test_queue_summary_counts_and_filters():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject([f"a{i}@example.net" for i in range(3)], tenant="acme")
            await api.inject(["b@example.net", "c@other.example"], tenant="globex", campaign="x")
            await wait_for(lambda: len(api.harness.records("TransientFailure")) == 5)
            whole = await api.call("GET", "/api/admin/queue-summary/v1")
            acme = await api.call("GET", "/api/admin/queue-summary/v1?tenant=acme")
    counts = {q["name"]: q["count"] for q in whole.json["scheduled"]}
    assert counts == {"acme@example.net": 3, "x:globex@example.net": 1, "x:globex@other.example": 1}
    assert whole.json["totals"]["scheduled"] == 5
    entry = next(q for q in whole.json["scheduled"] if q["name"] == "acme@example.net")
    assert (entry["tenant"], entry["campaign"], entry["domain"]) == ("acme", None, "example.net")
    assert entry["oldest_age_s"] >= 0 and entry["oldest_created"].endswith("Z")
    assert entry["suspended_by"] == []
    assert [q["name"] for q in acme.json["scheduled"]] == ["acme@example.net"]


async def test_queue_summary_marks_suspended_queues():
    with trio.fail_after(10):
        async with running_api() as api:
            rule = await api.call("POST", "/api/admin/suspend/v1", {"tenant": "acme", "reason": "x"})
            await api.inject(["a@example.net"], tenant="acme")
            await api.inject(["b@example.net"], tenant="globex")
            summary = await api.call("GET", "/api/admin/queue-summary/v1")
    marks = {q["name"]: q["suspended_by"] for q in summary.json["scheduled"]}
    assert marks["acme@example.net"] == [rule.json["id"]]
    assert marks.get("globex@example.net", []) == []


# --- metrics ---------------------------------------------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, **labels) -> list[float]:
    return [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


async def test_metrics_parse_with_prometheus_own_parser():
    with trio.fail_after(10):
        async with running_api() as api:
            await api.inject(["a@example.net", "b@example.net"], tenant="acme")
            await api.inject(["c@example.net"])
            await wait_for(lambda: len(api.harness.records("TransientFailure")) == 3)
            reply = await api.call("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    got = families(reply.body.decode())
    tenant = got["trimta_tenant_messages"]
    assert samples(tenant, tenant="acme", event="received") == [2]
    assert samples(tenant, tenant="", event="received") == [1]
    assert samples(tenant, tenant="acme", event="transient_failure") == [2]
    site = got["trimta_site_messages"]
    assert sum(samples(site, event="transient_failure")) == 3
    assert samples(got["trimta_scheduled_messages"]) == [3]
    assert samples(got["trimta_http_requests"], ) == [3]  # two injects and this scrape
    assert got["trimta_event_loop_lag_seconds"].type == "histogram"


async def test_metrics_bound_the_tenant_label():
    with trio.fail_after(20):
        async with running_api(max_metric_tenants=3) as api:
            for i in range(6):
                await api.inject([f"a{i}@example.net"] * (6 - i), tenant=f"t{i}")
            reply = await api.call("GET", "/metrics")
            await api.inject(["late@example.net"] * 50, tenant="latecomer")
            later = await api.call("GET", "/metrics")
    received = {s.labels["tenant"]: s.value for s in families(reply.body.decode())["trimta_tenant_messages"].samples
                if s.labels["event"] == "received"}
    assert received == {"t0": 6, "t1": 5, "t2": 4, "other": 3 + 2 + 1}
    received = {s.labels["tenant"]: s.value for s in families(later.body.decode())["trimta_tenant_messages"].samples
                if s.labels["event"] == "received"}
    assert received == {"t0": 6, "t1": 5, "t2": 4, "other": 6 + 50}  # admission is sticky: counters never jump


# --- helpers ----------------------------------------------------------------------------------------------


async def wait_for(condition, poll_s: float = 0.01) -> None:
    while not condition():
        await trio.sleep(poll_s)


def test_format_duration_reads_back():
    for seconds in (0, 1, 59, 60, 3599, 7170, 86400 + 3661):
        assert units.parse_duration(format_duration(seconds)) == seconds
    assert format_duration(7170.9) == "1h59m30s"


async def test_unknown_tenant_is_refused_when_only_known_tenants_may_be_named():
    with trio.fail_after(20):
        async with running_api(known_tenants=lambda: {"acme", "globex"}) as api:
            refused = await api.inject(["a@example.net"], tenant="acme2")
            suspend = await api.call("POST", "/api/admin/suspend/v1",
                                     {"tenant": "acme2", "reason": "x", "duration": "1h"})
            accepted = await api.inject(["a@example.net"], tenant="acme")
    assert refused.status == 400
    assert refused.json["error"] == "tenant: unknown tenant 'acme2' (known: acme, globex)"
    assert suspend.status == 400 and "unknown tenant 'acme2'" in suspend.json["error"]
    assert accepted.status == 200 and accepted.json["success_count"] == 1


async def test_a_rule_that_cannot_be_kept_answers_503_and_is_not_in_force():
    from trimta.adapters.rules_store import RulesStoreError
    from trimta.testing.rules import MemoryRuleStore

    class FullDisk(MemoryRuleStore):
        async def save(self, rules) -> None:
            raise RulesStoreError("cannot write operator-rules.json: No space left on device")

    with trio.fail_after(10):
        async with running_api(harness=DeliveryHarness(config=DELIVERY, rule_store=FullDisk())) as api:
            created = await api.call("POST", "/api/admin/suspend/v1",
                                     {"tenant": "acme", "reason": "incident", "duration": "1h"})
            listed = await api.call("GET", "/api/admin/suspend/v1")
    assert created.status == 503
    assert "No space left on device" in created.json["error"] and "nothing changed" in created.json["error"]
    assert listed.json == []
