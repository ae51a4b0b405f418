"""What records say about a TLS session: the peer certificate's subject as KumoMTA lists it."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trimta.adapters.tls_info import subject_name, tls_details


def certificate(*attributes: x509.NameAttribute) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(list(attributes))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_the_subject_is_listed_in_certificate_order_with_openssls_names():
    der = certificate(
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"), x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "SanFrancisco"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fort-Funston"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "MyOrganizationalUnit"),
        x509.NameAttribute(NameOID.COMMON_NAME, "do.havedane.net"),
        x509.NameAttribute(x509.ObjectIdentifier("2.5.4.41"), "EasyRSA"),  # "name"
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "me@myhost.mydomain"))
    # KumoMTA's documented example of tls_peer_subject_name, attribute for attribute.
    assert subject_name(der) == ("C=US", "ST=CA", "L=SanFrancisco", "O=Fort-Funston", "OU=MyOrganizationalUnit",
                                 "CN=do.havedane.net", "name=EasyRSA", "emailAddress=me@myhost.mydomain")


def test_an_unreadable_certificate_gives_no_subject():
    assert subject_name(b"not a certificate") is None


class _Session:
    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def cipher(self):
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    def version(self):
        return "TLSv1.3"

    def getpeercert(self, binary_form=False):
        return self.der


def test_details_of_a_session_with_and_without_a_peer_certificate():
    with_cert = tls_details(_Session(certificate(x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.net"))))
    assert (with_cert.cipher, with_cert.protocol_version, with_cert.peer_subject_name) == (
        "TLS_AES_256_GCM_SHA384", "TLSv1.3", ("CN=mx.example.net",))
    assert tls_details(_Session(None)).peer_subject_name is None  # a client that sent none
