"""KumoMTA's API reference examples, sent verbatim to a real daemon, get KumoMTA's answers.

The examples are those of `kumod.openapi.json` (the request examples written in its
descriptions) and those KumoMTA's API reference pages show for each endpoint (generated
from it: `data/http-examples/`, the text between the code fences, copied unchanged; see
data/SOURCES.md). A malformed example stays malformed and gets the refusal KumoMTA gives
it. A documented answer is checked field by field: every field of the example answer is
in trimta's, with the example's JSON type (or null where the schema does not require it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import Daemon
from tests.kumomta_compat.daemon import StallingListener, call, start_daemon

DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = DATA / "http-examples"
OPENAPI = json.loads((DATA / "kumod.openapi.json").read_text())
SCHEMAS = OPENAPI["components"]["schemas"]
UNKNOWN_ID = "9511a32e-66f8-42aa-b151-ccb176df47d9"  # the examples' id: no rule has it


def example(name: str) -> bytes:
    """An example as the reference shows it: the bytes between the fences, unparsed."""
    return (EXAMPLES / f"{name}.json").read_bytes()


def fenced(text: str, lang: str = "json") -> list[str]:
    """The text of the fenced blocks of `text` whose language is `lang` ("" for none)."""
    blocks, current, info = [], None, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == lang:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    stall = StallingListener()
    d = start_daemon(tmp_path_factory.mktemp("openapi"), stall.port)
    try:
        yield d
    finally:
        d.stop()
        stall.close()


def inject(d: Daemon, recipient: str, **fields: Any) -> None:
    status, answer = call(d, "POST", "/api/inject/v1", {
        "envelope_sender": "app@sender.example", "content": "Subject: hi\n\nHello\n",
        "recipients": [{"email": recipient}], **fields})
    assert status == 200, answer


def scheduled(d: Daemon) -> dict[str, int]:
    _, summary = call(d, "GET", "/api/admin/queue-summary/v1")
    return {q["name"]: q["count"] for q in summary["scheduled"]}


def in_queue(d: Daemon, queue: str, n: int = 1) -> None:
    """Until `n` messages wait in `queue` (tried once, DNS not answering, back to wait)."""
    wait_until(lambda: scheduled(d).get(queue, 0) >= n and not any(
        r["connections"] for r in call(d, "GET", "/api/admin/queue-summary/v1")[1]["ready"]
        if "127.0.0.41" not in r["name"]), f"{n} message(s) in {queue}")


# --- the documented answers, field by field ----------------------------------------------------------


def schema_of(ref_or_schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if not ref_or_schema:
        return None
    if "$ref" in ref_or_schema:
        return SCHEMAS[ref_or_schema["$ref"].rsplit("/", 1)[1]]
    for alternative in ref_or_schema.get("oneOf", []):
        if "$ref" in alternative:
            return schema_of(alternative)
    return ref_or_schema


def conforms(answer: Any, documented: Any, schema: dict[str, Any] | None, where: str = "") -> list[str]:
    """What differs from the documented answer: missing fields, other JSON types."""
    schema = schema_of(schema)
    if isinstance(documented, dict):
        if not isinstance(answer, dict):
            return [f"{where or 'answer'}: expected an object, got {answer!r}"]
        properties = (schema or {}).get("properties", {})
        required = set((schema or {}).get("required", []))
        if not properties and "additionalProperties" in (schema or {}):
            # A map (queue name to count, ...): its keys are data; its values have the example's type.
            sample = next(iter(documented.values()), None)
            return [p for key, value in answer.items() for p in conforms(value, sample, None, f"{where}[{key!r}]")]
        problems = []
        for key, value in documented.items():
            here = f"{where}.{key}" if where else key
            if key not in answer:
                problems.append(f"{here}: missing")
            elif answer[key] is None:
                if key in required and schema is not None:
                    problems.append(f"{here}: null, but the schema requires it")
            else:
                sub = properties.get(key)
                item_schema = (sub or {}).get("items") if isinstance(value, list) else sub
                problems += conforms(answer[key], value, item_schema if isinstance(value, list) else sub, here) \
                    if not isinstance(value, list) else conforms_list(answer[key], value, item_schema, here)
        return problems
    if isinstance(documented, bool) or isinstance(answer, bool):
        return [] if isinstance(answer, bool) == isinstance(documented, bool) else [f"{where}: type of {answer!r}"]
    if isinstance(documented, (int, float)):
        return [] if isinstance(answer, (int, float)) else [f"{where}: expected a number, got {answer!r}"]
    if isinstance(documented, str):
        return [] if isinstance(answer, str) else [f"{where}: expected a string, got {answer!r}"]
    return []


def conforms_list(answer: Any, documented: list[Any], item_schema: dict[str, Any] | None, where: str) -> list[str]:
    if not isinstance(answer, list):
        # KumoMTA's single recipient is a string where the schema allows an array
        return [] if isinstance(answer, str) and documented and isinstance(documented[0], str) else \
            [f"{where}: expected an array, got {answer!r}"]
    if not documented or not answer:
        return []
    return conforms(answer[0], documented[0], item_schema, f"{where}[0]")


def check(answer: Any, name: str, schema: str) -> None:
    documented = json.loads(example(name))
    if isinstance(answer, list) and not isinstance(documented, list):
        # The reference shows one entry of a list answer.
        assert answer, f"{name}: an empty list; expected entries like {documented}"
        answer = answer[0]
    problems = conforms(answer, documented, {"$ref": f"#/components/schemas/{schema}"} if schema else None)
    assert problems == [], f"{name}: {problems}"


# --- inject: the examples written in the endpoint's description ---------------------------------------------


def test_the_inject_descriptions_examples(daemon):
    basic, response, templated = fenced(OPENAPI["paths"]["/api/inject/v1"]["post"]["description"])
    (rendered,) = fenced(OPENAPI["paths"]["/api/inject/v1"]["post"]["description"], "")
    with pytest.raises(json.JSONDecodeError):
        json.loads(basic)  # as published: a trailing comma
    status, refused = call(daemon, "POST", "/api/inject/v1", basic.encode())
    assert status == 400 and "not valid JSON" in refused["error"]  # axum's Json refuses it with 400 too
    status, answer = call(daemon, "POST", "/api/inject/v1", templated.encode())
    assert status == 200 and answer == json.loads(response)
    in_queue(daemon, "example.com")
    _, sample = call(daemon, "GET", "/api/admin/inspect-sched-q/v1?queue_name=example.com&want_body=true")
    (message,) = [m for m in sample["messages"] if m["message"]["recipient"] == "recipient@example.com"]
    assert message["message"]["data"].replace("\r\n", "\n").endswith(rendered.rstrip("\n") + "\n")


def test_the_trace_headers_example_is_not_json_and_is_refused(daemon):
    description = SCHEMAS["InjectV1Request"]["properties"]["trace_headers"]["description"]
    body = fenced(description)[0]
    status, refused = call(daemon, "POST", "/api/inject/v1", body.encode())
    assert status == 400 and "not valid JSON" in refused["error"]  # comments, trailing commas


def test_the_generated_inject_example(daemon):
    """Every field of InjectV1Request: metadata, trace_headers, deferred_*, the Jinja dialect."""
    status, answer = call(daemon, "POST", "/api/inject/v1", example("api_inject_v1_post.request"))
    assert status == 200, answer
    check(answer, "api_inject_v1_post.response", "InjectV1Response")
    assert answer["success_count"] == 1
    in_queue(daemon, "mailbox-example.com")
    _, sample = call(daemon, "GET", "/api/admin/inspect-sched-q/v1?queue_name=mailbox-example.com&want_body=true")
    (message,) = sample["messages"]
    assert message["message"]["meta"]["extra"]["campaign_id"] == "promo-2026-q2"  # under "extra", as KumoMTA
    # trace_headers: received_header and supplemental_header false: the content as sent, nothing added
    assert message["message"]["data"] == "From: user@example.com\r\nSubject: Hello\r\n\r\nHello there\r\n"


# --- admin rules ---------------------------------------------------------------------------------------------


def test_the_bounce_example_bounces_its_queue_and_ends_at_once(daemon):
    inject(daemon, "a@example.com", tenant="tenant_name", campaign="campaign_name")
    in_queue(daemon, "campaign_name:tenant_name@example.com")
    status, answer = call(daemon, "POST", "/api/admin/bounce/v1", example("api_admin_bounce_v1_post.request"))
    assert status == 200, answer
    check(answer, "api_admin_bounce_v1_post.response", "BounceV1Response")
    # queue_names takes precedence; its expires (1990, a leap second) is past: nothing stays in force
    assert answer["bounced"] == {"campaign_name:tenant_name@example.com": 1} and answer["total_bounced"] == 1
    assert call(daemon, "GET", "/api/admin/bounce/v1") == (200, [])
    assert "campaign_name:tenant_name@example.com" not in scheduled(daemon)


@pytest.mark.parametrize("name", ["api_admin_suspend_v1_post", "api_admin_suspend_ready_q_v1_post"])
def test_a_generated_duration_of_string_is_refused(daemon, name):
    """The generated examples say ``"duration": "string"``, which KumoMTA's own parser refuses (422)."""
    path = "/api/admin/suspend/v1" if "ready_q" not in name else "/api/admin/suspend-ready-q/v1"
    status, answer = call(daemon, "POST", path, example(f"{name}.request"))
    assert status == 400 and answer["error"].startswith("duration: ")


@pytest.mark.parametrize("path", ["/api/admin/suspend/v1", "/api/admin/bounce/v1", "/api/admin/suspend-ready-q/v1"])
def test_cancelling_the_examples_id_is_not_found(daemon, path):
    name = {"/api/admin/suspend/v1": "api_admin_suspend_v1_delete", "/api/admin/bounce/v1": "api_admin_bounce_v1_delete",
            "/api/admin/suspend-ready-q/v1": "api_admin_suspend_ready_q_v1_delete"}[path]
    status, answer = call(daemon, "DELETE", path, example(f"{name}.request"))
    assert status == 404 and UNKNOWN_ID in answer["error"]


def test_the_rebind_example(daemon):
    status, answer = call(daemon, "POST", "/api/admin/rebind/v1", example("api_admin_rebind_v1_post.request"))
    assert status == 200 and isinstance(answer, dict)
    assert json.loads(example("api_admin_rebind_v1_post.response")).items() <= answer.items()
    assert answer["matched"] == 0  # tenant "string", campaign "string": no such queue


def test_the_rule_lists_have_the_documented_fields(daemon):
    body = {"tenant": "tenant_name", "campaign": "campaign_name", "domain": "example.com", "reason": "r",
            "duration": "1h"}
    assert call(daemon, "POST", "/api/admin/suspend/v1", body)[0] == 200
    assert call(daemon, "POST", "/api/admin/bounce/v1", {**body, "routing_domain": "routing_domain.com"})[0] == 200
    check(call(daemon, "GET", "/api/admin/suspend/v1")[1], "api_admin_suspend_v1_get.response", "SuspendV1ListEntry")
    check(call(daemon, "GET", "/api/admin/bounce/v1")[1], "api_admin_bounce_v1_get.response", "BounceV1ListEntry")


# --- inspection ------------------------------------------------------------------------------------------------


def test_inspect_message_and_sched_q_answers(daemon):
    inject(daemon, "b@example.org", tenant="acme")
    in_queue(daemon, "acme@example.org")
    status, sample = call(daemon, "GET", "/api/admin/inspect-sched-q/v1?queue_name=acme@example.org&want_body=true")
    assert status == 200
    check(sample, "api_admin_inspect_sched_q_v1_get.response", "InspectQueueV1Response")
    message_id = sample["messages"][0]["id"]
    status, one = call(daemon, "GET", f"/api/admin/inspect-message/v1?id={message_id}&want_body=true")
    assert status == 200
    check(one, "api_admin_inspect_message_v1_get.response", "InspectMessageV1Response")


def test_inspect_ready_q_ready_q_states_and_ready_q_suspensions(daemon):
    inject(daemon, "c@stall.example")  # routed to the stalling listener: a connection stays open
    wait_until(lambda: any(q["connections"] for q in call(daemon, "GET", "/api/admin/queue-summary/v1")[1]["ready"]),
               "a connection to the stalling listener")
    (ready,) = [q for q in call(daemon, "GET", "/api/admin/queue-summary/v1")[1]["ready"] if q["connections"]]
    name = ready["name"]
    status, answer = call(daemon, "GET", f"/api/admin/inspect-ready-q/v1?queue_name={name}&include_scheduled_queues=true")
    assert status == 200
    check(answer, "api_admin_inspect_ready_q_v1_get.response", "InspectReadyQV1Response")
    assert call(daemon, "POST", "/api/admin/suspend-ready-q/v1", {"name": name, "reason": "r"})[0] == 200
    check(call(daemon, "GET", "/api/admin/suspend-ready-q/v1")[1], "api_admin_suspend_ready_q_v1_get.response",
          "SuspendReadyQueueV1ListEntry")
    status, states = call(daemon, "GET", "/api/admin/ready-q-states/v1")
    check(states, "api_admin_ready_q_states_v1_get.response", "ReadyQueueStateResponse")
    assert set(states["states_by_ready_queue"][name]) == {"suspended"}
    # The connection to the stalling listener, named as KumoMTA's AbortReadyQConnV1Request names it.
    (dispatcher,) = answer["dispatchers"]
    request = {"queue_name": name, "session_id": dispatcher["session_id"]}
    check(request, "api_admin_abort_ready_q_conn_v1_post.request", "AbortReadyQConnV1Request")
    assert call(daemon, "POST", "/api/admin/abort-ready-q-conn/v1", request) == (200, f"aborted {request['session_id']}")
    wait_until(lambda: not call(daemon, "GET", f"/api/admin/inspect-ready-q/v1?queue_name={name}")[1]["dispatchers"],
               "the aborted connection to end")
    assert call(daemon, "POST", "/api/admin/abort-ready-q-conn/v1", request)[0] == 404
    # The reference's example, sent as it is: queue "string" does not run, so 404 as documented.
    status, refused = call(daemon, "POST", "/api/admin/abort-ready-q-conn/v1",
                           example("api_admin_abort_ready_q_conn_v1_post.request"))
    assert status == 404 and refused["error"] == ("no matching dispatcher for queue=string "
                                                  "session=9511a32e-66f8-42aa-b151-ccb176df47d9")


def test_resolve_egress_path_and_machine_info(daemon):
    status, path = call(daemon, "GET", "/api/admin/resolve-egress-path/v1?domain=example.org")
    assert status == 200
    check(path, "api_admin_resolve_egress_path_v1_get.response", "ResolveEgressPathV1Response")
    status, machine = call(daemon, "GET", "/api/machine-info")
    assert status == 200
    check(machine, "api_machine_info_get.response", "MachineInfoV1")
    assert machine["node_id"] == (daemon.spool_path / "node_id").read_text().strip()
