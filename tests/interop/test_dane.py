"""DANE on the real daemon: a validating unbound serves signed MX, A and TLSA records, aiosmtpd receivers offer STARTTLS.

The zones (tests/unbound_dnssec.py) are signed with ldns-signzone and validated by
unbound from one root trust anchor; the receivers' certificates are made here, so
the TLSA records can name them, or not. What is checked is what an operator sees:
the message at the receiver (over TLS) or not, and the Delivery / TransientFailure
records with their `dane` field and response.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
import threading
import time
import urllib.request

import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization

from tests.dnsmasq import Dnsmasq
from tests.services.test_smtp_client_dane import make
from tests.unbound_dnssec import Signing, Zone, unbound  # noqa: F401  (unbound is the fixture)

from .conftest import free_port

CA, CA_KEY = make("DANE Interop CA", ca=True)
EE, EE_KEY = make("anything", names=("not-the-mx.example",))  # DANE-EE: names do not matter
OTHER, OTHER_KEY = make("mx-bad.dane.test", names=("mx-bad.dane.test",))  # not in the TLSA records
TA_LEAF, TA_LEAF_KEY = make("mx-ta.dane.test", "DANE Interop CA", CA_KEY, ("mx-ta.dane.test",))
INSEC, INSEC_KEY = make("mx.insec.test", names=("mx.insec.test",))


def spki_sha256(certificate) -> str:
    return hashlib.sha256(certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def cert_sha256(certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


# The receivers' port; TLSA records are at _PORT._tcp.HOST for the port connected to (RFC 7672 section 2.2.3).
MX_PORT = free_port("127.0.0.61")
T = f"_{MX_PORT}._tcp"
UNBOUND_ZONES = [
    Zone("dane.test", [
        "ee IN MX 10 mx-ee", "mx-ee IN A 127.0.0.61", f"{T}.mx-ee IN TLSA 3 1 1 {spki_sha256(EE)}",
        "ta IN MX 10 mx-ta", "mx-ta IN A 127.0.0.62", f"{T}.mx-ta IN TLSA 2 0 1 {cert_sha256(CA)}",
        # mx-bad presents OTHER, its records name EE's key
        "mismatch IN MX 10 mx-bad", "mx-bad IN A 127.0.0.63", f"{T}.mx-bad IN TLSA 3 1 1 {spki_sha256(EE)}",
        "two IN MX 10 mx-bad", "two IN MX 20 mx-ee",
        "pkix IN MX 10 mx-pkix", "mx-pkix IN A 127.0.0.64", f"{T}.mx-pkix IN TLSA 1 1 1 {spki_sha256(OTHER)}",
        "badtlsa IN MX 10 mx1.badtlsa.test.",
        "notlsa IN MX 10 mx-notlsa", "mx-notlsa IN A 127.0.0.61",  # signed, no TLSA records (the ee receiver)
    ]),
    Zone("badtlsa.test", ["mx1 IN A 127.0.0.65", f"{T}.mx1 IN TLSA 3 1 1 {spki_sha256(EE)}"], Signing.BOGUS,
         bogus_types=("TLSA",)),
    Zone("bogus.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.66"], Signing.BOGUS),
    Zone("insec.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.67", f"{T}.mx IN TLSA 3 1 1 {spki_sha256(EE)}"],
         Signing.UNSIGNED),
]

RECEIVERS = {  # name: (address, certificate, key, chain)
    "ee": ("127.0.0.61", EE, EE_KEY, ()),
    "ta": ("127.0.0.62", TA_LEAF, TA_LEAF_KEY, (CA,)),
    "bad": ("127.0.0.63", OTHER, OTHER_KEY, ()),
    "pkix": ("127.0.0.64", OTHER, OTHER_KEY, ()),
    "badtlsa": ("127.0.0.65", EE, EE_KEY, ()),
    "bogus": ("127.0.0.66", EE, EE_KEY, ()),
    "insec": ("127.0.0.67", INSEC, INSEC_KEY, ()),
}


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append({"recipients": list(envelope.rcpt_tos), "tls": session.ssl is not None})
        return "250 2.0.0 accepted"


@pytest.fixture(scope="module")
def mx_port():
    return MX_PORT


@pytest.fixture(scope="module")
def receivers(mx_port, tmp_path_factory):
    directory = tmp_path_factory.mktemp("dane-certs")
    handlers, controllers = {}, []
    for name, (address, certificate, key, chain) in RECEIVERS.items():
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
        cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certificate, *chain)))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        handlers[name] = Recorder()
        controller = Controller(handlers[name], hostname=address, port=mx_port, tls_context=context)
        controller.start()
        controllers.append(controller)
    yield handlers
    for controller in controllers:
        controller.stop()


@pytest.fixture
def relay(make_daemon, unbound, mx_port):
    return make_daemon(
        dns=f'nameservers = ["{unbound.nameserver}"]\ntimeout = "5s"',
        extra_config=f"""
[queues]
retry_interval = "2s"
[egress.default]
smtp_port = {mx_port}
prohibited_hosts = []
enable_tls = "OpportunisticInsecure"  # any certificate would do, but not under DANE
enable_dane = true
idle_timeout = "2s"
""",
    ).start()


def wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def tlsa_sessions(relay, result: str) -> float:
    """The daemon's count of DANE sessions with `result` ("success" or an RFC 8460 result type), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = f'trimta_tls_policy_sessions_total{{policy_type="tlsa",result="{result}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


def dane_results(relay) -> dict[str, float]:
    """KumoMTA's dane_result_count, by result, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith('dane_result_count{result="'):
            counts[line.split('"')[1]] = float(line.split()[-1])
    assert set(counts) == {"ok", "unusable", "not_applicable", "insecure_chain", "tempfail"}, counts
    return {result: n for result, n in counts.items() if n}  # the ones that happened


def send(relay, *recipients: str) -> None:
    with smtplib.SMTP(relay.host, relay.port, timeout=30) as client:
        client.sendmail("sender@example.com", list(recipients), "Subject: dane\r\n\r\nhello\r\n")


def records_for(relay, kind: str, recipient: str) -> list[dict]:
    return [r for r in relay.records(kind) if r["recipient"] == recipient]


def test_matching_dane_ee_and_dane_ta_receivers_get_the_mail_over_tls(relay, receivers):
    send(relay, "a@ee.dane.test", "b@ta.dane.test")
    wait_for(lambda: len(relay.records("Delivery")) == 2, what="two deliveries")
    assert receivers["ee"].messages == [{"recipients": ["a@ee.dane.test"], "tls": True}]
    assert receivers["ta"].messages == [{"recipients": ["b@ta.dane.test"], "tls": True}]
    deliveries = {r["recipient"]: r for r in relay.records("Delivery")}
    assert deliveries["a@ee.dane.test"]["dane"] == "dane-ee"
    assert deliveries["b@ta.dane.test"]["dane"] == "dane-ta"
    assert tlsa_sessions(relay, "success") >= 2  # reported to the TLS-report sink, counted for metrics
    assert dane_results(relay) == {"ok": 2}  # KumoMTA's metric: one decision per MX host connected to
    # unbound validates from its root anchor, so the start-up check found AD set.
    assert "did not set the AD bit" not in relay.stderr()


def test_a_certificate_matching_no_record_defers_and_only_the_matching_mx_gets_mail(relay, receivers):
    send(relay, "c@mismatch.dane.test", "d@two.dane.test")
    wait_for(lambda: records_for(relay, "Delivery", "d@two.dane.test"), what="delivery via the second MX")
    (failure, *_) = wait_for(lambda: records_for(relay, "TransientFailure", "c@mismatch.dane.test"),
                             what="the mismatch's deferral")
    assert failure["dane"] == "dane-ee"
    assert failure["response"]["code"] == 451
    assert "does not match its TLSA records (no-match" in failure["response"]["content"]
    (delivery,) = records_for(relay, "Delivery", "d@two.dane.test")
    assert delivery["dane"] == "dane-ee" and delivery["peer_address"]["addr"] == "127.0.0.61"
    assert receivers["bad"].messages == []  # neither over TLS nor in plaintext
    assert receivers["ee"].messages[-1] == {"recipients": ["d@two.dane.test"], "tls": True}
    assert records_for(relay, "Delivery", "c@mismatch.dane.test") == []
    assert tlsa_sessions(relay, "validation-failure") >= 1


def test_a_bogus_tlsa_rrset_or_zone_defers_without_delivering(relay, receivers):
    send(relay, "e@badtlsa.dane.test", "f@bogus.test")
    (tlsa, *_) = wait_for(lambda: records_for(relay, "TransientFailure", "e@badtlsa.dane.test"),
                          what="the bogus TLSA deferral")
    (zone, *_) = wait_for(lambda: records_for(relay, "TransientFailure", "f@bogus.test"),
                          what="the bogus zone's deferral")
    assert tlsa["dane"] == "failed"
    assert f"TLSA lookup for {T}.mx1.badtlsa.test failed (SERVFAIL" in tlsa["response"]["content"]
    assert zone["response"]["code"] == 451  # the MX lookup itself fails: a DNS error, retried
    assert receivers["badtlsa"].messages == [] and receivers["bogus"].messages == []
    assert records_for(relay, "Delivery", "e@badtlsa.dane.test") == []
    assert tlsa_sessions(relay, "dnssec-invalid") >= 1
    assert dane_results(relay).get("tempfail", 0) >= 1 and "ok" not in dane_results(relay)


def test_unusable_records_mean_tls_without_authentication_and_unsigned_zones_no_dane(relay, receivers):
    send(relay, "g@pkix.dane.test", "h@insec.test")
    wait_for(lambda: len(relay.records("Delivery")) == 2, what="two deliveries")
    deliveries = {r["recipient"]: r for r in relay.records("Delivery")}
    assert deliveries["g@pkix.dane.test"]["dane"] == "insecure"
    assert tlsa_sessions(relay, "tlsa-invalid") >= 1
    assert receivers["pkix"].messages[-1] == {"recipients": ["g@pkix.dane.test"], "tls": True}
    assert "dane" not in deliveries["h@insec.test"]  # TLSA records, but not DNSSEC-signed
    assert receivers["insec"].messages[-1]["recipients"] == ["h@insec.test"]
    results = dane_results(relay)
    assert results["unusable"] >= 1 and results["insecure_chain"] >= 1 and "ok" not in results


def test_a_signed_host_without_tlsa_records_is_not_applicable_and_gets_the_mail(relay, receivers):
    send(relay, "i@notlsa.dane.test")
    (delivery,) = wait_for(lambda: records_for(relay, "Delivery", "i@notlsa.dane.test"), what="the delivery")
    assert "dane" not in delivery  # DANE does not apply: delivered as enable_tls says
    assert receivers["ee"].messages[-1]["recipients"] == ["i@notlsa.dane.test"]
    assert dane_results(relay) == {"not_applicable": 1}


def test_a_resolver_that_does_not_validate_is_warned_about_at_start(make_daemon, tmp_path):
    server = Dnsmasq(tmp_path / "dnsmasq", ["--host-record=mx.plain.test,127.0.0.70"])
    (tmp_path / "dnsmasq").mkdir()
    server.start()
    try:
        daemon = make_daemon(dns=f'nameservers = ["{server.nameserver}"]\ntimeout = "2s"',
                             extra_config="[egress.default]\nenable_dane = true\n").start()
        wait_for(lambda: "did not set the AD bit" in daemon.stderr(), what="the warning")
        assert daemon.stderr().count("did not set the AD bit") == 1
    finally:
        server.stop()
