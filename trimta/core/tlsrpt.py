"""TLS reporting (RFC 8460): counting sessions, the daily report, its TXT record and its message.

Pure: the DNS lookup, the store and the sending belong to adapters and services; this
module decides what their inputs mean and what to send.

- `TlsCounts` adds up `SessionResult`s per UTC day and policy (section 4.1: a report
  covers one policy domain for one UTC day): successful sessions, and failed ones per
  failure detail (result type, sending and receiving addresses, MX host, reason code).
  `CountRow`s are what a store keeps and what `build_report` takes back.
- `build_report` makes the section 4.4 JSON report of one policy domain for one day.
- `parse_tlsrpt_record` / `select_tlsrpt_record` read the ``_smtp._tls.DOMAIN`` TXT
  record (section 3): ``v=TLSRPTv1`` first, ``rua=`` required, ``mailto:`` and ``https:``
  destinations; anything malformed means "no reports wanted", never an exception.
- `report_message` makes the section 5.3 message: ``multipart/report;
  report-type="tlsrpt"`` with the gzipped report as ``application/tlsrpt+gzip``.
- `next_send_at` picks the moment of the daily send: a random point of a window some
  hours after UTC midnight, so that senders do not all report at 00:00.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from typing import Any

from trimta.core.tls_report import PolicyRef, PolicyType, ResultType, SessionResult

DAY_S = 86400
MAX_DETAILS = 1000  # failure details per report entry; the rest by result type alone
MAX_TEXT = 256  # characters of failure-reason-code and additional-information kept
CONTENT_TYPE_GZIP = "application/tlsrpt+gzip"
TXT_PREFIX = "_smtp._tls."


# --- counting ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailureKey:
    """What tells one failure detail of a report from another (section 4.4 ``failure-details``)."""

    result_type: ResultType
    sending_mta_ip: str = ""
    receiving_mx_hostname: str = ""
    receiving_ip: str = ""
    additional_information: str = ""
    failure_reason_code: str = ""

    @classmethod
    def of(cls, result: SessionResult) -> FailureKey:
        """The detail of a failed session. ``additional-information`` is a URI (section
        4.4); free text given there goes to ``failure-reason-code``, the field for an
        error message, when that is empty. Texts are cut to `MAX_TEXT` characters."""
        assert result.result is not None
        info, reason = result.additional_information, result.failure_reason_code
        if info and not _URI.fullmatch(info):
            info, reason = "", reason or info
        return cls(result.result, result.sending_mta_ip, result.receiving_mx_hostname.lower().rstrip("."),
                   result.receiving_ip, info[:MAX_TEXT], reason[:MAX_TEXT])

    @property
    def folded(self) -> FailureKey:
        """The detail with nothing but its result type (for failures beyond `MAX_DETAILS`)."""
        return FailureKey(self.result_type)


@dataclass(frozen=True, slots=True)
class CountRow:
    """Sessions of one day under one policy: successful ones (`failure` None) or one kind of failure."""

    day: datetime.date
    policy: PolicyRef
    failure: FailureKey | None
    count: int


def utc_day(now: float) -> datetime.date:
    """The UTC day `now` (seconds since the epoch) falls in."""
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date()


def day_start(day: datetime.date) -> float:
    """The first second of `day` (UTC), as seconds since the epoch."""
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()


class TlsCounts:
    """Session counts per (day, policy, failure detail), added to without any I/O.

    The reporting service keeps one of these in memory between flushes; `drain`
    hands over what was counted and starts again from nothing.
    """

    def __init__(self, max_details: int = MAX_DETAILS) -> None:
        self.max_details = max_details
        self._counts: dict[tuple[datetime.date, PolicyRef, FailureKey | None], int] = {}
        self._details: dict[tuple[datetime.date, PolicyRef], int] = {}

    def add(self, result: SessionResult, now: float) -> None:
        """Count one session; past `max_details` distinct failure details of a day and
        policy, new ones are counted by result type alone, so memory stays bounded."""
        day, policy = utc_day(now), _normal_policy(result.policy)
        failure = None if result.succeeded else FailureKey.of(result)
        key = (day, policy, failure)
        if failure is not None and key not in self._counts:
            seen = self._details.get((day, policy), 0)
            if seen >= self.max_details:
                key = (day, policy, failure.folded)
            if key not in self._counts:
                self._details[(day, policy)] = seen + 1
        self._counts[key] = self._counts.get(key, 0) + 1

    def __len__(self) -> int:
        return len(self._counts)

    def rows(self) -> list[CountRow]:
        return [CountRow(day, policy, failure, n) for (day, policy, failure), n in self._counts.items()]

    def drain(self) -> list[CountRow]:
        rows = self.rows()
        self._counts = {}
        self._details = {}
        return rows

    def restore(self, rows: Iterable[CountRow]) -> None:
        """Put rows back (a flush that failed), adding to what was counted since."""
        for row in rows:
            key = (row.day, row.policy, row.failure)
            self._counts[key] = self._counts.get(key, 0) + row.count


def _normal_policy(policy: PolicyRef) -> PolicyRef:
    domain = policy.policy_domain.lower().rstrip(".")
    if domain == policy.policy_domain:
        return policy
    return PolicyRef(policy.policy_type, domain, policy.policy_strings, policy.mx_host, policy.mode)


# --- the report -------------------------------------------------------------------------------


def report_id(day: datetime.date, policy_domain: str, submitter: str) -> str:
    """A report's id (section 4.4 ``report-id``): one per policy domain, day and submitter,
    so a report sent again after a restart keeps its id. It is a valid msg-id (RFC 5322
    3.6.4) without the angle brackets, as the Subject of section 5.3 shows it."""
    return f"{day.strftime('%Y%m%d')}.{policy_domain}@{submitter}"


def _policy_json(policy: PolicyRef) -> dict[str, Any]:
    out: dict[str, Any] = {"policy-type": policy.policy_type.value}
    if policy.policy_type is not PolicyType.NO_POLICY:
        out["policy-string"] = list(policy.policy_strings)
    out["policy-domain"] = policy.policy_domain
    if policy.mx_host:
        out["mx-host"] = list(policy.mx_host)
    return out


def _failure_json(failure: FailureKey, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"result-type": failure.result_type.value}
    for name, value in (("sending-mta-ip", failure.sending_mta_ip),
                        ("receiving-mx-hostname", failure.receiving_mx_hostname),
                        ("receiving-ip", failure.receiving_ip)):
        if value:
            out[name] = value
    out["failed-session-count"] = count
    for name, value in (("additional-information", failure.additional_information),
                        ("failure-reason-code", failure.failure_reason_code)):
        if value:
            out[name] = value
    return out


def _policy_order(policy: PolicyRef) -> tuple[str, ...]:
    return (policy.policy_type.value, policy.mode, *policy.policy_strings, "\0", *policy.mx_host)


def _failure_order(item: tuple[FailureKey, int]) -> tuple[int, str, str, str, str]:
    failure, count = item
    return (-count, failure.result_type.value, failure.receiving_mx_hostname, failure.receiving_ip,
            failure.sending_mta_ip)


def build_report(
    policy_domain: str,
    day: datetime.date,
    rows: Iterable[CountRow],
    *,
    organization_name: str,
    contact_info: str,
    submitter: str,
    max_details: int = MAX_DETAILS,
) -> dict[str, Any]:
    """The section 4.4 report of `policy_domain` for `day`, from the rows counted for it
    (rows of other domains or days are ignored). One ``policies`` entry per distinct
    policy, with its summary and its failure details (most frequent first; beyond
    `max_details`, the rest summed per result type alone)."""
    successes: dict[PolicyRef, int] = {}
    failures: dict[PolicyRef, dict[FailureKey, int]] = {}
    for row in rows:
        if row.day != day or row.policy.policy_domain != policy_domain:
            continue
        if row.failure is None:
            successes[row.policy] = successes.get(row.policy, 0) + row.count
        else:
            details = failures.setdefault(row.policy, {})
            details[row.failure] = details.get(row.failure, 0) + row.count
    policies = []
    for policy in sorted(set(successes) | set(failures), key=_policy_order):
        details = _fold(failures.get(policy, {}), max_details)
        entry: dict[str, Any] = {
            "policy": _policy_json(policy),
            "summary": {
                "total-successful-session-count": successes.get(policy, 0),
                "total-failure-session-count": sum(details.values()),
            },
        }
        if details:
            entry["failure-details"] = [_failure_json(f, n) for f, n in sorted(details.items(), key=_failure_order)]
        policies.append(entry)
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    end = start + datetime.timedelta(seconds=DAY_S - 1)
    return {
        "organization-name": organization_name,
        "date-range": {"start-datetime": _rfc3339(start), "end-datetime": _rfc3339(end)},
        "contact-info": contact_info,
        "report-id": report_id(day, policy_domain, submitter),
        "policies": policies,
    }


def _fold(details: dict[FailureKey, int], max_details: int) -> dict[FailureKey, int]:
    if len(details) <= max_details:
        return details
    ranked = sorted(details.items(), key=_failure_order)
    kept = dict(ranked[: max_details - 1])
    for failure, n in ranked[max_details - 1:]:
        kept[failure.folded] = kept.get(failure.folded, 0) + n
    return kept


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def report_domains(rows: Iterable[CountRow]) -> list[tuple[datetime.date, str]]:
    """The (day, policy domain) pairs the rows hold, each once, oldest day first."""
    return sorted({(row.day, row.policy.policy_domain) for row in rows})


def gzip_report(report: Mapping[str, Any]) -> bytes:
    """The report as gzip-compressed JSON (section 5.2), the same bytes for the same report."""
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode("utf-8"), mtime=0)


# --- the TXT record (section 3) ----------------------------------------------------------------

# tlsrpt-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
# tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E); field-delim = *WSP ";" *WSP
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_URI_DELIM = re.compile(r"[ \t]*,[ \t]*")
# An RFC 3986 URI's characters, less "," and "!" (which RFC 8460 section 3 requires to be
# percent-encoded in a tlsrpt-uri) and ";" (the field delimiter), with well-formed
# percent-encodings.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@$&'()*+=]|%[0-9A-Fa-f]{2})+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*")
_IPV4 = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}")


@dataclass(frozen=True, slots=True)
class RecordError:
    """Why a TXT record is not a usable TLSRPT record (the domain then gets no reports)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Destination:
    """One ``rua`` destination: ``mailto`` with the address, or ``https`` with the URL."""

    scheme: str
    target: str

    def __str__(self) -> str:
        return f"mailto:{self.target}" if self.scheme == "mailto" else self.target


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    """A valid record: where reports go (URIs of other schemes are left out, as allowed)."""

    destinations: tuple[Destination, ...]
    ignored: tuple[str, ...] = ()  # rua URIs of schemes trimta does not send to


def parse_tlsrpt_record(text: str) -> TlsRptRecord | RecordError:
    """Parse one ``_smtp._tls`` TXT record (its strings already joined), RFC 8460 section 3."""
    version = "v=TLSRPTv1"
    if not text.startswith(version):
        return RecordError("TXT record does not start with v=TLSRPTv1")
    parts = _FIELD_DELIM.split(text[len(version):])
    if parts[0] != "":
        return RecordError("TXT record: v=TLSRPTv1 is not followed by ';'")
    fields = parts[1:]
    if fields and fields[-1] == "":
        fields = fields[:-1]  # the optional trailing delimiter
    rua: tuple[Destination, ...] | None = None
    ignored: list[str] = []
    for field in fields:
        name, equals, value = field.partition("=")
        if name == "rua" and equals:
            if rua is not None:
                return RecordError("TXT record: rua is given twice")
            destinations = []
            for uri in _URI_DELIM.split(value):
                parsed = _destination(uri)
                if isinstance(parsed, RecordError):
                    return parsed
                if parsed is None:
                    ignored.append(uri)
                else:
                    destinations.append(parsed)
            rua = tuple(destinations)
        elif not equals or not _EXT_NAME.fullmatch(name) or not _EXT_VALUE.fullmatch(value):
            return RecordError(f"TXT record: {field!r} is not a name=value field")
    if rua is None:
        return RecordError("TXT record has no rua field")
    return TlsRptRecord(rua, tuple(ignored))


def _destination(uri: str) -> Destination | RecordError | None:
    """A rua URI as a destination; None for a well-formed URI of another scheme."""
    if not _URI.fullmatch(uri):
        return RecordError(f"TXT record: rua {uri!r} is not a URI")
    scheme = uri.partition(":")[0].lower()
    if scheme == "mailto":
        address = urllib.parse.unquote(uri[len("mailto:"):], errors="strict")
        local, at, domain = address.rpartition("@")
        if not at or not _LOCAL_PART.fullmatch(local) or not _DOMAIN.fullmatch(domain) or "." not in domain.strip("."):
            return RecordError(f"TXT record: rua {uri!r} is not mailto: and one address")
        return Destination("mailto", f"{local}@{domain.rstrip('.').lower()}")
    if scheme == "https":
        return _https(uri)
    return None


def _https(uri: str) -> Destination | RecordError:
    bad = RecordError(f"TXT record: rua {uri!r} is not an https://HOST[:PORT]/PATH URL")
    parts = urllib.parse.urlsplit(uri)
    if not uri[len("https:"):].startswith("//") or "@" in parts.netloc or parts.fragment or "#" in uri:
        return bad
    try:
        port = parts.port
    except ValueError:
        return bad
    host = parts.hostname or ""
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return bad
    elif not (_IPV4.fullmatch(host) or (_DOMAIN.fullmatch(host) and not host.replace(".", "").isdigit())):
        return bad
    if port == 0:
        return bad
    return Destination("https", uri)


def select_tlsrpt_record(texts: Iterable[str]) -> TlsRptRecord | RecordError:
    """The record among all TXT records at ``_smtp._tls.DOMAIN`` (section 3): records not
    starting with ``v=TLSRPTv1`` are discarded; unless exactly one is left, and valid,
    the domain gets no reports."""
    candidates = [t for t in texts if t.startswith("v=TLSRPTv1")]
    if not candidates:
        return RecordError("no TXT record starting with v=TLSRPTv1")
    if len(candidates) > 1:
        return RecordError(f"{len(candidates)} TXT records start with v=TLSRPTv1; exactly one is allowed")
    return parse_tlsrpt_record(candidates[0])


# --- the message (section 5.3) -----------------------------------------------------------------


def report_filename(submitter: str, policy_domain: str, day: datetime.date) -> str:
    """``sender "!" policy-domain "!" begin-timestamp "!" end-timestamp ".json.gz"`` (section 5.3)."""
    begin = int(day_start(day))
    return f"{submitter}!{policy_domain}!{begin}!{begin + DAY_S - 1}.json.gz"


def report_message(
    report: Mapping[str, Any],
    *,
    gzipped: bytes,
    from_address: str,
    to_address: str,
    submitter: str,
    policy_domain: str,
    day: datetime.date,
    now: float,
    message_id: str,
) -> bytes:
    """The report as a mail message (section 5.3), CRLF lines, ready to be queued.

    `message_id` is the Message-ID without angle brackets; the report's id is in the
    Subject as the RFC shows it. The gzip part is base64 (section 5.3 requires a
    transfer encoding that survives any relay)."""
    rid = report["report-id"]
    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_address
    msg["To"] = to_address
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = f"<{message_id}>"
    msg["Subject"] = f"Report Domain: {policy_domain} Submitter: {submitter} Report-ID: <{rid}>"
    msg["TLS-Report-Domain"] = policy_domain
    msg["TLS-Report-Submitter"] = submitter
    msg.set_content(f"This is an aggregate TLS report from {submitter} for {policy_domain}"
                    f" ({report['date-range']['start-datetime']} to {report['date-range']['end-datetime']}).\n",
                    charset="us-ascii", cte="7bit")
    msg.add_attachment(gzipped, maintype="application", subtype="tlsrpt+gzip",
                       filename=report_filename(submitter, policy_domain, day))
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes(policy=SMTP)


# --- when to send (section 4.1: a report covers a UTC day, sent after it ends) -----------------------


def next_send_at(now: float, *, send_hour: int, window_s: float, fraction: float) -> float:
    """The next daily send after `now`: UTC midnight + `send_hour` hours + `fraction`
    (0 to 1, drawn at random by the caller) of `window_s`: the first such moment after
    `now`, so never more than a day ahead. Yesterday's comes first, since a window late in
    the day can reach past midnight."""
    yesterday = day_start(utc_day(now)) - DAY_S
    at = yesterday + send_hour * 3600 + fraction * window_s
    while at <= now:
        at += DAY_S
    return at

