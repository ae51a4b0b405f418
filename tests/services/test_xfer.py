"""xfer between two in-memory nodes: what moves, what stays, and what a lost answer, a
dead target, a cancel and a restart do. The wire is JSON as the daemon sends it; only
the HTTP connection is replaced."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest
import trio

from trimta.core.message import Message, Reception
from trimta.core.retry import QueueConfig
from trimta.core.xfer import BATCH_MESSAGES, Selector, XferJob
from trimta.services.scheduler import Scheduler
from trimta.services.xfer import TransferFailed, XferRefused, Xfers
from trimta.testing.harness import RecordingLogs
from trimta.testing.spool import MemorySpool

TOKEN = "s3cret"


class MemoryJobs:
    def __init__(self, jobs: Sequence[XferJob] = ()) -> None:
        self.jobs = list(jobs)
        self.saves = 0

    def load(self) -> list[XferJob]:
        return list(self.jobs)

    async def save(self, jobs: Sequence[XferJob]) -> None:
        await trio.lowlevel.checkpoint()
        self.saves += 1
        self.jobs = list(jobs)


class ReadyMessages:
    """Messages sitting in ready queues, not in flight."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def take_matching(self, predicate: Callable[[Message], bool]) -> list[Message]:
        taken = [m for m in self.messages if predicate(m)]
        self.messages = [m for m in self.messages if not predicate(m)]
        return taken


class Node:
    def __init__(self, name: str, network: Network, *, token: str | None = TOKEN,
                 jobs: MemoryJobs | None = None, spool: MemorySpool | None = None) -> None:
        self.name = name
        self.url = f"http://{name}.test:8000"
        self.dispatched: list[Message] = []
        self.scheduler = Scheduler(queue_config=lambda t, c, d: QueueConfig(), dispatch=self.dispatched.append,
                                   clock=trio.current_time)
        self.ready = ReadyMessages()
        self.spool = spool or MemorySpool()
        self.logs = RecordingLogs()
        self.jobs = jobs or MemoryJobs()
        self.xfers = Xfers(scheduler=self.scheduler, ready=self.ready, spool=self.spool, logs=self.logs,
                           store=self.jobs, connect=network.connect, known=lambda i: i in self.scheduler,
                           token=token, node_id=name, clock=trio.current_time)
        network.nodes[self.url] = self

    async def queue(self, i: int, *, tenant: str = "acme", domain: str = "a.test", campaign: str | None = "spring",
                    attempts: int = 2, due_in: float = 3600.0, created: float = 0.0) -> Message:
        m = Message.new(data_id=f"{self.name}-d{i}", sender="s@shop.test", recipient=f"u{i}@{domain}", tenant=tenant,
                        campaign=campaign, size=100, created=created,
                        reception=Reception(peer_address="192.0.2.1", protocol="ESMTP"), id=f"m{i:05d}",
                        routing_domain="relay.test" if i % 3 == 0 else None)
        m.attempts = attempts
        m.meta = {"order": f"o-{i}"}
        await self.spool.store(f"body of {i}".encode(), [m])
        self.scheduler.add(m, trio.current_time() + due_in)
        return m


class Network:
    """Connects a node to another by URL; can fail requests or lose their answers."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.down = False
        self.lose_answers = 0
        self.posts: list[int] = []  # messages per request

    def connect(self, target: str) -> Peer:
        return Peer(self, target)


class Peer:
    def __init__(self, network: Network, target: str) -> None:
        self.network = network
        self.target = target

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]],
                   timeout_s: float) -> tuple[int, bytes]:
        await trio.sleep(0.01)
        if self.network.down:
            raise TransferFailed(f"cannot connect to {self.target}: connection refused")
        assert path == "/api/xfer/inject/v1"
        node = self.network.nodes[self.target]
        decoded = json.loads(body)
        self.network.posts.append(len(decoded["messages"]))
        try:
            node.xfers.check_token(dict(headers).get("Authorization"))
            answer = await node.xfers.receive(decoded, peer_address="127.0.0.1")
        except XferRefused as exc:
            return exc.status, json.dumps({"error": exc.message}).encode()
        if self.network.lose_answers:
            self.network.lose_answers -= 1
            raise TransferFailed("the connection broke before the answer")
        return 200, json.dumps(answer).encode()

    async def aclose(self) -> None:
        pass


async def run_until(predicate: Callable[[], bool], *nodes: Node, limit_s: float = 600.0) -> None:
    with trio.fail_after(limit_s):
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await nursery.start(node.xfers.run)
            while not predicate():
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()


async def test_selected_messages_move_keeping_id_envelope_tenant_attempts_and_due(autojump_clock):
    net = Network()
    a, b = Node("a", net), Node("b", net)
    moved = [await a.queue(i, tenant="acme") for i in range(250)]
    stays = [await a.queue(1000 + i, tenant="globex") for i in range(20)]
    a.scheduler.hold(moved[0], "suspension-1")  # suspended mail moves too
    ready = await a.queue(2000, tenant="acme")
    a.scheduler.discard(ready.id)
    a.ready.messages.append(ready)
    moved.append(ready)
    def kept(m: Message) -> tuple:
        return (m.sender, m.recipient, m.tenant, m.campaign, m.queue, m.routing_domain, m.meta, m.reception,
                m.attempts, m.due, m.created)

    expected = {m.id: kept(m) for m in moved}

    await a.xfers.start(b.url, Selector(tenant="acme"), "Scaling down")
    await run_until(lambda: not a.xfers.statistics(), a, b)

    for m in b.scheduler.messages():  # KumoMTA's record of where it came from, beside its own meta
        assert m.meta is not None and m.meta.pop("xfer_from") == "127.0.0.1"
        assert (m.meta.pop("xfer_prior_node"), m.meta.pop("xfer_prior_id")) == ("a", m.id)
    got = {m.id: kept(m) for m in b.scheduler.messages()}
    assert got == expected
    for m in b.scheduler.messages():
        assert await b.spool.load_data(m.data_id) == f"body of {int(m.id[1:])}".encode()
    assert set(a.spool.messages) == {m.id for m in stays}
    assert {m.id for m in a.scheduler.messages()} == {m.id for m in stays}
    assert max(net.posts) <= BATCH_MESSAGES and sum(net.posts) == len(moved)
    assert {r["id"] for r in a.logs.of("XferOut")} == set(expected)
    out = a.logs.of("XferOut")[0]
    assert out["site"] == f"{b.url}.xfer.kumomta.internal" and out["delivery_protocol"] == "xfer"
    assert out["response"]["code"] == 250 and out["peer_address"] is None
    assert {r["id"] for r in b.logs.of("XferIn")} == set(expected)
    assert b.logs.of("XferIn")[0]["peer_address"] == {"name": "", "addr": "127.0.0.1"}
    rebinds = a.logs.of("AdminRebind")
    assert len(rebinds) == len(moved) and "Scaling down" in rebinds[0]["response"]["content"]
    assert a.jobs.jobs == []  # the job ends with its last message


async def test_answer_lost_after_the_target_stored_then_sent_again_and_kept_once(autojump_clock):
    net = Network()
    a, b = Node("a", net), Node("b", net)
    ids = {(await a.queue(i)).id for i in range(30)}
    net.lose_answers = 1
    await a.xfers.start(b.url, Selector(domain="a.test"), "drain")
    await run_until(lambda: not a.xfers.statistics(), a, b)
    assert sum(net.posts) == 60  # the first batch went twice
    assert sorted(m.id for m in b.scheduler.messages()) == sorted(ids)
    assert len(b.spool.messages) == 30 and len(b.logs.of("XferIn")) == 30
    assert a.spool.messages == {}


async def test_while_the_target_is_down_nothing_leaves_and_cancel_puts_mail_back(autojump_clock):
    net = Network()
    a, b = Node("a", net), Node("b", net)
    queued = [await a.queue(i) for i in range(10)]
    dues = {m.id: m.due for m in queued}
    net.down = True
    await a.xfers.start(b.url, Selector(), "drain")
    assert len(a.scheduler) == 0
    with trio.move_on_after(120):
        await run_until(lambda: False, a, b)
    (stats,) = a.xfers.statistics()
    assert stats.waiting == 10 and stats.failed_batches >= 3 and "connection refused" in (stats.last_error or "")
    assert len(a.spool.messages) == 10 and b.spool.messages == {}
    assert await a.xfers.cancel(b.url, "changed my mind") == 10
    assert {m.id: m.due for m in a.scheduler.messages()} == dues
    assert a.jobs.jobs == [] and a.xfers.statistics() == []
    with pytest.raises(KeyError):
        await a.xfers.cancel(b.url, "again")


async def test_a_restarted_node_resumes_the_job_for_mail_older_than_it(autojump_clock):
    net = Network()
    spool = MemorySpool()
    first = Node("a", net, spool=spool)
    old = [await first.queue(i, created=100.0) for i in range(5)]
    job = XferJob("job-1", "http://b.test:8000", Selector(), "drain", 200.0)
    # The node died with the job kept and its messages still in the spool.
    restarted = Node("a", net, spool=spool, jobs=MemoryJobs([job]))
    for m in spool.restore().messages:
        restarted.scheduler.add(m, m.due)
    newer = await restarted.queue(99, created=300.0)
    b = Node("b", net)
    assert restarted.xfers.restore() == 5
    await run_until(lambda: not restarted.xfers.statistics(), restarted, b)
    assert sorted(m.id for m in b.scheduler.messages()) == sorted(m.id for m in old)
    assert set(spool.messages) == {newer.id}


async def test_transfers_need_the_cluster_token(autojump_clock):
    net = Network()
    a, b = Node("a", net), Node("b", net, token=None)
    with pytest.raises(XferRefused) as no_token:
        b.xfers.check_token("Bearer s3cret")
    assert no_token.value.status == 403 and "[cluster] token" in no_token.value.message
    for header in (None, "Bearer wrong", "Basic czNjcmV0", f"Bearer {TOKEN}x"):
        with pytest.raises(XferRefused) as refused:
            a.xfers.check_token(header)
        assert refused.value.status == 401
    a.xfers.check_token(f"Bearer {TOKEN}")
    with pytest.raises(XferRefused) as cannot_send:
        await b.xfers.start(a.url, Selector(), "no token here")
    assert cannot_send.value.status == 409
    # A source whose target has no token keeps its mail and says why.
    await a.queue(1)
    await a.xfers.start(b.url, Selector(), "drain")
    with trio.move_on_after(30):
        await run_until(lambda: False, a, b)
    (stats,) = a.xfers.statistics()
    assert "HTTP 403" in (stats.last_error or "") and len(a.spool.messages) == 1


async def test_a_node_refuses_its_own_mail(autojump_clock):
    net = Network()
    a = Node("a", net)
    with pytest.raises(XferRefused) as refused:
        await a.xfers.receive({"node": "a", "messages": []}, peer_address="127.0.0.1")
    assert refused.value.status == 400 and "myself" in refused.value.message


async def test_an_xfer_that_selects_nothing_is_done_at_once(autojump_clock):
    net = Network()
    a, b = Node("a", net), Node("b", net)
    await a.queue(1, tenant="acme")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.xfers.run)
        await a.xfers.start(b.url, Selector(queue_names=("string",)), "Scaling down")
        assert a.xfers.statistics() == [] and a.jobs.jobs == []
        nursery.cancel_scope.cancel()
    # A resumed job with nothing left ends as the node starts.
    restarted = Node("a", net, jobs=MemoryJobs([XferJob("j", b.url, Selector(tenant="globex"), "r", 1e12)]))
    assert restarted.xfers.restore() == 0
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.xfers.run)
        assert restarted.xfers.statistics() == [] and restarted.jobs.jobs == []
        nursery.cancel_scope.cancel()
    assert len(a.scheduler) == 1
