"""What DANE needs from a DER certificate, extracted with `cryptography` (the seam for `trimta.core.dane`)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from trimta.core.dane import IssuedBy, PresentedCertificate


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


def issued_by_at(now: datetime.datetime) -> IssuedBy:
    """The DANE-TA chain check (`trimta.core.dane.check`'s `issued_by`) as of `now`.

    ``issued_by(child, parent)`` holds when the parent's subject is the child's
    issuer and its key made the child's signature (RSA PKCS#1 v1.5, ECDSA, Ed25519,
    as `cryptography` verifies them), the parent may sign certificates (no basic
    constraints saying it is no CA), and the child is within its validity period at
    `now`. The anchor's own dates are never checked: it is trusted by its TLSA record.
    """
    loaded: dict[bytes, x509.Certificate | None] = {}

    def load(der: bytes) -> x509.Certificate | None:
        if der not in loaded:
            try:
                loaded[der] = x509.load_der_x509_certificate(der)
            except ValueError:
                loaded[der] = None
        return loaded[der]

    def issued_by(child: PresentedCertificate, parent: PresentedCertificate) -> bool:
        child_cert, parent_cert = load(child.der), load(parent.der)
        if child_cert is None or parent_cert is None:
            return False
        if not child_cert.not_valid_before_utc <= now <= child_cert.not_valid_after_utc:
            return False
        try:
            constraints = parent_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            if not constraints.ca:
                return False
        except x509.ExtensionNotFound:
            pass
        except ValueError:
            return False
        try:
            child_cert.verify_directly_issued_by(parent_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    return issued_by


def outside_validity(der: bytes, now: datetime.datetime) -> bool:
    """Whether the certificate is expired or not yet valid at `now` (False if unreadable)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return False
    return not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc
