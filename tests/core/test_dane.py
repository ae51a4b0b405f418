"""DANE TLSA matching (RFC 7672) against certificates generated here with `cryptography`."""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from trimta.adapters.certificates import issued_by_at, presented_certificate
from trimta.core.dane import (
    DaneDecision,
    DnssecState,
    TlsaLookup,
    TlsaRecord,
    Verdict,
    check,
    decide,
    name_matches,
    policy_label,
    presentation,
    result_name,
)

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def make_certificate(subject, issuer=None, issuer_key=None, dns_names=(), *, ca=False, expired=False):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=30 if not expired else 400))
        .not_valid_after(NOW + datetime.timedelta(days=30) if not expired else NOW - datetime.timedelta(days=300))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), False)
    certificate = builder.sign(issuer_key or key, hashes.SHA256())
    return certificate, key


def der(certificate):
    return certificate.public_bytes(Encoding.DER)


def spki(certificate):
    return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


CA, CA_KEY = make_certificate("Test CA", ca=True)
LEAF, _ = make_certificate("mx.example.net", "Test CA", CA_KEY, ("mx.example.net",))
WILDCARD_LEAF, _ = make_certificate("wild", "Test CA", CA_KEY, ("*.example.net",))
SELF_SIGNED_ELSEWHERE, _ = make_certificate("x", dns_names=("unrelated.example.org",), expired=True)
OTHER, _ = make_certificate("other", dns_names=("mx.example.net",))


def chain(*certificates):
    presented = [presented_certificate(der(c)) for c in certificates]
    assert None not in presented
    return presented


def test_dane_ee_matches_the_server_certificate_in_every_form():
    for selector, data in [(0, der(LEAF)), (1, spki(LEAF))]:
        for mtype, digest in [(0, data), (1, hashlib.sha256(data).digest()), (2, hashlib.sha512(data).digest())]:
            result = check([TlsaRecord(3, selector, mtype, digest)], chain(LEAF, CA), ["mx.example.net"])
            assert result.verdict is Verdict.MATCHED, (selector, mtype)


def test_dane_ee_checks_neither_names_nor_expiry():
    record = TlsaRecord(3, 1, 1, hashlib.sha256(spki(SELF_SIGNED_ELSEWHERE)).digest())
    assert check([record], chain(SELF_SIGNED_ELSEWHERE), ["mx.example.net"]).verdict is Verdict.MATCHED


def test_dane_ee_of_another_key_does_not_match():
    record = TlsaRecord(3, 1, 1, hashlib.sha256(spki(OTHER)).digest())
    assert check([record], chain(LEAF, CA), ["mx.example.net"]).verdict is Verdict.NO_MATCH


def test_dane_ee_only_matches_the_first_certificate():
    record = TlsaRecord(3, 0, 1, hashlib.sha256(der(CA)).digest())
    assert check([record], chain(LEAF, CA), ["mx.example.net"]).verdict is Verdict.NO_MATCH


def test_dane_ta_matches_an_issuer_in_the_chain_when_the_name_matches():
    record = TlsaRecord(2, 0, 1, hashlib.sha256(der(CA)).digest())
    assert check([record], chain(LEAF, CA), ["mx.example.net"]).verdict is Verdict.MATCHED
    assert check([record], chain(LEAF, CA), ["tlsa-base.example", "MX.example.net."]).verdict is Verdict.MATCHED
    assert check([record], chain(LEAF, CA), ["mx2.example.net"]).verdict is Verdict.NAME_MISMATCH


def test_dane_ta_needs_the_anchor_in_the_chain():
    record = TlsaRecord(2, 1, 2, hashlib.sha512(spki(CA)).digest())
    assert check([record], chain(LEAF), ["mx.example.net"]).verdict is Verdict.NO_MATCH
    assert check([record], chain(LEAF, CA), ["mx.example.net"]).verdict is Verdict.MATCHED


def test_dane_ta_wildcard_covers_one_label():
    record = TlsaRecord(2, 1, 1, hashlib.sha256(spki(CA)).digest())
    assert check([record], chain(WILDCARD_LEAF, CA), ["mx7.example.net"]).verdict is Verdict.MATCHED
    assert check([record], chain(WILDCARD_LEAF, CA), ["example.net"]).verdict is Verdict.NAME_MISMATCH
    assert check([record], chain(WILDCARD_LEAF, CA), ["a.b.example.net"]).verdict is Verdict.NAME_MISMATCH


def test_pkix_usages_and_unknown_parameters_are_unusable_even_when_they_match():
    digest = hashlib.sha256(der(LEAF)).digest()
    records = [
        TlsaRecord(0, 0, 1, hashlib.sha256(der(CA)).digest()),
        TlsaRecord(1, 0, 1, digest),
        TlsaRecord(4, 0, 1, digest),
        TlsaRecord(3, 2, 1, digest),
        TlsaRecord(3, 0, 3, digest),
        TlsaRecord(3, 0, 1, digest[:31]),
        TlsaRecord(3, 0, 2, digest),  # a SHA-256 digest where SHA-512 is declared
        TlsaRecord(3, 0, 0, b""),
    ]
    assert check(records, chain(LEAF, CA), ["mx.example.net"]).verdict is Verdict.NO_USABLE_RECORDS


def test_an_unusable_match_does_not_rescue_a_usable_mismatch():
    records = [TlsaRecord(1, 0, 1, hashlib.sha256(der(LEAF)).digest()), TlsaRecord(3, 1, 1, b"\0" * 32)]
    result = check(records, chain(LEAF, CA), ["mx.example.net"])
    assert (result.verdict, result.authenticated) == (Verdict.NO_MATCH, False)


def test_any_one_usable_record_matching_suffices():
    records = [TlsaRecord(3, 1, 1, b"\0" * 32), TlsaRecord(3, 1, 1, hashlib.sha256(spki(LEAF)).digest())]
    result = check(records, chain(LEAF, CA), ["mx.example.net"])
    assert result.authenticated and result.matched == records[1]


def test_name_rules():
    assert name_matches("MX.Example.net", "mx.example.NET.")
    assert not name_matches("m*.example.net", "mx.example.net")
    assert not name_matches("*", "mx")


def test_certificate_without_dns_san_falls_back_to_common_name_and_garbage_is_none():
    [presented] = chain(CA)
    assert presented.dns_names == ("Test CA",)
    assert presented_certificate(b"not a certificate") is None


# --- DANE-TA: the signatures from the server certificate up to the anchor ---------------

INTERMEDIATE, INTERMEDIATE_KEY = make_certificate("Intermediate", "Test CA", CA_KEY, ca=True)
UNDER_INTERMEDIATE, _ = make_certificate("mx.example.net", "Intermediate", INTERMEDIATE_KEY, ("mx.example.net",))
# Names the CA as issuer, but its own key signed it: what a forger without the CA's key makes.
FORGED, _ = make_certificate("mx.example.net", "Test CA", None, ("mx.example.net",))
EXPIRED_UNDER_CA, _ = make_certificate("mx.example.net", "Test CA", CA_KEY, ("mx.example.net",), expired=True)
NOT_A_CA, NOT_A_CA_KEY = make_certificate("Not a CA", "Test CA", CA_KEY, ca=False)
UNDER_NOT_A_CA, _ = make_certificate("mx.example.net", "Not a CA", NOT_A_CA_KEY, ("mx.example.net",))
TA_RECORD = TlsaRecord(2, 1, 1, hashlib.sha256(spki(CA)).digest())


def checked(*certificates, records=(TA_RECORD,)):
    return check(list(records), chain(*certificates), ["mx.example.net"], issued_by_at(NOW)).verdict


def test_dane_ta_chain_through_an_intermediate_in_any_order():
    assert checked(UNDER_INTERMEDIATE, INTERMEDIATE, CA) is Verdict.MATCHED
    assert checked(UNDER_INTERMEDIATE, CA, INTERMEDIATE) is Verdict.MATCHED
    assert checked(LEAF, CA) is Verdict.MATCHED


def test_dane_ta_refuses_a_certificate_the_anchor_did_not_sign():
    assert checked(FORGED, CA) is Verdict.CHAIN_INVALID
    assert checked(UNDER_INTERMEDIATE, CA) is Verdict.CHAIN_INVALID  # the link in between is missing


def test_dane_ta_refuses_an_expired_server_certificate_and_a_signer_that_is_no_ca():
    assert checked(EXPIRED_UNDER_CA, CA) is Verdict.CHAIN_INVALID
    assert checked(UNDER_NOT_A_CA, NOT_A_CA, CA) is Verdict.CHAIN_INVALID


def test_dane_ta_anchor_dates_are_not_checked():
    old_ca, old_key = make_certificate("Old CA", ca=True, expired=True)
    leaf, _ = make_certificate("mx.example.net", "Old CA", old_key, ("mx.example.net",))
    record = TlsaRecord(2, 0, 1, hashlib.sha256(der(old_ca)).digest())
    assert checked(leaf, old_ca, records=[record]) is Verdict.MATCHED


def test_dane_ee_needs_no_chain():
    record = TlsaRecord(3, 1, 1, hashlib.sha256(spki(FORGED)).digest())
    assert checked(FORGED, records=[record]) is Verdict.MATCHED


# --- What DNS answers mean for delivery ---------------------------------------------------


def test_decide():
    ee = TlsaRecord(3, 1, 1, b"\1" * 32)
    pkix = TlsaRecord(1, 1, 1, b"\1" * 32)
    cases = [
        (TlsaLookup("mx", DnssecState.SECURE, (ee,)), DaneDecision.AUTHENTICATE),
        (TlsaLookup("mx", DnssecState.SECURE, (pkix, ee)), DaneDecision.AUTHENTICATE),
        (TlsaLookup("mx", DnssecState.SECURE, (pkix,)), DaneDecision.UNAUTHENTICATED),
        (TlsaLookup("mx", DnssecState.SECURE, ()), DaneDecision.NOT_APPLICABLE),
        (TlsaLookup("mx", DnssecState.INSECURE, (ee,)), DaneDecision.NOT_APPLICABLE),
        (TlsaLookup("mx", DnssecState.FAILED), DaneDecision.DEFER),
    ]
    for lookup, decision in cases:
        assert decide(lookup) is decision, lookup


def test_each_lookup_is_counted_under_kumomtas_dane_result_label():
    ee, pkix = TlsaRecord(3, 1, 1, b"\1" * 32), TlsaRecord(1, 1, 1, b"\1" * 32)
    cases = [
        (TlsaLookup("mx", DnssecState.SECURE, (pkix, ee)), "ok"),
        (TlsaLookup("mx", DnssecState.SECURE, (pkix,)), "unusable"),
        (TlsaLookup("mx", DnssecState.INSECURE, detail="no TLSA records", chain_secure=True), "not_applicable"),
        (TlsaLookup("mx", DnssecState.INSECURE, detail="the address records are not DNSSEC-signed"), "insecure_chain"),
        (TlsaLookup("mx", DnssecState.FAILED), "tempfail"),
    ]
    for lookup, label in cases:
        assert result_name(lookup) == label, lookup


def test_labels_and_presentation():
    ee, ta = TlsaRecord(3, 1, 1, b"\xab" * 32), TlsaRecord(2, 0, 1, b"\1" * 32)
    assert (policy_label([ee]), policy_label([ta, ee]), policy_label([TlsaRecord(0, 0, 1, b"\1" * 32)])) \
        == ("dane-ee", "dane-ee+dane-ta", "insecure")
    assert presentation(ee) == "3 1 1 " + "ab" * 32


# --- Properties -------------------------------------------------------------------------


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=80))
def test_usable_exactly_for_dane_usages_known_parameters_and_right_digest_lengths(usage, selector, mtype, data):
    lengths = {1: 32, 2: 64}
    expected = (usage in (2, 3) and selector in (0, 1) and mtype in (0, 1, 2) and len(data) > 0
                and (mtype == 0 or len(data) == lengths[mtype]))
    assert TlsaRecord(usage, selector, mtype, data).usable() is expected


@given(st.binary(min_size=32, max_size=32))
def test_a_digest_other_than_the_certificates_never_authenticates(digest):
    real = hashlib.sha256(spki(LEAF)).digest()
    result = check([TlsaRecord(3, 1, 1, digest), TlsaRecord(2, 1, 1, digest)], chain(LEAF, CA), ["mx.example.net"],
                   issued_by_at(NOW))
    assert result.authenticated is (digest == real)


@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True))
def test_a_wildcard_matches_exactly_one_more_label(name):
    _, _, rest = name.partition(".")
    assert name_matches(f"*.{rest}", name)
    assert not name_matches(f"*.{name}", name)
    assert not name_matches(f"*.{rest}", f"x.{name}")  # two labels where the wildcard stands for one
