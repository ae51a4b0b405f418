"""Inject v1's deferred_generation (answered at once, generated in the background, resumed
after a restart) and amp_html_body, over loopback; what is checked is what is stored."""

from __future__ import annotations

import email
import email.policy
import json

import trio

from tests.services.test_http_api import running_api


def stored(api) -> dict[str, bytes]:
    spool = api.harness.spool
    return {m.recipient: spool.data[m.data_id] for m in spool.messages.values()}


async def inject(api, body: dict):
    return await api.call("POST", "/api/inject/v1", {"envelope_sender": "app@sender.example", **body})


async def wait_until(predicate, *, timeout_s: float = 10):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


async def test_deferred_generation_answers_at_once_and_generates_in_the_background(tmp_path):
    deferred = tmp_path / "deferred-inject"
    with trio.fail_after(30):
        async with running_api(deferred_dir=deferred) as api:
            reply = await inject(api, {
                "content": "Subject: hi {{ name }}\n\nHello\n", "deferred_generation": True,
                "recipients": [{"email": f"r{i}@example.net", "name": f"R{i}"} for i in range(250)],
            })
            # KumoMTA's answer: nothing generated yet
            assert reply.json == {"success_count": 0, "fail_count": 0, "failed_recipients": [], "errors": []}
            await wait_until(lambda: len(stored(api)) == 250)
            await wait_until(lambda: not list(deferred.glob("*.json")))
            data = stored(api)
            syntax = await inject(api, {"recipients": ["x@example.net"], "content": "Subject: {{ broken\n\nx\n",
                                        "deferred_generation": True})
    assert reply.status == 200
    assert b"Subject: hi R17\r\n" in data["r17@example.net"]
    assert syntax.status == 400 and "template error" in syntax.json["error"]  # answered, not queued
    assert not list(deferred.glob("*.json"))


async def test_a_deferred_request_left_on_disk_is_generated_after_a_restart(tmp_path):
    """What a daemon stopped mid-generation leaves: the file with the recipients still to do."""
    deferred = tmp_path / "deferred-inject"
    deferred.mkdir()
    (deferred / "00000000000000000001-abcd.json").write_text(json.dumps({
        "peer": "127.0.0.1", "listener": "127.0.0.1:8000",
        "request": {"envelope_sender": "app@sender.example", "content": "Subject: x\n\ny\n",
                    "recipients": ["late1@example.net", "late2@example.net"], "tenant": "acme"}}))
    (deferred / "00000000000000000002-dead.json").write_text("{not json")
    with trio.fail_after(20):
        async with running_api(deferred_dir=deferred) as api:
            await wait_until(lambda: len(stored(api)) == 2)
            await wait_until(lambda: not list(deferred.glob("*.json")))
            tenants = {m.recipient: m.tenant for m in api.harness.spool.messages.values()}
    assert tenants == {"late1@example.net": "acme", "late2@example.net": "acme"}
    assert [p.name for p in deferred.iterdir()] == ["00000000000000000002-dead.damaged"]


async def test_amp_html_body_sits_between_text_and_html():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "recipients": ["a@example.net"],
                "content": {"subject": "amp", "text_body": "plain {{ name }}",
                            "amp_html_body": "<!doctype html><html amp4email><body>amp</body></html>",
                            "html_body": "<p>html</p>"},
            })
            data = stored(api)["a@example.net"]
    assert reply.status == 200
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/x-amp-html", "text/html"]
    assert "amp4email" in parts[1].get_content()
