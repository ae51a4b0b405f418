"""HTTP injection (``POST /api/inject/v1``): KumoMTA's request, rendered per recipient, accepted.

The request names an envelope sender, recipients (``{email, name, substitutions}``) and
the content: either a whole RFC 5322 message as a string, or an object
(``{subject, from, reply_to, headers, text_body, html_body, attachments}``) that is
built into MIME with the standard library's `email` package.

Templating follows KumoMTA: the content is a Jinja template rendered once per
recipient with ``email``, ``name`` and ``to_header`` predefined, then the request's
``substitutions``, then the recipient's own (later ones win). For a built message the
subject, bodies and header values are templates; attachments are not.
``"template_dialect": "Static"`` turns templating off; ``"Handlebars"`` renders them as
KumoMTA's handlebars-rust does (`trimta.core.handlebars`: HTML escaped only in the HTML
bodies, budgets on output, loops and steps, and the same time budget). Jinja templates run in Jinja's
sandbox with budgets on size and time (`trimta.services.templates`), in a worker thread, so a
hostile template can neither reach Python's internals nor stall the event loop.

Recipients whose rendered messages are byte-identical share one stored copy (one
`Acceptor.accept` call); differing ones are accepted concurrently, so the spool's
group commit makes them durable together: a hundred personalised messages cost one
fsync, not a hundred. The answer counts successes and failures per recipient; a
recipient counts as a success only once its message is durable.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from typing import Any, cast

import trio
from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.exceptions import SecurityError

from trimta.adapters.http import HttpError, JsonFields, json_type
from trimta.core import handlebars
from trimta.core.message import Reception
from trimta.protocol._abnf import parse_path
from trimta.services.acceptance import Acceptor, Submission
from trimta.services.templates import BoundedSandbox, render_bounded

REQUEST_FIELDS = ("envelope_sender", "recipients", "content", "substitutions", "tenant", "campaign",
                  "template_dialect", "deferred_spool", "deferred_generation", "trace_headers")
RECIPIENT_FIELDS = ("email", "name", "substitutions", "metadata")
TRACE_HEADER_FIELDS = ("received_header", "supplemental_header", "header_name", "include_meta_names")
CONTENT_FIELDS = ("subject", "from", "reply_to", "headers", "text_body", "html_body", "amp_html_body", "attachments")
ADDRESS_FIELDS = ("email", "name")
ATTACHMENT_FIELDS = ("data", "base64", "content_type", "file_name", "content_id")
DIALECTS = ("Jinja", "Static", "Handlebars")
# The builder writes these itself; a request setting them would break the MIME structure.
RESERVED_HEADERS = ("content-type", "content-transfer-encoding", "mime-version")
MAX_ADDRESS_LENGTH = 254  # RFC 5321 4.5.3.1.3's path limit, less the angle brackets


# --- the request ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    name: str | None = None
    substitutions: Mapping[str, Any] = field(default_factory=dict)
    # KumoMTA's per-recipient metadata: set on the message's meta.
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TraceHeaders:
    """KumoMTA's ``trace_headers``: whether to add ``Received``, and the supplemental header
    (``X-KumoRef``: base64 of ``{"_@_": "\\_/", "recipient": ..., meta named in
    include_meta_names}``) by which feedback reports are matched back to the message."""

    received_header: bool = False
    supplemental_header: bool = True
    header_name: str = "X-KumoRef"
    include_meta_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A ``from`` or ``reply_to`` of a built message."""

    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    data: bytes
    content_type: str = "application/octet-stream"
    file_name: str | None = None
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class BuiltContent:
    """Content given as an object: what the message is built from."""

    subject: str | None = None
    from_: Mailbox | None = None
    reply_to: Mailbox | None = None
    headers: tuple[tuple[str, str], ...] = ()
    text_body: str | None = None
    html_body: str | None = None
    attachments: tuple[Attachment, ...] = ()
    amp_html_body: str | None = None


@dataclass(frozen=True, slots=True)
class InjectRequest:
    envelope_sender: str
    recipients: tuple[Recipient, ...]
    content: str | BuiltContent
    substitutions: Mapping[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    campaign: str | None = None
    template_dialect: str = "Jinja"
    # Answered at once, generated later (trimta.services.deferred_inject).
    deferred_generation: bool = False
    # None: trimta's default (a Received header, no supplemental header).
    trace_headers: TraceHeaders | None = None


def parse_inject_request(body: Any) -> InjectRequest:
    """Validate a decoded JSON body; `HttpError` 400 naming the field otherwise."""
    f = JsonFields(body, "", REQUEST_FIELDS)
    sender = f.string("envelope_sender", required=True)
    assert sender is not None
    if sender and not valid_address(sender):
        raise f.error("envelope_sender", f"not a valid address: {sender!r} (use \"\" for a null sender)")
    items = f.array("recipients", required=True)
    assert items is not None
    if not items:
        raise f.error("recipients", "expected at least one recipient")
    recipients = tuple(_parse_recipient(item, f"recipients[{i}]") for i, item in enumerate(items))
    content = f.value("content", required=True)
    if isinstance(content, str):
        if not content.strip():
            raise f.error("content", "must not be empty")
    elif isinstance(content, dict):
        content = _parse_content(content)
    else:
        raise f.error("content", f"expected a message as a string or an object to build one from, "
                                 f"got {json_type(content)}")
    # KumoMTA's deferred_spool trades durability for speed; trimta stores every message durably
    # before answering anyway. deferred_generation: see trimta.services.deferred_inject.
    f.boolean("deferred_spool")
    deferred_generation = f.boolean("deferred_generation")
    dialect = f.string("template_dialect", default="Jinja")
    if dialect not in DIALECTS:
        raise f.error("template_dialect", f"expected one of {', '.join(DIALECTS)}, got {dialect!r}")
    return InjectRequest(
        envelope_sender=sender,
        recipients=recipients,
        content=content,
        substitutions=f.object("substitutions") or {},
        tenant=f.string("tenant", non_empty=True),
        campaign=f.string("campaign", non_empty=True),
        template_dialect=dialect or "Jinja",
        deferred_generation=deferred_generation,
        trace_headers=_parse_trace_headers(f.value("trace_headers")),
    )


def _parse_trace_headers(value: Any) -> TraceHeaders | None:
    if value is None:
        return None
    f = JsonFields(value, "trace_headers", TRACE_HEADER_FIELDS)
    name = f.string("header_name", default="X-KumoRef") or ""
    if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
        raise f.error("header_name", f"expected a header field name like \"X-KumoRef\", got {name!r}")
    names = f.array("include_meta_names") or []
    if not all(isinstance(n, str) for n in names):
        raise f.error("include_meta_names", "expected an array of meta names (strings)")
    return TraceHeaders(received_header=f.boolean("received_header"),
                        supplemental_header=f.boolean("supplemental_header", True),
                        header_name=name, include_meta_names=tuple(names))


def _parse_recipient(item: Any, where: str) -> Recipient:
    if isinstance(item, str):  # a bare address is a common shorthand; take it
        return Recipient(item)
    f = JsonFields(item, where, RECIPIENT_FIELDS)
    email = f.string("email", required=True)
    assert email is not None
    return Recipient(email, f.string("name"), f.object("substitutions") or {}, f.object("metadata") or {})


def _parse_mailbox(value: Any, where: str) -> Mailbox | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Mailbox(value)
    f = JsonFields(value, where, ADDRESS_FIELDS)
    email = f.string("email", required=True)
    assert email is not None
    return Mailbox(email, f.string("name"))


def _parse_content(value: dict[str, Any]) -> BuiltContent:
    f = JsonFields(value, "content", CONTENT_FIELDS)
    headers = []
    for name, text in (f.object("headers") or {}).items():
        if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
            raise f.error("headers", f"not a header field name: {name!r}")
        if name.lower() in RESERVED_HEADERS:
            raise f.error("headers", f"{name} is set by the message builder; give a full message "
                                     f"as a string to control the MIME structure")
        if not isinstance(text, str):
            raise f.error(f"headers.{name}", f"expected a string, got {json_type(text)}")
        headers.append((name, text))
    attachments = tuple(_parse_attachment(a, f"content.attachments[{i}]")
                        for i, a in enumerate(f.array("attachments") or ()))
    return BuiltContent(
        subject=f.string("subject"),
        from_=_parse_mailbox(f.value("from"), "content.from"),
        reply_to=_parse_mailbox(f.value("reply_to"), "content.reply_to"),
        headers=tuple(headers),
        text_body=f.string("text_body"),
        html_body=f.string("html_body"),
        attachments=attachments,
        amp_html_body=f.string("amp_html_body"),
    )


def _parse_attachment(value: Any, where: str) -> Attachment:
    f = JsonFields(value, where, ATTACHMENT_FIELDS)
    text = f.string("data", required=True)
    assert text is not None
    if f.boolean("base64"):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise f.error("data", "not valid base64") from None
    else:
        data = text.encode("utf-8")
    content_type = f.string("content_type", default="application/octet-stream") or "application/octet-stream"
    if not re.fullmatch(r"[\w.+-]+/[\w.+-]+", content_type):
        raise f.error("content_type", f'expected a type like "application/pdf", got {content_type!r}')
    content_id = f.string("content_id")
    if content_id is not None:
        content_id = content_id.strip("<>")
    return Attachment(data, content_type.lower(), f.string("file_name"), content_id)


def valid_address(address: str) -> bool:
    """Whether `address` is a mailbox SMTP can carry (RFC 5321 4.1.2)."""
    return len(address) <= MAX_ADDRESS_LENGTH and parse_path(f"<{address}>") is not None


# --- templates -------------------------------------------------------------------------


_environment = BoundedSandbox(keep_trailing_newline=True, autoescape=False)
# What rendering one request's messages may take, all recipients together.
RENDER_TIME_BUDGET_S = 10.0


class _Static:
    """A template that is only text (``"template_dialect": "Static"``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self, context: Mapping[str, Any]) -> str:
        return self.text

    def generate(self, context: Mapping[str, Any]) -> Any:
        yield self.text


# KumoMTA's names for the templates of a request: a Handlebars template escapes HTML
# when its name ends in ".html" (the HTML bodies), and render errors name it.
def _handlebars_name(where: str) -> str:
    if where.startswith("content.headers."):
        return f"headers[{where.removeprefix('content.headers.')}]"
    return {"content.subject": "headers[Subject]", "content.text_body": "text_body.txt",
            "content.html_body": "html_body.html",
            "content.amp_html_body": "amp_html_body.html"}.get(where, where)


class _Handlebars:
    """A Handlebars template (``"template_dialect": "Handlebars"``), see trimta.core.handlebars."""

    def __init__(self, text: str, where: str) -> None:
        try:
            self.template = handlebars.compile_template(text, _handlebars_name(where))
        except handlebars.HandlebarsSyntaxError as exc:
            raise HttpError(400, f"{where}: template error on line {exc.line}, column {exc.column}: "
                                 f"{exc.reason}") from None

    def render_bounded(self, context: Mapping[str, Any], *, max_chars: int, deadline: float) -> str:
        def check() -> None:
            if time.monotonic() > deadline:
                raise handlebars.HandlebarsBudgetError("the template ran out of time")

        limits = handlebars.Limits(max_chars=max_chars)
        return self.template.render(dict(context), limits=limits, check=check)


def _compile(text: str | None, where: str, dialect: str) -> Any:
    if text is None:
        return None
    if dialect == "Static":
        return _Static(text)
    if dialect == "Handlebars":
        return _Handlebars(text, where)
    try:
        return _environment.compile_bounded(text)
    except TemplateSyntaxError as exc:
        raise HttpError(400, f"{where}: template error on line {exc.lineno}: {exc.message}") from None


@dataclass(frozen=True, slots=True)
class _Templates:
    """The request's templates, compiled once and rendered per recipient."""

    message: Any = None  # content given as a string
    subject: Any = None
    text_body: Any = None
    html_body: Any = None
    headers: tuple[tuple[str, Any], ...] = ()
    amp_html_body: Any = None


def compile_templates(request: InjectRequest) -> _Templates:
    d = request.template_dialect
    content = request.content
    if isinstance(content, str):
        return _Templates(message=_compile(content, "content", d))
    return _Templates(
        subject=_compile(content.subject, "content.subject", d),
        text_body=_compile(content.text_body, "content.text_body", d),
        html_body=_compile(content.html_body, "content.html_body", d),
        amp_html_body=_compile(content.amp_html_body, "content.amp_html_body", d),
        headers=tuple((name, _compile(text, f"content.headers.{name}", d)) for name, text in content.headers),
    )


def _to_header(recipient: Recipient) -> str:
    return str(Address(display_name=recipient.name or "", addr_spec=recipient.email)) \
        if recipient.name else recipient.email


def _context(request: InjectRequest, recipient: Recipient) -> dict[str, Any]:
    """The template variables, in KumoMTA's order (inject_v1.rs): the request's substitutions,
    then ``email``, ``name`` (when the recipient has one) and ``to_header``, then the
    recipient's own substitutions."""
    context = dict(request.substitutions)
    context["email"] = recipient.email
    if recipient.name is not None:
        context["name"] = recipient.name
    context["to_header"] = _to_header(recipient)
    context.update(recipient.substitutions)
    return context


# --- building messages -------------------------------------------------------------------


def crlf(text: str) -> bytes:
    """A message string as SMTP data: UTF-8, CRLF line endings, ending with CRLF."""
    data = re.sub(r"\r\n|\r|\n", "\r\n", text).encode("utf-8")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


def _check_message(data: bytes) -> None:
    if not _HEADER_LINE.match(data):
        raise ValueError("the message does not start with a header field (like \"Subject: ...\")")


def _mailbox(box: Mailbox) -> Address:
    return Address(display_name=box.name or "", addr_spec=box.email)


def _set_text(part: EmailMessage, text: str, subtype: str) -> None:
    # Quoted-printable keeps non-ASCII text 7-bit: no receiver needs 8BITMIME for it.
    part.set_content(text, subtype=subtype, cte=None if text.isascii() else "quoted-printable")


def build_message(content: BuiltContent, *, sender: str, to_header: str, subject: str | None,
                  text_body: str | None, html_body: str | None, headers: Sequence[tuple[str, str]],
                  hostname: str, amp_html_body: str | None = None) -> bytes:
    """The MIME message for one recipient, from rendered parts. ValueError if a part is unusable."""
    msg = EmailMessage(policy=SMTP)
    given = {name.lower() for name, _ in headers}
    if content.from_ is not None:
        msg["From"] = _mailbox(content.from_)
    elif "from" not in given and sender:
        msg["From"] = sender
    if "to" not in given:
        msg["To"] = to_header
    if subject is not None:
        msg["Subject"] = subject
    if content.reply_to is not None:
        msg["Reply-To"] = _mailbox(content.reply_to)
    if "date" not in given:
        msg["Date"] = formatdate(usegmt=True)
    if "message-id" not in given:
        msg["Message-ID"] = make_msgid(domain=hostname)
    for name, value in headers:
        if name.lower() in ("from", "subject", "reply-to"):
            del msg[name]
        msg[name] = value
    # An attachment with a Content-ID beside an HTML body is inline (multipart/related).
    inline = [a.content_id is not None and html_body is not None for a in content.attachments]
    # The alternatives, least preferred first; AMP before HTML, as AMP for Email asks,
    # since some clients show only the last part they know.
    alternatives = [(text, subtype) for text, subtype in
                    ((text_body, "plain"), (amp_html_body, "x-amp-html"), (html_body, "html")) if text is not None]
    if not alternatives:
        alternatives = [("", "plain")]
    _set_text(msg, *alternatives[0])
    for text, subtype in alternatives[1:]:
        msg.add_alternative(text, subtype=subtype, cte=None if text.isascii() else "quoted-printable")
    if any(inline):
        # With a text body too, msg is multipart/alternative: its last part is the HTML one.
        parts = cast("list[EmailMessage]", msg.get_payload())
        html_part = msg if len(alternatives) == 1 else parts[-1]
        for a in (a for a, is_inline in zip(content.attachments, inline) if is_inline):
            maintype, subtype = a.content_type.split("/", 1)
            html_part.add_related(a.data, maintype=maintype, subtype=subtype, cid=f"<{a.content_id}>",
                                  filename=a.file_name, disposition="inline")
    for a, is_inline in zip(content.attachments, inline):
        if is_inline:
            continue
        maintype, subtype = a.content_type.split("/", 1)
        msg.add_attachment(a.data, maintype=maintype, subtype=subtype, filename=a.file_name or None,
                           cid=f"<{a.content_id}>" if a.content_id else None)
    return msg.as_bytes()


def render(request: InjectRequest, templates: _Templates, recipient: Recipient, hostname: str, *,
           max_chars: int = 20_000_000, deadline: float | None = None) -> bytes:
    """One recipient's message. Raises ValueError, a Jinja error or a `HandlebarsError` saying
    why it cannot be made.

    Each template renders within `max_chars` characters, counted as they are produced,
    and stops (`SecurityError`) once `deadline` (`time.monotonic()`) has passed.
    """
    context = _context(request, recipient)
    content = request.content
    until = deadline if deadline is not None else time.monotonic() + RENDER_TIME_BUDGET_S

    def text(template: Any) -> str | None:
        if template is None:
            return None
        if isinstance(template, _Handlebars):
            return template.render_bounded(context, max_chars=max_chars, deadline=until)
        return render_bounded(template, context, max_chars=max_chars, time_s=until - time.monotonic())

    if isinstance(content, str):
        data = crlf(text(templates.message) or "")
        _check_message(data)
        return supplemental_header(request, recipient) + data
    return supplemental_header(request, recipient) + build_message(
        content,
        sender=request.envelope_sender,
        to_header=_to_header(recipient),  # KumoMTA's To is the recipient's, whatever the substitutions say
        subject=text(templates.subject),
        text_body=text(templates.text_body),
        html_body=text(templates.html_body),
        headers=[(name, text(template) or "") for name, template in templates.headers],
        hostname=hostname,
        amp_html_body=text(templates.amp_html_body),
    )


def meta_of(request: InjectRequest, recipient: Recipient) -> dict[str, Any]:
    """The message's meta: the request's tenant and campaign, the recipient's metadata."""
    meta: dict[str, Any] = {}
    if request.tenant:
        meta["tenant"] = request.tenant
    if request.campaign:
        meta["campaign"] = request.campaign
    meta.update(recipient.metadata)
    return meta


def supplemental_header(request: InjectRequest, recipient: Recipient) -> bytes:
    """KumoMTA's supplemental trace header for one recipient (none unless asked for)."""
    trace = request.trace_headers
    if trace is None or not trace.supplemental_header:
        return b""
    payload: dict[str, Any] = {"_@_": "\\_/", "recipient": recipient.email}
    meta = meta_of(request, recipient)
    payload.update({name: meta[name] for name in trace.include_meta_names if name in meta})
    encoded = base64.b64encode(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return trace.header_name.encode("ascii") + b": " + encoded + b"\r\n"


# --- injecting -------------------------------------------------------------------------------


@dataclass(slots=True)
class InjectResult:
    """KumoMTA's answer: counts, the recipients that failed and why."""

    success_count: int = 0
    fail_count: int = 0
    failed_recipients: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_failed: bool = False  # a failure was ours (spool), not the request's

    def fail(self, recipient: str, reason: str) -> None:
        self.fail_count += 1
        self.failed_recipients.append(recipient)
        self.errors.append(f"{recipient}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "success_count": self.success_count,
            "fail_count": self.fail_count,
            "failed_recipients": self.failed_recipients,
            "errors": self.errors,
        }


class Injector:
    """Turns inject requests into accepted, durable messages."""

    def __init__(self, acceptor: Acceptor, *, hostname: str, max_message_size_bytes: int = 20_000_000) -> None:
        self.acceptor = acceptor
        self.hostname = hostname
        self.max_message_size_bytes = max_message_size_bytes

    async def inject(self, request: InjectRequest, *, peer: str, listener: str = "") -> InjectResult:
        """Render, store and queue; return once every accepted message is durable."""
        templates = compile_templates(request)  # HttpError 400 on a syntax error: nothing accepted
        result = InjectResult()
        valid = []
        for recipient in request.recipients:
            if valid_address(recipient.email):
                valid.append(recipient)
            else:
                result.fail(recipient.email, "not a valid recipient address")
        rendered = await trio.to_thread.run_sync(self._render_all, request, templates, valid)
        # Recipients share a stored copy when their data and their metadata are the same.
        groups: dict[tuple[bytes, str], list[Recipient]] = {}
        for recipient, data in rendered:
            if isinstance(data, str):
                result.fail(recipient.email, data)
            else:
                key = json.dumps(recipient.metadata, sort_keys=True, default=str) if recipient.metadata else ""
                groups.setdefault((data, key), []).append(recipient)
        reception = Reception(peer_address=peer, listener=listener, protocol="HTTP")
        trace = request.trace_headers

        async def accept(data: bytes, group: list[Recipient]) -> None:
            recipients = [r.email for r in group]
            accepted = await self.acceptor.accept(Submission(
                sender=request.envelope_sender, recipients=recipients, data=data, reception=reception,
                tenant=request.tenant, campaign=request.campaign,
                add_trace_header=trace is None or trace.received_header,
                # KumoMTA keeps a recipient's metadata in the message's meta under "extra"
                meta={"extra": dict(group[0].metadata)} if group[0].metadata else None,
            ))
            if accepted.reply.is_positive:
                result.success_count += len(accepted.messages)
            else:
                # 4xx: ours, for now (the spool, a DKIM key); 5xx: the message's own
                # fault (a DKIM policy that cannot sign it: no From:).
                result.server_failed = result.server_failed or accepted.reply.is_transient
                for email in recipients:
                    result.fail(email, str(accepted.reply))

        if len(groups) == 1:
            (((data, _), group),) = groups.items()
            await accept(data, group)
        elif groups:
            async with trio.open_nursery() as nursery:
                for (data, _), group in groups.items():
                    nursery.start_soon(accept, data, group)
        return result

    def _render_all(self, request: InjectRequest, templates: _Templates,
                    recipients: Sequence[Recipient]) -> list[tuple[Recipient, bytes | str]]:
        """Each recipient's message, or why it could not be made. Runs in a worker thread."""
        out: list[tuple[Recipient, bytes | str]] = []
        deadline = time.monotonic() + RENDER_TIME_BUDGET_S
        for recipient in recipients:
            try:
                data = render(request, templates, recipient, self.hostname,
                              max_chars=self.max_message_size_bytes, deadline=deadline)
            except (SecurityError, handlebars.HandlebarsBudgetError) as exc:
                out.append((recipient, f"template refused: {exc}"))
                continue
            except (TemplateError, handlebars.HandlebarsError) as exc:
                out.append((recipient, f"template error: {exc}"))
                continue
            except Exception as exc:  # noqa: BLE001 (user data in a template can raise anything: 1/0, int("x"))
                out.append((recipient, f"cannot build the message: {exc}"))
                continue
            if len(data) > self.max_message_size_bytes:
                out.append((recipient, f"message of {len(data)} bytes exceeds {self.max_message_size_bytes}"))
                continue
            if b"\x00" in data:  # never relayed (see protocol/_data.py): refused here, not bounced later
                out.append((recipient, "the message holds a NUL character (\\u0000), which SMTP does not carry"))
                continue
            out.append((recipient, data))
        return out
