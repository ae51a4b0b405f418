"""Inject v1's KumoMTA fields over loopback: per-recipient metadata, trace_headers (the
Received header and KumoMTA's X-KumoRef supplemental header), deferred_spool and
deferred_generation. What is checked is what is stored: the data and the message's meta."""

from __future__ import annotations

import base64
import json

import trio

from tests.services.test_http_api import DELIVERY, running_api
from trimta.testing.harness import DeliveryHarness

# KumoMTA's documented supplemental header for a message to test@example.com
# (kumod.openapi.json, InjectV1Request.trace_headers).
KUMOMTA_X_KUMOREF = b"X-KumoRef: eyJfQF8iOiJcXF8vIiwicmVjaXBpZW50IjoidGVzdEBleGFtcGxlLmNvbSJ9\r\n"


def stored(api) -> dict[str, tuple[bytes, dict | None]]:
    spool = api.harness.spool
    return {m.recipient: (spool.data[m.data_id], m.meta) for m in spool.messages.values()}


async def inject(api, **fields):
    body = {"envelope_sender": "app@sender.example", "content": "Subject: hi\n\nHello\n", **fields}
    return await api.call("POST", "/api/inject/v1", body)


async def test_the_supplemental_header_is_kumomtas_and_received_is_left_out():
    h = DeliveryHarness(config=DELIVERY)
    h.resolver.add_domain("example.com", "127.0.0.10")  # refusing connections (running_api): it stays queued
    with trio.fail_after(10):
        async with running_api(harness=h) as api:
            reply = await inject(api, recipients=["test@example.com"], trace_headers={})
            ((data, _),) = stored(api).values()
    assert reply.status == 200, reply.json
    assert data.startswith(KUMOMTA_X_KUMOREF + b"Subject: hi\r\n")  # KumoMTA's default: no Received header


async def test_received_and_meta_names_in_the_supplemental_header():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, recipients=[{"email": "a@example.net", "metadata": {"campaign_id": "q2"}}],
                                 tenant="acme", trace_headers={"received_header": True, "header_name": "X-Ref",
                                                               "include_meta_names": ["campaign_id", "tenant", "x"]})
            ((data, meta),) = stored(api).values()
    assert reply.status == 200, reply.json
    assert data.startswith(b"Received: from unknown ([127.0.0.1])\r\n")
    (line,) = [raw for raw in data.split(b"\r\n") if raw.startswith(b"X-Ref: ")]
    assert json.loads(base64.b64decode(line.removeprefix(b"X-Ref: "))) == {
        "_@_": "\\_/", "recipient": "a@example.net", "campaign_id": "q2", "tenant": "acme"}
    assert meta == {"extra": {"campaign_id": "q2"}}  # KumoMTA keeps it under "extra"


async def test_metadata_is_each_recipients_own_and_kept_in_the_spool():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, recipients=[
                {"email": "a@example.net", "metadata": {"segment": "premium"}},
                {"email": "b@example.net", "metadata": {"segment": "trial"}},
                {"email": "c@example.net", "metadata": {"segment": "premium"}},
                {"email": "d@example.net"}])
            messages = stored(api)
            copies = len(api.harness.spool.data)
    assert reply.status == 200 and reply.json["success_count"] == 4
    assert {r: meta for r, (_, meta) in messages.items()} == {
        "a@example.net": {"extra": {"segment": "premium"}}, "b@example.net": {"extra": {"segment": "trial"}},
        "c@example.net": {"extra": {"segment": "premium"}}, "d@example.net": None}
    assert copies == 3  # the same data, and the same metadata, share a stored copy


async def test_deferred_spool_and_generation_are_accepted_and_the_answer_waits_for_the_spool():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, recipients=["a@example.net"], deferred_spool=True, deferred_generation=True)
            spooled = len(api.harness.spool.messages)
    assert reply.status == 200 and reply.json["success_count"] == 1 and spooled == 1


async def test_mistakes_in_the_new_fields_are_named():
    with trio.fail_after(10):
        async with running_api() as api:
            bad = [await inject(api, **{"recipients": ["a@example.net"], **fields}) for fields in (
                {"trace_headers": {"header_name": "X Bad"}},
                {"trace_headers": {"include_meta_names": [1]}},
                {"trace_headers": {"received": True}},
                {"deferred_spool": "yes"},
                {"recipients": [{"email": "a@example.net", "metadata": []}]},
            )]
    assert [r.status for r in bad] == [400] * 5
    assert [r.json["error"].split(":")[0] for r in bad] == [
        "trace_headers.header_name", "trace_headers.include_meta_names", "trace_headers.received", "deferred_spool",
        "recipients[0].metadata"]
