"""What the log records say about a TLS session: cipher, protocol version, the peer's subject.

KumoMTA's records carry ``tls_cipher``, ``tls_protocol_version`` and
``tls_peer_subject_name`` (the subject of the peer's certificate as a list of
``KEY=value`` items, in certificate order). Read here from an established
`ssl.SSLObject` (what `trio.SSLStream` wraps), whether or not the certificate was
verified: opportunistic TLS does not verify, and the record still says whom we spoke to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# RFC 4514 names (C, ST, L, O, OU, CN, DC, UID) as they are; for the attributes RFC 4514
# has no name for, OpenSSL's (what `openssl x509 -subject` prints, and KumoMTA's records
# show); anything else by its dotted OID.
_OPENSSL_NAMES = {
    "1.2.840.113549.1.9.1": "emailAddress", "2.5.4.41": "name", "2.5.4.5": "serialNumber",
    "2.5.4.42": "GN", "2.5.4.4": "SN", "2.5.4.12": "title",
}


class TlsObject(Protocol):
    """The part of `ssl.SSLObject` (and `trio.SSLStream`) read here."""

    def cipher(self) -> tuple[str, str, int] | None: ...
    def version(self) -> str | None: ...
    def getpeercert(self, binary_form: bool = ...) -> object: ...


@dataclass(frozen=True, slots=True)
class TlsDetails:
    cipher: str | None
    protocol_version: str | None
    peer_subject_name: tuple[str, ...] | None


def subject_name(der: bytes) -> tuple[str, ...] | None:
    """The subject of a DER certificate as ``("C=US", "O=...", "CN=...")``; None if unreadable."""
    try:
        from cryptography import x509  # noqa: PLC0415 (only once a session has TLS)

        certificate = x509.load_der_x509_certificate(der)
    except (ImportError, ValueError) as exc:
        log.debug("peer certificate not readable: %s", exc)
        return None
    items = []
    for rdn in certificate.subject.rdns:
        for attribute in rdn:
            name = attribute.rfc4514_attribute_name
            key = _OPENSSL_NAMES.get(name, name)
            value = attribute.value
            items.append(f"{key}={value if isinstance(value, str) else value.hex()}")
    return tuple(items)


def tls_details(tls: TlsObject) -> TlsDetails:
    """Cipher (OpenSSL's name), version (``"TLSv1.3"``) and peer subject of an established session."""
    cipher = tls.cipher()
    try:
        der = tls.getpeercert(binary_form=True)
    except ValueError:  # no handshake yet
        der = None
    return TlsDetails(
        cipher=cipher[0] if cipher else None,
        protocol_version=tls.version(),
        peer_subject_name=subject_name(der) if isinstance(der, bytes) and der else None,
    )
