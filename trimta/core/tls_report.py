"""What one outbound TLS session says about a policy domain, for TLS reporting (RFC 8460).

The delivery path (MTA-STS, DANE) describes each session it attempted under a
policy as a `SessionResult` and hands it to a `TlsSessionSink`; the reporting service
counts them per policy domain and day, and the metrics count them by result type.
This module is the contract between the two: plain values, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class PolicyType(enum.StrEnum):
    """RFC 8460 section 4.4 `policy-type`."""

    STS = "sts"
    TLSA = "tlsa"
    NO_POLICY = "no-policy-found"


class ResultType(enum.StrEnum):
    """RFC 8460 section 4.3 result types (the `result-type` of a failure detail)."""

    # negotiation failures
    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    CERTIFICATE_EXPIRED = "certificate-expired"
    VALIDATION_FAILURE = "validation-failure"
    # policy failures: DANE
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    # policy failures: MTA-STS
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy a session was attempted under (RFC 8460 section 4.4 `policy`)."""

    policy_type: PolicyType
    policy_domain: str
    # the policy as published: the MTA-STS policy file's lines, or the TLSA records
    # in presentation form; empty for no-policy-found
    policy_strings: tuple[str, ...] = ()
    # MTA-STS `mx` patterns (empty for DANE)
    mx_host: tuple[str, ...] = ()
    # "enforce" or "testing" for MTA-STS, "dane" for DANE
    mode: str = ""


@dataclass(frozen=True, slots=True)
class SessionResult:
    """One session (or one failure to establish one) under `policy`."""

    policy: PolicyRef
    # None: the session was established as the policy demands (a successful session)
    result: ResultType | None
    receiving_mx_hostname: str = ""
    receiving_ip: str = ""
    sending_mta_ip: str = ""
    additional_information: str = ""
    failure_reason_code: str = ""

    @property
    def succeeded(self) -> bool:
        return self.result is None


class TlsSessionSink(Protocol):
    """Where the delivery path reports each session attempted under a TLS policy."""

    def session(self, result: SessionResult) -> None: ...
