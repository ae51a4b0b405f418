"""The KumoMTA fields of log records: times, headers and meta as the [logs] options select them."""

from __future__ import annotations

import pytest

from trimta.core import records
from trimta.core.message import Message, Reception
from trimta.core.outcome import SessionInfo
from trimta.core.retry import expiration_reply
from trimta.protocol.replies import reply

DATA = (
    b"Received: from a\r\n\tby b\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"X-Campaign-Id: spring\r\n"
    b"x-campaign-note: first\r\n"
    b"X-Campaign-Note: second,\r\n  folded\r\n"
    b"To: ann@example.net\r\n"
    b"\r\n"
    b"Subject: not a header: the body\r\n"
)


def message(**changes) -> Message:
    m = Message.new(data_id="00064a1c0f3b5e21a9c3f0d2", sender="s@example.com", recipient="ann@example.net",
                    tenant="acme", campaign="spring", size=10, created=1795332615.25,
                    reception=Reception(peer_address="192.0.2.7", listener="0.0.0.0:25", protocol="ESMTPS",
                                        auth_identity="app1"))
    for k, v in changes.items():
        setattr(m, k, v)
    return m


def test_rfc3339_is_utc_to_the_microsecond():
    assert records.rfc3339(1795332615.120482) == "2026-11-22T07:30:15.120482Z"
    assert records.rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert records.rfc3339(1.9999999) == "1970-01-01T00:00:02.000000Z"  # rounds up into the next second


@pytest.mark.parametrize(("names", "expected"), [
    ((), {}),
    (("subject",), {"Subject": "Grüße"}),
    (("SUBJECT", "to"), {"Subject": "Grüße", "To": "ann@example.net"}),
    # a header twice: a list, in message order, keyed by its first spelling; folded lines unfolded
    (("X-Campaign-Note",), {"x-campaign-note": ["first", "second, folded"]}),
    (("x-campaign-*",), {"X-Campaign-Id": "spring", "x-campaign-note": ["first", "second, folded"]}),
    (("Received",), {"Received": "from a by b"}),
    (("X-Missing", "X-Other-*"), {}),
])
def test_headers_are_captured_as_kumomta_logs_them(names, expected):
    assert records.capture_headers(DATA, names) == expected


def test_meta_names_match_exactly_or_by_prefix_and_nulls_are_left_out():
    meta = {"tenant": "acme", "Tenant": "other", "received_from": "192.0.2.7", "received_via": "0.0.0.0:25",
            "authn_id": None, "x_a": 1}
    assert records.select_meta(meta, ("tenant",)) == {"tenant": "acme"}
    assert records.select_meta(meta, ("received_*", "authn_id", "x_*")) == {
        "received_from": "192.0.2.7", "received_via": "0.0.0.0:25", "x_a": 1}
    assert records.select_meta(meta, ("*",)) == {k: v for k, v in meta.items() if v is not None}


def test_a_record_carries_the_messages_meta_and_its_own_meta_wins():
    m = message(meta={"x_batch": "7", "tenant": "rebound"}, log_headers={"Subject": "hi"})
    record = records.message_record(records.DELIVERY, m, reply(250, "2.0.0", "ok"), 1795332617.5)
    assert record["meta"] == {
        "reception_protocol": "ESMTPS", "received_from": "192.0.2.7", "received_via": "0.0.0.0:25",
        "authn_id": "app1", "tenant": "rebound", "campaign": "spring", "queue": "spring:acme@example.net",
        "routing_domain": None, "x_batch": "7"}
    assert records.LogFields(meta=("tenant", "x_*")).select(record)["meta"] == {"tenant": "rebound", "x_batch": "7"}
    assert records.LogFields().select(dict(record))["meta"] == {}
    assert record["headers"] == {"Subject": "hi"}
    assert (record["event_time"], record["created_time"]) == ("2026-11-22T07:30:17.500000Z",
                                                               "2026-11-22T07:30:15.250000Z")


def test_session_fields_are_there_when_known_and_left_out_when_not():
    tls = SessionInfo("9bcd689e-23d9-41b7-a015-63a1382f8b57", delivery_protocol="ESMTP",
                      source_address="192.0.2.1:41234", tls_cipher="TLS_AES_256_GCM_SHA384",
                      tls_protocol_version="TLSv1.3", tls_peer_subject_name=("C=US", "CN=mx.example.net"),
                      peer_is_secure=True)
    record = records.message_record(records.DELIVERY, message(), reply(250, "2.0.0", "ok"), 1.0, session=tls,
                                    peer_address={"name": "mx.example.net", "addr": "192.0.2.25"},
                                    provider_name="example")
    assert record["source_address"] == {"address": "192.0.2.1:41234"}
    assert record["tls_peer_subject_name"] == ["C=US", "CN=mx.example.net"]
    assert record["peer_address"] == {"name": "mx.example.net", "addr": "192.0.2.25", "is_secure": True}
    assert (record["session_id"], record["provider_name"], record["delivery_protocol"]) == (
        tls.session_id, "example", "ESMTP")
    bare = records.message_record(records.EXPIRATION, message(), expiration_reply(3), 1.0)
    assert {"session_id", "tls_cipher", "tls_protocol_version", "tls_peer_subject_name", "provider_name",
            "nodeid"}.isdisjoint(bare)
    assert bare["source_address"] is None and bare["delivery_protocol"] is None
    assert "is_secure" not in bare["peer_address"]


@pytest.mark.parametrize(("kind", "answer", "expected"), [
    (records.EXPIRATION, expiration_reply(5), "MessageExpired"),
    (records.TRANSIENT_FAILURE, reply(452, "4.2.2", "Mailbox full"), "QuotaIssues"),
    (records.ADMIN_BOUNCE, reply(550, "5.1.1", "No such user"), "InvalidRecipient"),
    (records.DELIVERY, reply(250, "2.0.0", "ok"), "Uncategorized"),
    (records.RECEPTION, reply(250, "2.0.0", "ok"), "Uncategorized"),
])
def test_the_kinds_kumomta_classifies_are_classified(kind, answer, expected):
    assert records.message_record(kind, message(), answer, 1.0)["bounce_classification"] == expected


def test_a_rejection_without_envelope_has_empty_strings_as_kumomta_writes_it():
    record = records.rejection_record(
        reply=reply(550, "5.7.1", "Relaying denied"), now=2.0, sender=None, recipient=None, peer_address="192.0.2.7",
        helo="outsider", protocol="ESMTP", command="RCPT TO", session_id="3f0c5a8e-6d1b-4e7a-9b2c-1d4e5f6a7b8c",
        listener="0.0.0.0:25", meta={"received_from": "192.0.2.7", "authn_id": None})
    assert (record["sender"], record["recipient"]) == ("", "")
    assert record["session_id"] == "3f0c5a8e-6d1b-4e7a-9b2c-1d4e5f6a7b8c"
    assert record["meta"] == {"received_from": "192.0.2.7"} and record["headers"] == {}
    assert record["bounce_classification"] == "RelayDenied"
