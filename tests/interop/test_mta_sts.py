"""MTA-STS on the real daemon: dnsmasq publishes ``_mta-sts`` TXT records, a local HTTPS
server on 127.0.0.20:443 serves the policies, aiosmtpd receivers offer STARTTLS with a valid
certificate, with a certificate for another name, or not at all. Every certificate comes from
a test CA made here; the daemon trusts it through ``SSL_CERT_FILE``.

| domain | policy | MX hosts (preference) |
|---|---|---|
| enf.test | enforce, mx1.enf.test | backup.other.test (5, valid TLS, not listed), mx1.enf.test (10, valid TLS) |
| bad.test | enforce, *.enf.test | mx2.enf.test (10, no STARTTLS), mx3.enf.test (20, wrong-name certificate) |
| tst.test | testing, mx1.enf.test | mx2.enf.test (10, no STARTTLS) |
| web.test | TXT only: its policy host's certificate does not name mta-sts.web.test | mx2.enf.test (10, no STARTTLS) |
"""

from __future__ import annotations

import datetime
import http.server
import json
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.dnsmasq import Dnsmasq

from .conftest import free_port

POLICY_HOST = "127.0.0.20"
RECEIVERS = {
    "mx1.enf.test": "127.0.0.21",  # STARTTLS, valid certificate
    "mx2.enf.test": "127.0.0.22",  # no STARTTLS
    "mx3.enf.test": "127.0.0.23",  # STARTTLS, certificate for another name
    "backup.other.test": "127.0.0.24",  # STARTTLS, valid certificate, listed by no policy
}
POLICIES = {
    "mta-sts.enf.test": "version: STSv1\nmode: enforce\nmx: mx1.enf.test\nmax_age: 86400\n",
    "mta-sts.bad.test": "version: STSv1\nmode: enforce\nmx: *.enf.test\nmax_age: 86400\n",
    "mta-sts.tst.test": "version: STSv1\nmode: testing\nmx: mx1.enf.test\nmax_age: 86400\n",
}
ZONE = [
    "--mx-host=enf.test,backup.other.test,5",
    "--mx-host=enf.test,mx1.enf.test,10",
    "--mx-host=bad.test,mx2.enf.test,10",
    "--mx-host=bad.test,mx3.enf.test,20",
    "--mx-host=tst.test,mx2.enf.test,10",
    *[f"--host-record={name},{address}" for name, address in RECEIVERS.items()],
    *[f"--host-record={name},{POLICY_HOST}" for name in POLICIES],
    "--txt-record=_mta-sts.enf.test,v=STSv1; id=20261203",
    "--txt-record=_mta-sts.bad.test,v=STSv1; id=1",
    "--txt-record=_mta-sts.tst.test,v=STSv1; id=1",
    "--mx-host=web.test,mx2.enf.test,10",
    f"--host-record=mta-sts.web.test,{POLICY_HOST}",
    "--txt-record=_mta-sts.web.test,v=STSv1; id=1",
]


# --- a test CA ------------------------------------------------------------------------------


class MiniCa:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trimta MTA-STS test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / f"{names[0]}.pem", self.directory / f"{names[0]}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def server_context(self, *names: str) -> ssl.SSLContext:
        cert, key = self.issue(*names)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        return context


# --- the policy host --------------------------------------------------------------------------


class PolicyServer:
    """HTTPS on 127.0.0.20:443 answering /.well-known/mta-sts.txt by Host; `stop` makes it unreachable."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.requests: list[str] = []
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                owner.requests.append(f"{host}{self.path}")
                body = POLICIES.get(host)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer((POLICY_HOST, 443), Handler)
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        self.server = server
        threading.Thread(target=server.serve_forever, name="mta-sts-policy-host", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# --- receivers --------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append({"recipients": list(envelope.rcpt_tos), "tls": session.ssl is not None})
        return "250 2.0.0 accepted"


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> MiniCa:
    return MiniCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def policy_host(ca):
    server = PolicyServer(ca.server_context(*POLICIES))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mx_port() -> int:
    return free_port("127.0.0.21")


@pytest.fixture
def receivers(ca, mx_port):
    tls = {
        "mx1.enf.test": ca.server_context("mx1.enf.test"),
        "mx2.enf.test": None,
        "mx3.enf.test": ca.server_context("mail.elsewhere.test"),
        "backup.other.test": ca.server_context("backup.other.test"),
    }
    handlers = {name: Recorder() for name in RECEIVERS}
    controllers = []
    for name, address in RECEIVERS.items():
        kwargs = {"tls_context": tls[name]} if tls[name] is not None else {}
        controller = Controller(handlers[name], hostname=address, port=mx_port, server_hostname=name, **kwargs)
        controller.start()
        controllers.append(controller)
    yield handlers
    for controller in controllers:
        controller.stop()


@pytest.fixture
def relay(make_daemon, dns, mx_port, ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.path))  # the daemon's only trust anchor
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return make_daemon(
        dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"',
        extra_config=f"""
[queues]
retry_interval = "2s"
[egress.default]
smtp_port = {mx_port}
prohibited_hosts = []
idle_timeout = "1s"
""",
    )


def send(daemon, *recipients: str) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.sendmail("sender@example.com", list(recipients), "Subject: sts\r\n\r\nhello\r\n")


def wait_for(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def records_to(daemon, kind: str, recipient: str) -> list[dict]:
    return [r for r in daemon.records(kind) if r["recipient"] == recipient]


def test_enforce_delivers_only_over_valid_tls_to_listed_mx_hosts(relay, policy_host, receivers):
    daemon = relay.start()
    send(daemon, "ann@enf.test")
    [delivery] = wait_for(lambda: records_to(daemon, "Delivery", "ann@enf.test"), "the delivery")
    assert delivery["mta_sts"] == "enforce"
    assert delivery["site_name"] == "mx1.enf.test"  # the policy's hosts, not backup.other.test's
    assert delivery["peer_address"]["name"] == "mx1.enf.test"
    assert receivers["mx1.enf.test"].messages == [{"recipients": ["ann@enf.test"], "tls": True}]
    assert receivers["backup.other.test"].messages == []  # preferred, but not in the policy
    assert "mta-sts.enf.test/.well-known/mta-sts.txt" in policy_host.requests


def test_enforce_defers_without_starttls_or_with_a_wrong_name_certificate(relay, policy_host, receivers):
    daemon = relay.start()
    send(daemon, "bob@bad.test")
    failure = wait_for(lambda: records_to(daemon, "TransientFailure", "bob@bad.test"), "a deferral")[0]
    assert failure["mta_sts"] == "enforce"
    text = failure["response"]["content"]
    assert "MTA-STS policy of bad.test is enforce" in text
    assert failure["response"]["code"] == 451
    wait_for(lambda: "mx3.enf.test" in daemon.stderr() and "certificate-host-mismatch" in daemon.stderr(),
             "the wrong-name certificate in the log")
    assert "starttls-not-supported" in daemon.stderr()
    assert receivers["mx2.enf.test"].messages == [] and receivers["mx3.enf.test"].messages == []
    assert daemon.records("Bounce") == [] and daemon.records("Delivery") == []


def test_testing_delivers_as_the_shaping_says_and_reports_the_failure(relay, policy_host, receivers):
    daemon = relay.start()
    send(daemon, "cid@tst.test")
    [delivery] = wait_for(lambda: records_to(daemon, "Delivery", "cid@tst.test"), "the delivery")
    assert delivery["mta_sts"] == "testing"
    assert receivers["mx2.enf.test"].messages == [{"recipients": ["cid@tst.test"], "tls": False}]
    wait_for(lambda: "sts tst.test testing mx2.enf.test" in daemon.stderr(), "the reported failure")
    assert "starttls-not-supported" in daemon.stderr()


def test_a_cached_policy_survives_a_restart_and_an_unreachable_policy_host(relay, policy_host, receivers):
    daemon = relay.start()
    send(daemon, "dan@enf.test")
    wait_for(lambda: records_to(daemon, "Delivery", "dan@enf.test"), "the first delivery")
    assert daemon.stop() == 0
    policy_host.stop()  # from now on mta-sts.enf.test refuses connections
    fetched = len(policy_host.requests)

    daemon.start()
    send(daemon, "eve@enf.test")
    [delivery] = wait_for(lambda: records_to(daemon, "Delivery", "eve@enf.test"), "the delivery after restart")
    assert delivery["mta_sts"] == "enforce" and delivery["site_name"] == "mx1.enf.test"
    assert [m["recipients"] for m in receivers["mx1.enf.test"].messages] == [["dan@enf.test"], ["eve@enf.test"]]
    assert receivers["backup.other.test"].messages == []
    assert len(policy_host.requests) == fetched


def test_a_policy_host_with_an_invalid_certificate_means_no_policy_and_is_reported(relay, policy_host, receivers):
    daemon = relay.start()
    send(daemon, "fay@web.test")
    [delivery] = wait_for(lambda: records_to(daemon, "Delivery", "fay@web.test"), "the delivery")
    assert "mta_sts" not in delivery  # RFC 8461 section 5.1: as though the domain had no policy
    assert receivers["mx2.enf.test"].messages == [{"recipients": ["fay@web.test"], "tls": False}]
    wait_for(lambda: "sts-webpki-invalid" in daemon.stderr(), "the reported fetch failure")
    assert "MTA-STS policy of web.test: fetch failed" in daemon.stderr()


def resolve_site(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trimta", "resolve-site", "--config", str(daemon.config_path), *args],
                          cwd=daemon.directory, capture_output=True, text=True, timeout=120)


def test_resolve_site_shows_the_policy_that_applies_and_why(relay, policy_host, receivers):
    shown = resolve_site(relay, "enf.test", "tst.test", "web.test")
    assert shown.returncode == 0, shown.stderr
    enf, tst, web = shown.stdout.split("\n\n")
    assert "site: mx1.enf.test" in enf
    assert "mta-sts: enforce (id 20261203, mx mx1.enf.test, max_age 86400s; fetched, expires 20" in enf
    assert "mta-sts: not used, not in the policy: backup.other.test" in enf
    assert "mta-sts: testing" in tst and "would not be used under enforce, not in the policy: mx2.enf.test" in tst
    assert "mta-sts: no policy (policy fetch failed" in web and "certificate not valid" in web

    # The daemon's cache, read by resolve-site while the policy host is down.
    daemon = relay.start()
    send(daemon, "gus@enf.test")
    wait_for(lambda: records_to(daemon, "Delivery", "gus@enf.test"), "the delivery")
    policy_host.stop()
    shown = resolve_site(relay, "--json", "enf.test")
    [row] = json.loads(shown.stdout)
    assert row["site"] == "mx1.enf.test"
    assert row["mta_sts"]["mode"] == "enforce" and row["mta_sts"]["how"] == "cached"
    assert row["mta_sts"]["excluded"] == ["backup.other.test"]
    assert row["mta_sts"]["expires"] > time.time() + 86400 - 600  # max_age after the fetch
