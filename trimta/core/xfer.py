"""Moving queued mail to another node (KumoMTA's ``xfer``): which messages, to where, how packed.

An xfer *job* says which queued messages go (a `Selector` over the scheduled queue's
parts, or exact queue names), to which node (`target`, the HTTP base URL of its API),
and why. The messages it selects wait in the *xfer queue* of their target, named
KumoMTA's way (``http://10.0.0.2:8000.xfer.kumomta.internal``), until the target has
them durably. Jobs are kept as plain dicts across restarts (`job_to_dict`,
`job_from_dict`); after a restart a job selects again among the messages that
existed when it was made (``created`` at most the job's), so an interrupted xfer
finishes without taking mail that arrived later.

On the wire (`POST /api/xfer/inject/v1`, JSON) a batch is ``{"node": SOURCE_NODE,
"messages": [{"meta": MESSAGE_DICT, "data": BASE64}, ...]}``; the target answers
``{"ids": [ACCEPTED...], "errors": {ID: WHY}}``. `batches` cuts a queue into batches
bounded by count and by encoded size, so one request stays well under the target's
``[http] max_body_size``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from trimta.core.message import Message

XFER_QUEUE_SUFFIX = ".xfer.kumomta.internal"
INJECT_PATH = "/api/xfer/inject/v1"
# A batch holds at most this many messages and about this many bytes of encoded data
# (base64 makes 4 of 3; the JSON around it is small), so it fits the default 2 MiB
# ``max_body_size`` of a target.
BATCH_MESSAGES = 100
BATCH_BYTES = 1_000_000
SELECTOR_FIELDS = ("domain", "routing_domain", "campaign", "tenant", "queue_names")


def normalize_target(value: str) -> str:
    """A target as written in a request: ``http(s)://host[:port]`` (a trailing ``/`` dropped).

    Raises ValueError saying what is accepted. A path is refused: the target is the
    prefix the node's API lives under, as in KumoMTA.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError('expected the HTTP base URL of another node, e.g. "http://10.0.0.2:8000"')
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected an http:// or https:// URL like "http://10.0.0.2:8000", got {value!r}')
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"not a valid port in {value!r}") from None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"expected scheme, host and port only (no path, query or credentials), got {value!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def xfer_queue_name(target: str) -> str:
    """The xfer queue of `target` (normalised), KumoMTA's name for it."""
    return f"{target}{XFER_QUEUE_SUFFIX}"


def target_of_queue(name: str) -> str | None:
    """The target an xfer queue name stands for (either KumoMTA form, with or without
    the ``/`` after the authority), or None if `name` is not an xfer queue."""
    if not name.endswith(XFER_QUEUE_SUFFIX):
        return None
    try:
        return normalize_target(name[: -len(XFER_QUEUE_SUFFIX)])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Selector:
    """Which queued messages an xfer takes: KumoMTA's criteria over the scheduled queue.

    `queue_names`, when given, takes precedence: exactly those scheduled queues. Else
    every named field must equal the message's (`domain` is the recipient's domain,
    `routing_domain` the one it is routed through when that is another, as in the
    ``domain!routing`` queue names); none named: every message.
    """

    domain: str | None = None
    routing_domain: str | None = None
    campaign: str | None = None
    tenant: str | None = None
    queue_names: tuple[str, ...] = ()

    def matches(self, message: Message) -> bool:
        if self.queue_names:
            return message.queue in self.queue_names
        return (
            (self.domain is None or self.domain == message.domain)
            and (self.routing_domain is None or self.routing_domain == message.routing_domain)
            and (self.campaign is None or self.campaign == message.campaign)
            and (self.tenant is None or self.tenant == message.tenant)
        )

    @property
    def everything(self) -> bool:
        return not self.queue_names and all(
            v is None for v in (self.domain, self.routing_domain, self.campaign, self.tenant))

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "routing_domain": self.routing_domain, "campaign": self.campaign,
                "tenant": self.tenant, "queue_names": list(self.queue_names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selector:
        return cls(
            domain=_domain(d.get("domain")),
            routing_domain=_domain(d.get("routing_domain")),
            campaign=d.get("campaign") or None,
            tenant=d.get("tenant") or None,
            queue_names=tuple(d.get("queue_names") or ()),
        )


def _domain(value: Any) -> str | None:
    return value.lower().rstrip(".") if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class XferJob:
    """One xfer request: its messages (the selector, among those created by `created`), target, reason."""

    id: str
    target: str
    selector: Selector
    reason: str
    created: float

    @property
    def queue_name(self) -> str:
        return xfer_queue_name(self.target)

    def takes(self, message: Message) -> bool:
        """Whether this job moves `message` (made before the job, and selected)."""
        return message.created <= self.created and self.selector.matches(message)


def new_job(target: str, selector: Selector, reason: str, now: float) -> XferJob:
    return XferJob(uuid.uuid4().hex, target, selector, reason, now)


def job_to_dict(job: XferJob) -> dict[str, Any]:
    return {"id": job.id, "target": job.target, "selector": job.selector.to_dict(),
            "reason": job.reason, "created": job.created}


def job_from_dict(d: Mapping[str, Any]) -> XferJob:
    """Raises ValueError/KeyError/TypeError on a damaged entry."""
    created = d["created"]
    if not isinstance(created, (int, float)):
        raise TypeError("created is not a number")
    return XferJob(str(d["id"]), normalize_target(d["target"]), Selector.from_dict(d["selector"]),
                   str(d.get("reason", "")), float(created))


# --- batches and the wire -----------------------------------------------------------------


def batches(messages: Sequence[Message], *, max_messages: int = BATCH_MESSAGES,
            max_bytes: int = BATCH_BYTES) -> list[list[Message]]:
    """`messages` in order, cut into batches of at most `max_messages` and about
    `max_bytes` of data each (a message bigger than that goes alone)."""
    out: list[list[Message]] = []
    current: list[Message] = []
    size = 0
    for message in messages:
        if current and (len(current) >= max_messages or size + message.size > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(message)
        size += message.size
    if current:
        out.append(current)
    return out


def encode_batch(node: str | None, items: Iterable[tuple[Message, bytes]]) -> dict[str, Any]:
    """The JSON body of one transfer: every message's metadata (attempts and due included)
    and its data."""
    return {
        "node": node,
        "messages": [{"meta": m.to_dict(), "data": base64.b64encode(data).decode("ascii")} for m, data in items],
    }


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message of a received batch: its metadata as sent, and its data."""

    message: Message
    data: bytes


def decode_batch(body: Any) -> tuple[str | None, list[Incoming]]:
    """The source's node id and the messages of a transfer body; ValueError names what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ValueError('expected {"node": ..., "messages": [{"meta": {...}, "data": "BASE64"}, ...]}')
    node = body.get("node")
    if node is not None and not isinstance(node, str):
        raise ValueError("node: expected a string")
    out = []
    for index, item in enumerate(body["messages"]):
        where = f"messages[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("meta"), dict) or not isinstance(item.get("data"), str):
            raise ValueError(f"{where}: expected {{\"meta\": {{...}}, \"data\": \"BASE64\"}}")
        try:
            message = Message.from_dict(item["meta"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{where}.meta: not a message's metadata ({exc})") from None
        if not isinstance(message.attempts, int) or not (message.due is None or isinstance(message.due, (int, float))):
            raise ValueError(f"{where}.meta: attempts must be an integer and due a number or null")
        try:
            data = base64.b64decode(item["data"], validate=True)
        except ValueError:
            raise ValueError(f"{where}.data: not base64") from None
        out.append(Incoming(message, data))
    return node, out


def decode_answer(body: Any) -> tuple[list[str], dict[str, str]]:
    """The accepted ids and the refused ones (id: why) of a target's answer; ValueError if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
        raise ValueError("the answer has no list of ids")
    errors = body.get("errors") or {}
    if not isinstance(errors, dict):
        raise ValueError("the answer's errors are not an object")
    return [str(i) for i in body["ids"]], {str(k): str(v) for k, v in errors.items()}
