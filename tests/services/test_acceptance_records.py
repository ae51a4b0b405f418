"""Reception records as a reception worker encodes them: the sink's work done there (node id, meta)."""

from __future__ import annotations

import json

from trimta.adapters.config import TenancyConfig
from trimta.core.message import Reception
from trimta.core.outcome import SessionInfo
from trimta.core.records import LogFields
from trimta.services.acceptance import Submission, encoded, prepare

NODE = "557f3ad4-2c8c-11ee-976e-782d7e12e173"
SESSION = SessionInfo("9bcd689e-23d9-41b7-a015-63a1382f8b57", tls_cipher="TLS_AES_128_GCM_SHA256",
                      tls_protocol_version="TLSv1.3")


def submission() -> Submission:
    return Submission(
        sender="news@shop.example", recipients=["ann@example.net", "bob@example.org"],
        data=b"Subject: spring sale\r\nX-Tenant: acme\r\nX-Mailer: app1\r\n\r\nhello\r\n",
        reception=Reception(peer_address="192.0.2.7", listener="0.0.0.0:25", helo="app1", protocol="ESMTPS",
                            tls="TLSv1.3"),
        session=SESSION)


def test_a_workers_reception_records_carry_the_node_id_the_headers_and_only_the_asked_meta():
    fields = LogFields(headers=("subject", "x-mailer"), meta=("tenant", "received_from"), nodeid=NODE)
    prepared = encoded(prepare(submission(), tenancy=TenancyConfig(), hostname="mx.example.com", now=1795332615.0,
                               log_fields=fields), fields)
    ann, bob = (json.loads(line) for line in prepared.records or ())
    for record in (ann, bob):
        assert record["nodeid"] == NODE
        assert record["headers"] == {"Subject": "spring sale", "X-Mailer": "app1"}
        assert record["meta"] == {"received_from": "192.0.2.7", "tenant": "acme"}
        assert (record["session_id"], record["tls_cipher"], record["tls_protocol_version"]) == (
            SESSION.session_id, "TLS_AES_128_GCM_SHA256", "TLSv1.3")
    assert (ann["recipient"], bob["recipient"]) == ("ann@example.net", "bob@example.org")
    # The headers are kept with the messages, for their later records.
    assert all(m.log_headers == ann["headers"] for m in prepared.messages)


def test_without_the_log_options_nothing_is_captured():
    prepared = encoded(prepare(submission(), tenancy=TenancyConfig(), hostname="mx.example.com", now=1.0))
    record = json.loads((prepared.records or ())[0])
    assert (record["headers"], record["meta"]) == ({}, {})
    assert all(m.log_headers is None for m in prepared.messages)
