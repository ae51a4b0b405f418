"""Reports about mail that come back as mail: delivery status notifications and feedback reports.

Two kinds, both a ``multipart/report`` message (RFC 6522) with a machine-readable part:

- a delivery status notification (DSN, RFC 3464): a ``message/delivery-status`` part
  (or ``message/global-delivery-status``, RFC 6533) of header blocks, the first about
  the message (``Reporting-MTA``, ``Arrival-Date``, ...), each further one about a
  recipient (``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``, ...):
  an out-of-band bounce, KumoMTA's ``OOB`` record (`parse_delivery_report`);
- an abuse feedback report (ARF, RFC 5965): ``report-type=feedback-report`` and a
  ``message/feedback-report`` part (``Feedback-Type``, ``User-Agent``, ``Version``,
  ``Original-Mail-From``, ...): a complaint, KumoMTA's ``Feedback`` record
  (`parse_feedback_report`).

Either may carry the original message (``message/rfc822``) or its header section
(``text/rfc822-headers``); `OriginalMessage` is what it says about whose mail it was.

What counts as a report is what KumoMTA's ``kumo-log-types`` takes for one: the top
level is ``multipart/report``; a DSN needs ``Reporting-MTA`` and, per recipient,
``Final-Recipient``, ``Action`` and ``Status``; a feedback report needs one each of
``Feedback-Type``, ``User-Agent`` and ``Version``. A required field missing, repeated
or malformed makes the message no report (None). An optional field that does not
parse (a date, a count) is left out instead of refusing the report. Nothing here
raises on any input: a report comes from anyone on the Internet.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import quopri
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message as _HeaderValue
from email.utils import parsedate_tz
from typing import Any

from trimta.protocol.replies import Reply

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")  # RFC 3464 2.3.3
# The marker of KumoMTA's supplemental trace header (trace_headers.supplemental_header).
TRACE_MARKER = "\\_/"

Headers = tuple[tuple[str, str], ...]  # (name as spelt, unfolded value), in order


# --- the results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypedName:
    """A ``type; value`` field: ``Reporting-MTA: dns; mx.example.com``, ``Final-Recipient: rfc822; a@b``."""

    kind: str
    value: str


@dataclass(frozen=True, slots=True)
class Status:
    """A ``Status`` field (RFC 3464 2.3.4): an RFC 3463 code, and a comment if any."""

    class_: int
    subject: int
    detail: int
    comment: str | None = None

    @property
    def code(self) -> tuple[int, int, int]:
        return (self.class_, self.subject, self.detail)


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """One recipient's block of a DSN (RFC 3464 2.3). Unknown fields are in `extensions`."""

    final_recipient: TypedName
    action: str  # one of ACTIONS
    status: Status
    original_recipient: TypedName | None = None
    remote_mta: TypedName | None = None
    diagnostic_code: TypedName | None = None
    last_attempt_date: float | None = None  # Unix seconds
    final_log_id: str | None = None
    will_retry_until: float | None = None
    extensions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def recipient(self) -> str:
        """The address the report is about: the original recipient when given, else the final one."""
        return (self.original_recipient or self.final_recipient).value


@dataclass(frozen=True, slots=True)
class MessageReport:
    """The per-message block of a DSN (RFC 3464 2.2)."""

    reporting_mta: TypedName
    original_envelope_id: str | None = None
    dsn_gateway: TypedName | None = None
    received_from_mta: TypedName | None = None
    arrival_date: float | None = None
    extensions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The returned message (or its header section) and what it says about whose mail it was.

    `trimta_id` is the id trimta gave the message when it took it in (its ``Received``
    header's ``id``, the ``id`` of the message's records), `message_id` its
    ``Message-ID``; `supplemental_trace` is KumoMTA's supplemental trace header
    decoded (``recipient``, and the meta it was told to include), None without one.
    """

    data: bytes  # as in the report, line ends made LF (as KumoMTA's original_message)
    headers: Headers = ()
    trimta_id: str | None = None
    message_id: str | None = None
    supplemental_trace: Mapping[str, Any] | None = None

    def header(self, name: str) -> str | None:
        """The first value of the header `name` (any case), None if it has none."""
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A DSN: its per-message block, its recipients' blocks, the original if attached."""

    per_message: MessageReport
    per_recipient: tuple[RecipientReport, ...]
    original: OriginalMessage | None = None


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """An ARF feedback report (RFC 5965 3.1, 3.2). Unknown fields are in `extensions`."""

    feedback_type: str
    user_agent: str
    version: str
    arrival_date: float | None = None
    incidents: int | None = None
    original_envelope_id: str | None = None
    original_mail_from: str | None = None
    reporting_mta: TypedName | None = None
    source_ip: str | None = None
    authentication_results: tuple[str, ...] = ()
    original_rcpt_to: tuple[str, ...] = ()
    reported_domain: tuple[str, ...] = ()
    reported_uri: tuple[str, ...] = ()
    extensions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    original: OriginalMessage | None = None

    def to_json(self) -> dict[str, Any]:
        """KumoMTA's ``feedback_report`` object (kumo-log-types' ``ARFReport``), its names and types."""
        original = self.original
        return {
            "feedback_type": self.feedback_type,
            "user_agent": self.user_agent,
            "version": self.version,
            "arrival_date": _rfc3339(self.arrival_date),
            "incidents": self.incidents,
            "original_envelope_id": self.original_envelope_id,
            "original_mail_from": self.original_mail_from,
            "reporting_mta": _mta_json(self.reporting_mta),
            "source_ip": self.source_ip,
            "authentication_results": list(self.authentication_results),
            # KumoMTA's spelling.
            "original_rcpto_to": list(self.original_rcpt_to),
            "reported_domain": list(self.reported_domain),
            "reported_uri": list(self.reported_uri),
            "extensions": {k: list(v) for k, v in sorted(self.extensions.items())},
            "original_message": _text_or_bytes(original.data) if original is not None else None,
            "supplemental_trace": dict(original.supplemental_trace)
            if original is not None and original.supplemental_trace is not None else None,
        }


def _mta_json(mta: TypedName | None) -> dict[str, str] | None:
    return None if mta is None else {"mta_type": mta.kind, "name": mta.value}


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _text_or_bytes(data: bytes) -> str | list[int]:
    # As KumoMTA serialises BStringUtf8: a string when UTF-8, the byte values otherwise.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


# --- MIME, as far as reports need it ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    headers: Headers
    body: bytes  # raw: not transfer-decoded

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)

    def content_type(self) -> tuple[str, _HeaderValue]:
        """The media type, lowercased (``text/plain`` when absent, RFC 2045 5.2), and its parameters."""
        holder = _HeaderValue()
        value = self.header("content-type")
        if value is not None:
            holder["Content-Type"] = value
        return holder.get_content_type(), holder

    def decoded_body(self) -> bytes:
        encoding = (self.header("content-transfer-encoding") or "").strip().lower()
        if encoding == "base64":
            try:
                return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", self.body) + b"==")
            except (binascii.Error, ValueError):
                return self.body
        if encoding == "quoted-printable":
            return quopri.decodestring(self.body)
        return self.body


_LINE_END = re.compile(rb"\r?\n")


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Header section and body of an entity (the body empty when there is no blank line)."""
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        return data, b""
    return data[: match.start()], data[match.end() :]


def parse_headers(section: bytes | str) -> Headers:
    """Header fields of a header section: unfolded (RFC 5322 2.2.3), values stripped.

    Lines that are neither a field nor a continuation are skipped, as are obsolete
    folds before the first field.
    """
    text = section.decode("utf-8", "replace") if isinstance(section, bytes) else section
    fields: list[list[str]] = []
    for line in re.split(r"\r?\n", text):
        if line[:1] in (" ", "\t"):
            if fields:
                fields[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip()
        if colon and name and " " not in name and "\t" not in name:
            fields.append([name, value.strip()])
    return tuple((name, value.strip()) for name, value in fields)


def _entity(data: bytes) -> _Part:
    head, body = _split_head(data)
    return _Part(parse_headers(head), body)


def _children(part: _Part, boundary: str) -> list[_Part]:
    """The body parts of a multipart entity (RFC 2046 5.1.1); the preamble and epilogue dropped."""
    delimiter = b"--" + boundary.encode("utf-8", "replace")
    parts: list[_Part] = []
    current: list[bytes] | None = None
    for line in _LINE_END.split(part.body):
        stripped = line.rstrip(b" \t")
        if stripped.startswith(delimiter):
            rest = stripped[len(delimiter) :]
            if rest in (b"", b"--"):
                if current is not None:
                    parts.append(_entity(b"\n".join(current)))
                current = None if rest == b"--" else []
                if rest == b"--":
                    break
                continue
        if current is not None:
            current.append(line)
    return parts


def _report_parts(data: bytes) -> tuple[str | None, list[_Part]] | None:
    """The ``report-type`` and the body parts of a top-level ``multipart/report``; None otherwise."""
    match = re.search(rb"\r?\n\r?\n", data)
    head = data if match is None else data[: match.start()]
    top = _Part(parse_headers(head), b"")
    media_type, params = top.content_type()
    if media_type != "multipart/report":
        return None  # the common case, decided without copying the body
    top = _Part(top.headers, b"" if match is None else data[match.end() :])
    boundary = params.get_param("boundary")
    report_type = params.get_param("report-type")
    if not isinstance(boundary, str) or not boundary:
        return None
    return (report_type.strip().lower() if isinstance(report_type, str) else None), _children(top, boundary)


def _original(parts: Sequence[_Part]) -> OriginalMessage | None:
    """The last ``message/rfc822`` or ``text/rfc822-headers`` part, as KumoMTA takes it."""
    found: _Part | None = None
    for part in parts:
        if part.content_type()[0] in ("message/rfc822", "text/rfc822-headers", "message/global",
                                      "message/global-headers"):
            found = part
    if found is None:
        return None
    raw = found.body
    head, _ = _split_head(raw)
    headers = parse_headers(head)
    return OriginalMessage(
        data=raw.replace(b"\r\n", b"\n"),
        headers=headers,
        trimta_id=_trimta_id(headers),
        message_id=_message_id(headers),
        supplemental_trace=_supplemental_trace(headers),
    )


_TRIMTA_RECEIVED = re.compile(r"\(trimta\)[^;]*?\bid\s+([0-9A-Za-z._-]+)")


def _trimta_id(headers: Headers) -> str | None:
    # The Received header trimta prepends (trimta.core.trace): "by HOST (trimta) with P id ID; date".
    # The first (newest) one trimta wrote is the hop that took the message in.
    for name, value in headers:
        if name.lower() == "received":
            match = _TRIMTA_RECEIVED.search(value)
            if match:
                return match.group(1)
    return None


def _message_id(headers: Headers) -> str | None:
    for name, value in headers:
        if name.lower() == "message-id" and value:
            return value.strip().removeprefix("<").removesuffix(">") or None
    return None


def _supplemental_trace(headers: Headers) -> Mapping[str, Any] | None:
    """KumoMTA's supplemental trace header: any ``X-`` header that is base64 of a JSON object
    carrying the marker ``"_@_": "\\_/"``; the object without the marker."""
    for name, value in headers:
        if not name.lower().startswith("x-"):
            continue
        compact = re.sub(r"\s+", "", value)
        if not compact or len(compact) % 4 or not re.fullmatch(r"[A-Za-z0-9+/]+=*", compact):
            continue
        try:
            decoded = json.loads(base64.b64decode(compact, validate=True))
        except (binascii.Error, ValueError, RecursionError):
            continue
        if isinstance(decoded, dict) and decoded.get("_@_") == TRACE_MARKER:
            return {k: v for k, v in decoded.items() if k != "_@_"}
    return None


# --- field values -------------------------------------------------------------------------


class _Malformed(Exception):
    """A required field is missing, repeated or malformed: the message is not a report."""


def _fields(block: str) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for name, value in parse_headers(block):
        by_name.setdefault(name.lower(), []).append(value)
    return by_name


def _take(fields: dict[str, list[str]], name: str, *, required: bool = False) -> str | None:
    values = fields.pop(name, None)
    if values is None:
        if required:
            raise _Malformed(f"{name} missing")
        return None
    if len(values) != 1:
        if required:
            raise _Malformed(f"{name} repeated")
        return None
    return values[0]


def _typed(value: str | None, *, address: bool = False) -> TypedName | None:
    if value is None:
        return None
    kind, semicolon, name = value.partition(";")
    if not semicolon:
        return None
    name = name.strip()
    if address and kind.strip().lower() == "rfc822":
        name = _address(name)
    return TypedName(kind.strip(), name)


def _address(value: str) -> str:
    """An address as KumoMTA writes an EnvelopeAddress: no angle brackets, no comment."""
    value = value.strip()
    if value.startswith("<") and ">" in value:
        value = value[1 : value.index(">")]
    return value.strip()


_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+(.*))?", re.DOTALL)


def _status(value: str | None) -> Status | None:
    match = _STATUS.fullmatch(value.strip()) if value is not None else None
    if match is None:
        return None
    comment = match.group(4)
    return Status(int(match.group(1)), int(match.group(2)), int(match.group(3)), comment.strip() if comment else None)


def parse_date(value: str | None) -> float | None:
    """An RFC 5322 date-time (obsolete forms too: two-digit years, ``UTC``) as Unix seconds."""
    if value is None:
        return None
    try:
        parts = parsedate_tz(value)
        if parts is None:
            return None
        year, month, day, hour, minute, second = parts[:6]
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60):
            return None
        offset = parts[9] or 0
        return float(calendar.timegm((*parts[:6], 0, 1, -1)) - offset)
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def _extensions(fields: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    return {name: tuple(values) for name, values in fields.items()}


# --- the parsers ----------------------------------------------------------------------------


def parse_delivery_report(data: bytes) -> DeliveryReport | None:
    """The DSN `data` is, or None if it is none (any ``multipart/report`` with a
    ``message/delivery-status`` part whose required fields are there)."""
    try:
        return _delivery_report(data)
    except (_Malformed, ValueError, LookupError, TypeError, UnicodeError, RecursionError):
        return None


def _delivery_report(data: bytes) -> DeliveryReport | None:
    found = _report_parts(data)
    if found is None:
        return None
    _, parts = found
    status_part = next((p for p in parts if p.content_type()[0] in
                        ("message/delivery-status", "message/global-delivery-status")), None)
    if status_part is None:
        return None
    text = status_part.decoded_body().decode("utf-8", "replace").replace("\r\n", "\n")
    blocks = [b for b in re.split(r"\n[ \t]*\n", text.strip("\n")) if b.strip()]
    if not blocks:
        return None
    fields = _fields(blocks[0])
    reporting_mta = _typed(_take(fields, "reporting-mta", required=True))
    if reporting_mta is None:
        raise _Malformed("Reporting-MTA malformed")
    per_message = MessageReport(
        reporting_mta=reporting_mta,
        original_envelope_id=_take(fields, "original-envelope-id"),
        dsn_gateway=_typed(_take(fields, "dsn-gateway")),
        received_from_mta=_typed(_take(fields, "received-from-mta")),
        arrival_date=parse_date(_take(fields, "arrival-date")),
        extensions=_extensions(fields),
    )
    recipients = tuple(_recipient_report(block) for block in blocks[1:])
    return DeliveryReport(per_message, recipients, _original(parts))


def _recipient_report(block: str) -> RecipientReport:
    fields = _fields(block)
    final = _typed(_take(fields, "final-recipient", required=True), address=True)
    action = (_take(fields, "action", required=True) or "").strip().lower()
    # RFC 3464 2.3.3 allows a comment after the action ("failed (bad destination)").
    action = action.split("(", 1)[0].strip()
    status = _status(_take(fields, "status", required=True))
    if final is None or action not in ACTIONS or status is None:
        raise _Malformed("Final-Recipient, Action or Status malformed")
    return RecipientReport(
        final_recipient=final,
        action=action,
        status=status,
        original_recipient=_typed(_take(fields, "original-recipient"), address=True),
        remote_mta=_typed(_take(fields, "remote-mta")),
        diagnostic_code=_typed(_take(fields, "diagnostic-code")),
        last_attempt_date=parse_date(_take(fields, "last-attempt-date")),
        final_log_id=_take(fields, "final-log-id"),
        will_retry_until=parse_date(_take(fields, "will-retry-until")),
        extensions=_extensions(fields),
    )


def parse_feedback_report(data: bytes) -> FeedbackReport | None:
    """The ARF report `data` is, or None if it is none (``multipart/report`` with
    ``report-type=feedback-report`` and a ``message/feedback-report`` part whose
    required fields are there)."""
    try:
        return _feedback_report(data)
    except (_Malformed, ValueError, LookupError, TypeError, UnicodeError, RecursionError):
        return None


def _feedback_report(data: bytes) -> FeedbackReport | None:
    found = _report_parts(data)
    if found is None or found[0] != "feedback-report":
        return None
    parts = found[1]
    report_part = next((p for p in parts if p.content_type()[0] == "message/feedback-report"), None)
    if report_part is None:
        return None
    fields = _fields(report_part.decoded_body().decode("utf-8", "replace"))
    feedback_type = _take(fields, "feedback-type", required=True)
    user_agent = _take(fields, "user-agent", required=True)
    version = _take(fields, "version", required=True)
    assert feedback_type is not None and user_agent is not None and version is not None
    arrival = _take(fields, "arrival-date")
    received = _take(fields, "received-date")  # the name of early drafts, still sent
    incidents = _take(fields, "incidents")
    mail_from = _take(fields, "original-mail-from")
    return FeedbackReport(
        feedback_type=feedback_type,
        user_agent=user_agent,
        version=version,
        arrival_date=parse_date(arrival) if arrival is not None else parse_date(received),
        incidents=int(incidents) if incidents is not None and incidents.isdigit() and len(incidents) < 10 else None,
        original_envelope_id=_take(fields, "original-envelope-id"),
        original_mail_from=_address(mail_from) if mail_from is not None else None,
        reporting_mta=_typed(_take(fields, "reporting-mta")),
        source_ip=_take(fields, "source-ip"),
        authentication_results=tuple(fields.pop("authentication-results", ())),
        original_rcpt_to=tuple(_address(a) for a in fields.pop("original-rcpt-to", ())),
        reported_domain=tuple(fields.pop("reported-domain", ())),
        reported_uri=tuple(fields.pop("reported-uri", ())),
        extensions=_extensions(fields),
        original=_original(parts),
    )


# --- what the records say ---------------------------------------------------------------------


_SMTP_REPLY = re.compile(r"(\d{3})(?:[ -]|$)(.*)", re.DOTALL)
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?:\s+|$)")


def diagnostic_reply(entry: RecipientReport) -> Reply:
    """The reply a DSN says the recipient's server gave, as KumoMTA reads it for its ``OOB`` record:
    the code of an ``smtp`` Diagnostic-Code (550 if it has none), the enhanced code of ``Status``.

    The text is the reply's, without codes (as trimta writes every reply's; an enhanced code
    other than Status's, as Exim's ``5.0.0`` for a quoted ``5.2.1``, stays): the lines of a
    multi-line reply quoted in one folded field (``550-5.1.1 ... 550-5.1.1 ...``) are joined
    by spaces. A diagnostic of another type (``X-Postfix; ...``) is kept as text; none: the
    Status comment, if any.
    """
    status = entry.status
    enhanced = status.code
    diagnostic = entry.diagnostic_code
    code = 550
    if diagnostic is None:
        text = status.comment or ""
    elif diagnostic.kind.lower() == "smtp":
        text = diagnostic.value
        match = _SMTP_REPLY.fullmatch(text)
        if match is not None and 200 <= int(match.group(1)) <= 599:
            code = int(match.group(1))
            text = match.group(2).lstrip()
            quoted = _ENHANCED.match(text)
            if quoted is not None and quoted.group().strip() == "%d.%d.%d" % enhanced:
                text = text[quoted.end():]  # said by Status already
            # The continuation lines' own "550-5.1.1 " prefixes, left by unfolding.
            text = re.sub(rf"\s+{code}[- ](?:[245]\.\d{{1,3}}\.\d{{1,3}}\s+)?", " ", text)
    else:
        text = diagnostic.value
    return Reply(code, enhanced, (text.strip(),))


@dataclass(frozen=True, slots=True)
class Attribution:
    """Whose mail a report is about, as far as the returned message says."""

    tenant: str | None = None
    campaign: str | None = None
    trimta_id: str | None = None
    message_id: str | None = None
    recipient: str | None = None  # from KumoMTA's supplemental trace header


def attribution(original: OriginalMessage | None, *, tenant_header: str, campaign_header: str) -> Attribution:
    """What `original` says of its tenant and campaign (its tenant and campaign headers, when
    they were kept; else the supplemental trace header's ``tenant`` and ``campaign`` meta),
    trimta's id of it and its Message-ID."""
    if original is None:
        return Attribution()
    trace = original.supplemental_trace or {}

    def traced(key: str) -> str | None:
        value = trace.get(key)
        return value if isinstance(value, str) and value else None

    return Attribution(
        tenant=original.header(tenant_header) or traced("tenant"),
        campaign=original.header(campaign_header) or traced("campaign"),
        trimta_id=original.trimta_id,
        message_id=original.message_id,
        recipient=traced("recipient"),
    )
