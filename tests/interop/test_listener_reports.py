"""A real daemon takes in OOB bounces (RFC 3464) and feedback reports (RFC 5965) sent
with smtplib to the domains whose KumoMTA listener-domain entry logs them, writes
KumoMTA's ``OOB`` and ``Feedback`` records, and relays (``LogThenRelay``, to an aiosmtpd
receiver) or drops (``LogThenDrop``: 250, nothing stored, no other record) the report,
in the daemon alone and with reception worker processes."""

from __future__ import annotations

import smtplib
import time

import jsonschema
import pytest
from aiosmtpd.controller import Controller

from tests import report_samples as samples
from tests.kumomta_compat.log_record_schema import SCHEMA, TRIMTA_SCHEMA

from .conftest import free_port, restored_spool

LISTENER_DOMAINS = """\
["bounce.example.com"]
log_oob = "LogThenDrop"
log_arf = "LogThenDrop"

["fbl.inside.test"]
log_arf = "LogThenRelay"
log_oob = true
"""


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 OK"


@pytest.mark.parametrize("workers", [1, 2])
def test_reports_are_logged_then_relayed_or_dropped(make_daemon, workers):
    port = free_port("127.0.0.36")
    recorder = Recorder()
    receiver = Controller(recorder, hostname="127.0.0.36", port=port)
    receiver.start()
    try:
        daemon = make_daemon(extra_listener=f"relay_hosts = []\nworkers = {workers}\n", extra_config=f"""
[kumomta]
listener_domains = "listener_domains.toml"
[egress.default]
smtp_port = {port}
prohibited_hosts = []
enable_tls = "Disabled"
[queues.domains."fbl.inside.test"]
routing_domain = "[127.0.0.36]"
""")
        (daemon.directory / "listener_domains.toml").write_text(LISTENER_DOMAINS)
        daemon.start()
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            assert client.sendmail("", ["bounces@bounce.example.com"], samples.POSTFIX) == {}
            assert client.sendmail("", ["abuse@bounce.example.com"], samples.RFC5965) == {}
            assert client.sendmail("", ["fbl@fbl.inside.test"], samples.FBL) == {}
            assert client.sendmail("", ["oob@fbl.inside.test"], samples.GMAIL) == {}
            # Not a report: bounce.example.com does not take it (the domain took the recipient).
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("someone@example.org", ["bounces@bounce.example.com"], samples.PLAIN)
            assert refused.value.smtp_code == 550 and b"5.7.1 relaying not permitted" in refused.value.smtp_error
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("someone@example.org", ["someone@elsewhere.test"], samples.PLAIN)
        deadline = time.monotonic() + 60
        while len(daemon.records("Delivery")) < 2 or len(daemon.records("Rejection")) < 2:
            assert time.monotonic() < deadline, (daemon.records(), daemon.stderr())
            time.sleep(0.1)
        assert daemon.stop() == 0
    finally:
        receiver.stop()

    # Relayed: the LogThenRelay reports, unchanged but for the trace header; nothing else.
    assert sorted(rcpt for _, rcpts, _ in recorder.received for rcpt in rcpts) == [
        "fbl@fbl.inside.test", "oob@fbl.inside.test"]
    assert all(sender == "<>" or sender == "" for sender, _, _ in recorder.received)
    relayed = {rcpts[0]: content for _, rcpts, content in recorder.received}
    assert relayed["oob@fbl.inside.test"].endswith(samples.GMAIL.split(b"\r\n\r\n", 1)[1])
    # Dropped: never stored.
    assert restored_spool(daemon.spool_path).messages == []

    records = daemon.records()
    for record in records:
        jsonschema.validate(record, SCHEMA)
        jsonschema.validate(record, TRIMTA_SCHEMA)
    kinds = sorted((r["type"], r["recipient"]) for r in records)
    assert kinds == [
        ("Delivery", "fbl@fbl.inside.test"), ("Delivery", "oob@fbl.inside.test"),
        ("Feedback", "abuse@bounce.example.com"), ("Feedback", "fbl@fbl.inside.test"),
        ("OOB", "Nobody@remote.example"), ("OOB", "nosuchuser@gmail.com"),
        ("Reception", "fbl@fbl.inside.test"), ("Reception", "oob@fbl.inside.test"),
        ("Rejection", ""), ("Rejection", "someone@elsewhere.test"),
    ]
    by = {(r["type"], r["recipient"]): r for r in records}

    # The Postfix DSN, dropped: KumoMTA's fields from the report, trimta's from the bounced message.
    postfix = by["OOB", "Nobody@remote.example"]
    assert postfix["sender"] == "bounces@bounce.example.com" and postfix["queue"] == "bounce.example.com"
    assert postfix["response"] == {"code": 550, "enhanced_code": {"class": 5, "subject": 1, "detail": 1},
                                   "content": "<nobody@remote.example>: Recipient address rejected: User unknown "
                                              "in local recipient table", "command": None}
    assert postfix["bounce_classification"] == "InvalidRecipient"
    assert postfix["peer_address"] == {"name": "mx.remote.example", "addr": "127.0.0.1"}
    assert postfix["size"] == 0 and postfix["num_attempts"] == 0 and postfix["site"] == ""
    assert (postfix["tenant"], postfix["campaign"], postfix["domain"]) == ("acme", "december-news", "remote.example")
    assert (postfix["original_id"], postfix["original_message_id"]) == (samples.TRIMTA_ID, "news-1234@example.com")
    assert postfix["reception_protocol"] == "ESMTP" and postfix["session_id"]

    # The Gmail DSN, relayed: the OOB record and the relayed message's own records.
    gmail = by["OOB", "nosuchuser@gmail.com"]
    assert gmail["sender"] == "oob@fbl.inside.test"
    assert gmail["timestamp"] == 1796325000  # its Last-Attempt-Date
    assert gmail["event_time"] == "2026-12-03T19:10:00.000000Z"
    assert gmail["response"]["code"] == 550 and gmail["response"]["content"].startswith(
        "The email account that you tried to reach does not exist. Please try double-checking")
    assert gmail["id"] == by["Reception", "oob@fbl.inside.test"]["id"] == by["Delivery", "oob@fbl.inside.test"]["id"]

    dropped = by["Feedback", "abuse@bounce.example.com"]
    report = dropped["feedback_report"]
    assert (report["feedback_type"], report["user_agent"], report["version"]) == ("abuse", "SomeGenerator/1.0", "1")
    assert report["original_rcpto_to"] == ["user@example.com"] and report["source_ip"] == "192.0.2.1"
    assert dropped["sender"] == "" and dropped["queue"] == "bounce.example.com"
    assert dropped["response"]["code"] == 250 and dropped["peer_address"]["addr"] == "127.0.0.1"

    fbl = by["Feedback", "fbl@fbl.inside.test"]
    assert fbl["feedback_report"]["supplemental_trace"] == {
        "recipient": "gone@exim.example", "tenant": "acme", "campaign": "winter"}
    assert (fbl["tenant"], fbl["campaign"], fbl["original_id"]) == ("acme", "winter", samples.TRIMTA_ID)
    assert fbl["id"] == by["Reception", "fbl@fbl.inside.test"]["id"]
    assert fbl["queue"] == "fbl.inside.test![127.0.0.36]"
