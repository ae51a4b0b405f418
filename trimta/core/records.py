"""Log records: KumoMTA's record types and field names, built as plain dicts.

Every record says whose mail it was (``tenant``, ``campaign``, ``queue``) so an
operator can filter one customer's traffic out of the stream.
"""

from __future__ import annotations

from typing import Any

from trimta.core.message import Message
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
    peer_address: dict[str, str] | None = None,
    command: str | None = None,
    bounce_classification: str = "Uncategorized",
    **extra: Any,
) -> dict[str, Any]:
    """A record about one message (Reception, Delivery, Bounce, ...)."""
    rec = message.reception
    record = {
        "type": kind,
        "id": message.id,
        "sender": message.sender,
        "recipient": message.recipient,
        "queue": message.queue,
        "site": site,
        "size": message.size,
        "response": response(reply, command),
        "peer_address": peer_address if peer_address is not None
        else {"name": rec.helo, "addr": rec.peer_address},
        "timestamp": int(now),
        "created": int(message.created),
        "num_attempts": message.attempts,
        "bounce_classification": bounce_classification,
        "egress_pool": egress_pool,
        "egress_source": egress_source,
        "reception_protocol": rec.protocol,
        "tenant": message.tenant,
        "campaign": message.campaign,
        "domain": message.domain,
    }
    record.update(extra)
    return record


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
) -> dict[str, Any]:
    """A refusal at reception (relay denied, too big, spool full, ...)."""
    return {
        "type": REJECTION,
        "id": session_id,
        "sender": sender,
        "recipient": recipient,
        "queue": "",
        "site": "",
        "size": 0,
        "response": response(reply, command),
        "peer_address": {"name": helo, "addr": peer_address},
        "timestamp": int(now),
        "created": int(now),
        "num_attempts": 0,
        "bounce_classification": "Uncategorized",
        "egress_pool": None,
        "egress_source": None,
        "reception_protocol": protocol,
        "tenant": None,
        "campaign": None,
        "listener": listener,
    }


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
    }
