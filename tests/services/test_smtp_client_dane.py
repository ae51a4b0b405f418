"""DANE in the outbound connection (RFC 7672): real STARTTLS on loopback, certificates made here, TLSA from a table.

A `ScriptedReceiver` served on 127.0.0.1 presents a chain generated with
`cryptography`; the TLSA answers come from a table (`TableTlsa`), so each test
says exactly what DNSSEC said. What is checked is what the sender observes: a
session or `ConnectionFailed`, the bytes sent in the clear, the `dane` label of the
outcome, and the sessions reported to the TLS-report sink.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import ssl

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trimta.adapters.network import TrioNetworkBackend, tls_context
from trimta.core.dane import DnssecState, TlsaLookup, TlsaRecord
from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.core.tls_report import PolicyType, ResultType, SessionResult
from trimta.services.smtp_client import ConnectionFailed, EgressSource, OutboundConnection
from trimta.testing.network import ScriptedReceiver

SOURCE = EgressSource("lo2", source_address="127.0.0.2", ehlo_domain="lo2.mta.test")
HOST = "mx1.dane.test"
NOW = datetime.datetime.now(datetime.timezone.utc)


def make(subject, issuer=None, issuer_key=None, names=(), *, ca=False, days=30, since_days=1):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=since_days))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


CA, CA_KEY = make("DANE Test CA", ca=True)
LEAF, LEAF_KEY = make(HOST, "DANE Test CA", CA_KEY, (HOST,))
OTHER_NAME, OTHER_NAME_KEY = make("mx9.dane.test", "DANE Test CA", CA_KEY, ("mx9.dane.test",))
SELF, SELF_KEY = make("whatever", names=("unrelated.example",))


def spki_sha256(certificate) -> bytes:
    return hashlib.sha256(certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def cert_sha256(certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


EE_SELF = TlsaRecord(3, 1, 1, spki_sha256(SELF))
TA_CA = TlsaRecord(2, 0, 1, cert_sha256(CA))
PKIX_EE = TlsaRecord(1, 1, 1, spki_sha256(SELF))


def context_for(tmp_path, certificate, key, *chain):
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certificate, *chain))
    cert_file, key_file = tmp_path / f"{id(certificate)}.pem", tmp_path / f"{id(certificate)}.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class TableTlsa:
    """A `TlsaLookups` answering from a table of host -> TlsaLookup."""

    def __init__(self, table):
        self.table = table
        self.asked: list[tuple[str, int]] = []

    async def lookup_tlsa(self, host: str, port: int = 25) -> TlsaLookup:
        await trio.lowlevel.checkpoint()
        self.asked.append((host, port))
        return self.table.get(host, TlsaLookup(host, DnssecState.INSECURE, detail="not in the table"))


class Sink:
    def __init__(self) -> None:
        self.sessions: list[SessionResult] = []

    def session(self, result: SessionResult) -> None:
        self.sessions.append(result)


def secure(*records, host=HOST):
    return TlsaLookup(host, DnssecState.SECURE, tuple(records))


async def attempt(receivers, table, *, policy=TlsPolicy.OPPORTUNISTIC, sink=None, enable_dane=True,
                  contexts=tls_context):
    """Open a connection to `receivers` (host -> ScriptedReceiver), send one message; (outcome or failure, sink)."""
    sink = sink if sink is not None else Sink()
    async with trio.open_nursery() as nursery:
        # One port (the path's smtp_port), one loopback address per receiver.
        targets = []
        port = 0
        for i, (host, receiver) in enumerate(receivers.items()):
            address = "127.0.0.1" if i == 0 else f"127.0.0.{i + 2}"
            listeners = await nursery.start(functools.partial(trio.serve_tcp, receiver.serve, port, host=address))
            port = listeners[0].socket.getsockname()[1]
            targets.append((host, address))
        path = EgressPathConfig(prohibited_hosts=(), smtp_port=port, enable_tls=policy, enable_dane=enable_dane)
        try:
            conn = await OutboundConnection.open(
                TrioNetworkBackend(), targets, source=SOURCE, path=path, hostname="mta.test",
                tls_contexts=contexts, dane=TableTlsa(table), tls_sink=sink, domain="Dane.test",
            )
        except ConnectionFailed as failed:
            nursery.cancel_scope.cancel()
            return failed, sink
        outcome = await conn.send("a@mta.test", "b@dane.test", b"Subject: dane\r\n\r\nhi\r\n")
        await conn.quit()
        nursery.cancel_scope.cancel()
    return outcome, sink


@pytest.fixture
def receivers(tmp_path):
    def receiver(certificate, key, *chain, host=HOST, starttls=True):
        context = context_for(tmp_path, certificate, key, *chain) if starttls else None
        return ScriptedReceiver(host, ssl_context=context)
    return receiver


async def test_dane_ee_match_delivers_over_tls_and_is_reported(receivers):
    receiver = receivers(SELF, SELF_KEY)
    with trio.fail_after(30):
        outcome, sink = await attempt({HOST: receiver}, {HOST: secure(EE_SELF)})
    assert outcome.delivered and outcome.dane == "dane-ee", outcome
    assert receiver.messages[0].tls_version is not None
    (session,) = sink.sessions
    assert session.succeeded and session.policy.policy_type is PolicyType.TLSA
    assert session.policy.policy_domain == "dane.test" and session.receiving_mx_hostname == HOST
    assert session.policy.policy_strings == (f"3 1 1 {EE_SELF.data.hex()}",)


async def test_dane_ta_match_needs_the_name_and_the_signature(receivers):
    with trio.fail_after(30):
        good, _ = await attempt({HOST: receivers(LEAF, LEAF_KEY, CA)}, {HOST: secure(TA_CA)})
        wrong_name, sink = await attempt({HOST: receivers(OTHER_NAME, OTHER_NAME_KEY, CA)}, {HOST: secure(TA_CA)})
    assert good.delivered and good.dane == "dane-ta", good
    assert isinstance(wrong_name, ConnectionFailed)
    assert "name-mismatch" in str(wrong_name.outcome.reply) and wrong_name.outcome.dane == "dane-ta"
    assert [s.result for s in sink.sessions] == [ResultType.CERTIFICATE_HOST_MISMATCH]


async def test_a_forged_leaf_naming_the_anchor_as_issuer_fails(receivers):
    forged, forged_key = make(HOST, "DANE Test CA", None, (HOST,))  # signed by its own key
    with trio.fail_after(30):
        failed, sink = await attempt({HOST: receivers(forged, forged_key, CA)}, {HOST: secure(TA_CA)})
    assert isinstance(failed, ConnectionFailed) and "chain-invalid" in str(failed.outcome.reply)
    assert [s.result for s in sink.sessions] == [ResultType.CERTIFICATE_NOT_TRUSTED]


async def test_an_expired_certificate_under_dane_ta_is_reported_as_expired(receivers):
    expired, expired_key = make(HOST, "DANE Test CA", CA_KEY, (HOST,), since_days=60, days=-30)
    with trio.fail_after(30):
        failed, sink = await attempt({HOST: receivers(expired, expired_key, CA)}, {HOST: secure(TA_CA)})
    assert isinstance(failed, ConnectionFailed)
    assert "outside its validity dates" in str(failed.outcome.reply)
    assert [s.result for s in sink.sessions] == [ResultType.CERTIFICATE_EXPIRED]


async def test_a_mismatch_skips_the_host_and_never_falls_back_to_plaintext(receivers):
    bad = receivers(LEAF, LEAF_KEY, CA)
    good = receivers(SELF, SELF_KEY, host="mx2.dane.test")
    table = {HOST: secure(EE_SELF), "mx2.dane.test": secure(EE_SELF, host="mx2.dane.test")}
    with trio.fail_after(30):
        outcome, sink = await attempt({HOST: bad, "mx2.dane.test": good}, table)
    assert outcome.delivered and outcome.peer_host == "mx2.dane.test"
    assert bad.messages == [] and len(good.messages) == 1
    # The mismatching host got STARTTLS and the handshake, nothing else: no EHLO inside, no MAIL.
    assert bytes(bad.connections[0].client_bytes).count(b"EHLO") == 1
    assert [s.result for s in sink.sessions] == [ResultType.VALIDATION_FAILURE, None]


async def test_dane_beats_opportunistic_reconnect_and_required_verified_tls(receivers):
    """Required (verified against the system CAs) would refuse SELF; DANE-EE accepts it.
    opportunistic_tls_reconnect_on_failed_handshake would go plaintext; DANE does not."""
    with trio.fail_after(30):
        required, _ = await attempt({HOST: receivers(SELF, SELF_KEY)}, {HOST: secure(EE_SELF)},
                                    policy=TlsPolicy.REQUIRED)
    assert required.delivered and required.dane == "dane-ee"
    receiver = receivers(LEAF, LEAF_KEY, CA)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, receiver.serve, 0, host="127.0.0.1"))
        path = EgressPathConfig(prohibited_hosts=(), smtp_port=listeners[0].socket.getsockname()[1],
                                enable_dane=True, opportunistic_tls_reconnect_on_failed_handshake=True)
        with pytest.raises(ConnectionFailed):
            await OutboundConnection.open(TrioNetworkBackend(), [(HOST, "127.0.0.1")], source=SOURCE, path=path,
                                          hostname="mta.test", dane=TableTlsa({HOST: secure(EE_SELF)}))
        nursery.cancel_scope.cancel()
    assert len(receiver.connections) == 1 and receiver.messages == []


async def test_no_starttls_under_dane_fails_the_host(receivers):
    with trio.fail_after(30):
        failed, sink = await attempt({HOST: receivers(SELF, SELF_KEY, starttls=False)}, {HOST: secure(EE_SELF)})
    assert isinstance(failed, ConnectionFailed)
    assert "DANE" in str(failed.outcome.reply) and "does not offer STARTTLS" in str(failed.outcome.reply)
    assert [s.result for s in sink.sessions] == [ResultType.STARTTLS_NOT_SUPPORTED]


async def test_only_unusable_records_means_tls_without_authentication(receivers):
    with trio.fail_after(30):
        outcome, sink = await attempt({HOST: receivers(LEAF, LEAF_KEY, CA)}, {HOST: secure(PKIX_EE)})
        plain, _ = await attempt({HOST: receivers(LEAF, LEAF_KEY, CA, starttls=False)}, {HOST: secure(PKIX_EE)})
    assert outcome.delivered and outcome.dane == "insecure"
    assert [s.result for s in sink.sessions] == [ResultType.TLSA_INVALID]
    assert isinstance(plain, ConnectionFailed)  # TLS is still required


async def test_a_failed_tlsa_lookup_defers_without_connecting(receivers):
    receiver = receivers(SELF, SELF_KEY)
    failed_lookup = TlsaLookup(HOST, DnssecState.FAILED, detail="TLSA lookup for _25._tcp.mx1.dane.test failed")
    with trio.fail_after(30):
        failed, sink = await attempt({HOST: receiver}, {HOST: failed_lookup})
    assert isinstance(failed, ConnectionFailed) and failed.outcome.transient
    assert failed.outcome.dane == "failed" and "TLSA lookup" in str(failed.outcome.reply)
    assert receiver.connections == []
    assert [s.result for s in sink.sessions] == [ResultType.DNSSEC_INVALID]


async def test_insecure_hosts_and_enable_dane_off_deliver_as_the_path_says(receivers):
    with trio.fail_after(30):
        insecure, sink = await attempt({HOST: receivers(SELF, SELF_KEY, starttls=False)},
                                       {HOST: TlsaLookup(HOST, DnssecState.INSECURE)})
        off, _ = await attempt({HOST: receivers(SELF, SELF_KEY, starttls=False)},
                               {HOST: TlsaLookup(HOST, DnssecState.FAILED)}, enable_dane=False)
    assert insecure.delivered and insecure.dane is None and sink.sessions == []
    assert off.delivered and off.dane is None


async def test_auth_plain_goes_over_a_dane_authenticated_session_but_not_an_unauthenticated_one(receivers):
    from trimta.core.egress import KeySource

    def auth_receiver(certificate, key):
        receiver = receivers(certificate, key)
        receiver.auth = {"daniel": "tiger"}
        return receiver

    async def login(receiver, records):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, receiver.serve, 0, host="127.0.0.1"))
            path = EgressPathConfig(prohibited_hosts=(), smtp_port=listeners[0].socket.getsockname()[1],
                                    enable_dane=True, smtp_auth_plain_username="daniel",
                                    smtp_auth_plain_password=KeySource(data="tiger"))
            try:
                conn = await OutboundConnection.open(
                    TrioNetworkBackend(), [(HOST, "127.0.0.1")], source=SOURCE, path=path, hostname="mta.test",
                    dane=TableTlsa({HOST: secure(*records)}))
                await conn.quit()
                return None
            except ConnectionFailed as failed:
                return failed
            finally:
                nursery.cancel_scope.cancel()

    authenticated, unauthenticated = auth_receiver(SELF, SELF_KEY), auth_receiver(SELF, SELF_KEY)
    with trio.fail_after(30):
        assert await login(authenticated, [EE_SELF]) is None
        refused = await login(unauthenticated, [PKIX_EE])
    assert authenticated.connections[0].auth_user == "daniel"
    assert refused is not None and "certificate was not verified" in str(refused.outcome.reply)
    assert unauthenticated.connections[0].auth_user is None


def test_a_host_under_dane_is_not_reported_again_as_an_mta_sts_session():
    """DANE takes precedence over MTA-STS for a host (RFC 8461 section 2): its sessions are DANE's."""
    from types import SimpleNamespace

    from trimta.core.mta_sts import MtaStsPolicy, StsApplied, parse_policy
    from trimta.protocol.replies import reply
    from trimta.services.mta_sts_sessions import StsQueueState
    from trimta.services.smtp_client import TargetFailure

    policy = parse_policy("version: STSv1\nmode: enforce\nmx: *.dane.test\nmax_age: 86400\n")
    assert isinstance(policy, MtaStsPolicy)
    state, sink = StsQueueState(), Sink()
    state.note("dane.test", StsApplied("dane.test", policy, "id1"))
    path = EgressPathConfig(enable_tls=TlsPolicy.REQUIRED)
    tls_failure = TargetFailure(HOST, "127.0.0.1", reply(451, "4.7.5", "TLS with x failed: no"), "STARTTLS", True,
                                True)
    under_dane = dataclasses.replace(tls_failure, dane="dane-ee")
    conn = SimpleNamespace(peer_host=HOST, peer_address="127.0.0.1", tls_version="TLSv1.3", dane="dane-ee",
                           skipped=(under_dane, tls_failure))
    state.opened("dane.test", conn, path, sink)
    assert [s.receiving_mx_hostname for s in sink.sessions] == [HOST]  # the failure not under DANE, only
    assert len(sink.sessions) == 1 and not sink.sessions[0].succeeded
    plain = SimpleNamespace(peer_host=HOST, peer_address="127.0.0.1", tls_version="TLSv1.3", dane=None, skipped=())
    state.opened("dane.test", plain, path, sink)
    assert len(sink.sessions) == 2 and sink.sessions[1].succeeded


async def test_dane_ta_accepts_the_cname_target_as_a_reference_name(receivers):
    alias = "alias.dane.test"
    behind_cname = TlsaLookup(alias, DnssecState.SECURE, (TA_CA,), base_domain=HOST)
    without = TlsaLookup(alias, DnssecState.SECURE, (TA_CA,))
    with trio.fail_after(30):
        ok, _ = await attempt({alias: receivers(LEAF, LEAF_KEY, CA, host=alias)}, {alias: behind_cname})
        failed, _ = await attempt({alias: receivers(LEAF, LEAF_KEY, CA, host=alias)}, {alias: without})
    assert ok.delivered and ok.dane == "dane-ta"
    assert isinstance(failed, ConnectionFailed) and "name-mismatch" in str(failed.outcome.reply)
