"""A queued message: one recipient of one accepted transaction, and its metadata.

Every recipient of a transaction becomes its own `Message`; the transaction's data is
stored once and shared through `data_id`. Metadata is plain data that round-trips
through a dict (the spool stores it as JSON).

`to_dict` and `from_dict` name every field by hand rather than going through
`dataclasses.asdict` and `fields`: they run for every message accepted and every
message restored, and the generic versions cost several times more (recursion, deep
copies, introspection). A test checks that they cover every field.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from trimta.core.queues import canonical_routing_domain, queue_name, recipient_domain


@dataclass(frozen=True, slots=True)
class Reception:
    """How a message came in: who sent it, through which listener, how protected."""

    peer_address: str = ""
    listener: str = ""
    helo: str = ""
    # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (RFC 3848), UTF8SMTP... (RFC 6531), HTTP
    protocol: str = "ESMTP"
    tls: str | None = None  # negotiated TLS version, e.g. "TLSv1.3"
    auth_identity: str | None = None

    @property
    def smtputf8(self) -> bool:
        """Whether the message came with MAIL FROM's SMTPUTF8 (RFC 6531): relayed with it too."""
        return self.protocol.startswith("UTF8SMTP")


@dataclass(slots=True)
class Message:
    """Metadata of one queued message (one recipient)."""

    id: str
    data_id: str
    sender: str
    recipient: str
    tenant: str | None
    campaign: str | None
    domain: str
    queue: str
    size: int
    created: float
    reception: Reception = field(default_factory=Reception)
    attempts: int = 0
    due: float | None = None
    # Delivered through this domain's MX hosts instead of its own (KumoMTA's routing
    # domain: a smarthost, a domain literal such as "[10.0.0.1]"); None: its own.
    routing_domain: str | None = None
    # KumoMTA's message metadata (meta): values set at injection, by rebind, by
    # policy; None while there is none, so most messages carry no dict.
    meta: dict[str, Any] | None = None
    # The headers `[logs] headers` asked for, captured at reception: every record of the
    # message carries them; None when none are asked for.
    log_headers: dict[str, Any] | None = None

    @property
    def destination(self) -> str:
        """The domain whose MX hosts the message goes to: the routing domain, else its own."""
        return self.routing_domain or self.domain

    @classmethod
    def new(
        cls,
        *,
        data_id: str,
        sender: str,
        recipient: str,
        tenant: str | None,
        campaign: str | None,
        size: int,
        created: float,
        reception: Reception,
        id: str | None = None,
        routing_domain: str | None = None,
        meta: dict[str, Any] | None = None,
        log_headers: dict[str, Any] | None = None,
    ) -> Message:
        domain = recipient_domain(recipient)
        routing = canonical_routing_domain(routing_domain, domain)
        return cls(
            id=id or new_id(created),
            data_id=data_id,
            sender=sender,
            recipient=recipient,
            tenant=tenant,
            campaign=campaign,
            domain=domain,
            queue=queue_name(campaign, tenant, domain, routing),
            size=size,
            created=created,
            reception=reception,
            routing_domain=routing,
            meta=meta or None,
            log_headers=log_headers,
        )

    def rebind(self, *, tenant: str | None, campaign: str | None, routing_domain: str | None) -> None:
        """Give the message another tenant, campaign or routing domain (and so its queue name)."""
        self.tenant = tenant
        self.campaign = campaign
        self.routing_domain = canonical_routing_domain(routing_domain, self.domain)
        self.queue = queue_name(tenant=tenant, campaign=campaign, domain=self.domain,
                                routing_domain=self.routing_domain)

    def to_dict(self) -> dict[str, Any]:
        """The metadata as plain JSON-ready data (what `dataclasses.asdict` would give)."""
        r = self.reception
        return {
            "id": self.id,
            "data_id": self.data_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "tenant": self.tenant,
            "campaign": self.campaign,
            "domain": self.domain,
            "queue": self.queue,
            "size": self.size,
            "created": self.created,
            "reception": {
                "peer_address": r.peer_address,
                "listener": r.listener,
                "helo": r.helo,
                "protocol": r.protocol,
                "tls": r.tls,
                "auth_identity": r.auth_identity,
            },
            "attempts": self.attempts,
            "due": self.due,
            **({"routing_domain": self.routing_domain} if self.routing_domain else {}),
            **({"meta": self.meta} if self.meta else {}),
            **({"log_headers": self.log_headers} if self.log_headers else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        """Rebuild from `to_dict` output; raises ValueError/KeyError/TypeError on damage.

        Unknown keys are ignored (metadata written by a later version); missing optional
        ones take their defaults.
        """
        reception = d.get("reception") or {}
        if not isinstance(reception, dict):
            raise TypeError("the reception of a message is not an object")
        if reception.keys() - _RECEPTION_KEYS:
            reception = {k: v for k, v in reception.items() if k in _RECEPTION_KEYS}
        msg = cls(
            d["id"],
            d["data_id"],
            d["sender"],
            d["recipient"],
            d["tenant"],
            d["campaign"],
            d["domain"],
            d["queue"],
            d["size"],
            d["created"],
            Reception(**reception),
            d.get("attempts", 0),
            d.get("due"),
            d.get("routing_domain") or None,
            d.get("meta") or None,
            d.get("log_headers") or None,
        )
        if not isinstance(msg.id, str) or not isinstance(msg.recipient, str):
            raise ValueError("message metadata has no id or recipient")
        if msg.meta is not None and not isinstance(msg.meta, dict):
            raise TypeError("the meta of a message is not an object")
        return msg


_RECEPTION_KEYS = frozenset(Reception.__dataclass_fields__)


class Sharing:
    """Makes messages decoded one by one share what repeats between them.

    A queue of a million messages holds a million `Message`s; most of their strings
    (sender, tenant, campaign, domain, queue) and their `Reception`s repeat. Decoded
    from text (a spool at restore, a reception worker's hand-over), each would be a
    copy of its own: about 550 of the ~880 bytes of a decoded message. Strings are
    interned (`sys.intern`: one copy, freed when no message uses it any more);
    receptions are kept in a table, emptied when it holds `max_receptions` (None: no
    limit, for a table that lives only as long as one restore).
    """

    _STRINGS = ("sender", "tenant", "campaign", "domain", "queue", "routing_domain")

    def __init__(self, max_receptions: int | None = 4096) -> None:
        self.max_receptions = max_receptions
        self._receptions: dict[Reception, Reception] = {}

    def share(self, message: Message) -> Message:
        for name in self._STRINGS:
            value = getattr(message, name)
            if type(value) is str:
                setattr(message, name, sys.intern(value))
        receptions = self._receptions
        reception = receptions.get(message.reception)
        if reception is None:
            if self.max_receptions is not None and len(receptions) >= self.max_receptions:
                receptions.clear()
            reception = receptions[message.reception] = message.reception
        message.reception = reception
        return message

_id_lock = threading.Lock()
_id_last = 0
_id_node = os.urandom(4).hex()


def new_id(now: float | None = None) -> str:
    """A unique id that sorts by creation time: 16 hex digits of microseconds, a node part.

    Ids from one process are strictly increasing even when the clock stalls; the node
    part (random per process) keeps ids from processes sharing a spool apart.
    """
    global _id_last
    micros = int((time.time() if now is None else now) * 1_000_000)
    with _id_lock:
        micros = max(micros, _id_last + 1)
        _id_last = micros
    return f"{micros:016x}{_id_node}"
