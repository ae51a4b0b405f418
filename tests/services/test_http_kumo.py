"""KumoMTA's inspection endpoints and rebind over loopback HTTP, on the real engine.

The same set-up as test_http_api.py (fake network and DNS, real HTTP server, the
standard library's client); the answers are checked against the shapes of
``kumod.openapi.json``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from tests.services.test_http_api import Api, running_api, wait_for
from trimta.testing.network import STALL, Rule, ScriptedReceiver
from trimta.adapters.machine import MachineFacts
from trimta.services.http_kumo import KumoEndpoints

FACTS = MachineFacts(
    hostname="mta1.example.com", mac_address="02:02:02:02:02:02", num_cores=64, platform="linux/x86_64",
    distribution="debian", os_version="Linux (Debian GNU/Linux 12)", kernel_version="6.1.0",
    total_memory_bytes=1003929600, cpu_brand="Intel(R) Xeon(R)", fingerprint="machine_uid=ab", container_runtime=None,
)


@asynccontextmanager
async def kumo_api(**options) -> AsyncIterator[Api]:
    async with running_api(**options) as api:
        engine = api.harness.engine
        api.api.add_routes(KumoEndpoints(engine=engine, rules=engine.rules, node_id="9745bb48-node",
                                         clock=trio.current_time, machine=lambda: FACTS).routes())
        yield api


async def queued_in_scheduled_queues(api: Api, recipients: list[str], **fields) -> None:
    scheduler = api.harness.engine.scheduler
    before = len(api.harness.records("TransientFailure")), len(scheduler)
    await api.inject(recipients, **fields)
    # Tried once, refused, and back in their scheduled queue for the 10 minute retry.
    await wait_for(lambda: len(api.harness.records("TransientFailure")) >= before[0] + len(recipients)
                   and len(scheduler) >= before[1] + len(recipients))


# --- inspect-sched-q ------------------------------------------------------------------------------


async def test_inspect_sched_q_samples_the_queue():
    with trio.fail_after(20):
        async with kumo_api() as api:
            await queued_in_scheduled_queues(api, ["a@example.net", "b@example.net", "c@example.net"],
                                             tenant="acme", campaign="spring")
            some = await api.call("GET", "/api/admin/inspect-sched-q/v1?queue_name=spring:acme@example.net&limit=2")
            every = await api.call("GET", "/api/admin/inspect-sched-q/v1?queue_name=spring:acme@example.net"
                                          "&want_body=true")
    assert some.status == 200
    body = some.json
    assert set(body) >= {"queue_name", "messages", "num_scheduled", "queue_config", "delayed_metric", "now",
                         "last_changed"}
    assert body["queue_name"] == "spring:acme@example.net"
    assert body["num_scheduled"] == 3 and len(body["messages"]) == 2
    assert body["queue_config"]["retry_interval"] == "10m" and body["queue_config"]["egress_pool"] == "unspecified"
    first = body["messages"][0]
    assert set(first) >= {"id", "message"}
    message = first["message"]
    assert message["sender"] == "app@sender.example" and message["recipient"].endswith("@example.net")
    assert message["meta"]["tenant"] == "acme" and message["meta"]["campaign"] == "spring"
    assert message["num_attempts"] == 1 and message["due"].endswith("Z")
    assert "data" not in message
    assert len(every.json["messages"]) == 3
    assert all(m["message"]["data"].endswith("Subject: hi\r\n\r\nHello\r\n") for m in every.json["messages"])
    assert {m["id"] for m in every.json["messages"]} == set(api.harness.spool.messages)


async def test_inspect_sched_q_errors():
    with trio.fail_after(20):
        async with kumo_api() as api:
            missing = await api.call("GET", "/api/admin/inspect-sched-q/v1")
            unknown = await api.call("GET", "/api/admin/inspect-sched-q/v1?queue_name=nobody@example.net")
            bad_limit = await api.call("GET", "/api/admin/inspect-sched-q/v1?queue_name=x&limit=-1")
            bad_flag = await api.call("GET", "/api/admin/inspect-sched-q/v1?queue_name=x&want_body=perhaps")
    assert missing.status == 400 and missing.json["error"].startswith("queue_name: missing")
    assert unknown.status == 404 and unknown.json == {"error": "no such queue nobody@example.net"}
    assert bad_limit.status == 400 and "limit" in bad_limit.json["error"]
    assert bad_flag.status == 400 and "want_body" in bad_flag.json["error"]


# --- inspect-ready-q ----------------------------------------------------------------------------------


async def test_inspect_ready_q_reports_state_config_and_feeding_queues():
    name = "unspecified->mx.stall.example@smtp_client"
    with trio.fail_after(20):
        async with kumo_api() as api:
            await api.inject(["a@stall.example"], tenant="acme")
            await wait_for(lambda: any(q.connections for q in api.harness.engine.queue_summary().ready))
            plain = await api.call("GET", f"/api/admin/inspect-ready-q/v1?queue_name={name}")
            await api.call("POST", "/api/admin/suspend-ready-q/v1", {"name": name, "reason": "provider asked"})
            more = await api.call("GET", f"/api/admin/inspect-ready-q/v1?queue_name={name}"
                                         "&include_scheduled_queues=true")
            unknown = await api.call("GET", "/api/admin/inspect-ready-q/v1?queue_name=ip-9->mx.x@smtp_client")
    assert plain.status == 200
    body = plain.json
    assert set(body) >= {"queue_name", "egress_source", "egress_pool", "protocol", "state", "path_config",
                         "constraints", "dispatchers", "now"}
    assert (body["queue_name"], body["egress_source"], body["protocol"]) == (name, "unspecified", "smtp_client")
    assert body["state"]["connection_count"] == 1 and body["state"]["suspended"] is None
    assert set(body["state"]) >= {"ready_count", "connection_count", "watchdog_threshold"}
    assert body["path_config"]["connection_limit"] == 32 and body["path_config"]["idle_timeout"] == "1m"
    assert body["path_config"]["prohibited_hosts"] == []
    assert body["constraints"]["max_concurrent_dispatchers"] == {"value": 32.0, "source": {"kind": "primary"},
                                                                 "display": "32"}
    assert body["mx"]["site_name"] == "mx.stall.example" and body["mx"]["is_mx"] is True
    assert body["scheduled_queue_names"] is None
    suspended = more.json["state"]["suspended"]
    assert suspended["name"] == name and suspended["reason"] == "provider asked" and suspended["expires"].endswith("Z")
    assert more.json["scheduled_queue_names"] in (["acme@stall.example"], [])  # [] once the message is in flight
    assert unknown.status == 404 and unknown.json == {"error": "no such ready queue ip-9->mx.x@smtp_client"}


# --- dispatchers, abort-ready-q-conn ------------------------------------------------------------------


async def _dispatchers(api: Api, name: str) -> list[dict]:
    reply = await api.call("GET", f"/api/admin/inspect-ready-q/v1?queue_name={name}")
    assert reply.status == 200, reply.body
    return reply.json["dispatchers"]


def _phases(api: Api, name: str) -> list[str]:
    """The phases of the ready queue's connection tasks, as the engine has them ([] before it runs)."""
    queue = api.harness.engine.ready.get(name)
    return [d.phase for d in queue.dispatchers()] if queue is not None else []


async def test_inspect_ready_q_lists_connections_and_abort_one_sends_its_message_again():
    name = "unspecified->mx.abort.example@smtp_client"
    receiver = ScriptedReceiver("mx.abort.example", rules=[Rule("data_dot", STALL, times=1)])
    with trio.fail_after(30):
        async with kumo_api() as api:
            api.harness.resolver.add_domain("abort.example", "127.0.0.12")
            api.harness.network.add_receiver("127.0.0.12", 25, receiver)
            await api.inject(["stuck@abort.example"], tenant="acme")
            await wait_for(lambda: _phases(api, name) == ["DeliveringMessage"])
            stuck = await _dispatchers(api, name)
            (message_id,) = api.harness.spool.messages
            unknown_session = await api.call("POST", "/api/admin/abort-ready-q-conn/v1",
                                             {"queue_name": name, "session_id": str(uuid.uuid4())})
            unknown_queue = await api.call("POST", "/api/admin/abort-ready-q-conn/v1",
                                           {"queue_name": "ip-9->mx.x@smtp_client",
                                            "session_id": stuck[0]["session_id"]})
            not_uuid = await api.call("POST", "/api/admin/abort-ready-q-conn/v1",
                                      {"queue_name": name, "session_id": "42"})
            assert not receiver.messages and len(receiver.connections) == 1
            aborted = await api.call("POST", "/api/admin/abort-ready-q-conn/v1",
                                     {"queue_name": name, "session_id": stuck[0]["session_id"]})
            # Delivered, and the aborted connection (which may still be closing then) gone.
            await wait_for(lambda: api.harness.records("Delivery") and _phases(api, name) == ["Idle"])
            (after,) = await _dispatchers(api, name)  # the connection that delivered it
    (dispatcher,) = stuck
    assert set(dispatcher) >= {"session_id", "started_at", "age", "phase", "time_in_current_phase",
                               "messages_delivered", "messages_transfailed", "messages_failed",
                               "delivered_this_connection", "overall_rate_per_sec"}
    assert uuid.UUID(dispatcher["session_id"]) and dispatcher["started_at"].endswith("Z")
    assert dispatcher["detail"] == f"message {message_id}" and dispatcher["messages_delivered"] == 0
    assert unknown_session.status == 404 and unknown_queue.status == 404
    assert "no matching dispatcher" in unknown_session.json["error"]
    assert not_uuid.status == 400 and not_uuid.json["error"].startswith("session_id: expected a UUID")
    assert (aborted.status, aborted.body) == (200, f"aborted {dispatcher['session_id']}".encode())
    first, second = receiver.connections
    assert not first.open and b"QUIT" not in first.client_bytes  # closed at once, no goodbye
    assert [m.recipients for m in receiver.messages] == [("stuck@abort.example",)]
    assert receiver.messages[0].connection is second
    (delivery,) = api.harness.records("Delivery")
    assert not api.harness.records("TransientFailure")  # the aborted try is not an attempt that failed
    assert delivery["session_id"] == after["session_id"] != dispatcher["session_id"]
    assert (after["phase"], after["messages_delivered"], after["delivered_this_connection"]) == ("Idle", 1, 1)


async def test_connection_limited_and_rate_throttled_states_as_kumomta_reports_them():
    from tests.services.test_http_api import DELIVERY
    from trimta.testing.harness import DeliveryHarness
    from trimta.testing.network import stalling

    limited = "unspecified->mx.limited.example@smtp_client"
    paced = "unspecified->mx.paced.example@smtp_client"
    h = DeliveryHarness(config=DELIVERY + """
[egress.domains."limited.example"]
connection_limit = 1
[egress.domains."paced.example"]
max_connection_rate = "1/h"
""")
    for domain, address in (("limited.example", "127.0.0.13"), ("paced.example", "127.0.0.14")):
        h.resolver.add_domain(domain, address)
        h.network.add_receiver(address, 25, stalling())  # each connection holds its message
    with trio.fail_after(20):
        async with kumo_api(harness=h) as api:
            await api.inject(["a@limited.example", "b@limited.example", "c@limited.example"])
            await api.inject(["d@paced.example", "e@paced.example"])
            queues = api.harness.engine.ready
            await wait_for(lambda: all(queues.get(n) is not None and queues.get(n).states() for n in (limited, paced)))
            states = (await api.call("GET", "/api/admin/ready-q-states/v1")).json["states_by_ready_queue"]
            one = (await api.call("GET", f"/api/admin/inspect-ready-q/v1?queue_name={limited}")).json
            other = (await api.call("GET", f"/api/admin/inspect-ready-q/v1?queue_name={paced}")).json
    assert set(states[limited]) == {"connection_limited"}
    assert states[limited]["connection_limited"]["context"] == f"connection_limit 1 for {limited}"
    assert set(states[paced]) == {"connection_rate_throttled"}
    assert states[paced]["connection_rate_throttled"]["context"] == "max_connection_rate 1/h"
    assert one["state"]["connection_limited"] == states[limited]["connection_limited"]
    assert one["state"]["connection_limited"]["since"].endswith("Z") and one["state"]["connection_count"] == 1
    assert one["state"]["connection_rate_throttled"] is None
    assert other["state"]["connection_rate_throttled"] == states[paced]["connection_rate_throttled"]
    assert other["state"]["connection_limited"] is None and other["state"]["connection_count"] == 1


# --- resolve-egress-path ----------------------------------------------------------------------------------


async def test_resolve_egress_path_resolves_site_config_and_ceilings():
    with trio.fail_after(20):
        async with kumo_api() as api:
            found = await api.call("GET", "/api/admin/resolve-egress-path/v1?domain=Example.NET")
            nowhere = await api.call("GET", "/api/admin/resolve-egress-path/v1?domain=nowhere.example&source=unspecified")
            no_source = await api.call("GET", "/api/admin/resolve-egress-path/v1?domain=example.net&source=ip-9")
            no_domain = await api.call("GET", "/api/admin/resolve-egress-path/v1")
    assert found.status == 200
    body = found.json
    assert set(body) >= {"domain", "source", "queue_name", "queue_config", "path_config", "constraints", "mx"}
    assert (body["domain"], body["source"]) == ("example.net", "unspecified")
    assert body["queue_name"] == "unspecified->mx.example.net@smtp_client"
    assert body["mx"]["site_name"] == "mx.example.net"
    assert body["queue_config"]["retry_interval"] == "10m"
    assert body["path_config"]["enable_tls"] == "Opportunistic"
    assert body["constraints"]["max_message_rate"] is None
    # No MX answer: as KumoMTA, the domain stands for its site and mx is null.
    assert nowhere.status == 200
    assert nowhere.json["mx"] is None and nowhere.json["queue_name"] == "unspecified->nowhere.example@smtp_client"
    assert no_source.status == 404 and "no egress source named 'ip-9'" in no_source.json["error"]
    assert no_domain.status == 400 and no_domain.json["error"].startswith("domain: missing")


# --- machine-info, memory/stats -------------------------------------------------------------------------------


async def test_machine_info_has_every_field_kumomta_requires():
    with trio.fail_after(20):
        async with kumo_api() as api:
            reply = await api.call("GET", "/api/machine-info")
    assert reply.status == 200
    body = reply.json
    required = {"node_id", "hostname", "mac_address", "num_cores", "platform", "distribution", "os_version",
                "total_memory_bytes", "cpu_brand", "fingerprint", "online_since", "process_kind", "version"}
    assert required <= set(body)
    assert body["node_id"] == "9745bb48-node" and body["hostname"] == "mta1.example.com"
    assert body["num_cores"] == 64 and body["process_kind"] == "trimta" and body["online_since"].endswith("Z")


def test_the_real_machine_facts_are_read():
    from trimta.adapters.machine import read_machine_facts

    facts = read_machine_facts()
    assert facts.num_cores >= 1 and facts.total_memory_bytes > 0
    assert facts.platform.startswith("linux/") and len(facts.mac_address.split(":")) == 6


async def test_memory_stats_is_text_for_people():
    with trio.fail_after(20):
        async with kumo_api() as api:
            await queued_in_scheduled_queues(api, ["a@example.net"])
            reply = await api.call("GET", "/api/admin/memory/stats")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    lines = dict(line.split(None, 1) for line in reply.body.decode().splitlines())
    assert lines["VmRSS"].endswith("kB") and lines["scheduled_messages"] == "1"


# --- rebind --------------------------------------------------------------------------------------------


async def test_rebind_moves_the_matching_messages_and_says_how_many():
    with trio.fail_after(20):
        async with kumo_api() as api:
            await queued_in_scheduled_queues(api, ["a@example.net", "b@example.net"], tenant="acme")
            await queued_in_scheduled_queues(api, ["c@other.example"], tenant="acme")
            tried = len(api.harness.records("TransientFailure"))
            reply = await api.call("POST", "/api/admin/rebind/v1", {
                "domain": "example.net", "data": {"tenant": "globex", "campaign": "fall"}, "reason": "wrong tenant"})
            # Due at once in their new queue: tried again, and back to wait there.
            await wait_for(lambda: len(api.harness.records("TransientFailure")) == tried + 2
                           and len(api.harness.engine.scheduler) == 3)
            summary = await api.call("GET", "/api/admin/queue-summary/v1")
            inspected = await api.call("GET", "/api/admin/inspect-sched-q/v1?queue_name=fall:globex@example.net")
    assert reply.status == 200
    assert reply.json == {"matched": 2, "rebound": 2, "flushed": 0, "queues": {"fall:globex@example.net": 2}}
    counts = {q["name"]: q["count"] for q in summary.json["scheduled"]}
    assert counts == {"fall:globex@example.net": 2, "acme@other.example": 1}  # nothing lost
    assert inspected.json["messages"][0]["message"]["meta"]["tenant"] == "globex"
    assert {r["response"]["content"] for r in api.harness.records("AdminRebind")} == {
        "Rebound from acme@example.net to fall:globex@example.net: wrong tenant"}


async def test_rebind_refusals_change_nothing():
    with trio.fail_after(20):
        async with kumo_api() as api:
            await queued_in_scheduled_queues(api, ["a@example.net"], tenant="acme")
            calls = {
                "bad_routing": {"data": {"routing_domain": "relay example"}, "reason": "r"},
                "bang": {"data": {"queue": "acme@example.net!"}, "reason": "r"},
                "event": {"data": {}, "reason": "r", "trigger_rebind_event": True},
                "no_reason": {"data": {"tenant": "x"}},
                "no_data": {"reason": "r"},
                "not_strings": {"data": {"tenant": 7}, "reason": "r"},
                "unknown_field": {"data": {}, "reason": "r", "queue_names": ["x"]},
            }
            replies = {k: await api.call("POST", "/api/admin/rebind/v1", body) for k, body in calls.items()}
            selector = await api.call("POST", "/api/admin/rebind/v1",
                                      {"routing_domain": "relay.example", "data": {"tenant": "x"}, "reason": "r"})
            summary = await api.call("GET", "/api/admin/queue-summary/v1")
    assert {k: r.status for k, r in replies.items()} == dict.fromkeys(calls, 400)
    assert "data.routing_domain: expected a domain" in replies["bad_routing"].json["error"]
    assert "no routing domain after '!'" in replies["bang"].json["error"]
    assert "rebind_message event" in replies["event"].json["error"]
    assert replies["no_reason"].json["error"] == "reason: missing"
    assert replies["no_data"].json["error"] == "data: missing"
    # A routing_domain selector matches only queues with that routing domain.
    assert selector.status == 200 and selector.json["matched"] == 0
    assert [(q["name"], q["count"]) for q in summary.json["scheduled"]] == [("acme@example.net", 1)]
    assert api.harness.records("AdminRebind") == []


# --- KumoMTA's other selectors of suspend and bounce -----------------------------------------------------


async def test_bounce_by_queue_names_without_records():
    with trio.fail_after(20):
        async with kumo_api() as api:
            await queued_in_scheduled_queues(api, ["a@example.net", "b@example.net"], tenant="acme")
            await queued_in_scheduled_queues(api, ["c@example.net"], tenant="globex")
            reply = await api.call("POST", "/api/admin/bounce/v1", {
                "queue_names": ["globex@example.net"], "tenant": "acme", "reason": "r", "suppress_logging": True})
            listed = await api.call("GET", "/api/admin/bounce/v1")
            summary = await api.call("GET", "/api/admin/queue-summary/v1")
    assert reply.status == 200, reply.json
    # queue_names takes precedence over tenant, as in KumoMTA
    assert reply.json["bounced"] == {"globex@example.net": 1} and reply.json["total_bounced"] == 1
    assert api.harness.records("AdminBounce") == []
    assert [(q["name"], q["count"]) for q in summary.json["scheduled"]] == [("acme@example.net", 2)]
    (entry,) = listed.json
    assert entry["queue_names"] == ["globex@example.net"] and entry["routing_domain"] is None


async def test_everything_must_be_said_and_then_matches_all():
    with trio.fail_after(20):
        async with kumo_api() as api:
            await queued_in_scheduled_queues(api, ["a@example.net", "b@other.example"], tenant="acme")
            nothing = await api.call("POST", "/api/admin/suspend/v1", {"reason": "r"})
            both = await api.call("POST", "/api/admin/suspend/v1", {"reason": "r", "everything": True, "tenant": "x"})
            everything = await api.call("POST", "/api/admin/bounce/v1", {"reason": "all", "everything": True})
    assert nothing.status == 400 and '"everything": true' in nothing.json["error"]
    assert both.status == 400 and "everything: matches every message" in both.json["error"]
    assert everything.status == 200 and everything.json["total_bounced"] == 2
    assert len(api.harness.records("AdminBounce")) == 2


async def test_suspend_by_routing_domain():
    with trio.fail_after(20):
        async with kumo_api() as api:
            await queued_in_scheduled_queues(api, ["a@example.net", "b@example.net"], tenant="acme")
            await api.call("POST", "/api/admin/rebind/v1", {"data": {"routing_domain": "other.example"}, "reason": "r",
                                                            "tenant": "acme"})
            await wait_for(lambda: len(api.harness.engine.scheduler) == 2)
            await queued_in_scheduled_queues(api, ["c@example.net"], tenant="acme")
            created = await api.call("POST", "/api/admin/suspend/v1", {"routing_domain": "other.example", "reason": "r"})
            summary = await api.call("GET", "/api/admin/queue-summary/v1")
    assert created.status == 200
    held = {q["name"]: (q["count"], q["suspended_by"]) for q in summary.json["scheduled"]}
    assert held == {"acme@example.net!other.example": (2, [created.json["id"]]), "acme@example.net": (1, [])}


# --- trace-smtp-client over HTTP ---------------------------------------------------------------------------


def _trace_request(api: Api, query: str, lines: int) -> list[bytes]:
    """Open the trace stream, read `lines` lines, and hang up."""
    import http.client

    conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
    try:
        conn.request("GET", f"/api/admin/trace-smtp-client/v1{query}")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "application/x-ndjson"
        return [response.readline() for _ in range(lines)]
    finally:
        conn.close()


async def test_the_trace_stream_and_its_end_when_the_client_leaves():
    from functools import partial

    with trio.fail_after(20):
        async with running_api() as api:
            engine = api.harness.engine
            api.api.add_routes(KumoEndpoints(engine=engine, rules=engine.rules, node_id="n", clock=trio.current_time,
                                             machine=lambda: FACTS, trace_heartbeat_s=0.05).routes())
            lines = await trio.to_thread.run_sync(partial(_trace_request, api, "?domain=example.net", 2))
            await wait_for(lambda: not engine.trace.subscribers)  # the next heartbeat finds the client gone
            refused = await api.call("GET", "/api/admin/trace-smtp-client/v1?mx_addr=nowhere")
    assert lines[0] == b'{"kind":"Tracing","filter":{"domain":["example.net"]}}\n'
    assert lines[1] == b"\n"  # a heartbeat
    assert refused.status == 400 and refused.json["error"].startswith("mx_addr: expected an address or a CIDR")


async def test_trace_smtp_server_needs_a_listener():
    with trio.fail_after(20):
        async with kumo_api() as api:  # no SMTP listener here
            refused = await api.call("GET", "/api/admin/trace-smtp-server/v1")
    assert refused.status == 409 and refused.json["error"] == "this daemon has no SMTP listener to trace"
