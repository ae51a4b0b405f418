"""Log records: KumoMTA's record types and field names, built as plain dicts.

Every record says whose mail it was (``tenant``, ``campaign``, ``queue``) so an
operator can filter one customer's traffic out of the stream.

Message records carry every field of KumoMTA's ``JsonLogRecord`` with its type
(``event_time``/``created_time`` as RFC 3339, ``meta`` and ``headers`` maps,
``source_address``, ``delivery_protocol``, the TLS fields, ``session_id``, ...), so a
consumer written against KumoMTA's log types reads them; ``nodeid`` is stamped by the
log sink (`trimta.services.logs`), which knows the node. trimta's own fields
(``tenant``, ``campaign``, ``domain``, ``ready_queue``, ``site_name``, ...) follow.
"""

from __future__ import annotations

import email.header
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trimta.core.bounce import classify
from trimta.core.mail_reports import Attribution, DeliveryReport, FeedbackReport, diagnostic_reply
from trimta.core.message import Message, Reception
from trimta.core.outcome import SessionInfo
from trimta.protocol.replies import Reply

RECEPTION = "Reception"
REJECTION = "Rejection"
DELIVERY = "Delivery"
TRANSIENT_FAILURE = "TransientFailure"
BOUNCE = "Bounce"
EXPIRATION = "Expiration"
ADMIN_BOUNCE = "AdminBounce"
# An operator's rebind moved a message to another scheduled queue (response 250 "Rebound from A to B: reason").
ADMIN_REBIND = "AdminRebind"
# KumoMTA's record for a message held back without an attempt; trimta writes it when a
# bug met while routing or sending a message sent it back to its scheduled queue.
DELAYED = "Delayed"
# KumoMTA's records of a message moved to another node (source) and from one (target).
XFER_OUT = "XferOut"
XFER_IN = "XferIn"
# trimta's own: an automation rule started or ended its actions on a ready queue.
AUTOMATION = "Automation"
# KumoMTA's records of reports received (listener domains' log_oob, log_arf): a recipient's
# failure in an out-of-band bounce (RFC 3464), a feedback report (RFC 5965).
OOB = "OOB"
FEEDBACK = "Feedback"

# The records KumoMTA runs through its bounce classifier (RecordType::is_bounce_classifiable):
# a response from the destination, an operator's bounce, an expiry, a refusal.
CLASSIFIED = frozenset({BOUNCE, TRANSIENT_FAILURE, EXPIRATION, ADMIN_BOUNCE, REJECTION, OOB, FEEDBACK})


@dataclass(frozen=True, slots=True)
class LogFields:
    """What ``[logs] headers`` and ``meta`` ask records to carry (KumoMTA's options of
    those names), and the node's id for records encoded away from the log sink.

    A name ending in ``*`` matches every name with that prefix; header names match
    without regard to case, meta names exactly, as in KumoMTA. Headers are captured
    when a message is received (`Message.log_headers`: its records never read the
    spool again); meta is selected as each record is written (`select`), so a
    rebind's new values show.
    """

    headers: tuple[str, ...] = ()
    meta: tuple[str, ...] = ()
    nodeid: str | None = None

    def select(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with its ``meta`` narrowed to what `meta` asks for (in place)."""
        meta = record.get("meta")
        if meta:
            record["meta"] = select_meta(meta, self.meta) if self.meta else {}
        return record


NO_LOG_FIELDS = LogFields()


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # Records cluster in time (and a message's records share its creation time): the
    # formatted second is mostly found here, which halves the cost of a record's times.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def rfc3339(t: float) -> str:
    """`t` (Unix seconds) as KumoMTA writes ``event_time``: UTC, microseconds, ``Z``."""
    seconds, fraction = divmod(round(t * 1_000_000), 1_000_000)
    return f"{_second(seconds)}.{fraction:06d}Z"


def _matches(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def select_meta(meta: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The meta values `names` ask for (case-sensitive, ``*`` suffix wildcards); nulls left out."""
    return {k: v for k, v in meta.items() if v is not None and any(_matches(n, k) for n in names)}


def reception_meta(reception: Reception) -> dict[str, Any]:
    """The meta KumoMTA's listener sets, under its names (None: not known)."""
    return {
        "reception_protocol": reception.protocol,
        "received_from": reception.peer_address or None,
        "received_via": reception.listener or None,
        "authn_id": reception.auth_identity,
    }


def message_meta(message: Message) -> dict[str, Any]:
    """All of a message's meta: the listener's, the queue helper's (``tenant``, ``campaign``,
    ``queue``, ``routing_domain``), then the message's own (injection, rebind), which wins.
    Every record gets all of it; the log sink narrows it to ``[logs] meta`` (`LogFields.select`)."""
    meta = reception_meta(message.reception)
    meta["tenant"] = message.tenant
    meta["campaign"] = message.campaign
    meta["queue"] = message.queue
    meta["routing_domain"] = message.routing_domain
    if message.meta:
        meta.update(message.meta)
    return meta


def _decode_header(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def capture_headers(data: bytes, names: tuple[str, ...]) -> dict[str, Any]:
    """The headers of `data` that `names` ask for, as KumoMTA logs them.

    Names match without regard to case (``*`` suffix: any name with that prefix); the
    key is the name as the message spells it; one occurrence gives a string, several a
    list, in message order. Values are unfolded and their RFC 2047 words decoded.
    """
    if not names:
        return {}
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    found: dict[str, tuple[str, list[str]]] = {}  # lowercase name -> (as spelt, values)
    name: str | None = None
    for raw in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if raw[:1] in (" ", "\t") and name is not None:
            found[name][1][-1] += " " + raw.strip()
            continue
        key, colon, value = raw.partition(":")
        if not colon or not key or key != key.strip():
            name = None
            continue
        name = key.lower()
        found.setdefault(name, (key, []))[1].append(value.strip())
    wanted = [n.lower() for n in names]
    captured: dict[str, Any] = {}
    for lower, (spelt, values) in found.items():
        if any(_matches(w, lower) for w in wanted):
            decoded = [_decode_header(v).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                       for v in values]
            captured[spelt] = decoded[0] if len(decoded) == 1 else decoded
    return captured


def _session_fields(session: SessionInfo | None, delivery_protocol: str | None = None) -> dict[str, Any]:
    """KumoMTA's per-session fields; the optional ones left out when unknown, as KumoMTA does."""
    if session is None:
        return {"source_address": None, "delivery_protocol": delivery_protocol}
    source: dict[str, Any] | None = {"address": session.source_address} if session.source_address else None
    if source is not None and session.proxy_server is not None:
        source.update(server=session.proxy_server, protocol=session.proxy_protocol)  # KumoMTA's MaybeProxiedSourceAddress
    fields: dict[str, Any] = {"source_address": source, "delivery_protocol": session.delivery_protocol}
    if session.tls_cipher is not None:
        fields["tls_cipher"] = session.tls_cipher
    if session.tls_protocol_version is not None:
        fields["tls_protocol_version"] = session.tls_protocol_version
    if session.tls_peer_subject_name is not None:
        fields["tls_peer_subject_name"] = list(session.tls_peer_subject_name)
    fields["session_id"] = session.session_id
    return fields


def response(reply: Reply, command: str | None = None) -> dict[str, Any]:
    """KumoMTA's ``response`` object: code, enhanced_code parts, content, command."""
    enhanced = None
    if reply.enhanced is not None:
        cls, subject, detail = reply.enhanced
        enhanced = {"class": cls, "subject": subject, "detail": detail}
    return {"code": reply.code, "enhanced_code": enhanced, "content": reply.text, "command": command}


def message_record(
    kind: str,
    message: Message,
    reply: Reply,
    now: float,
    *,
    site: str = "",
    egress_pool: str | None = None,
    egress_source: str | None = None,
    peer_address: dict[str, Any] | None = None,
    command: str | None = None,
    bounce_classification: str | None = None,
    session: SessionInfo | None = None,
    provider_name: str | None = None,
    nodeid: str | None = None,
    delivery_protocol: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A record about one message (Reception, Delivery, Bounce, ...).

    `site` is KumoMTA's: the ready queue's name (empty at reception). `session` is the
    SMTP session the record comes from (outbound, or the inbound one for a Reception);
    `delivery_protocol` says how delivery was tried when no session was established.
    The classification, unless given, is the bounce classifier's for the kinds KumoMTA
    classifies (`CLASSIFIED`), ``Uncategorized`` otherwise.
    """
    rec = message.reception
    if bounce_classification is None:
        bounce_classification = classify(reply) if kind in CLASSIFIED else "Uncategorized"
    if peer_address is None:
        peer_address = {"name": rec.helo, "addr": rec.peer_address}
    if peer_address and session is not None and session.peer_is_secure:
        # As KumoMTA writes it: only when true (its readers take a missing one as false).
        peer_address["is_secure"] = True
    record = {
        "type": kind,
        "id": message.id,
        "sender": message.sender,
        "recipient": message.recipient,
        "queue": message.queue,
        "site": site,
        "size": message.size,
        "response": response(reply, command),
        "peer_address": peer_address,
        "timestamp": int(now),
        "event_time": rfc3339(now),
        "created": int(message.created),
        "created_time": rfc3339(message.created),
        "num_attempts": message.attempts,
        "bounce_classification": bounce_classification,
        "egress_pool": egress_pool,
        "egress_source": egress_source,
        "feedback_report": None,
        "meta": message_meta(message),
        "headers": message.log_headers or {},
        "reception_protocol": rec.protocol,
        **_session_fields(session, delivery_protocol),
        "tenant": message.tenant,
        "campaign": message.campaign,
        "domain": message.domain,
    }
    if provider_name is not None:
        record["provider_name"] = provider_name
    if nodeid is not None:
        record["nodeid"] = nodeid
    record.update(extra)
    return record


def _attributed(record: dict[str, Any], attribution: Attribution) -> dict[str, Any]:
    """A report's record says whose mail the report is about, where the returned message tells."""
    if attribution.tenant is not None:
        record["tenant"] = attribution.tenant
        record["campaign"] = attribution.campaign
    elif attribution.campaign is not None:
        record["campaign"] = attribution.campaign
    record["original_id"] = attribution.trimta_id
    record["original_message_id"] = attribution.message_id
    return record


def feedback_record(message: Message, report: FeedbackReport, reply: Reply, now: float, *,
                    session: SessionInfo | None, attribution: Attribution) -> dict[str, Any]:
    """KumoMTA's ``Feedback`` record of a feedback report received as `message`: its Reception
    record's fields, ``feedback_report`` the parsed report (`FeedbackReport.to_json`)."""
    record = message_record(FEEDBACK, message, reply, now, session=session, feedback_report=report.to_json())
    return _attributed(record, attribution)


def oob_records(message: Message, report: DeliveryReport, now: float, *, peer_address: str,
                session: SessionInfo | None, attribution: Attribution) -> list[dict[str, Any]]:
    """KumoMTA's ``OOB`` records of a DSN received as `message`: one per recipient it says failed.

    As KumoMTA writes them: ``sender`` is the DSN's recipient (the returned message's
    envelope sender), ``recipient`` the original recipient the DSN names (else its final
    one), ``response`` the reply it quotes (`diagnostic_reply`), ``peer_address`` the
    Reporting-MTA's name and the client's address, ``timestamp`` the Last-Attempt-Date
    (else now), ``size`` and ``num_attempts`` 0; ``queue`` and ``id`` are the DSN's own.
    """
    out = []
    inbound = SessionInfo(session.session_id) if session is not None else None
    reporter = report.per_message.reporting_mta.value
    for entry in report.per_recipient:
        if entry.action != "failed":
            continue
        when = entry.last_attempt_date if entry.last_attempt_date is not None else now
        record = message_record(OOB, message, diagnostic_reply(entry), when,
                                peer_address={"name": reporter, "addr": peer_address}, session=inbound)
        recipient = entry.recipient
        record.update(sender=message.recipient, recipient=recipient, size=0, num_attempts=0,
                      domain=recipient.rpartition("@")[2].lower() or None)
        out.append(_attributed(record, attribution))
    return out


def rejection_record(
    *,
    reply: Reply,
    now: float,
    sender: str | None,
    recipient: str | None,
    peer_address: str,
    helo: str,
    protocol: str,
    command: str,
    session_id: str,
    listener: str,
    meta: Mapping[str, Any] | None = None,
    session: SessionInfo | None = None,
) -> dict[str, Any]:
    """A refusal at reception (relay denied, too big, spool full, ...).

    As KumoMTA writes it: no sender or recipient is ``""``; `meta` is the session's
    (the log sink narrows it to ``[logs] meta``); headers are ``{}`` (there is no message).
    """
    event_time = rfc3339(now)
    record = {
        "type": REJECTION,
        "id": session_id,
        "sender": sender or "",
        "recipient": recipient or "",
        "queue": "",
        "site": "",
        "size": 0,
        "response": response(reply, command),
        "peer_address": {"name": helo, "addr": peer_address},
        "timestamp": int(now),
        "event_time": event_time,
        "created": int(now),
        "created_time": event_time,
        "num_attempts": 0,
        "bounce_classification": classify(reply),
        "egress_pool": None,
        "egress_source": None,
        "feedback_report": None,
        "meta": {k: v for k, v in meta.items() if v is not None} if meta else {},
        "headers": {},
        "reception_protocol": protocol,
        **_session_fields(session),
        "tenant": None,
        "campaign": None,
        "listener": listener,
    }
    if session is None:
        record["session_id"] = session_id
    return record


def automation_record(
    *,
    event: str,
    ready_queue: str,
    site: str,
    egress_source: str,
    rule: str,
    actions: list[str],
    duration_s: float,
    until: float,
    reply: Reply,
    message: Message,
    now: float,
) -> dict[str, Any]:
    """An automation rule's actions starting (``event`` "Fired") or ending ("Ended").

    `message` is the one whose response fired the rule: its tenant, campaign and
    domain say whose traffic set it off, and `response` is what the receiver said.
    """
    return {
        "type": AUTOMATION,
        "event": event,
        "id": message.id,
        "ready_queue": ready_queue,
        "site": site,
        "egress_source": egress_source,
        "rule": rule,
        "actions": actions,
        "duration": duration_s,
        "until": int(until),
        "response": response(reply),
        "recipient": message.recipient,
        "queue": message.queue,
        "tenant": message.tenant,
        "campaign": message.campaign,
        "domain": message.domain,
        "timestamp": int(now),
        "event_time": rfc3339(now),
    }
