"""Accepting a message: tenant and campaign, trace header, one queued message per
recipient, durable spooling, Reception records.

Shared by every way mail comes in (SMTP now, HTTP injection later): whatever the
entry point, a message is acknowledged only after `accept` returns a 2xx reply,
and `accept` returns one only once data and metadata are fsynced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trimta.adapters.config import TenancyConfig
from trimta.adapters.spool import Spool, SpoolError
from trimta.core import records
from trimta.core.message import Message, Reception, new_id
from trimta.core.tenancy import extract_tenancy
from trimta.core.trace import received_header
from trimta.protocol import replies
from trimta.protocol.replies import Reply
from trimta.services.logs import LogSink

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


@dataclass(frozen=True, slots=True)
class Accepted:
    reply: Reply
    messages: tuple[Message, ...]


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
    ) -> None:
        self.spool = spool
        self.logs = logs
        self.tenancy = tenancy
        self.hostname = hostname
        self.on_accepted = on_accepted
        self.clock = clock

    async def accept(self, submission: Submission) -> Accepted:
        now = self.clock()
        found = extract_tenancy(
            submission.data,
            self.tenancy.tenant_header,
            self.tenancy.campaign_header,
            self.tenancy.remove_headers,
        )
        tenant = submission.tenant or found.tenant
        campaign = submission.campaign or found.campaign
        data_id = new_id(now)
        data = found.data
        if submission.add_trace_header:
            rec = submission.reception
            data = received_header(
                helo=rec.helo,
                peer_address=rec.peer_address,
                by_host=self.hostname,
                protocol=rec.protocol,
                message_id=data_id,
                recipients=list(submission.recipients),
                now=now,
                tls_version=rec.tls,
            ) + data
        messages = tuple(
            Message.new(
                data_id=data_id,
                sender=submission.sender,
                recipient=recipient,
                tenant=tenant,
                campaign=campaign,
                size=len(data),
                created=now,
                reception=submission.reception,
                id=data_id if i == 0 else None,
            )
            for i, recipient in enumerate(submission.recipients)
        )
        try:
            await self.spool.store(data, messages)
        except SpoolError as exc:
            log.error("spool refused a message from %s: %s", submission.reception.peer_address, exc)
            return Accepted(replies.SPOOL_ERROR, ())
        reply = replies.reply(250, "2.0.0", f"OK ids={data_id}")
        emit = self.logs.emit
        for message in messages:
            emit(records.message_record(records.RECEPTION, message, reply, now))
        self.on_accepted(messages)
        return Accepted(reply, messages)
