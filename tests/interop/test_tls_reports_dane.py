"""A real DANE failure in a TLS report: the daemon, resolving through a validating unbound,
delivers to an MX host whose DNSSEC-signed TLSA record matches no certificate it
presents; the message is deferred, the session counted under the ``tlsa`` policy of
the recipient domain, and the report (RFC 8460) POSTed to the domain's ``rua``.

The day is moved two days back in the stored counts between two runs of the daemon
(killed with -9 after the count reached the disk), as if it were started again two
days later; then it sends that day's report at once.
"""

from __future__ import annotations

import datetime
import smtplib
import sqlite3
import ssl
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.tlsrpt_schema import decode_gzip_report

from .conftest import free_port
from .tlsrpt_peers import Recorder, ReportServer, make_ca, metric, stored_days, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unbound_dnssec import Zone, unbound  # noqa: F401  (unbound is the fixture)

pytestmark = pytest.mark.interop

MX = "127.0.0.164"
REPORTS = "127.0.0.165"
WRONG_DIGEST = "ab" * 32  # the SHA-256 of no key the receiver has
# DANE asks for the TLSA records of the port it connects to (smtp_port): the receiver's,
# chosen before the zone is written.
SMTP_PORT = free_port(MX)
UNBOUND_ZONES = [
    Zone("dane.test", [
        "@ IN MX 10 mx", f"mx IN A {MX}", f"_{SMTP_PORT}._tcp.mx IN TLSA 3 1 1 {WRONG_DIGEST}",
        f"reports IN A {REPORTS}", '_smtp._tls IN TXT "v=TLSRPTv1; rua=https://reports.dane.test/v1/tlsrpt"',
    ]),
]


def test_a_dane_mismatch_ends_up_in_a_report(tmp_path, unbound, make_daemon, monkeypatch):
    ca, cert, key = make_ca(tmp_path, names=("reports.dane.test", "mx.dane.test"))
    reports = ReportServer(cert, key, host=REPORTS, port=443, fail_first=False)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    recorder = Recorder()
    controller = Controller(recorder, hostname=MX, port=SMTP_PORT, tls_context=tls)  # STARTTLS offered
    controller.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    try:
        d = make_daemon(dns=f'nameservers = ["{unbound.nameserver}"]\ntimeout = "5s"', extra_config=f"""
[tls_reporting]
enabled = true
organization_name = "Trimta Test Sender"
from = "tlsrpt@sender.test"
flush_interval = "1s"

[egress.default]
smtp_port = {SMTP_PORT}
prohibited_hosts = []
enable_dane = true
""").start()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as client:
            client.sendmail("a@sender.test", ["b@dane.test"],
                            b"From: a@sender.test\r\nTo: b@dane.test\r\nSubject: hi\r\n\r\nhello\r\n")
        wait_for(lambda: d.records("TransientFailure"), d, "the deferral under DANE")
        wait_for(lambda: stored_days(d.spool_path), d, "the count written to tlsrpt.sqlite")
        assert metric(d, "trimta_tls_policy_sessions_total", policy_type="tlsa", result="validation-failure") >= 1
        d.kill9()
        today = datetime.datetime.now(datetime.UTC).date()
        assert stored_days(d.spool_path) == [(today.isoformat(), "dane.test")]
        db = sqlite3.connect(d.spool_path / "tlsrpt.sqlite")
        with db:
            db.execute("UPDATE counts SET day = ?", ((today - datetime.timedelta(days=2)).isoformat(),))
        db.close()
        d.start()
        wait_for(lambda: reports.posts, d, "the report POSTed")
        wait_for(lambda: metric(d, "trimta_tls_reports_total", destination="https", event="sent") == 1, d,
                 "the report counted as sent")
        assert metric(d, "trimta_tls_reports_pending") == 0
    finally:
        controller.stop()
        reports.stop()
    assert recorder.messages == []  # never delivered to a host that fails DANE
    ((path, content_type, body),) = reports.posts
    assert path == "/v1/tlsrpt" and content_type == "application/tlsrpt+gzip"
    report = decode_gzip_report(body)
    (entry,) = report["policies"]
    policy = entry["policy"]
    assert (policy["policy-type"], policy["policy-domain"]) == ("tlsa", "dane.test")  # the recipient domain
    assert [WRONG_DIGEST in text for text in policy["policy-string"]] == [True]
    assert entry["summary"]["total-successful-session-count"] == 0
    assert entry["summary"]["total-failure-session-count"] >= 1
    (detail, *_) = entry["failure-details"]
    assert detail["result-type"] == "validation-failure", detail
    assert detail["receiving-mx-hostname"] == "mx.dane.test" and detail["receiving-ip"] == MX
