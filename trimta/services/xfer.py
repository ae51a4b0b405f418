"""Moving queued mail to another node, at least once (KumoMTA's ``xfer``), both ends.

Source side. `Xfers.start` keeps the job durably (`trimta.adapters.xfer_store`), then
takes the messages it selects out of the scheduled queues (suspended ones too) and out
of the ready queues (those not in flight; a message being attempted finishes its
attempt where it is) into the target's xfer queue, logging an ``AdminRebind`` each.
Sender tasks (`SENDERS` per target) take batches (`trimta.core.xfer.batches`), load
their data, and POST them to the target's ``/api/xfer/inject/v1`` with the shared
``[cluster] token``. A message leaves this node's spool only after the target has
answered that it holds it durably (``XferOut`` record, then the removal), so a crash
of either side at any moment loses nothing: what the target had not confirmed is sent
again after the restart (the job is restored and selects again), and the target keeps
the message id, so a message it still holds is recognised and not queued twice. At
worst a message the target had already delivered when the source crashed is delivered
again.

Errors: a batch the target refuses or does not answer goes back to the front of the
xfer queue and is tried again after a backoff (1 s doubling to 60 s), for as long as
the job lasts; `cancel` ends it, and the messages go back to their scheduled queues
with their due time.

Target side. `Xfers.receive` stores each message of a batch (its id, envelope, tenant,
campaign, reception, attempts and due time as sent; its data under a new data id) in
one group commit, the same fsync as received mail, and only then answers; each stored
message is logged as ``XferIn`` and scheduled at its due time.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from trimta.adapters.http_client import HttpClient, HttpError, split_url
from trimta.adapters.spool import SpoolError
from trimta.adapters.xfer_store import XferStoreError
from trimta.core import records
from trimta.core.message import Message, new_id
from trimta.core.xfer import (
    INJECT_PATH,
    SELECTOR_FIELDS,
    Selector,
    XferJob,
    batches,
    decode_answer,
    decode_batch,
    encode_batch,
    new_job,
    normalize_target,
    target_of_queue,
    xfer_queue_name,
)
from trimta.protocol.replies import Reply
from trimta.services.logs import RecordSink

log = logging.getLogger(__name__)

SENDERS = 4  # concurrent batches per target
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0
REQUEST_TIMEOUT_S = 120.0
ADMIN_REBIND = "AdminRebind"  # KumoMTA's record of a message moved between queues


class XferRefused(Exception):
    """A request this node will not carry out; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- what the service uses --------------------------------------------------------------------


class JobStore(Protocol):
    def load(self) -> list[XferJob]: ...
    async def save(self, jobs: Sequence[XferJob]) -> None: ...


class Waiting(Protocol):
    """The scheduler, as far as xfer uses it."""

    def messages(self) -> Iterator[Message]: ...
    def discard(self, message_id: str) -> Message | None: ...
    def add(self, message: Message, due: float | None = None) -> None: ...


class Ready(Protocol):
    def take_matching(self, predicate: Callable[[Message], bool]) -> list[Message]: ...


class XferSpool(Protocol):
    async def load_data(self, data_id: str) -> bytes: ...
    async def remove(self, ids: Sequence[str]) -> None: ...
    async def store_all(
        self, transactions: Sequence[tuple[bytes, Sequence[Message], Sequence[str] | None]]
    ) -> list[str | None]: ...


class Peer(Protocol):
    """One connection to a target node's API (`HttpPeer` in the daemon); `post` raises
    `TransferFailed` when no answer came."""

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]],
                   timeout_s: float) -> tuple[int, bytes]: ...
    async def aclose(self) -> None: ...


Connect = Callable[[str], Peer]  # target -> a connection to it


class TransferFailed(Exception):
    """A batch did not reach the target (no answer, an error status, an answer that is not one)."""


# --- state ------------------------------------------------------------------------------------------


@dataclass
class XferQueue:
    """The messages waiting to go to one target, and the jobs that put them there."""

    target: str
    jobs: list[XferJob] = field(default_factory=list)
    waiting: deque[Message] = field(default_factory=deque)
    in_flight: int = 0
    senders: int = 0
    cancelled: bool = False
    transferred: int = 0
    failed_batches: int = 0
    last_error: str | None = None

    @property
    def name(self) -> str:
        return xfer_queue_name(self.target)


@dataclass(frozen=True, slots=True)
class XferStatistics:
    queue_name: str
    target: str
    waiting: int
    in_flight: int
    transferred: int
    failed_batches: int
    last_error: str | None
    jobs: tuple[XferJob, ...]


def xfer_state(stats: XferStatistics) -> dict[str, Any]:
    """One xfer queue as ``GET /api/admin/xfer/v1`` shows it (trimta's own listing)."""
    return {
        "queue_name": stats.queue_name, "target": stats.target, "waiting": stats.waiting,
        "in_flight": stats.in_flight, "transferred": stats.transferred, "failed_batches": stats.failed_batches,
        "last_error": stats.last_error,
        "jobs": [{"id": j.id, "reason": j.reason, **{k: v for k, v in j.selector.to_dict().items() if v}}
                 for j in stats.jobs],
    }


def parse_xfer_request(body: Any) -> tuple[str, Selector, str]:
    """KumoMTA's XferV1Request: target, the selectors, reason; XferRefused(400) names a bad field."""
    if not isinstance(body, dict):
        raise XferRefused(400, "body: expected a JSON object")
    known = ("target", "reason", *SELECTOR_FIELDS)
    for key in body:
        if key not in known:
            raise XferRefused(400, f"{key}: unknown field; known fields: {', '.join(known)}")
    try:
        target = normalize_target(body.get("target"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise XferRefused(400, f"target: {exc}") from None
    reason = body.get("reason")
    if not isinstance(reason, str):
        raise XferRefused(400, "reason: missing; say why (it goes into the AdminRebind records)")
    for name in ("domain", "routing_domain", "campaign", "tenant"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise XferRefused(400, f"{name}: expected a non-empty string or null")
    names = body.get("queue_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)):
        raise XferRefused(400, "queue_names: expected an array of scheduled queue names")
    return target, Selector.from_dict(body), reason


def parse_cancel_request(body: Any) -> tuple[str, str]:
    """KumoMTA's XferCancelV1Request: the xfer queue's name and a reason; returns (target, reason)."""
    if not isinstance(body, dict):
        raise XferRefused(400, "body: expected a JSON object")
    for key in body:
        if key not in ("queue_name", "reason"):
            raise XferRefused(400, f"{key}: unknown field; known fields: queue_name, reason")
    name = body.get("queue_name")
    if not isinstance(name, str) or not name:
        raise XferRefused(400, "queue_name: missing; e.g. \"http://10.0.0.2:8000.xfer.kumomta.internal\"")
    target = target_of_queue(name)
    if target is None:
        raise XferRefused(400, f"queue_name: {name} is not an xfer queue (expected TARGET.xfer.kumomta.internal)")
    reason = body.get("reason")
    if not isinstance(reason, str):
        raise XferRefused(400, "reason: missing")
    return target, reason


class Xfers:
    """Both ends of xfer: the jobs and xfer queues of this node, and the reception of transfers."""

    def __init__(
        self,
        *,
        scheduler: Waiting,
        ready: Ready,
        spool: XferSpool,
        logs: RecordSink,
        store: JobStore,
        connect: Connect,
        known: Callable[[str], bool],
        token: str | None,
        node_id: str | None,
        clock: Callable[[], float] = time.time,
        senders: int = SENDERS,
    ) -> None:
        self.scheduler = scheduler
        self.ready = ready
        self.spool = spool
        self.logs = logs
        self.store = store
        self.connect = connect
        self.known = known  # whether a message id is queued here already
        self.token = token
        self.node_id = node_id
        self.clock = clock
        self.senders = senders
        self._queues: dict[str, XferQueue] = {}
        self._nursery: trio.Nursery | None = None
        self.received = 0

    # --- jobs ------------------------------------------------------------------------------

    def _jobs(self) -> list[XferJob]:
        return [job for queue in self._queues.values() for job in queue.jobs]

    def restore(self) -> int:
        """Resume the jobs kept in the store (after the engine restored the spool); returns
        how many messages they took again."""
        taken = 0
        for job in self.store.load():
            taken += self._take(self._queue(job.target), job)
        if self._queues:
            log.info("resumed %d xfer jobs: %d messages to transfer", len(self._jobs()), taken)
        return taken

    def _queue(self, target: str) -> XferQueue:
        queue = self._queues.get(target)
        if queue is None:
            queue = self._queues[target] = XferQueue(target)
        return queue

    def _take(self, queue: XferQueue, job: XferJob) -> int:
        """Move what `job` selects into `queue` (and keep the job there)."""
        queue.jobs.append(job)
        taken = [m for m in self.scheduler.messages() if job.takes(m)]
        for message in taken:
            self.scheduler.discard(message.id)
        taken.extend(self.ready.take_matching(job.takes))
        now = self.clock()
        content = f"Rebound from %s to {queue.name}: {job.reason}"
        for message in taken:
            self.logs.emit(_no_peer(records.message_record(
                ADMIN_REBIND, message, Reply(250, None, (content % message.queue,)), now)))
        queue.waiting.extend(taken)
        return len(taken)

    async def start(self, target: str, selector: Selector, reason: str) -> XferJob:
        """Begin moving what `selector` picks to `target`; the job is durable when this returns."""
        if not self.token:
            raise XferRefused(409, "this node has no [cluster] token: node-to-node transfers need the same "
                                   "token set on both nodes (see docs/cluster.md)")
        job = new_job(target, selector, reason, self.clock())
        await self.store.save([*self._jobs(), job])
        queue = self._queue(target)
        queue.cancelled = False
        count = self._take(queue, job)
        log.info("xfer %s to %s: %d messages (%s)", job.id, target, count, reason)
        self._spawn(queue)
        if self._idle(queue):
            await self._finished(queue)  # it selected nothing: done at once
        return job

    @staticmethod
    def _idle(queue: XferQueue) -> bool:
        return not queue.waiting and queue.in_flight == 0 and queue.senders == 0

    async def cancel(self, target: str, reason: str) -> int:
        """Stop the xfer to `target`: its waiting messages go back to their scheduled
        queues (batches in flight finish either way). Returns how many went back; KeyError
        if there is no xfer to `target`."""
        queue = self._queues.get(target)
        if queue is None:
            raise KeyError(target)
        await self.store.save([j for j in self._jobs() if j.target != target])
        queue.cancelled = True
        queue.jobs.clear()
        back = list(queue.waiting)
        queue.waiting.clear()
        for message in back:
            self._requeue(message, f"Rebound from {queue.name} to {message.queue}: {reason}")
        if queue.in_flight == 0:
            self._queues.pop(target, None)
        log.info("xfer to %s cancelled: %d messages back in their queues (%s)", target, len(back), reason)
        return len(back)

    def _requeue(self, message: Message, content: str | None) -> None:
        if content is not None:
            self.logs.emit(_no_peer(records.message_record(
                ADMIN_REBIND, message, Reply(250, None, (content,)), self.clock())))
        self.scheduler.add(message, message.due)

    def statistics(self) -> list[XferStatistics]:
        return [
            XferStatistics(q.name, q.target, len(q.waiting), q.in_flight, q.transferred, q.failed_batches,
                           q.last_error, tuple(q.jobs))
            for q in self._queues.values()
        ]

    # --- sending ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the senders of every xfer queue until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for queue in list(self._queues.values()):
                self._spawn(queue)
                if self._idle(queue):
                    await self._finished(queue)  # resumed, with nothing left to move
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _spawn(self, queue: XferQueue) -> None:
        if self._nursery is None:
            return  # started by run()
        while queue.senders < self.senders and queue.senders < len(queue.waiting):
            queue.senders += 1
            self._nursery.start_soon(self._send_loop, queue)

    async def _send_loop(self, queue: XferQueue) -> None:
        peer = self.connect(queue.target)
        backoff = RETRY_INITIAL_S
        try:
            while queue.waiting and not queue.cancelled:
                batch = self._next_batch(queue)
                queue.in_flight += len(batch)
                try:
                    ok = await self._transfer(queue, peer, batch)
                finally:
                    queue.in_flight -= len(batch)
                if ok:
                    backoff = RETRY_INITIAL_S
                else:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_S)
        finally:
            queue.senders -= 1
            with trio.CancelScope(shield=True):
                await peer.aclose()
            if self._idle(queue):
                await self._finished(queue)

    def _next_batch(self, queue: XferQueue) -> list[Message]:
        # Looked at in order, up to one batch's worth; `batches` decides where it ends.
        window = [queue.waiting[i] for i in range(min(len(queue.waiting), 1000))]
        batch = batches(window)[0]
        for _ in batch:
            queue.waiting.popleft()
        return batch

    async def _finished(self, queue: XferQueue) -> None:
        if self._queues.get(queue.target) is not queue:
            return
        del self._queues[queue.target]
        if queue.jobs:
            with trio.CancelScope(shield=True):
                try:
                    await self.store.save(self._jobs())
                except XferStoreError as exc:  # the job is redone at the next start: it finds nothing more
                    log.error("xfer to %s done, but the jobs file could not be updated: %s", queue.target, exc)
            log.info("xfer to %s done: %d messages transferred", queue.target, queue.transferred)

    async def _transfer(self, queue: XferQueue, peer: Peer, batch: list[Message]) -> bool:
        """Send one batch; True if the target answered. What it did not accept goes back."""
        items = []
        for message in batch:
            try:
                items.append((message, await self.spool.load_data(message.data_id)))
            except (KeyError, SpoolError) as exc:
                log.error("xfer: the data of %s cannot be read (%s); it stays on this node", message.id, exc)
                self._requeue(message, None)
        if not items:
            return True
        body = json.dumps(encode_batch(self.node_id, items), separators=(",", ":")).encode("utf-8")
        try:
            accepted, errors = await self._post(peer, body)
        except TransferFailed as exc:
            queue.failed_batches += 1
            queue.last_error = str(exc)
            log.warning("xfer to %s: a batch of %d failed, tried again later: %s", queue.target, len(items), exc)
            self._give_back(queue, [m for m, _ in items])
            return False
        done = set(accepted)
        moved = [m for m, _ in items if m.id in done]
        now = self.clock()
        for message in moved:
            self.logs.emit(_no_peer(records.message_record(
                records.XFER_OUT, message, Reply(250, None, (f"new id is {message.id}",)), now,
                site=queue.name, delivery_protocol="xfer")))
        try:
            await self.spool.remove([m.id for m in moved])
        except SpoolError as exc:
            # Transferred, but still in this spool: after a restart it is sent again, and the
            # target recognises it by its id while it still holds it.
            log.error("xfer: %d messages transferred but not removed from the spool: %s", len(moved), exc)
        queue.transferred += len(moved)
        rest = [m for m, _ in items if m.id not in done]
        if rest:
            queue.failed_batches += 1
            queue.last_error = "; ".join(f"{i}: {errors.get(i, 'not accepted')}" for i in [m.id for m in rest][:3])
            log.warning("xfer to %s: %d messages refused, tried again later: %s", queue.target, len(rest),
                        queue.last_error)
            self._give_back(queue, rest)
            return False
        return True

    def _give_back(self, queue: XferQueue, messages: list[Message]) -> None:
        if queue.cancelled:
            for message in messages:
                self._requeue(message, None)
        else:
            queue.waiting.extendleft(reversed(messages))

    async def _post(self, peer: Peer, body: bytes) -> tuple[list[str], dict[str, str]]:
        headers = (("Content-Type", "application/json"), ("Authorization", f"Bearer {self.token}"))
        status, answer = await peer.post(INJECT_PATH, body, headers, REQUEST_TIMEOUT_S)
        try:
            decoded = json.loads(answer) if answer else None
        except ValueError:
            decoded = None
        if status != 200:
            error = decoded.get("error") if isinstance(decoded, dict) else None
            raise TransferFailed(f"HTTP {status}: {error or answer[:200].decode('utf-8', 'replace')}")
        try:
            return decode_answer(decoded)
        except ValueError as exc:
            raise TransferFailed(f"the target's answer is not an xfer answer: {exc}") from None

    # --- receiving ---------------------------------------------------------------------------

    def check_token(self, authorization: str | None) -> None:
        """Whether a transfer may come in: XferRefused (403 without a token here, 401 without
        the right one there)."""
        if not self.token:
            raise XferRefused(403, "this node accepts no transfers: no [cluster] token is configured "
                                   "(set the same token on every node, see docs/cluster.md)")
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise XferRefused(401, "transfers need Authorization: Bearer with this cluster's [cluster] token")

    async def receive(self, body: Any, *, peer_address: str) -> dict[str, Any]:
        """Store a batch from another node; answers once every stored message is durable."""
        try:
            node, incoming = decode_batch(body)
        except ValueError as exc:
            raise XferRefused(400, str(exc)) from None
        if node is not None and self.node_id is not None and node == self.node_id:
            raise XferRefused(400, f"cannot xfer to myself: the sending node {node} is this node")
        accepted: list[str] = []
        errors: dict[str, str] = {}
        fresh = []
        for item in incoming:
            if self.known(item.message.id):
                accepted.append(item.message.id)  # sent again after a crash; it is here already
            else:
                message = item.message
                message.data_id = new_id()
                # KumoMTA's metadata of a transferred message: where it came from.
                message.meta = {**(message.meta or {}), "xfer_from": peer_address, "xfer_prior_id": message.id,
                                **({"xfer_prior_node": node} if node is not None else {})}
                fresh.append(item)
        results = await self.spool.store_all([(item.data, [item.message], None) for item in fresh])
        now = self.clock()
        for item, error in zip(fresh, results):
            message = item.message
            if error is None:
                self.received += 1
                self.logs.emit(records.message_record(
                    records.XFER_IN, message, Reply(250, None, ("",)), now,
                    peer_address={"name": "", "addr": peer_address}, delivery_protocol="xfer"))
                self.scheduler.add(message, message.due if message.due is not None else now)
                accepted.append(message.id)
            elif "UNIQUE" in error:
                accepted.append(message.id)  # in this spool already (being delivered right now)
            else:
                errors[message.id] = error
        return {"ids": accepted, "errors": errors}


def _no_peer(record: dict[str, Any]) -> dict[str, Any]:
    record["peer_address"] = None
    return record


class HttpPeer:
    """A keep-alive HTTP/1.1 connection to a target node (`trimta.adapters.http_client.HttpClient`)."""

    def __init__(self, target: str) -> None:
        origin, prefix, _ = split_url(target)
        self.client = HttpClient(origin, user_agent="trimta-xfer")
        self.prefix = prefix.partition("?")[0].rstrip("/")

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]],
                   timeout_s: float) -> tuple[int, bytes]:
        try:
            response = await self.client.request("POST", self.prefix + path, headers=headers, body=body,
                                                 timeout_s=timeout_s)
        except HttpError as exc:
            raise TransferFailed(exc.message) from None
        return response.status, response.body

    async def aclose(self) -> None:
        await self.client.aclose()
