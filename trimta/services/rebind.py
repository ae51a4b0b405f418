"""Rebinding: queued messages re-evaluated into the scheduled queue their new metadata names.

KumoMTA's ``/api/admin/rebind/v1``: the messages waiting in the scheduled queues that
match a selector (tenant, campaign, domain, routing domain; none: every queue) get the
values of `data` set, and each goes into the queue its metadata now names. ``tenant``,
``campaign`` and ``routing_domain`` are the message's own; ``queue`` names all of them at
once (as KumoMTA's ``queue`` meta wins over the others); any other key is set in the
message's ``meta``. A message whose queue changed is due at once and gets an
``AdminRebind`` record (unless logging is suppressed); one whose queue stayed keeps its
due time, unless `always_flush` makes it due now too. A message held by a suspension
stays held when its queue stays; one that moved meets the operator rules again on its
way to delivery, under its new queue.

No message is lost: each is taken out of its old queue and put into its new one in one
synchronous step (nothing else runs in between), and its new metadata is then written to
the spool, the writes of one request group-committed together. A crash before a write
is committed restarts the message in its old queue, with its old metadata.

Only the messages in scheduled queues are rebound, as in KumoMTA: a message already in a
ready queue or being delivered keeps its course.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from trimta.adapters.spool import SpoolError
from trimta.core import records
from trimta.core.message import Message
from trimta.core.queues import canonical_routing_domain, parse_queue_name, queue_name
from trimta.protocol.replies import reply
from trimta.services.logs import RecordSink
from trimta.services.outcomes import MessageStore
from trimta.services.scheduler import Scheduler

log = logging.getLogger(__name__)

# The keys of `data` that are the message's own fields (and so its queue); the rest go to its meta.
OWN = ("tenant", "campaign", "routing_domain", "queue")
# Spool writes awaited together: one group commit each, without a task per message at once.
WRITE_BATCH = 1000


class RebindError(ValueError):
    """A rebind asked for something trimta cannot do; nothing was changed."""


@dataclass(frozen=True, slots=True)
class RebindRequest:
    """Which messages (each selector given must match), and what to set on them."""

    data: Mapping[str, str]
    reason: str
    tenant: str | None = None
    campaign: str | None = None
    domain: str | None = None
    routing_domain: str | None = None
    always_flush: bool = False
    suppress_logging: bool = False


@dataclass(frozen=True, slots=True)
class RebindResult:
    matched: int  # messages in the matching scheduled queues
    moved: int  # of them, those now in another queue (due now, an AdminRebind record each)
    flushed: int  # those whose queue stayed, made due now by always_flush
    queues: dict[str, int]  # moved messages by the queue they went to


def check_data(data: Mapping[str, str]) -> None:
    """Refuses (RebindError) what no message could carry, before anything changes."""
    if "queue" in data:
        try:
            parse_queue_name(data["queue"])
        except ValueError as exc:
            raise RebindError(f"data.queue: {exc}") from None
    routing = data.get("routing_domain", "")
    if any(c.isspace() or c in "@!/" for c in routing.strip()):
        raise RebindError(f"data.routing_domain: expected a domain like \"smarthost.example.com\" or "
                          f"\"[10.0.0.1]\", got {routing!r}")


class Rebinder:
    """Rebinds the messages of the scheduler's queues, keeping the spool and the log up to date."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        store: MessageStore,
        logs: RecordSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self.store = store
        self.logs = logs
        self.clock = clock

    async def rebind(self, request: RebindRequest) -> RebindResult:
        check_data(request.data)
        now = self.clock()
        matched = [m for m in self.scheduler.messages() if _selected(request, m)]
        moved: list[Message] = []
        updated: list[Message] = []  # same queue, new meta
        flushed = 0
        queues: dict[str, int] = {}
        # Synchronous from here to the writes: each message leaves its old queue and joins
        # its new one with nothing running in between.
        for message in matched:
            old_queue = message.queue
            campaign, tenant, routing, meta = _rebound(message, request.data)
            if meta:
                message.meta = {**(message.meta or {}), **meta}
            if queue_name(campaign, tenant, message.domain, routing) != old_queue:
                if self.scheduler.discard(message.id) is None:
                    continue
                message.rebind(tenant=tenant, campaign=campaign, routing_domain=routing)
                self.scheduler.add(message, now)
                moved.append(message)
                queues[message.queue] = queues.get(message.queue, 0) + 1
                if not request.suppress_logging:
                    self.logs.emit(records.message_record(
                        records.ADMIN_REBIND, message,
                        reply(250, None, f"Rebound from {old_queue} to {message.queue}: {request.reason}"),
                        now, rebound_from=old_queue,
                    ))
                continue
            if meta:
                updated.append(message)
            if request.always_flush and self.scheduler.find(message.id) == (message, "scheduled"):
                self.scheduler.add(message, now)
                flushed += 1
        await self._write([*moved, *updated])
        return RebindResult(matched=len(matched), moved=len(moved), flushed=flushed, queues=queues)

    async def _write(self, messages: Sequence[Message]) -> None:
        async def write(message: Message) -> None:
            try:
                await self.store.update(message)
            except SpoolError as exc:
                # Still queued in memory under its new queue; after a restart it is back in its old one.
                log.error("could not record the rebind of %s to %s: %s", message.id, message.queue, exc)

        for start in range(0, len(messages), WRITE_BATCH):
            async with trio.open_nursery() as nursery:
                for message in messages[start:start + WRITE_BATCH]:
                    nursery.start_soon(write, message)


def _selected(request: RebindRequest, message: Message) -> bool:
    return (
        (request.tenant is None or request.tenant == message.tenant)
        and (request.campaign is None or request.campaign == message.campaign)
        and (request.domain is None or request.domain == message.domain)
        and (request.routing_domain is None or request.routing_domain == message.routing_domain)
    )


def _rebound(message: Message, data: Mapping[str, str]) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """(campaign, tenant, routing domain, meta to set) after `data` is applied.

    A ``queue`` names all three, as KumoMTA's ``queue`` meta wins over the others. Its
    domain part is where KumoMTA routes the message: a domain other than the recipient's
    becomes the routing domain (``queue = "foo.com"`` for mail to example.com: delivered
    through foo.com's MX, in queue ``example.com!foo.com``). Otherwise ``tenant``,
    ``campaign`` and ``routing_domain`` replace the message's (``""`` removes one).
    """
    meta = {key: value for key, value in data.items() if key not in OWN}
    if "queue" in data:
        campaign, tenant, domain, routing = parse_queue_name(data["queue"])
        if domain != message.domain:
            routing = routing or domain
        return campaign, tenant, canonical_routing_domain(routing, message.domain), meta
    campaign = data.get("campaign", message.campaign) or None
    tenant = data.get("tenant", message.tenant) or None
    routing = canonical_routing_domain(data.get("routing_domain", message.routing_domain), message.domain)
    return campaign, tenant, routing, meta
