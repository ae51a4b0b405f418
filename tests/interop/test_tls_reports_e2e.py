"""TLS reports from the real daemon: a ``mailto:`` report arrives at an aiosmtpd receiver
(queued, DKIM-signed and delivered by trimta itself) and an ``https:`` report at a local
HTTPS server whose certificate comes from a test CA (the daemon gets ``SSL_CERT_FILE``);
both decompress and validate against RFC 8460's schema.

The counts come from where a running daemon keeps them: ``<spool>/tlsrpt.sqlite``,
written here for a day two days ago, as a daemon stopped through its send window
would have left them. Started, the daemon catches up at once. dnsmasq serves the
``_smtp._tls`` TXT records, the MX of the mailto domain and the HTTPS host's address.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import smtplib
import sqlite3

import dkim
import pytest
from aiosmtpd.controller import Controller

from tests.dkim_support import write_key
from tests.dkim_verifiers import txt_record_option
from tests.dnsmasq import Dnsmasq
from tests.tlsrpt_schema import decode_gzip_report
from trimta.adapters.tlsrpt_store import TlsReportStore
from trimta.core.tls_report import PolicyRef, PolicyType, ResultType, SessionResult
from trimta.core.tlsrpt import TlsCounts, day_start

from .conftest import free_port
from .tlsrpt_peers import HTTPS, Recorder, ReportServer, make_ca, stored_days, txt_option, wait_for

pytestmark = pytest.mark.interop

MX = "127.0.0.61"
STS = PolicyRef(PolicyType.STS, "rcpt.test", ("version: STSv1", "mode: testing", "mx: mx.rcpt.test",
                                              "max_age: 86400"), ("mx.rcpt.test",), "testing")
TLSA = PolicyRef(PolicyType.TLSA, "dane.test", ("_25._tcp.mx.dane.test. IN TLSA 3 1 1 00ff",), (), "dane")


def seed_counts(spool_dir, day):
    counts = TlsCounts()
    at = day_start(day) + 3600
    for _ in range(4):
        counts.add(SessionResult(STS, None, "mx.rcpt.test", MX, "127.0.0.1"), at)
    counts.add(SessionResult(STS, ResultType.CERTIFICATE_HOST_MISMATCH, "mx.rcpt.test", MX, "127.0.0.1",
                             failure_reason_code="certificate is for other.test"), at)
    counts.add(SessionResult(TLSA, ResultType.DNSSEC_INVALID, "mx.dane.test"), at)
    store = TlsReportStore.in_spool(spool_dir)
    store.add(counts.rows())
    store.close()


def test_reports_arrive_by_mail_and_by_https(tmp_path, make_daemon, monkeypatch):
    ca, cert, key = make_ca(tmp_path)
    server = ReportServer(cert, key)
    recorder = Recorder()
    smtp_port = free_port(MX)
    controller = Controller(recorder, hostname=MX, port=smtp_port)
    controller.start()
    keys = tmp_path / "keys"
    dkim_record = write_key(keys, "sender.test", "s1")
    url = f"https://reports.test:{server.port}/v1/tlsrpt"
    zone = [
        "--mx-host=rcpt.test,mx.rcpt.test,10", f"--host-record=mx.rcpt.test,{MX}",
        f"--host-record=reports.test,{HTTPS}",
        txt_option("_smtp._tls.rcpt.test", f"v=TLSRPTv1; rua=mailto:tlsrpt@rcpt.test,{url}"),
        txt_option("_smtp._tls.dane.test", f"v=TLSRPTv1; rua={url}"),
        txt_record_option("s1._domainkey.sender.test", dkim_record),
    ]
    (tmp_path / "dnsmasq").mkdir()
    dns = Dnsmasq(tmp_path / "dnsmasq", zone)
    dns.start()
    try:
        d = make_daemon(dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"', extra_config=f"""
[tls_reporting]
enabled = true
organization_name = "Trimta Test Sender"
from = "tlsrpt@sender.test"
contact_info = "postmaster@sender.test"
submitter = "mx.trimta.test"
retry_interval = "1s"
max_attempts = 5

[dkim]
files = ["dkim_data.toml"]
key_directory = "{keys}"

[egress.default]
smtp_port = {smtp_port}
prohibited_hosts = []
enable_tls = "Disabled"
""")
        (d.directory / "dkim_data.toml").write_text(
            '[base]\nselector = "s1"\nheaders = ["From", "To", "Subject", "Date"]\n[domain."sender.test"]\n')
        day = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=2)
        seed_counts(d.spool_path, day)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        d.start()
        wait_for(lambda: len(server.posts) == 2, d, "two reports POSTed")
        wait_for(lambda: recorder.messages, d, "the mailto report")
    finally:
        controller.stop()
        server.stop()
        dns.stop()

    # https: one POST was refused (503) and retried, then both domains' reports came.
    assert server.answered[0] == 503 and server.answered.count(200) == 2
    reports = {}
    for path, content_type, body in server.posts:
        assert path == "/v1/tlsrpt" and content_type == "application/tlsrpt+gzip"
        report = decode_gzip_report(body)
        reports[report["policies"][0]["policy"]["policy-domain"]] = report
    rcpt = reports["rcpt.test"]
    assert rcpt["organization-name"] == "Trimta Test Sender" and rcpt["contact-info"] == "postmaster@sender.test"
    assert rcpt["date-range"]["start-datetime"] == f"{day.isoformat()}T00:00:00Z"
    assert rcpt["policies"][0]["summary"] == {"total-successful-session-count": 4, "total-failure-session-count": 1}
    assert reports["dane.test"]["policies"][0]["failure-details"][0]["result-type"] == "dnssec-invalid"

    # mailto: queued and delivered by trimta, DKIM-signed, a section 5.3 multipart/report.
    ((sender, recipients, data),) = recorder.messages
    assert sender == "tlsrpt@sender.test" and recipients == ["tlsrpt@rcpt.test"]
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: dkim_record.encode()
                       if name == b"s1._domainkey.sender.test." else None)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "rcpt.test" and msg["TLS-Report-Submitter"] == "mx.trimta.test"
    assert msg["Subject"].startswith("Report Domain: rcpt.test Submitter: mx.trimta.test Report-ID: <")
    attachment = next(p for p in msg.iter_parts() if p.get_content_type() == "application/tlsrpt+gzip")
    assert decode_gzip_report(attachment.get_content()) == rcpt
    delivered = [r for r in d.records("Delivery") if r["recipient"] == "tlsrpt@rcpt.test"]
    assert len(delivered) == 1
    # nothing is left to send, and nothing is sent twice after a restart
    d.stop()
    store = TlsReportStore.in_spool(d.spool_path)
    assert store.pending() == 0 and store.count_rows() == 0
    store.close()


POLICY_HOST = "127.0.0.163"


def test_a_real_mta_sts_testing_failure_ends_up_in_a_report(tmp_path, make_daemon, monkeypatch):
    """Delivery under an MTA-STS ``testing`` policy to an MX without STARTTLS: the message
    is delivered, the session counted as ``starttls-not-supported`` and written to disk
    within ``flush_interval``, the daemon killed (-9), and the report of that day carries
    it. The day is moved two days back in the stored counts between the two runs, as if
    the daemon were started again two days later."""
    ca, cert, key = make_ca(tmp_path, names=("reports.test", "mta-sts.rcpt.test"))
    policy = b"version: STSv1\r\nmode: testing\r\nmx: mx.rcpt.test\r\nmax_age: 86400\r\n"
    policy_server = ReportServer(cert, key, host=POLICY_HOST, port=443,
                                 files={"/.well-known/mta-sts.txt": policy})
    reports = ReportServer(cert, key, fail_first=False)
    recorder = Recorder()
    smtp_port = free_port(MX)
    controller = Controller(recorder, hostname=MX, port=smtp_port)  # no STARTTLS offered
    controller.start()
    url = f"https://reports.test:{reports.port}/v1/tlsrpt"
    zone = [
        "--mx-host=rcpt.test,mx.rcpt.test,10", f"--host-record=mx.rcpt.test,{MX}",
        f"--host-record=reports.test,{HTTPS}", f"--host-record=mta-sts.rcpt.test,{POLICY_HOST}",
        txt_option("_mta-sts.rcpt.test", "v=STSv1; id=20261203"),
        txt_option("_smtp._tls.rcpt.test", f"v=TLSRPTv1; rua={url}"),
    ]
    (tmp_path / "dnsmasq").mkdir()
    dns = Dnsmasq(tmp_path / "dnsmasq", zone)
    dns.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    try:
        d = make_daemon(dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"', extra_config=f"""
[tls_reporting]
enabled = true
organization_name = "Trimta Test Sender"
from = "tlsrpt@sender.test"
flush_interval = "1s"

[egress.default]
smtp_port = {smtp_port}
prohibited_hosts = []
""").start()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as client:
            client.sendmail("a@sender.test", ["b@rcpt.test"],
                            b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: hi\r\n\r\nhello\r\n")
        wait_for(lambda: recorder.messages, d, "the message delivered under the testing policy")
        wait_for(lambda: "TLS policy failure" in d.stderr(), d, "the session reported")
        # Within flush_interval the count is on disk, and a kill -9 leaves it there.
        wait_for(lambda: stored_days(d.spool_path), d, "the count written to tlsrpt.sqlite")
        d.kill9()
        today = datetime.datetime.now(datetime.UTC).date()
        assert stored_days(d.spool_path) == [(today.isoformat(), "rcpt.test")]
        db = sqlite3.connect(d.spool_path / "tlsrpt.sqlite")
        with db:
            db.execute("UPDATE counts SET day = ?", ((today - datetime.timedelta(days=2)).isoformat(),))
        db.close()
        d.start()
        wait_for(lambda: reports.posts, d, "the report POSTed")
    finally:
        controller.stop()
        policy_server.stop()
        reports.stop()
        dns.stop()
    ((_, content_type, body),) = reports.posts
    assert content_type == "application/tlsrpt+gzip"
    report = decode_gzip_report(body)
    (entry,) = report["policies"]
    assert entry["policy"]["policy-type"] == "sts" and entry["policy"]["policy-domain"] == "rcpt.test"
    assert entry["policy"]["mx-host"] == ["mx.rcpt.test"]
    assert "mode: testing" in entry["policy"]["policy-string"]
    assert entry["summary"]["total-failure-session-count"] >= 1
    details = entry["failure-details"]
    assert {d["result-type"] for d in details} == {"starttls-not-supported"}
    assert details[0]["receiving-mx-hostname"] == "mx.rcpt.test" and details[0]["receiving-ip"] == MX
