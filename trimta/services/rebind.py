"""Rebinding: queued messages re-evaluated into the scheduled queue their new metadata names.

KumoMTA's ``/api/admin/rebind/v1``: the messages waiting in the scheduled queues that
match a selector (tenant, campaign, domain; none: every queue) get the values of
`data` set (``tenant``, ``campaign``, or a whole ``queue`` name), and each goes into
the queue its metadata now names. A message whose queue changed is due at once and
gets an ``AdminRebind`` record (unless logging is suppressed); one whose queue stayed
keeps its due time, unless `always_flush` makes it due now too. A message held by a
suspension stays held when its queue stays; one that moved meets the operator rules
again on its way to delivery, under its new queue.

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
from trimta.core.queues import parse_queue_name, queue_name
from trimta.protocol.replies import reply
from trimta.services.logs import RecordSink
from trimta.services.outcomes import MessageStore
from trimta.services.scheduler import Scheduler

log = logging.getLogger(__name__)

# The metadata a rebind can set: trimta's messages carry these, and no free-form map.
SETTABLE = ("tenant", "campaign", "queue")
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
    always_flush: bool = False
    suppress_logging: bool = False


@dataclass(frozen=True, slots=True)
class RebindResult:
    matched: int  # messages in the matching scheduled queues
    moved: int  # of them, those now in another queue (due now, an AdminRebind record each)
    flushed: int  # those whose queue stayed, made due now by always_flush
    queues: dict[str, int]  # moved messages by the queue they went to


def check_data(data: Mapping[str, str]) -> None:
    """Refuses (RebindError) what trimta's messages cannot carry, before anything changes."""
    unknown = [key for key in data if key not in SETTABLE]
    if "routing_domain" in unknown:
        raise RebindError("data.routing_domain: trimta has no routing domains yet, so a message cannot be "
                          "rebound to one; set queue, tenant or campaign")
    if unknown:
        raise RebindError(f"data: trimta's messages carry no free-form metadata, so {', '.join(map(repr, unknown))} "
                          f"cannot be set; a rebind sets {', '.join(SETTABLE)}")
    if "queue" in data:
        try:
            parse_queue_name(data["queue"])
        except ValueError as exc:
            raise RebindError(f"data.queue: {exc}") from None


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
        flushed = 0
        queues: dict[str, int] = {}
        # Synchronous from here to the writes: each message leaves its old queue and joins
        # its new one with nothing running in between.
        for message in matched:
            old_queue = message.queue
            campaign, tenant, domain = _rebound(message, request.data)
            if queue_name(campaign, tenant, domain) != old_queue:
                if self.scheduler.discard(message.id) is None:
                    continue
                message.campaign, message.tenant, message.domain = campaign, tenant, domain
                message.queue = queue_name(campaign, tenant, domain)
                self.scheduler.add(message, now)
                moved.append(message)
                queues[message.queue] = queues.get(message.queue, 0) + 1
                if not request.suppress_logging:
                    self.logs.emit(records.message_record(
                        records.ADMIN_REBIND, message,
                        reply(250, None, f"Rebound from {old_queue} to {message.queue}: {request.reason}"),
                        now, rebound_from=old_queue,
                    ))
            elif request.always_flush and self.scheduler.find(message.id) == (message, "scheduled"):
                self.scheduler.add(message, now)
                flushed += 1
        await self._write(moved)
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
    )


def _rebound(message: Message, data: Mapping[str, str]) -> tuple[str | None, str | None, str]:
    """(campaign, tenant, domain) after `data` is set: a ``queue`` names all three (as
    KumoMTA's ``queue`` meta wins over tenant and campaign); otherwise ``tenant`` and
    ``campaign`` replace the message's ("" removes one)."""
    if "queue" in data:
        return parse_queue_name(data["queue"])
    campaign = data.get("campaign", message.campaign) or None
    tenant = data.get("tenant", message.tenant) or None
    return campaign, tenant, message.domain
