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
  whole leftmost label (section 3.2.3). Given `issued_by` (the adapter's signature
  and validity check), there must also be a path of signatures from the server's
  certificate up to the matched anchor through the certificates it sent.

And what the DNS answers mean for delivery (section 2.2): `decide` turns a host's
`TlsaLookup` into a `DaneDecision`: not applicable (the address or TLSA records are
not DNSSEC-secure, or there are none), authenticated TLS required (usable records),
unauthenticated TLS required (a secure TLSA RRset without a usable record), or defer
(the lookup failed or was bogus).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
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
    CHAIN_INVALID = "chain-invalid"
    """A DANE-TA record matched a certificate sent, but no valid signature path leads to it."""


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


IssuedBy = Callable[[PresentedCertificate, PresentedCertificate], bool]
"""Whether the second certificate signed the first, and the first is valid now (the adapter's check)."""


def check(
    records: Sequence[TlsaRecord],
    chain: Sequence[PresentedCertificate],
    reference_names: Sequence[str],
    issued_by: IssuedBy | None = None,
) -> DaneResult:
    """Whether the server that sent `chain` (its own certificate first) is authenticated by `records`.

    With `issued_by`, a DANE-TA match also needs a path of signatures from
    ``chain[0]`` up to a certificate a DANE-TA record matches, through the
    certificates sent (RFC 7672 section 3.1.2: the server sends its anchor). The
    delivery path always passes one; without it only the records are matched.
    """
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
    if not any(name_matches(name, ref) for name in chain[0].dns_names for ref in reference_names):
        return DaneResult(Verdict.NAME_MISMATCH, anchors[0])
    if issued_by is None:
        return DaneResult(Verdict.MATCHED, anchors[0])
    anchor = _signed_up_to_anchor(anchors, chain, issued_by)
    if anchor is None:
        return DaneResult(Verdict.CHAIN_INVALID, anchors[0])
    return DaneResult(Verdict.MATCHED, anchor)


def _signed_up_to_anchor(
    anchors: Sequence[TlsaRecord], chain: Sequence[PresentedCertificate], issued_by: IssuedBy
) -> TlsaRecord | None:
    """The anchor record reached by signatures from ``chain[0]`` upward, or None.

    Depth-first over the certificates sent, each used at most once on a path, so a
    chain sent out of order (servers do) still counts and a loop ends.
    """

    def anchor_of(certificate: PresentedCertificate) -> TlsaRecord | None:
        return next((record for record in anchors if record_matches(record, certificate)), None)

    def walk(index: int, used: frozenset[int]) -> TlsaRecord | None:
        found = anchor_of(chain[index])
        if found is not None:
            return found
        for parent in range(len(chain)):
            if parent not in used and issued_by(chain[index], chain[parent]):
                found = walk(parent, used | {parent})
                if found is not None:
                    return found
        return None

    return walk(0, frozenset({0}))


# --- What DNS said, and what it means for delivery (RFC 7672 section 2.2) -------------


class DnssecState(enum.Enum):
    SECURE = "secure"
    """The address and TLSA records of the host validated (the resolver set AD)."""
    INSECURE = "insecure"
    """Not DNSSEC-signed, or no TLSA records: DANE does not apply."""
    FAILED = "failed"
    """Bogus (a validating resolver answers SERVFAIL), or no answer: DANE cannot be ruled out."""


@dataclass(frozen=True)
class TlsaLookup:
    """What DNS said about one MX host's TLSA records (``_25._tcp.HOST``) and its addresses."""

    host: str
    state: DnssecState
    records: tuple[TlsaRecord, ...] = ()
    detail: str = ""  # why insecure or failed, in words for an operator
    # Where the TLSA records were found when the host is a CNAME (RFC 7672 section 2.2.2);
    # empty: at the host name itself. A DANE-TA certificate may name either.
    base_domain: str = ""
    # Whether the host's address records validated, so that an INSECURE answer means
    # "no (signed) TLSA records" rather than "the chain to the host is not signed".
    chain_secure: bool = False

    @property
    def reference_names(self) -> tuple[str, ...]:
        """The names a DANE-TA server certificate must carry one of (section 3.2.2)."""
        return (self.host, self.base_domain) if self.base_domain else (self.host,)


class DaneDecision(enum.Enum):
    NOT_APPLICABLE = "not-applicable"
    """Deliver as the path (enable_tls, MTA-STS) says."""
    AUTHENTICATE = "authenticate"
    """TLS required, and the certificate must match a usable record."""
    UNAUTHENTICATED = "unauthenticated"
    """TLS required, without authentication (RFC 7672 section 2.2: no usable records)."""
    DEFER = "defer"
    """Do not deliver to this host now: its TLSA records could not be determined."""


def decide(lookup: TlsaLookup) -> DaneDecision:
    if lookup.state is DnssecState.FAILED:
        return DaneDecision.DEFER
    if lookup.state is DnssecState.INSECURE or not lookup.records:
        return DaneDecision.NOT_APPLICABLE
    return DaneDecision.AUTHENTICATE if usable_records(lookup.records) else DaneDecision.UNAUTHENTICATED


# KumoMTA's dane_result_count labels, every one (the metric shows each, 0 until it happens).
RESULT_NAMES = ("ok", "unusable", "not_applicable", "insecure_chain", "tempfail")


def result_name(lookup: TlsaLookup) -> str:
    """KumoMTA's ``dane_result_count`` label for one decision: ``ok``, ``unusable``,
    ``not_applicable`` (a secure chain, no TLSA records), ``insecure_chain`` or ``tempfail``."""
    if lookup.state is DnssecState.FAILED:
        return "tempfail"
    if lookup.state is DnssecState.INSECURE or not lookup.records:
        secure = lookup.chain_secure or lookup.state is DnssecState.SECURE
        return "not_applicable" if secure else "insecure_chain"
    return "ok" if usable_records(lookup.records) else "unusable"


def policy_label(records: Sequence[TlsaRecord]) -> str:
    """The usages of the usable records, for the record's `dane` field: ``dane-ee``, ``dane-ta``, both."""
    usages = {record.usage for record in usable_records(records)}
    labels = [label for usage, label in ((Usage.DANE_EE, "dane-ee"), (Usage.DANE_TA, "dane-ta")) if usage in usages]
    return "+".join(labels) or "insecure"


def usage_label(record: TlsaRecord) -> str:
    return "dane-ee" if record.usage == Usage.DANE_EE else "dane-ta"


def presentation(record: TlsaRecord) -> str:
    """The record's RDATA as a zone file writes it (RFC 6698 section 2.2): ``3 1 1 ab12...``."""
    return f"{record.usage} {record.selector} {record.matching_type} {record.data.hex()}"
