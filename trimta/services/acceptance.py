"""Accepting a message: tenant and campaign, trace header, one queued message per
recipient, durable spooling, Reception records.

Shared by every way mail comes in (SMTP now, HTTP injection later): whatever the
entry point, a message is acknowledged only after `accept` returns a 2xx reply,
and `accept` returns one only once data and metadata are fsynced.

Accepting is two steps, so that they can run in different processes (see
`reception_workers`): `prepare` works out what to store from the submission alone
(pure computation, no waiting), and `Acceptor.commit` stores it durably, then logs
and queues it. `Acceptor.accept` does both.

DKIM signing (docs/dkim.md) is part of `prepare`: once per message, before the data is
stored, so every recipient's copy carries the same signatures and a restart (which
restores the stored data) never signs again. With a signer, `Acceptor.accept` runs
`prepare` in a worker thread (the RSA and Ed25519 operations release the GIL), so the
event loop goes on serving other sessions meanwhile; a reception worker process does
the same in its own process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio

from trimta.adapters.config import TenancyConfig
from trimta.adapters.spool import Spool, encode_metadata
from trimta.core import records
from trimta.core.dkim import AddedSignature, SigningRefused
from trimta.core.message import Message, Reception, new_id
from trimta.core.outcome import SessionInfo
from trimta.core.tenancy import extract_tenancy
from trimta.core.trace import received_header
from trimta.protocol import replies
from trimta.protocol.replies import Reply
from trimta.services.logs import LogSink, encode_record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submission:
    """What an entry point hands over: an envelope, the data, how it came in."""

    sender: str
    recipients: Sequence[str]
    data: bytes
    reception: Reception
    tenant: str | None = None  # from an authenticated identity; wins over headers
    campaign: str | None = None
    add_trace_header: bool = True
    meta: Mapping[str, Any] | None = None  # KumoMTA's message metadata, for every recipient (inject's metadata)
    # The SMTP session it came in on (its id, TLS), for the Reception records; None: HTTP.
    session: SessionInfo | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a submission becomes: the data as stored, and one message per recipient.

    `metas` and `records`, when set (by `encoded`), are each message's spool metadata
    and Reception record, already encoded: a reception worker does that work on its
    own core, and the daemon's commit only writes them out.
    """

    data: bytes
    messages: tuple[Message, ...]
    now: float
    metas: tuple[str, ...] | None = None
    records: tuple[str, ...] | None = None
    # The DKIM signatures added; None when no signing is configured.
    signatures: tuple[AddedSignature, ...] | None = None
    session: SessionInfo | None = None

    @property
    def data_id(self) -> str:
        return self.messages[0].data_id


@dataclass(frozen=True, slots=True)
class Accepted:
    reply: Reply
    messages: tuple[Message, ...]


class MessageSigner(Protocol):
    """Adds DKIM signatures (`trimta.adapters.dkim.DkimSigner`); may be called from a thread."""

    def sign(self, data: bytes, *, tenant: str | None, now: float) -> tuple[bytes, tuple[AddedSignature, ...]]:
        """`data` with signatures on top, and which; `SigningRefused` with the reply otherwise."""
        ...


class Accepting(Protocol):
    """What an entry point needs: a submission in, the reply to give out."""

    async def accept(self, submission: Submission) -> Accepted: ...


class Receiving(Accepting, Protocol):
    """What the SMTP listener needs besides: how tenants are found, and the messages of a
    report it logs but does not keep (listener domains' ``LogThenDrop``)."""

    tenancy: TenancyConfig

    def unstored(self, submission: Submission) -> tuple[Message, ...]:
        """The messages `submission` makes, as `accept` would, neither signed nor stored."""
        ...


def accepted_reply(data_id: str) -> Reply:
    """The 2xx for a durably stored message; the id lets a sender find it in the logs."""
    return Reply(250, (2, 0, 0), (f"OK ids={data_id}",))


def prepare(
    submission: Submission, *, tenancy: TenancyConfig, hostname: str, now: float, signer: MessageSigner | None = None,
    log_fields: records.LogFields = records.NO_LOG_FIELDS,
) -> Prepared:
    """The data to store and its messages: tenancy headers read (and removed), trace header
    added, then the DKIM signatures (`SigningRefused` if the message cannot be signed).
    The headers `log_fields` asks for are captured from the data as stored."""
    found = extract_tenancy(
        submission.data,
        tenancy.tenant_header,
        tenancy.campaign_header,
        tenancy.remove_headers,
        tenancy.remove_campaign_header,
    )
    tenant = submission.tenant or found.tenant or tenancy.default_tenant
    campaign = submission.campaign or found.campaign
    data_id = new_id(now)
    data = found.data
    rec = submission.reception
    if submission.add_trace_header:
        data = received_header(
            helo=rec.helo,
            peer_address=rec.peer_address,
            by_host=hostname,
            protocol=rec.protocol,
            message_id=data_id,
            recipients=list(submission.recipients),
            now=now,
            tls_version=rec.tls,
        ) + data
    signatures = None
    if signer is not None:
        data, signatures = signer.sign(data, tenant=tenant, now=now)
    size = len(data)
    headers = records.capture_headers(data, log_fields.headers) or None
    messages = tuple(
        Message.new(
            data_id=data_id,
            sender=submission.sender,
            recipient=recipient,
            tenant=tenant,
            campaign=campaign,
            size=size,
            created=now,
            reception=rec,
            id=data_id if i == 0 else None,
            meta=dict(submission.meta) if submission.meta else None,
            log_headers=headers,
        )
        for i, recipient in enumerate(submission.recipients)
    )
    return Prepared(data, messages, now, signatures=signatures, session=submission.session)


def routed(prepared: Prepared, routing: Callable[[Message], str | None]) -> Prepared:
    """`prepared` with each message's routing domain set as `routing` says (its queue named
    ``...@domain!routing_domain``). What a reception worker encoded is dropped then, to be
    encoded again with the new queue names; mail without a routing domain is untouched."""
    changed = False
    for message in prepared.messages:
        target = routing(message)
        if target and message.routing_domain is None:
            message.rebind(tenant=message.tenant, campaign=message.campaign, routing_domain=target)
            changed = changed or message.routing_domain is not None
    return dataclasses.replace(prepared, metas=None, records=None) if changed else prepared


def _extra(prepared: Prepared) -> dict[str, Any]:
    """The Reception record's fields beyond those of every message record: its session, the DKIM signatures."""
    extra: dict[str, Any] = {"session": prepared.session}
    if prepared.signatures is not None:
        extra["dkim_signatures"] = [s.to_dict() for s in prepared.signatures]
    return extra


def encoded(prepared: Prepared, log_fields: records.LogFields = records.NO_LOG_FIELDS) -> Prepared:
    """`prepared` with its spool metadata and its Reception records (as if stored) encoded.

    They are encoded away from the log sink (in a reception worker), so what the sink
    does to the records it is given is done here: the node id, the meta `log_fields` asks for.
    """
    reply = accepted_reply(prepared.data_id)
    messages, now = prepared.messages, prepared.now
    extra = _extra(prepared)
    extra["nodeid"] = log_fields.nodeid
    select = log_fields.select
    return Prepared(
        prepared.data,
        messages,
        now,
        metas=tuple([encode_metadata(m) for m in messages]),
        records=tuple([encode_record(select(records.message_record(records.RECEPTION, m, reply, now, **extra)))
                       for m in messages]),
        signatures=prepared.signatures,
        session=prepared.session,
    )


class Acceptor:
    """Turns a submission into durable queued messages."""

    def __init__(
        self,
        *,
        spool: Spool,
        logs: LogSink,
        tenancy: TenancyConfig,
        hostname: str,
        on_accepted: Callable[[Sequence[Message]], None] = lambda messages: None,
        clock: Callable[[], float] = time.time,
        signer: MessageSigner | None = None,
        routing: Callable[[Message], str | None] | None = None,
        log_fields: records.LogFields = records.NO_LOG_FIELDS,
    ) -> None:
        self.spool = spool
        self.log_fields = log_fields
        self.logs = logs
        self.tenancy = tenancy
        self.hostname = hostname
        self.on_accepted = on_accepted
        self.clock = clock
        # Replaced by a reload (new keys, new data files); None: no DKIM signing.
        self.signer = signer
        # The routing domain the queue settings give a message (queues.toml's routing_domain).
        self.routing = routing

    def _routed(self, prepared: Prepared) -> Prepared:
        assert self.routing is not None
        return routed(prepared, self.routing)

    def unstored(self, submission: Submission) -> tuple[Message, ...]:
        return prepare(submission, tenancy=self.tenancy, hostname=self.hostname, now=self.clock(),
                       log_fields=self.log_fields).messages

    async def accept(self, submission: Submission) -> Accepted:
        signer = self.signer
        make = partial(prepare, submission, tenancy=self.tenancy, hostname=self.hostname, now=self.clock(),
                       signer=signer, log_fields=self.log_fields)
        try:
            prepared = make() if signer is None else await trio.to_thread.run_sync(make)
        except SigningRefused as exc:
            return Accepted(exc.reply, ())
        return await self.commit(prepared)

    async def commit(self, prepared: Prepared) -> Accepted:
        """Store durably, then log a Reception record per message and queue them.

        Returns the reply to give: 250 once stored, ``452 4.3.1`` if the spool could
        not store (nothing of the message is stored then).
        """
        (accepted,) = await self.commit_all([prepared])
        return accepted

    async def commit_all(self, batch: Sequence[Prepared]) -> list[Accepted]:
        """`commit` for several messages at once; each is stored (or refused) on its own."""
        if self.routing is not None:
            batch = [self._routed(p) for p in batch]
        errors = await self.spool.store_all([(p.data, p.messages, p.metas) for p in batch])
        results = []
        emit = self.logs.emit
        for prepared, error in zip(batch, errors):
            messages = prepared.messages
            if error is not None:
                log.error("spool refused a message from %s: %s", messages[0].reception.peer_address, error)
                results.append(Accepted(replies.SPOOL_ERROR, ()))
                continue
            reply = accepted_reply(prepared.data_id)
            if prepared.records is not None:
                for line in prepared.records:
                    self.logs.emit_encoded(line)
            else:
                extra = _extra(prepared)
                for message in messages:
                    emit(records.message_record(records.RECEPTION, message, reply, prepared.now, **extra))
            self.on_accepted(messages)
            results.append(Accepted(reply, messages))
        return results
