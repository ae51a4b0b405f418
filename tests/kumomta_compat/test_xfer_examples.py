"""KumoMTA's xfer API examples (XferV1Request, XferCancelV1Request), sent to real daemons,
get KumoMTA's answers: ``{}`` for a request carried out, 400 for a cancel naming a queue
that is not an xfer queue, 404 for one with no xfer in progress."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import Daemon, free_port
from tests.kumomta_compat.daemon import call

OPENAPI = json.loads((Path(__file__).resolve().parent / "data" / "kumod.openapi.json").read_text())
SCHEMAS = OPENAPI["components"]["schemas"]

# The examples of KumoMTA's reference pages (docs/reference/http/kumod/api_admin_xfer_v1_post.md
# and api_admin_xfer_cancel_v1_post.md), as they are.
XFER_EXAMPLE = """{
  "campaign": "string",
  "domain": "example.com",
  "queue_names": [
    "string"
  ],
  "reason": "Scaling down",
  "routing_domain": "string",
  "target": "http://127.0.0.1:8000",
  "tenant": "string"
}"""
CANCEL_EXAMPLE = """{
  "queue_name": "string",
  "reason": "Scaling down"
}"""


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[tuple[Daemon, Daemon]]:
    started = []
    try:
        for name in ("node-a", "node-b"):
            d = Daemon(directory=tmp_path_factory.mktemp(name), port=free_port(), extra_config=(
                f'[cluster]\nredis = "redis://127.0.0.1:9/0"\nnode_id = "{name}"\ntoken = "t0ken"\n'))
            started.append(d.start())
        yield started[0], started[1]
    finally:
        for d in started:
            d.stop()


def test_the_xfer_example_is_answered_with_an_empty_object(nodes):
    a, b = nodes
    assert SCHEMAS["XferV1Response"] == {"type": "object"}
    body = XFER_EXAMPLE.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{b.http_port}")
    assert call(a, "POST", "/api/admin/xfer/v1", body.encode()) == (200, {})
    # It selected nothing (no queue named "string"), so it is over at once.
    assert call(a, "GET", "/api/admin/xfer/v1") == (200, [])


def test_the_cancel_example_names_no_xfer_queue_and_is_refused_as_kumomta_does(nodes):
    a, _ = nodes
    status, answer = call(a, "POST", "/api/admin/xfer/cancel/v1", CANCEL_EXAMPLE.encode())
    assert status == 400 and "string is not an xfer queue" in answer["error"]


def test_cancelling_an_xfer_queue_without_an_xfer_is_not_found(nodes):
    a, b = nodes
    name = f"http://127.0.0.1:{b.http_port}/.xfer.kumomta.internal"  # KumoMTA's form, with the "/"
    status, answer = call(a, "POST", "/api/admin/xfer/cancel/v1", {"queue_name": name, "reason": "Scaling down"})
    assert status == 404 and "no xfer" in answer["error"]


def test_the_example_target_without_a_scheme_is_refused_naming_the_field(nodes):
    a, _ = nodes
    status, answer = call(a, "POST", "/api/admin/xfer/v1", {"target": "127.0.0.1:8000", "reason": "x"})
    assert status == 400 and answer["error"].startswith("target:")
