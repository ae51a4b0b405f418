"""What one delivery attempt did for one recipient: an `Outcome` and its kind.

The SMTP client produces outcomes; the ready queue, the outcome recorder and
automation read them. They are values, so they live here, below all of those.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from trimta.protocol.replies import Reply


class OutcomeKind(enum.StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What log records say about the SMTP session a record came from (KumoMTA's fields).

    One per session, shared by every outcome of an outbound session (and the Reception
    records of an inbound one). `session_id` is a UUID; `source_address` is our end of
    the connection as ``ip:port``; the TLS fields are None on a plaintext session;
    `tls_peer_subject_name` is the peer certificate's subject, one ``KEY=value`` item per
    attribute in certificate order (``("C=US", "O=Example", "CN=mx.example.net")``).
    `peer_is_secure`: the peer's address came from a DNSSEC-validated lookup.
    """

    session_id: str
    delivery_protocol: str | None = None
    source_address: str | None = None
    tls_cipher: str | None = None
    tls_protocol_version: str | None = None
    tls_peer_subject_name: tuple[str, ...] | None = None
    peer_is_secure: bool = False
    # Through a proxy: `source_address` is the one the proxy connects from (port 0: the
    # proxy's choice), `proxy_server` the proxy's ``ip:port``, `proxy_protocol` ``"haproxy"``.
    proxy_server: str | None = None
    proxy_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did for one recipient, with the reply that decided it.

    `command` is what the reply answered (``"RCPT TO"``, ``"."``, ``"banner"``) or
    ``"connect"`` when there was no session; `connection_failure` is True when no
    session could be established at all (it counts toward
    ``consecutive_connection_failures_before_delay``). `peer_address` is None when
    no TCP connection was ever made.
    """

    kind: OutcomeKind
    reply: Reply
    peer_host: str | None = None
    peer_address: str | None = None
    command: str | None = None
    connection_failure: bool = False
    recipient: str | None = None
    # DANE (RFC 7672) applied to the host: "dane-ee"/"dane-ta" (the usage that authenticated
    # it), "insecure" (TLS without authentication), "failed" (TLSA lookup failed), ...
    dane: str | None = None
    # Which session it was (for the records); not part of what the attempt decided.
    session: SessionInfo | None = field(default=None, compare=False)  # None: no session was established

    @property
    def delivered(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED

    @property
    def transient(self) -> bool:
        return self.kind is OutcomeKind.TRANSIENT

    @property
    def permanent(self) -> bool:
        return self.kind is OutcomeKind.PERMANENT


def outcome_kind(answer: Reply, delivered: bool = False) -> OutcomeKind:
    """2xx delivered; 5xx permanent; anything else (4xx, or an unfinished 2xx) transient."""
    if delivered:
        return OutcomeKind.DELIVERED
    return OutcomeKind.PERMANENT if answer.code >= 500 else OutcomeKind.TRANSIENT
