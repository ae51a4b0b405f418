"""What DANE needs from a DER certificate, extracted with `cryptography` (the seam for `trimta.core.dane`)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from trimta.core.dane import PresentedCertificate


def presented_certificate(der: bytes) -> PresentedCertificate | None:
    """The certificate's DER, SubjectPublicKeyInfo and DNS names; None if it is not a readable X.509 certificate.

    DNS names are the subject alternative names of type DNS; only a certificate
    without any falls back to its subject common names (RFC 6125 section 6.4.4).
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):  # cryptography's errors for malformed or unsupported certificates
        return None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except (x509.ExtensionNotFound, ValueError):
        names = ()
    if not names:
        names = tuple(
            str(attribute.value) for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
    return PresentedCertificate(der=der, spki_der=spki, dns_names=names)
