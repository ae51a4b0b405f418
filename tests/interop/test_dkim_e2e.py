"""DKIM through the real daemon: smtplib, swaks and HTTP injection in, an aiosmtpd
receiver out, and what arrives verified by dkimpy's dkimverify and Perl's Mail::DKIM,
with the public keys served as TXT records by dnsmasq.

The keys: example.test signs with RSA-2048 (selector s1) and Ed25519 (selector ed,
an extra signature block for the same domain); an ESP signature (esp.test) is added
to every message ("Always"), and a fallback one (fallback.test) only to mail whose
From: domain has no block ("OnlyIfMissingDomainBlock"). Reception goes over two
processes (workers = 2): connections land on the daemon and on its reception worker.
"""

from __future__ import annotations

import http.client
import json
import signal
import smtplib
import subprocess
import threading
import time

import pytest
from aiosmtpd.controller import Controller

from tests.dkim_support import write_key
from tests.dkim_verifiers import dkimverify, mail_dkim, opendkim, txt_record_option
from tests.dnsmasq import Dnsmasq
from trimta.core.dkim import Algorithm

from .conftest import free_port, tool

pytestmark = pytest.mark.interop

MX = "127.0.0.47"
KEYS = [  # (domain, selector, algorithm, bits)
    ("example.test", "s1", Algorithm.RSA_SHA256, 2048),
    ("example.test", "ed", Algorithm.ED25519_SHA256, 0),
    ("esp.test", "esp", Algorithm.RSA_SHA256, 1024),
    ("fallback.test", "fb", Algorithm.RSA_SHA256, 1024),
    ("example.test", "s2", Algorithm.RSA_SHA256, 1024),  # the key rotated to
]
DKIM_DATA = """
[base]
selector = "s1"
headers = ["From", "To", "Subject", "Date", "Message-ID"]
over_sign = true
additional_signatures = ["ed", "esp", "fallback"]

[domain."example.test"]

[signature."ed"]
domain = "example.test"
selector = "ed"
algo = "ed25519"
policy = "OnlyIfMissingDomainBlock"

[signature."esp"]
domain = "esp.test"
selector = "esp"
policy = "Always"

[signature."fallback"]
domain = "fallback.test"
selector = "fb"
policy = "OnlyIfMissingDomainBlock"
"""
ED_AS_ALWAYS = DKIM_DATA.replace('selector = "ed"\nalgo = "ed25519"\npolicy = "OnlyIfMissingDomainBlock"',
                                 'selector = "ed"\nalgo = "ed25519"\npolicy = "Always"')


class Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(envelope.original_content)
        return "250 2.0.0 Message accepted"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dkim-keys")
    records = {}
    for domain, selector, algorithm, bits in KEYS:
        records[(domain, selector)] = write_key(directory, domain, selector, algorithm, bits or 2048)
    return directory, records


@pytest.fixture(scope="module")
def dns(tmp_path_factory, keys):
    _, records = keys
    zone = ["--mx-host=rcpt.test,mx.rcpt.test,10", f"--host-record=mx.rcpt.test,{MX}"]
    zone += [txt_record_option(f"{s}._domainkey.{d}", r) for (d, s), r in records.items()]
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), zone)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    port = free_port(MX)
    handler = Recorder()
    controller = Controller(handler, hostname=MX, port=port)
    controller.start()
    yield handler, port
    controller.stop()


def make_relay(make_daemon, dns, keys, receiver, data=DKIM_DATA, workers=2, tenants=""):
    key_dir, _ = keys
    _, port = receiver
    d = make_daemon(
        dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"',
        extra_listener=f"workers = {workers}",
        extra_config=f"""
[dkim]
files = ["dkim_data.toml"]
key_directory = "{key_dir}"
{tenants}
[egress.default]
smtp_port = {port}
prohibited_hosts = []
enable_tls = "Disabled"
""",
    )
    (d.directory / "dkim_data.toml").write_text(data)
    return d.start()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def message(sender: str, subject: str) -> str:
    return (f"From: Sender <{sender}>\r\nTo: you@rcpt.test\r\nSubject: {subject}\r\n"
            f"Date: Wed, 02 Dec 2026 18:00:00 +0000\r\nMessage-ID: <{subject}@example.test>\r\n\r\n"
            f"Hello   there,  \r\n\r\nthis is {subject}.\r\n\r\n\r\n")


def by_subject(handler: Recorder, subject: str) -> bytes:
    found = [m for m in handler.messages if f"Subject: {subject}\r\n".encode() in m]
    assert len(found) == 1, subject
    return found[0]


ED25519_UNKNOWN_TO_MAIL_DKIM = "invalid (unsupported algorithm ed25519-sha256)"


def verdicts(data: bytes, dns_port: int) -> list[tuple[str, str, str]]:
    """Each signature's (domain, dkimpy's verdict, Mail::DKIM's result), top first.

    Mail::DKIM's result is "pass" or the first word of its failure ("fail", "invalid");
    an Ed25519 signature shows as "ed25519" where this Mail::DKIM cannot check one.
    """
    count = data.split(b"\r\n\r\n")[0].count(b"\r\nDKIM-Signature:") + data.startswith(b"DKIM-Signature:")
    perl = mail_dkim(data, dns_port)
    assert len(perl) == count
    out = []
    for i, (domain, _, _, detail) in enumerate(perl):
        result = "ed25519" if detail == ED25519_UNKNOWN_TO_MAIL_DKIM else detail.split(" ")[0]
        out.append((domain, "ok" if dkimverify(data, dns_port, i) else "fail", result))
    return out


def test_smtplib_swaks_and_inject_mail_verifies_with_dkimpy_and_mail_dkim(make_daemon, dns, keys, receiver):
    handler, _ = receiver
    d = make_relay(make_daemon, dns, keys, receiver)
    subjects = [f"smtplib-{i}" for i in range(6)]
    for subject in subjects:  # one connection each: the kernel spreads them over both processes
        with smtplib.SMTP(d.host, d.port, timeout=30) as client:
            client.sendmail("bounces@example.test", ["you@rcpt.test"], message("news@example.test", subject))
    subprocess.run(
        [tool("swaks"), "--server", f"{d.host}:{d.port}", "--from", "bounces@other.test", "--to", "you@rcpt.test",
         "--data", message("news@other.test", "swaks").replace("\r\n", "\n")],
        check=True, capture_output=True, timeout=60,
    )
    body = {"envelope_sender": "bounces@example.test", "recipients": [{"email": "you@rcpt.test"}],
            "content": message("news@example.test", "inject"), "template_dialect": "Static"}
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=30)
    conn.request("POST", "/api/inject/v1", json.dumps(body), {"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    wait_for(lambda: len(handler.messages) >= 8, what="every message at the receiver")

    port = dns.port
    for subject in [*subjects, "inject"]:  # domain signature (RSA-2048) and the ESP's
        assert verdicts(by_subject(handler, subject), port) == [
            ("example.test", "ok", "pass"), ("esp.test", "ok", "pass")]
    # No domain block for other.test: Ed25519 by example.test, the ESP, the fallback.
    assert verdicts(by_subject(handler, "swaks"), port) == [
        ("example.test", "ok", "ed25519"), ("esp.test", "ok", "pass"), ("fallback.test", "ok", "pass")]
    assert b"a=ed25519-sha256" in by_subject(handler, "swaks").split(b"DKIM-Signature")[1]
    # OpenDKIM checks Ed25519 where this Mail::DKIM cannot: a second verifier for it.
    assert sorted(opendkim(by_subject(handler, "swaks"), port)) == [
        ("esp.test", "rsa-sha256", "pass"), ("example.test", "ed25519-sha256", "pass"),
        ("fallback.test", "rsa-sha256", "pass")]

    receptions = {r["id"]: r for r in d.records("Reception")}
    assert len(receptions) == 8
    signed = sorted(tuple(sorted(s["domain"] + "/" + s["selector"] + "/" + s["algorithm"]
                                 for s in r["dkim_signatures"])) for r in receptions.values())
    assert signed.count(("esp.test/esp/rsa-sha256", "example.test/s1/rsa-sha256")) == 7
    assert ("esp.test/esp/rsa-sha256", "example.test/ed/ed25519-sha256", "fallback.test/fb/rsa-sha256") in signed


def test_rsa_and_ed25519_double_signature_and_over_signing(make_daemon, dns, keys, receiver):
    handler, _ = receiver
    d = make_relay(make_daemon, dns, keys, receiver, data=ED_AS_ALWAYS, workers=1)
    with smtplib.SMTP(d.host, d.port, timeout=30) as client:
        client.sendmail("bounces@example.test", ["you@rcpt.test"], message("news@example.test", "double"))
    wait_for(lambda: handler.messages, what="the message at the receiver")
    data = by_subject(handler, "double")
    assert verdicts(data, dns.port) == [
        ("example.test", "ok", "pass"), ("example.test", "ok", "ed25519"), ("esp.test", "ok", "pass")]
    assert sorted(opendkim(data, dns.port)) == [
        ("esp.test", "rsa-sha256", "pass"), ("example.test", "ed25519-sha256", "pass"),
        ("example.test", "rsa-sha256", "pass")]
    # A Subject added on top after signing: over-signed (h= has one subject more than
    # the message), so no signature survives.
    tampered = b"Subject: you won\r\n" + data
    assert verdicts(tampered, dns.port) == [
        ("example.test", "fail", "fail"), ("example.test", "fail", "ed25519"), ("esp.test", "fail", "fail")]
    assert [verdict for _, _, verdict in opendkim(tampered, dns.port)] == ["fail", "fail", "fail"]


def test_message_without_from_is_refused_552_and_not_stored(make_daemon, dns, keys, receiver):
    d = make_relay(make_daemon, dns, keys, receiver, workers=1)
    with smtplib.SMTP(d.host, d.port, timeout=30) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("a@example.test", ["you@rcpt.test"], "To: you@rcpt.test\r\nSubject: x\r\n\r\nhi\r\n")
    assert refused.value.smtp_code == 552
    assert refused.value.smtp_error.startswith(b"5.6.0 DKIM signing requires exactly one From header")
    wait_for(lambda: d.records("Rejection"), what="the Rejection record")
    assert d.records("Reception") == []


def test_tenant_opt_out_and_key_rotation_by_sighup(make_daemon, dns, keys, receiver):
    handler, _ = receiver
    d = make_relay(make_daemon, dns, keys, receiver, workers=2, tenants="[tenants.trial]\ndkim = false\n")
    with smtplib.SMTP(d.host, d.port, timeout=30) as client:
        client.sendmail("a@example.test", ["you@rcpt.test"],
                        "X-Tenant: trial\r\n" + message("news@example.test", "unsigned"))
    (d.directory / "dkim_data.toml").write_text(DKIM_DATA.replace('[domain."example.test"]',
                                                                  '[domain."example.test"]\nselector = "s2"'))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded DKIM" in d.stderr(), what="the reload")
    time.sleep(0.5)  # the new signer's frame reaches the worker process
    for i in range(4):
        with smtplib.SMTP(d.host, d.port, timeout=30) as client:
            client.sendmail("a@example.test", ["you@rcpt.test"], message("news@example.test", f"rotated-{i}"))
    wait_for(lambda: len(handler.messages) >= 5, what="every message at the receiver")
    assert b"DKIM-Signature" not in by_subject(handler, "unsigned")
    for i in range(4):
        data = by_subject(handler, f"rotated-{i}")
        assert b"s=s2;" in data.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b" ")
        assert verdicts(data, dns.port) == [("example.test", "ok", "pass"), ("esp.test", "ok", "pass")]


def test_injected_message_without_from_fails_its_recipients_with_400(make_daemon, dns, keys, receiver):
    d = make_relay(make_daemon, dns, keys, receiver, workers=1)
    body = {"envelope_sender": "a@example.test", "recipients": [{"email": "you@rcpt.test"}],
            "content": "To: you@rcpt.test\r\nSubject: x\r\n\r\nhi\r\n", "template_dialect": "Static"}
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=30)
    conn.request("POST", "/api/inject/v1", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 400
    assert answer["fail_count"] == 1 and answer["failed_recipients"] == ["you@rcpt.test"]
    assert "552 5.6.0 DKIM signing requires exactly one From header" in json.dumps(answer["errors"])
