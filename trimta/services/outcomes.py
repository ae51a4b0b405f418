"""What happens to a message after an attempt: the log record, the spool, the schedule.

- delivered: a `Delivery` record; the message leaves the spool.
- transient: attempts + 1; rescheduled after the backoff, or, when the next attempt
  would fall past `max_age`, an `Expiration` record and removal.
- permanent: a `Bounce` record with its classification; removal.

A rescheduled message's spool update is awaited (group-committed with everyone
else's), so it is never rescheduled in memory ahead of its state on disk. Removals
are not awaited: a finished message's id joins a list that one task (`run`) removes
from the spool in batches, one spool operation for everything finished since its
last commit. So a connection goes on to its next message without waiting for an
fsync, and a hundred deliveries cost one removal. What this gives up is only
exactness after a crash: a message finished but not yet removed is still in the
spool at the next start and is delivered again (at least once; never lost). An
orderly stop removes everything finished first.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import trio

from trimta.adapters.spool import Spool, SpoolError
from trimta.core import records
from trimta.core.bounce import classify
from trimta.core.message import Message
from trimta.core.retry import QueueConfig, expiration_reply, expires_before, next_attempt_delay
from trimta.protocol.replies import Reply
from trimta.services.logs import LogSink
from trimta.services.scheduler import Scheduler

log = logging.getLogger(__name__)


class OutcomeRecorder:
    """Turns attempt outcomes into records, spool changes and new due times."""

    def __init__(
        self,
        *,
        spool: Spool,
        logs: LogSink,
        scheduler: Scheduler,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        pool_name: Callable[[Message], str | None] = lambda message: None,
    ) -> None:
        self.spool = spool
        self.logs = logs
        self.scheduler = scheduler
        self.clock = clock
        self.rng = rng or random.Random()
        self.pool_name = pool_name
        self.delivered_count = 0
        self.transient_count = 0
        self.bounced_count = 0
        self.expired_count = 0
        self.admin_bounced_count = 0
        # Records by type, by tenant ("" for none) and by site, for metrics.
        self.by_tenant: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.by_site: defaultdict[str, Counter[str]] = defaultdict(Counter)
        # Called with (message, outcome, ready queue) after every attempt (automation).
        self.observers: list[Callable] = []
        self._removals: list[str] = []  # finished, not yet removed from the spool
        self._removals_due = trio.Event()

    def config_for(self, message: Message) -> QueueConfig:
        return self.scheduler.config_for(message)

    def expires_at(self, message: Message) -> float:
        return message.created + self.config_for(message).max_age_s

    async def load_data(self, message: Message) -> bytes:
        return await self.spool.load_data(message.data_id)

    def _observe(self, message: Message, outcome, queue) -> None:
        for observer in self.observers:
            observer(message, outcome, queue)

    async def delivered(self, message: Message, outcome, queue) -> None:
        self._observe(message, outcome, queue)
        self.delivered_count += 1
        message.attempts += 1
        self._emit(records.DELIVERY, message, outcome.reply, queue, outcome)
        self._remove(message)

    async def failed(self, message: Message, outcome, queue) -> None:
        self._observe(message, outcome, queue)
        if outcome.kind == "permanent":
            await self.bounce(message, outcome.reply, queue, outcome)
        else:
            await self.retry(message, outcome.reply, queue, outcome)

    async def bounce(self, message: Message, reply: Reply, queue=None, outcome=None,
                     classification: str | None = None) -> None:
        self.bounced_count += 1
        message.attempts += 1
        self._emit(records.BOUNCE, message, reply, queue, outcome,
                   bounce_classification=classification or classify(reply))
        self._remove(message)

    async def retry(self, message: Message, reply: Reply, queue=None, outcome=None) -> None:
        """A transient failure: back to the scheduled queue after the backoff, or expire."""
        now = self.clock()
        config = self.config_for(message)
        delay = next_attempt_delay(config, message.attempts, self.rng)
        message.attempts += 1
        due = now + delay
        if expires_before(config, message.created, due):
            self._emit(records.TRANSIENT_FAILURE, message, reply, queue, outcome)
            await self._expire(message, queue)
            return
        self.transient_count += 1
        self._emit(records.TRANSIENT_FAILURE, message, reply, queue, outcome, next_due=int(due))
        message.due = due
        try:
            await self.spool.update(message)
        except SpoolError as exc:
            # The old state on disk is still a valid one (fewer attempts): keep going.
            log.error("could not record attempt %d of %s: %s", message.attempts, message.id, exc)
        self.scheduler.add(message, due)

    async def admin_bounce(self, message: Message, reply: Reply) -> None:
        """An operator's bounce: an `AdminBounce` record, and the message is gone."""
        self.admin_bounced_count += 1
        self._emit(records.ADMIN_BOUNCE, message, reply, None, None)
        self._remove(message)

    async def expired(self, message: Message, queue=None) -> None:
        await self._expire(message, queue)

    async def _expire(self, message: Message, queue) -> None:
        self.expired_count += 1
        self._emit(records.EXPIRATION, message, expiration_reply(message.attempts), queue, None)
        self._remove(message)

    def _remove(self, message: Message) -> None:
        self._removals.append(message.id)
        self._removals_due.set()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Remove finished messages from the spool, many per commit, until cancelled.

        On cancellation what is finished is still removed (shielded), so an orderly
        stop leaves nothing behind to deliver twice; the spool's writer must outlive
        this task (the app stops the spool last).
        """
        task_status.started()
        try:
            while True:
                await self._removals_due.wait()
                self._removals_due = trio.Event()
                await self._remove_finished()
        finally:
            with trio.CancelScope(shield=True):
                await self._remove_finished()

    async def _remove_finished(self) -> None:
        ids, self._removals = self._removals, []
        if not ids:
            return
        try:
            await self.spool.remove(ids)
        except SpoolError as exc:
            # Still on disk: after a restart they would be tried again (at least once).
            log.error("could not remove %d finished messages from the spool: %s", len(ids), exc)
        except BaseException:
            self._removals[:0] = ids  # cut short: removed on the way out (twice is harmless)
            raise

    def _emit(self, kind: str, message: Message, reply: Reply, queue, outcome, **extra) -> None:
        peer = None
        if outcome is not None and getattr(outcome, "peer_address", None):
            peer = {"name": outcome.peer_host or "", "addr": outcome.peer_address}
        record = records.message_record(
            kind,
            message,
            reply,
            self.clock(),
            site=queue.site if queue is not None else "",
            egress_pool=self.pool_name(message),
            egress_source=queue.source.name if queue is not None else None,
            peer_address=peer if peer is not None else ({"name": "", "addr": ""} if queue is not None else None),
            command=getattr(outcome, "command", None),
            ready_queue=queue.name if queue is not None else None,
            **extra,
        )
        self.by_tenant[kind][message.tenant or ""] += 1
        if queue is not None:
            self.by_site[kind][queue.site] += 1
        self.logs.emit(record)

