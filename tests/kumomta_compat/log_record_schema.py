"""KumoMTA's ``JsonLogRecord`` as a JSON schema, for tests: what a KumoMTA log consumer parses.

Derived by hand from the field list of ``JsonLogRecord`` in KumoMTA's
``crates/kumo-log-types/src/lib.rs`` (KumoCorp/kumomta, the mirror's HEAD), with the
types of its fields: ``Response`` and ``EnhancedStatusCode`` (``crates/rfc5321``),
``ResolvedAddress`` (``addr`` a ``HostOrSocketAddress``: an IP, ``ip:port`` or a
unix path), ``MaybeProxiedSourceAddress`` (``address`` a ``SocketAddress``:
``ip:port``), ``Uuid`` for ``nodeid`` and ``session_id``, ``DateTime<Utc>`` (RFC 3339)
for ``event_time``/``created_time``, ``ARFReport`` (``crates/kumo-log-types/src/rfc5965.rs``)
for ``feedback_report``, and the documentation of the record in ``docs/reference/log_record.md``.

What serde requires is required here: the fields that are not ``Option`` and have no
``#[serde(default)]`` (``Option`` fields may be missing or null; ``is_secure``,
``event_time`` and ``created_time`` have defaults). Integer widths are serde's: ``u16``
for ``code``, ``num_attempts``, ``subject``, ``detail``; ``u8`` for ``class``; ``u64``
for ``size``. A record may have fields the struct does not know (serde ignores them):
trimta's own fields stay. ``bounce_classification`` is any string (KumoMTA takes
user-defined classes); `PREDEFINED_BOUNCE_CLASSES` are its built-in ones.

`TRIMTA_SCHEMA` adds what trimta promises on top (docs/logs.md): the RFC 3339 times,
``nodeid`` and ``session_id`` on every record that has a session.
"""

from __future__ import annotations

import copy
from typing import Any

# RecordType (lib.rs), without `Any`, which only matches in logging configuration.
RECORD_TYPES = [
    "Reception", "Delivery", "Bounce", "TransientFailure", "Expiration", "AdminBounce", "OOB", "Feedback",
    "Rejection", "AdminRebind", "DeferredInjectionRebind", "Delayed", "XferOut", "XferIn",
]
# PreDefinedBounceClass (crates/bounce-classify/src/lib.rs).
PREDEFINED_BOUNCE_CLASSES = [
    "InvalidRecipient", "DNSFailure", "SpamBlock", "SpamContent", "ProhibitedAttachment", "RelayDenied",
    "AutoReply", "TransientFailure", "Subscribe", "Unsubscribe", "ChallengeResponse", "BadConfiguration",
    "BadConnection", "BadDomain", "ContentRelated", "InactiveMailbox", "InvalidSender", "MessageExpired",
    "NoAnswerFromHost", "PolicyRelated", "ProtocolErrors", "QuotaIssues", "RelayingIssues", "RoutingErrors",
    "SpamRelated", "VirusRelated", "AuthenticationFailed", "TooManyRecipients", "Uncategorized",
]

_IPV4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_IPV6 = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"
_PORT = r"\d{1,5}"
# SocketAddress: "ip:port", "[ip6]:port", or a unix socket path.
SOCKET_ADDRESS = rf"^(?:{_IPV4}:{_PORT}|\[{_IPV6}\]:{_PORT}|/.*)$"
# HostOrSocketAddress: a SocketAddress, or an IP alone.
HOST_OR_SOCKET_ADDRESS = rf"^(?:{_IPV4}|{_IPV6}|{_IPV4}:{_PORT}|\[{_IPV6}\]:{_PORT}|/.*)$"
UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"


def _uint(bits: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": 2**bits - 1}


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "null"}, schema]}


_STRING = {"type": "string"}
_MAP = {"type": "object"}  # HashMap<String, Value>

RESPONSE = {
    "type": "object",
    "required": ["code", "enhanced_code", "content", "command"],
    "properties": {
        "code": _uint(16),
        "enhanced_code": _optional({
            "type": "object",
            "required": ["class", "subject", "detail"],
            "properties": {"class": _uint(8), "subject": _uint(16), "detail": _uint(16)},
        }),
        "content": _STRING,
        "command": _optional(_STRING),
    },
}
# `command` is an Option: serde takes it missing, too.
RESPONSE["required"] = ["code", "enhanced_code", "content"]

RESOLVED_ADDRESS = {
    "type": "object",
    "required": ["name", "addr"],
    "properties": {
        "name": _STRING,
        "addr": {"type": "string", "pattern": HOST_OR_SOCKET_ADDRESS},
        "is_secure": {"type": "boolean"},
    },
}

SOURCE_ADDRESS = {
    "type": "object",
    "required": ["address"],
    "properties": {
        "address": {"type": "string", "pattern": SOCKET_ADDRESS},
        "server": {"type": "string", "pattern": SOCKET_ADDRESS},
        "protocol": _STRING,
    },
}

_STRINGS = {"type": "array", "items": _STRING}
# BStringUtf8: a string when the bytes are UTF-8, else the bytes as numbers.
_BSTRING = {"anyOf": [_STRING, {"type": "array", "items": _uint(8)}]}
# ARFReport (crates/kumo-log-types/src/rfc5965.rs): `feedback_report` of a Feedback record.
# Its Option fields may be missing (serde_with's serde_as defaults them); the Vecs have defaults.
FEEDBACK_REPORT = {
    "type": "object",
    "required": ["feedback_type", "user_agent", "version", "extensions"],
    "properties": {
        "feedback_type": _STRING,
        "user_agent": _STRING,
        "version": _STRING,
        "arrival_date": _optional({"type": "string", "pattern": RFC3339}),
        "incidents": _optional(_uint(32)),
        "original_envelope_id": _optional(_STRING),
        "original_mail_from": _optional(_STRING),
        "reporting_mta": _optional({"type": "object", "required": ["mta_type", "name"],
                                    "properties": {"mta_type": _STRING, "name": _STRING}}),
        "source_ip": _optional(_STRING),
        "authentication_results": _STRINGS,
        "original_rcpto_to": _STRINGS,
        "reported_domain": _STRINGS,
        "reported_uri": _STRINGS,
        "extensions": {"type": "object", "additionalProperties": {"type": "array", "items": _BSTRING}},
        "original_message": _optional(_BSTRING),
        "supplemental_trace": {},  # serde_json::Value: anything
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "KumoMTA JsonLogRecord",
    "type": "object",
    "required": [
        "type", "id", "sender", "recipient", "queue", "site", "size", "response", "timestamp", "created",
        "num_attempts", "bounce_classification", "meta", "headers", "nodeid",
    ],
    "properties": {
        "type": {"enum": RECORD_TYPES},
        "id": _STRING,
        "sender": _STRING,
        # OneOrMany<_, PreferOne>: one recipient as a string, several as a list.
        "recipient": {"anyOf": [_STRING, {"type": "array", "items": _STRING}]},
        "queue": _STRING,
        "site": _STRING,
        "size": _uint(64),
        "response": RESPONSE,
        "peer_address": _optional(RESOLVED_ADDRESS),
        "timestamp": {"type": "integer"},
        "event_time": {"type": "string", "pattern": RFC3339},
        "created": {"type": "integer"},
        "created_time": {"type": "string", "pattern": RFC3339},
        "num_attempts": _uint(16),
        "bounce_classification": _STRING,
        "egress_pool": _optional(_STRING),
        "egress_source": _optional(_STRING),
        "source_address": _optional(SOURCE_ADDRESS),
        "feedback_report": _optional(FEEDBACK_REPORT),
        "meta": _MAP,
        "headers": _MAP,
        "delivery_protocol": _optional(_STRING),
        "reception_protocol": _optional(_STRING),
        "nodeid": {"type": "string", "pattern": UUID},
        "tls_cipher": _optional(_STRING),
        "tls_protocol_version": _optional(_STRING),
        "tls_peer_subject_name": _optional({"type": "array", "items": _STRING}),
        "provider_name": _optional(_STRING),
        "session_id": _optional({"type": "string", "pattern": UUID}),
    },
}

# trimta's promise on top of what KumoMTA's parser needs: both times, always.
TRIMTA_SCHEMA = copy.deepcopy(SCHEMA)
TRIMTA_SCHEMA["required"] += ["event_time", "created_time"]
