"""POST /api/inject/v1 over loopback: KumoMTA's request shapes, templating, MIME, durability.

What a user observes is the answer and what ends up stored: the tests read the
stored data back (as a receiver would get it) and parse it with the `email` package.
"""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage

import trio

from tests.services.test_http_api import running_api
from trimta.adapters.spool import Spool
from trimta.adapters.spool_sqlite import SqliteStorage


def stored(api) -> dict[str, bytes]:
    """Recipient -> stored data, from the in-memory spool."""
    spool = api.harness.spool
    return {m.recipient: spool.data[m.data_id] for m in spool.messages.values()}


def parsed(data: bytes) -> EmailMessage:
    # The trace header comes first; the message as the client wrote it follows.
    assert data.startswith(b"Received: from unknown ([127.0.0.1])\r\n\tby mx.trimta.test (trimta) with HTTP")
    return email.message_from_bytes(data, policy=email.policy.default)


async def inject(api, body: dict):
    return await api.call("POST", "/api/inject/v1", body)


async def test_string_content_to_two_recipients_is_stored_once_with_crlf():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example",
                "content": "From: app@sender.example\nSubject: hello\n\nHello there\n",
                "recipients": [{"email": "a@example.net"}, {"email": "b@example.net"}],
            })
            data = stored(api)
            spool = api.harness.spool
    assert reply.status == 200
    assert reply.json == {"success_count": 2, "fail_count": 0, "failed_recipients": [], "errors": []}
    assert data["a@example.net"] is data["b@example.net"] or data["a@example.net"] == data["b@example.net"]
    assert len(spool.data) == 1  # one copy shared by both recipients
    assert data["a@example.net"].endswith(b"From: app@sender.example\r\nSubject: hello\r\n\r\nHello there\r\n")
    records = api.harness.records("Reception")
    assert {r["recipient"] for r in records} == {"a@example.net", "b@example.net"}
    assert all(r["reception_protocol"] == "HTTP" for r in records)


async def test_substitutions_per_recipient_with_jinja():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example",
                "content": "Subject: {{ greeting }}, {{ name }}\n\nYour code is {{ code }}; sent to {{ email }}.\n",
                "substitutions": {"greeting": "Hello", "code": "none"},
                "recipients": [
                    {"email": "a@example.net", "name": "Ann", "substitutions": {"code": "A-1"}},
                    {"email": "b@example.net", "name": "Bob", "substitutions": {"greeting": "Hi", "code": "B-2"}},
                ],
            })
            data = stored(api)
    assert reply.json["success_count"] == 2
    a, b = parsed(data["a@example.net"]), parsed(data["b@example.net"])
    assert a["Subject"] == "Hello, Ann" and a.get_content() == "Your code is A-1; sent to a@example.net.\r\n"
    assert b["Subject"] == "Hi, Bob" and b.get_content() == "Your code is B-2; sent to b@example.net.\r\n"


async def test_static_dialect_leaves_braces_alone():
    with trio.fail_after(10):
        async with running_api() as api:
            await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Static",
                "content": "Subject: {{ raw }}\n\n{% not a tag %}\n",
                "recipients": [{"email": "a@example.net"}],
            })
            data = stored(api)
    assert data["a@example.net"].endswith(b"Subject: {{ raw }}\r\n\r\n{% not a tag %}\r\n")


async def test_built_content_becomes_mime_with_alternatives_and_attachments():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "bounces@sender.example",
                "recipients": [{"email": "a@example.net", "name": "Ann Åberg", "substitutions": {"n": 3}}],
                "content": {
                    "subject": "Your {{ n }} items",
                    "from": {"email": "shop@sender.example", "name": "The Shop"},
                    "reply_to": {"email": "help@sender.example"},
                    "headers": {"X-Order": "o-{{ n }}"},
                    "text_body": "You have {{ n }} items, {{ name }}.",
                    "html_body": "<p>You have <b>{{ n }}</b> items.</p><img src=\"cid:logo\">",
                    "attachments": [
                        {"data": base64.b64encode(b"\x89PNG...").decode(), "base64": True,
                         "content_type": "image/png", "content_id": "logo", "file_name": "logo.png"},
                        {"data": "a,b\n1,2\n", "content_type": "text/csv", "file_name": "items.csv"},
                    ],
                },
            })
            data = stored(api)["a@example.net"]
    assert reply.status == 200, reply.json
    msg = parsed(data)
    assert msg["Subject"] == "Your 3 items"
    assert msg["From"] == "The Shop <shop@sender.example>"
    assert msg["To"] == "Ann Åberg <a@example.net>"
    assert msg["Reply-To"] == "help@sender.example"
    assert msg["X-Order"] == "o-3"
    assert msg["Date"] and msg["Message-ID"].endswith("@mx.trimta.test>")
    assert msg.get_content_type() == "multipart/mixed"
    assert msg.get_body(("plain",)).get_content() == "You have 3 items, Ann Åberg.\r\n"
    html = msg.get_body(("html",))
    assert "<b>3</b>" in html.get_content()
    attachments = {part.get_filename(): part for part in msg.iter_attachments()}
    assert attachments["items.csv"].get_content() == "a,b\n1,2\n"
    logo = next(p for p in msg.walk() if p["Content-ID"] == "<logo>")
    assert logo.get_content() == b"\x89PNG..." and logo.get_content_type() == "image/png"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.isascii()  # non-ASCII text travels 7-bit: no receiver needs 8BITMIME


async def test_tenant_and_campaign_from_explicit_fields_and_from_headers():
    with trio.fail_after(10):
        async with running_api() as api:
            await inject(api, {"envelope_sender": "app@sender.example", "tenant": "acme", "campaign": "spring",
                               "content": "Subject: x\n\nbody\n", "recipients": [{"email": "a@example.net"}]})
            await inject(api, {"envelope_sender": "app@sender.example",
                               "content": "X-Tenant: globex\nX-Campaign: fall\nSubject: y\n\nbody\n",
                               "recipients": [{"email": "b@example.net"}]})
            await inject(api, {"envelope_sender": "app@sender.example",
                               "content": {"subject": "z", "text_body": "body", "headers": {"X-Tenant": "initech"}},
                               "recipients": [{"email": "c@example.net"}]})
            messages = {m.recipient: m for m in api.harness.spool.messages.values()}
            data = stored(api)
    assert (messages["a@example.net"].tenant, messages["a@example.net"].campaign) == ("acme", "spring")
    assert messages["a@example.net"].queue == "spring:acme@example.net"
    assert (messages["b@example.net"].tenant, messages["b@example.net"].campaign) == ("globex", "fall")
    assert b"X-Tenant" not in data["b@example.net"]  # the tenancy headers are removed, as over SMTP
    assert messages["c@example.net"].tenant == "initech"


async def test_bad_recipients_fail_alone_and_are_reported():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example",
                "content": "Subject: {{ 1 / n }}\n\nx\n",
                "recipients": [
                    {"email": "good@example.net", "substitutions": {"n": 1}},
                    {"email": "not an address", "substitutions": {"n": 1}},
                    {"email": "zero@example.net", "substitutions": {"n": 0}},
                ],
            })
            recipients = {m.recipient for m in api.harness.spool.messages.values()}
    assert reply.status == 200
    assert reply.json["success_count"] == 1 and reply.json["fail_count"] == 2
    assert reply.json["failed_recipients"] == ["not an address", "zero@example.net"]
    assert reply.json["errors"][0] == "not an address: not a valid recipient address"
    assert reply.json["errors"][1].startswith("zero@example.net: cannot build the message: division by zero")
    assert recipients == {"good@example.net"}


async def test_all_recipients_failing_is_a_400():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {"envelope_sender": "", "content": "Subject: x\n\ny\n",
                                       "recipients": ["bad", {"email": "@nodomain"}]})
    assert reply.status == 400
    assert reply.json["error"] == "no recipient could be accepted"
    assert reply.json["fail_count"] == 2


async def test_sandbox_refuses_templates_reaching_for_python_or_memory():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example",
                "content": "Subject: x\n\n{{ payload }}\n",
                "recipients": [
                    {"email": "a@example.net", "substitutions": {"payload": "fine"}},
                ],
            })
            escape = await inject(api, {
                "envelope_sender": "app@sender.example",
                "content": "Subject: {{ ''.__class__.__mro__[1].__subclasses__() }}\n\nx\n",
                "recipients": [{"email": "b@example.net"}],
            })
            bomb = await inject(api, {
                "envelope_sender": "app@sender.example",
                "content": "Subject: x\n\n{{ 'x' * 1000000000 }}{{ 9 ** 9999999 }}\n",
                "recipients": [{"email": "c@example.net"}],
            })
            recipients = {m.recipient for m in api.harness.spool.messages.values()}
    assert reply.status == 200
    assert escape.status == 400 and "template" in escape.json["errors"][0]
    assert bomb.status == 400 and "template refused" in bomb.json["errors"][0]
    assert recipients == {"a@example.net"}


async def test_request_errors_name_the_field():
    cases = [
        (b"[]", "body: expected a JSON object, got an array"),
        (b"{", "not valid JSON"),
        ({"content": "Subject: x\n\ny", "recipients": ["a@example.net"]}, "envelope_sender: missing"),
        ({"envelope_sender": "a@b.example", "content": "S: x\n\ny"}, "recipients: missing"),
        ({"envelope_sender": "a@b.example", "content": "S: x\n\ny", "recipients": []}, "expected at least one"),
        ({"envelope_sender": "a@b.example", "recipients": ["a@example.net"]}, "content: missing"),
        ({"envelope_sender": "a@b.example", "content": 5, "recipients": ["a@example.net"]},
         "content: expected a message as a string or an object"),
        ({"envelope_sender": "a@b.example", "content": "S: x\n\ny", "recipients": [{"email": 1}]},
         "recipients[0].email: expected a string, got a number"),
        ({"envelope_sender": "a@b.example", "content": "S: x\n\ny", "recipients": [{"mail": "x"}]},
         "recipients[0].mail: unknown field"),
        ({"envelope_sender": "not valid", "content": "S: x\n\ny", "recipients": ["a@example.net"]},
         "envelope_sender: not a valid address"),
        ({"envelope_sender": "a@b.example", "content": "Subject: {% if %}\n\ny", "recipients": ["a@example.net"]},
         "content: template error on line 1"),
        ({"envelope_sender": "a@b.example", "content": {"headers": {"Content-Type": "text/html"}},
          "recipients": ["a@example.net"]}, "Content-Type is set by the message builder"),
        ({"envelope_sender": "a@b.example", "content": {"attachments": [{"data": "%%", "base64": True}]},
          "recipients": ["a@example.net"]}, "content.attachments[0].data: not valid base64"),
        ({"envelope_sender": "a@b.example", "content": "S: x\n\ny", "recipients": ["a@example.net"],
          "template_dialect": "Mustache"}, "template_dialect: expected one of Jinja, Static, Handlebars"),
        ({"envelope_sender": "a@b.example", "recipients": ["a@example.net"], "template_dialect": "Handlebars",
          "content": {"text_body": "Hello {{name}},\nyour code is {{code"}},
         "content.text_body: template error on line 2, column 20: invalid handlebars syntax: unexpected end "
         "of input, expected '}}'"),
    ]
    with trio.fail_after(20):
        async with running_api() as api:
            replies = [await inject_raw(api, body) for body, _ in cases]
            spool = api.harness.spool
    for reply, (_, words) in zip(replies, cases):
        assert reply.status == 400, reply.json
        assert words in reply.json["error"], (words, reply.json)
    assert spool.messages == {}


async def inject_raw(api, body):
    return await api.call("POST", "/api/inject/v1", body)


async def test_content_that_is_not_a_message_fails_its_recipients():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {"envelope_sender": "a@b.example", "content": "just some text",
                                       "recipients": ["a@example.net"]})
    assert reply.status == 400
    assert "does not start with a header field" in reply.json["errors"][0]


async def test_content_with_a_nul_is_refused_and_nothing_is_stored():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {"envelope_sender": "a@b.example",
                                       "content": "Subject: x\r\n\r\nhello\r\n\u0000.\r\nMAIL FROM:<x@y>\r\n",
                                       "recipients": ["a@example.net"]})
            assert stored(api) == {}
    assert reply.status == 400
    assert "NUL character" in reply.json["errors"][0]


async def test_body_over_the_limit_is_413():
    from trimta.adapters.http_config import HttpConfig

    with trio.fail_after(10):
        async with running_api(HttpConfig(port=0, max_body_size_bytes=10_000)) as api:
            reply = await inject(api, {"envelope_sender": "a@b.example", "content": "Subject: x\n\n" + "y" * 20_000,
                                       "recipients": ["a@example.net"]})
            spool = api.harness.spool
    assert reply.status == 413 and "larger than 10000 bytes" in reply.json["error"]
    assert spool.messages == {}


async def test_a_hundred_personalised_messages_take_one_spool_commit(tmp_path):
    spool = Spool(SqliteStorage(tmp_path / "spool"))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            with trio.fail_after(30):
                async with running_api(spool=spool) as api:
                    before = spool.statistics().commits
                    reply = await inject(api, {
                        "envelope_sender": "app@sender.example",
                        "content": {"subject": "Hello {{ name }}", "text_body": "Dear {{ name }}, #{{ i }}"},
                        "recipients": [{"email": f"u{i}@example.net", "name": f"User {i}",
                                        "substitutions": {"i": i}} for i in range(100)],
                    })
                    after = spool.statistics()
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
    assert reply.status == 200 and reply.json["success_count"] == 100
    assert after.commits - before == 1
    assert after.messages == 100 and after.data_objects == 100
    restored = Spool(SqliteStorage(tmp_path / "spool"))  # what a restarted daemon finds
    try:
        messages = restored.restore().messages
        data = {m.recipient: await restored.load_data(m.data_id) for m in messages}
    finally:
        restored.close()
    assert parsed(data["u42@example.net"])["Subject"] == "Hello User 42"
    assert parsed(data["u42@example.net"]).get_content() == "Dear User 42, #42\r\n"


async def test_inject_answers_only_once_durable(tmp_path):
    """The 200 comes after the commit: a spool whose writer is not running makes it a 503."""
    spool = Spool(SqliteStorage(tmp_path / "spool"))  # never started: every store fails
    try:
        with trio.fail_after(10):
            async with running_api(spool=spool) as api:
                reply = await inject(api, {"envelope_sender": "a@b.example", "content": "Subject: x\n\ny\n",
                                           "recipients": ["a@example.net", "b@example.net"]})
    finally:
        spool.close()
    assert reply.status == 503
    assert reply.json["success_count"] == 0 and reply.json["fail_count"] == 2
    assert "try again" in reply.json["error"]
    assert reply.json["errors"][0].startswith("a@example.net: 452 4.3.1")



# --- the Handlebars dialect (KumoMTA's handlebars-rust) ------------------------------------


async def test_handlebars_renders_subject_bodies_and_headers_escaping_only_html():
    """KumoMTA escapes HTML only in the templates named *.html: html_body and amp_html_body."""
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Handlebars",
                "substitutions": {"shop": "Tom & Jerry's", "items": [{"n": "<cheese>", "price": 2.5},
                                                                      {"n": "crackers", "price": 1}]},
                "recipients": [{"email": "a@example.net", "name": "Ann",
                                "substitutions": {"vip": True}}],
                "content": {
                    "subject": "{{shop}}: {{len items}} items for {{name}}",
                    "headers": {"X-Shop": "{{upperCamelCase shop}}"},
                    "text_body": "{{#each items}}{{@index}}. {{n}} {{price}}{{#if vip}} (vip){{/if}}\n{{/each}}",
                    "html_body": "<p>{{shop}}</p>{{#each items as |item|}}<li>{{item.n}}</li>{{/each}}"
                                 "{{{shop}}}",
                },
            })
            data = stored(api)["a@example.net"]
    assert reply.status == 200, reply.json
    msg = parsed(data)
    assert msg["Subject"] == "Tom & Jerry's: 2 items for Ann"
    assert msg["X-Shop"] == "TomJerryS"
    assert msg.get_body(("plain",)).get_content() == "0. <cheese> 2.5 (vip)\r\n1. crackers 1 (vip)\r\n"
    assert msg.get_body(("html",)).get_content() == (
        "<p>Tom &amp; Jerry&#x27;s</p><li>&lt;cheese&gt;</li><li>crackers</li>Tom & Jerry's\r\n")


async def test_handlebars_string_content_is_not_escaped_and_raw_blocks_stay():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Handlebars",
                "recipients": [{"email": "a@example.net", "name": "A <b>"}],
                "content": "Subject: hi {{name}}\n\n{{{{raw}}}}\n{{name}} stays\n{{{{/raw}}}}\n"
                           "{{! a comment line }}\nbye {{to_header}}\n",
            })
            data = stored(api)["a@example.net"]
    assert reply.status == 200, reply.json
    assert data.endswith(b"Subject: hi A <b>\r\n\r\n{{name}} stays\r\nbye \"A <b>\" <a@example.net>\r\n")


async def test_handlebars_render_errors_fail_the_recipient_with_handlebars_rust_words():
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Handlebars",
                "recipients": [{"email": "a@example.net", "name": "John"}],
                "content": {"text_body": "{{ name or 'Fred' }}"},
            })
            spool = api.harness.spool
    assert reply.status == 400
    assert reply.json["errors"] == [
        "a@example.net: template error: Error rendering \"text_body.txt\" line 1, col 1: Helper not found name"]
    assert spool.messages == {}


async def test_handlebars_budgets_stop_a_blow_up_and_the_daemon_answers():
    loops = "{{#each xs}}" * 6 + "x" + "{{/each}}" * 6
    with trio.fail_after(30):
        async with running_api() as api:
            bomb = await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Handlebars",
                "substitutions": {"xs": list(range(100))},
                "recipients": [{"email": "a@example.net"}],
                "content": {"text_body": loops},
            })
            deep = await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Handlebars",
                "recipients": [{"email": "b@example.net"}],
                "content": {"text_body": "{{#if a}}" * 500 + "{{/if}}" * 500},
            })
            fine = await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Handlebars",
                "recipients": [{"email": "c@example.net"}], "content": {"text_body": "ok"},
            })
    assert bomb.status == 400 and "template refused" in bomb.json["errors"][0], bomb.json
    assert deep.status == 400 and "nested deeper than" in deep.json["error"], deep.json
    assert fine.status == 200


async def test_kumomta_builder_handlebars_case_with_a_to_header_override():
    """KumoMTA's inject_v1.rs Handlebars cases: builder content with ``{{ name }}``, and a
    ``To`` header given in content.headers replacing the recipient's own. (Recipients at
    example.net, as in the other tests here: at example.com the harness's delivery attempt
    can finish the message before the test reads the spool.)"""
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "noreply@example.com", "template_dialect": "Handlebars",
                "recipients": [{"email": "user@example.net", "name": "James Smythe"}],
                "content": {
                    "text_body": "I am the plain text, {{ name }}. 😀",
                    "html_body": "I am the <b>html</b> text, {{ name }}. 👾 <img src=\"cid:my-image\"/>",
                    "subject": "hello {{ name }}",
                    "from": {"email": "from@example.com", "name": "Sender Name"},
                    "headers": {"To": "someone.else@example.com"},
                },
            })
            default_to = await inject(api, {
                "envelope_sender": "noreply@example.com", "template_dialect": "Handlebars",
                "recipients": [{"email": "second@example.net", "name": "Second User"},
                               {"email": "third@example.net", "name": "Third User",
                                "substitutions": {"to_header": "custom.to@example.com"}}],
                "content": {"text_body": "hi", "headers": {"To": "{{ to_header }}"}},
            })
            data = stored(api)
    assert reply.status == 200 and default_to.status == 200
    msg = parsed(data["user@example.net"])
    assert msg["To"] == "someone.else@example.com"
    assert msg["Subject"] == "hello James Smythe"
    assert msg["From"] == "Sender Name <from@example.com>"
    assert msg.get_body(("plain",)).get_content() == "I am the plain text, James Smythe. 😀\r\n"
    assert msg.get_body(("html",)).get_content() == (
        "I am the <b>html</b> text, James Smythe. 👾 <img src=\"cid:my-image\"/>\r\n")
    assert parsed(data["second@example.net"])["To"] == "Second User <second@example.net>"
    assert parsed(data["third@example.net"])["To"] == "custom.to@example.com"


async def test_kumomta_amp_case_keeps_a_raw_block_unexpanded():
    amp = ("<!doctype html>\r\n<html ⚡4email>\r\n<body>\r\nHello in AMP, {{ name }}!\r\n{{{{raw}}}}\r\n"
           "Don't expand in here {{ name }}\r\n{{{{/raw}}}}\r\n</body>\r\n</html>\r\n")
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "noreply@example.com", "template_dialect": "Handlebars",
                "recipients": [{"email": "user@example.net", "name": "James Smythe"}],
                "content": {"text_body": "t", "html_body": "h", "amp_html_body": amp},
            })
            data = stored(api)["user@example.net"]
    assert reply.status == 200, reply.json
    amp_part = parsed(data).get_body(("x-amp-html",)).get_content()
    assert amp_part == ("<!doctype html>\r\n<html ⚡4email>\r\n<body>\r\nHello in AMP, James Smythe!\r\n"
                        "Don't expand in here {{ name }}\r\n</body>\r\n</html>\r\n")


async def test_template_variables_in_kumomtas_order():
    """inject_v1.rs: request substitutions, then email/name/to_header, then the recipient's."""
    with trio.fail_after(10):
        async with running_api() as api:
            reply = await inject(api, {
                "envelope_sender": "app@sender.example", "template_dialect": "Handlebars",
                "substitutions": {"name": "everyone", "email": "nobody", "to_header": "x@y.example", "k": 1},
                "recipients": [{"email": "a@example.net", "name": "Ann", "substitutions": {"k": 2}},
                               {"email": "b@example.net"}],
                "content": {"text_body": "{{name}} {{email}} {{k}} {{to_header}}"},
            })
            data = stored(api)
    assert reply.status == 200, reply.json
    a, b = parsed(data["a@example.net"]), parsed(data["b@example.net"])
    assert a.get_content() == "Ann a@example.net 2 Ann <a@example.net>\r\n"
    assert b.get_content() == "everyone b@example.net 1 b@example.net\r\n"
    assert a["To"] == "Ann <a@example.net>" and b["To"] == "b@example.net"
