"""Client certificates and OpenSSL settings on outbound TLS (KumoMTA's ``tls_certificate``,
``tls_private_key``, ``openssl_cipher_list``, ``openssl_options``), against aiosmtpd
receivers that ask for a client certificate: what is checked is what the receiver saw
(the certificate trimta presented, the TLS version and cipher) and the records.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization

from tests.dnsmasq import Dnsmasq
from tests.services.test_smtp_client_dane import make

from .conftest import free_port

CA, CA_KEY = make("Client TLS Test CA", ca=True)
CLIENT, CLIENT_KEY = make("mta.sender.test", "Client TLS Test CA", CA_KEY, ("mta.sender.test",))
SERVER, SERVER_KEY = make("mx.ctls.test", names=("mx.ctls.test",))
MX_PORT = free_port("127.0.0.41")


def pem(certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Recorder:
    def __init__(self) -> None:
        self.sessions: list[dict] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        tls = session.ssl or {}
        ssl_object = tls.get("ssl_object")
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        subject = dict(item for rdn in peer["subject"] for item in rdn) if peer else None
        with self.lock:
            self.sessions.append({"recipients": list(envelope.rcpt_tos), "client_cn": (subject or {}).get("commonName"),
                                  "version": ssl_object.version() if ssl_object else None,
                                  "cipher": ssl_object.cipher()[0] if ssl_object else None})
        return "250 2.0.0 accepted"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    directory = tmp_path_factory.mktemp("client-tls")
    (directory / "server.pem").write_bytes(pem(SERVER))
    (directory / "server.key").write_bytes(key_pem(SERVER_KEY))
    (directory / "ca.pem").write_bytes(pem(CA))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    context.load_verify_locations(directory / "ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL  # a client without a certificate is let in, and seen to be
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.41", port=MX_PORT, tls_context=context)
    controller.start()
    yield recorder
    controller.stop()


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    directory = tmp_path_factory.mktemp("client-tls-dns")
    # One MX host name per domain: four sites, four ready queues, each with its domain's settings.
    domains = ("cert", "tls12", "broken", "none")
    server = Dnsmasq(directory, [f"--host-record=mx-{d}.ctls.test,127.0.0.41" for d in domains]
                     + [f"--mx-host={d}.ctls.test,mx-{d}.ctls.test,10" for d in domains])
    server.start()
    yield server
    server.stop()


def relay(make_daemon, dns, tmp_path):
    (tmp_path / "client.pem").write_bytes(pem(CLIENT))
    (tmp_path / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key = key_pem(CLIENT_KEY).decode()
    return make_daemon(dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"', extra_config=f"""
[queues]
retry_interval = "1h"
[egress.default]
smtp_port = {MX_PORT}
prohibited_hosts = []
enable_tls = "RequiredInsecure"
[egress.domains."cert.ctls.test"]
tls_certificate = "{tmp_path / 'client.pem'}"
tls_private_key = {{ key_data = \"\"\"{key}\"\"\" }}
[egress.domains."tls12.ctls.test"]
tls_certificate = "{tmp_path / 'client.pem'}"
tls_private_key = {{ key_data = \"\"\"{key}\"\"\" }}
openssl_options = "NO_TLSV1_3|NO_TICKET"
openssl_cipher_list = "ECDHE-ECDSA-AES128-GCM-SHA256"
[egress.domains."broken.ctls.test"]
tls_certificate = "{tmp_path / 'broken.pem'}"
""").start()


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_client_certificate_and_openssl_settings_reach_the_receiver(make_daemon, dns, receiver, tmp_path):
    daemon = relay(make_daemon, dns, tmp_path)
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        for recipient in ("a@cert.ctls.test", "b@tls12.ctls.test", "c@none.ctls.test"):
            client.sendmail("s@example.com", [recipient], "Subject: client tls\r\n\r\nhello\r\n")
    deliveries = wait_for(lambda: len(daemon.records("Delivery")) == 3 and daemon.records("Delivery"), "3 deliveries")
    seen = {s["recipients"][0]: s for s in receiver.sessions}
    assert seen["a@cert.ctls.test"]["client_cn"] == "mta.sender.test"  # verified by the receiver against its CA
    assert seen["a@cert.ctls.test"]["version"] == "TLSv1.3"
    assert seen["b@tls12.ctls.test"] == {"recipients": ["b@tls12.ctls.test"], "client_cn": "mta.sender.test",
                                         "version": "TLSv1.2", "cipher": "ECDHE-ECDSA-AES128-GCM-SHA256"}
    assert seen["c@none.ctls.test"]["client_cn"] is None  # no certificate where none is configured
    by_recipient = {r["recipient"]: r for r in deliveries}
    assert by_recipient["b@tls12.ctls.test"]["tls_protocol_version"] == "TLSv1.2"
    assert by_recipient["b@tls12.ctls.test"]["tls_cipher"] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_a_certificate_that_does_not_load_defers_before_starttls_and_says_which_setting(make_daemon, dns, receiver,
                                                                                       tmp_path):
    daemon = relay(make_daemon, dns, tmp_path)
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.sendmail("s@example.com", ["d@broken.ctls.test"], "Subject: client tls\r\n\r\nhello\r\n")
    (failure, *_) = wait_for(lambda: daemon.records("TransientFailure"), "the deferral")
    assert failure["response"]["code"] == 451
    assert "not attempted: tls_certificate (" in failure["response"]["content"]
    assert "broken.pem" in failure["response"]["content"] and "do not load" in failure["response"]["content"]
    assert all(s["recipients"] != ["d@broken.ctls.test"] for s in receiver.sessions)
    assert "Traceback" not in daemon.stderr()
