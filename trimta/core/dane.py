"""DANE for SMTP (RFC 7672): which TLSA records are usable, and whether a server's certificates match them.

Pure: certificates arrive as `PresentedCertificate` values (DER, SubjectPublicKeyInfo
DER, DNS names), which `trimta.adapters.certificates` extracts; the TLSA records
arrive already parsed, and only from a DNSSEC-secure answer (the caller's job).

- Usable records (RFC 7672 section 3.1): DANE-TA(2) and DANE-EE(3), selector
  Cert(0) or SPKI(1), matching type Full(0), SHA2-256(1) or SHA2-512(2), with a
  digest of the right length. PKIX-TA(0) and PKIX-EE(1) records, and unknown
  parameters, are unusable (section 3.1.3): they neither authenticate nor fail.
- DANE-EE(3) matches the server's own (first) certificate, with no name check and
  no validity-period check (section 3.1.1).
- DANE-TA(2) matches any certificate the server presents, and then the server's
  certificate must carry one of the reference names, the TLSA base domain or the MX
  host name (section 3.2.2), as a DNS subject alternative name, ``*`` allowed as the
  whole leftmost label (section 3.2.3). Verifying the chain's signatures from the
  server certificate up to that trust anchor is not part of this module.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


class Usage(enum.IntEnum):
    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(enum.IntEnum):
    CERT = 0
    SPKI = 1


class MatchingType(enum.IntEnum):
    FULL = 0
    SHA2_256 = 1
    SHA2_512 = 2


_DIGEST_LENGTHS = {MatchingType.SHA2_256: 32, MatchingType.SHA2_512: 64}


@dataclass(frozen=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 section 2.1), its fields as the DNS carries them."""

    usage: int
    selector: int
    matching_type: int
    data: bytes

    def usable(self) -> bool:
        """Whether RFC 7672 lets this record authenticate an SMTP server."""
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE) or self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.matching_type not in (MatchingType.FULL, MatchingType.SHA2_256, MatchingType.SHA2_512):
            return False
        expected = _DIGEST_LENGTHS.get(MatchingType(self.matching_type))
        return len(self.data) > 0 and (expected is None or len(self.data) == expected)


@dataclass(frozen=True)
class PresentedCertificate:
    """What DANE looks at in one certificate the server sent."""

    der: bytes
    spki_der: bytes
    dns_names: tuple[str, ...]


class Verdict(enum.Enum):
    MATCHED = "matched"
    NO_USABLE_RECORDS = "no-usable-records"
    """Nothing to authenticate against: TLS without authentication (RFC 7672 section 2.2)."""
    NO_MATCH = "no-match"
    NAME_MISMATCH = "name-mismatch"


@dataclass(frozen=True)
class DaneResult:
    verdict: Verdict
    matched: TlsaRecord | None = None

    @property
    def authenticated(self) -> bool:
        return self.verdict is Verdict.MATCHED


def usable_records(records: Sequence[TlsaRecord]) -> list[TlsaRecord]:
    return [record for record in records if record.usable()]


def record_matches(record: TlsaRecord, certificate: PresentedCertificate) -> bool:
    """Whether `certificate` is the one `record` names (selector and matching type applied)."""
    selected = certificate.der if record.selector == Selector.CERT else certificate.spki_der
    if record.matching_type == MatchingType.SHA2_256:
        return hashlib.sha256(selected).digest() == record.data
    if record.matching_type == MatchingType.SHA2_512:
        return hashlib.sha512(selected).digest() == record.data
    return selected == record.data


def name_matches(presented: str, reference: str) -> bool:
    """RFC 7672 section 3.2.3: case-insensitive; ``*`` only as the complete leftmost label."""
    presented = presented.lower().removesuffix(".")
    reference = reference.lower().removesuffix(".")
    if presented.startswith("*."):
        first, dot, rest = reference.partition(".")
        return bool(first) and bool(dot) and rest == presented[2:]
    return "*" not in presented and presented == reference


def check(
    records: Sequence[TlsaRecord],
    chain: Sequence[PresentedCertificate],
    reference_names: Sequence[str],
) -> DaneResult:
    """Whether the server that sent `chain` (its own certificate first) is authenticated by `records`."""
    usable = usable_records(records)
    if not usable:
        return DaneResult(Verdict.NO_USABLE_RECORDS)
    if not chain:
        return DaneResult(Verdict.NO_MATCH)
    for record in usable:
        if record.usage == Usage.DANE_EE and record_matches(record, chain[0]):
            return DaneResult(Verdict.MATCHED, record)
    anchors = [r for r in usable if r.usage == Usage.DANE_TA and any(record_matches(r, c) for c in chain)]
    if not anchors:
        return DaneResult(Verdict.NO_MATCH)
    if any(name_matches(name, ref) for name in chain[0].dns_names for ref in reference_names):
        return DaneResult(Verdict.MATCHED, anchors[0])
    return DaneResult(Verdict.NAME_MISMATCH, anchors[0])
