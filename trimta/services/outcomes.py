"""What happens to a message after an attempt: the log record, the spool, the schedule.

- delivered: a `Delivery` record; the message leaves the spool.
- transient: attempts + 1; rescheduled after the backoff, or, when the next attempt
  would fall past `max_age`, an `Expiration` record and removal (one decision:
  `trimta.core.retry.after_transient_failure`).
- internal error (a bug met while routing or sending it): a `Delayed` record with
  ``451 4.3.0`` naming the error; back in its scheduled queue after
  `RETRY_AFTER_BUG_S`, no attempt counted (so a bug cannot spin, nor cost the
  message its backoff schedule).
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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from trimta.adapters.spool import SpoolError
from trimta.core import records
from trimta.core.bounce import classify
from trimta.core.message import Message
from trimta.core.outcome import Outcome, OutcomeKind
from trimta.core.retry import QueueConfig, after_transient_failure, expiration_reply, expiry_time
from trimta.protocol.replies import Reply, reply
from trimta.services.logs import RecordSink
from trimta.services.ready_queue import ReadyQueue

log = logging.getLogger(__name__)

# How long a message that met a bug waits before it is tried again.
RETRY_AFTER_BUG_S = 60.0
# The records that carry `mta_sts` when a policy applied to the message's domain.
_MTA_STS_KINDS = frozenset({records.DELIVERY, records.TRANSIENT_FAILURE, records.BOUNCE})


class MessageStore(Protocol):
    """What delivery needs of the spool: a message's data, and its state kept up to date."""

    async def load_data(self, data_id: str) -> bytes: ...
    async def update(self, message: Message) -> None: ...
    async def remove(self, ids: Sequence[str]) -> None: ...


class Schedule(Protocol):
    """Where a message waits for its next attempt (`trimta.services.scheduler.Scheduler`)."""

    def config_for(self, message: Message) -> QueueConfig: ...
    def add(self, message: Message, due: float | None = None) -> None: ...


def error_text(error: BaseException) -> str:
    """``Type: message`` of the bug, looking through the groups nurseries wrap one error in."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def internal_error_reply(error: BaseException, where: str) -> Reply:
    """The response a message that met a bug carries: transient, naming the error."""
    return reply(451, "4.3.0", f"Internal error {where} ({error_text(error)}); back in its scheduled queue")


class OutcomeRecorder:
    """Turns attempt outcomes into records, spool changes and new due times."""

    def __init__(
        self,
        *,
        spool: MessageStore,
        logs: RecordSink,
        scheduler: Schedule,
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
        # Records by type, by tenant ("" for none) and by site, for metrics.
        self.by_tenant: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.by_site: defaultdict[str, Counter[str]] = defaultdict(Counter)
        # ... by ready queue, and by (provider, egress source, egress pool) as KumoMTA counts
        # them: the provider is the path's provider_name, else the site.
        self.by_ready_queue: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.by_provider: defaultdict[str, Counter[tuple[str, str, str]]] = defaultdict(Counter)
        self._removals: list[str] = []  # finished, not yet removed from the spool
        # The MTA-STS mode applied to a domain ("enforce", "testing"), for the `mta_sts` field.
        self.mta_sts_mode: Callable[[str], str | None] | None = None
        self._removals_due = trio.Event()

    def config_for(self, message: Message) -> QueueConfig:
        return self.scheduler.config_for(message)

    def expires_at(self, message: Message) -> float:
        return expiry_time(self.config_for(message), message.created)

    async def load_data(self, message: Message) -> bytes:
        return await self.spool.load_data(message.data_id)

    async def delivered(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> None:
        message.attempts += 1
        self._emit(records.DELIVERY, message, outcome.reply, queue, outcome)
        self._remove(message)

    async def failed(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> None:
        if outcome.kind is OutcomeKind.PERMANENT:
            await self.bounce(message, outcome.reply, queue, outcome)
        else:
            await self.retry(message, outcome.reply, queue, outcome)

    async def internal_error(self, message: Message, error: BaseException, queue: ReadyQueue | None,
                             *, delay_s: float = RETRY_AFTER_BUG_S) -> None:
        """A bug met while this message was routed or sent: back to its scheduled queue, with a
        `Delayed` record saying so. No attempt is counted."""
        where = f"in ready queue {queue.name}" if queue is not None else "while routing"
        due = self.clock() + delay_s
        self._emit(records.DELAYED, message, internal_error_reply(error, where), queue, None,
                   internal_error=error_text(error), next_due=int(due))
        self.scheduler.add(message, due)

    async def bounce(self, message: Message, reply: Reply, queue: ReadyQueue | None = None,
                     outcome: Outcome | None = None, classification: str | None = None) -> None:
        message.attempts += 1
        self._emit(records.BOUNCE, message, reply, queue, outcome,
                   bounce_classification=classification or classify(reply))
        self._remove(message)

    async def retry(self, message: Message, reply: Reply, queue: ReadyQueue | None = None,
                    outcome: Outcome | None = None) -> None:
        """A transient failure: back to the scheduled queue after the backoff, or expire."""
        decision = after_transient_failure(
            self.config_for(message), message.created, message.attempts, self.clock(), self.rng
        )
        message.attempts = decision.attempts
        if decision.due is None:
            self._emit(records.TRANSIENT_FAILURE, message, reply, queue, outcome)
            self._expire(message, queue, decision.expiration)
            return
        self._emit(records.TRANSIENT_FAILURE, message, reply, queue, outcome, next_due=int(decision.due))
        message.due = decision.due
        try:
            await self.spool.update(message)
        except SpoolError as exc:
            # The old state on disk is still a valid one (fewer attempts): keep going.
            log.error("could not record attempt %d of %s: %s", message.attempts, message.id, exc)
        self.scheduler.add(message, decision.due)

    async def failed_over(self, message: Message, outcome: Outcome, queue: ReadyQueue) -> bool:
        """``try_next_host_on_transport_error``: the attempt is counted and its
        TransientFailure logged, and the message may go again at once on another
        connection (True), unless that expired it (False)."""
        decision = after_transient_failure(
            self.config_for(message), message.created, message.attempts, self.clock(), self.rng
        )
        message.attempts = decision.attempts
        self._emit(records.TRANSIENT_FAILURE, message, outcome.reply, queue, outcome)
        if decision.due is None:
            self._expire(message, queue, decision.expiration)
            return False
        return True

    async def admin_bounce(self, message: Message, reply: Reply, *, record: bool = True) -> None:
        """An operator's bounce: an `AdminBounce` record (unless not `record`: KumoMTA's
        suppress_logging), and the message is gone."""
        if record:
            self._emit(records.ADMIN_BOUNCE, message, reply, None, None)
        self._remove(message)

    async def expired(self, message: Message, queue: ReadyQueue | None = None) -> None:
        self._expire(message, queue)

    def _expire(self, message: Message, queue: ReadyQueue | None, answer: Reply | None = None) -> None:
        self._emit(records.EXPIRATION, message, answer or expiration_reply(message.attempts), queue, None)
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

    def _emit(self, kind: str, message: Message, reply: Reply, queue: ReadyQueue | None,
              outcome: Outcome | None, **extra: Any) -> None:
        peer = None
        pool = self.pool_name(message)
        if outcome is not None and outcome.peer_address:
            peer = {"name": outcome.peer_host or "", "addr": outcome.peer_address}
        session = outcome.session if outcome is not None else None
        record = records.message_record(
            kind,
            message,
            reply,
            self.clock(),
            # KumoMTA's site is the ready queue's name; trimta's site name is site_name.
            site=queue.name if queue is not None else "",
            egress_pool=pool,
            egress_source=queue.source.name if queue is not None else None,
            peer_address=peer,
            command=outcome.command if outcome is not None else None,
            session=session,
            delivery_protocol="ESMTP" if queue is not None else None,
            provider_name=(queue.path.provider or None) if queue is not None else None,
            ready_queue=queue.name if queue is not None else None,
            site_name=queue.site if queue is not None else None,
            **extra,
        )
        if peer is None:
            record["peer_address"] = None  # no connection made: KumoMTA's readers take no empty address
        if self.mta_sts_mode is not None and kind in _MTA_STS_KINDS:
            mode = queue.mta_sts.mode(message.destination) if queue is not None else None
            mode = mode or self.mta_sts_mode(message.destination)
            if mode:
                record["mta_sts"] = mode
        if outcome is not None and outcome.dane is not None:
            record["dane"] = outcome.dane  # the DANE policy that applied to the host (RFC 7672)
        self.by_tenant[kind][message.tenant or ""] += 1
        if queue is not None:
            self.by_site[kind][queue.site] += 1
            self.by_ready_queue[kind][queue.name] += 1
            self.by_provider[kind][(queue.path.provider or queue.site, queue.source.name, pool or "")] += 1
        self.logs.emit(record)
