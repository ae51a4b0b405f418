"""ClusterLimits (trimta/services/cluster_limits.py) in virtual time, on a store that can go
away: shared answers while it answers, local shares (limit / nodes last seen alive) while
it is away, one warning per outage, back to shared at the next beat that gets an answer."""

from __future__ import annotations

import logging

import pytest
import trio

from trimta.adapters.redis_limits import ClusterUnavailable
from trimta.core.units import Rate
from trimta.services.cluster_limits import ClusterLimits, NodeLimits


class Store:
    """A shared store in memory that several ClusterLimits use, and that can be 'down'."""

    def __init__(self) -> None:
        self.down = False
        self.leases: dict[str, dict[str, float]] = {}
        self.nodes: dict[str, float] = {}
        self.taken: list[tuple[str, str]] = []
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise ClusterUnavailable("redis://127.0.0.1:1/0: connection refused")

    def live(self, scope: str) -> dict[str, float]:
        now = trio.current_time()
        held = self.leases.setdefault(scope, {})
        for lease_id in [k for k, until in held.items() if until <= now]:
            del held[lease_id]
        return held

    async def take(self, limit: str, scope: str, rate: Rate) -> float:
        self._check()
        self.taken.append((limit, scope))
        return 0.0

    async def acquire_lease(self, scope: str, lease_id: str, limit: int, period_s: float) -> bool:
        self._check()
        held = self.live(scope)
        if lease_id not in held and len(held) >= limit:
            return False
        held[lease_id] = trio.current_time() + period_s
        return True

    async def extend_lease(self, scope: str, lease_id: str, period_s: float) -> bool:
        self._check()
        held = self.live(scope)
        if lease_id not in held:
            return False
        held[lease_id] = trio.current_time() + period_s
        return True

    async def release_lease(self, scope: str, lease_id: str) -> None:
        self._check()
        self.live(scope).pop(lease_id, None)

    async def heartbeat(self, node_id: str, ttl_s: float) -> int:
        self._check()
        now = trio.current_time()
        self.nodes[node_id] = now + ttl_s
        return sum(1 for until in self.nodes.values() if until > now)


async def test_leases_are_shared_while_the_store_answers(autojump_clock):
    store = Store()
    a, b = (ClusterLimits(store, node_id=n, lease_period_s=3) for n in ("a", "b"))
    held = [await a.lease("conn", 3), await a.lease("conn", 3)]
    assert all(held)
    assert await b.lease("conn", 3) is not None
    assert await b.lease("conn", 3) is None  # 3 held by the two nodes together
    await a.release(held[0])
    assert await b.lease("conn", 3) is not None


async def test_a_lease_lapses_once_its_holder_stops_beating(autojump_clock):
    store = Store()
    a, b = (ClusterLimits(store, node_id=n, lease_period_s=3) for n in ("a", "b"))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert await a.lease("conn", 1) is not None
        await trio.sleep(30)  # a beats: its lease is extended all along
        assert await b.lease("conn", 1) is None
        nursery.cancel_scope.cancel()  # a dies: no more beats
    with trio.fail_after(3.5):
        while await b.lease("conn", 1) is None:
            await trio.sleep(0.1)


async def test_while_the_store_is_away_each_node_gets_its_share_and_one_warning(autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="trimta.services.cluster_limits")
    store = Store()
    a, b = (ClusterLimits(store, node_id=n, lease_period_s=3) for n in ("a", "b"))
    await a.beat()
    await b.beat()
    await a.beat()
    assert a.nodes_alive == 2
    store.down = True
    calls = store.calls
    # A limit of 5 across 2 nodes: 5 // 2 = 2 connections for this node.
    leases = [await a.lease("conn", 5) for _ in range(3)]
    assert [lease is not None for lease in leases] == [True, True, False]
    assert not a.statistics().available
    # After the first failure delivery no longer asks the store; only the beat does.
    assert store.calls == calls + 1
    # A rate of 10/s across 2 nodes: 5 a second for this node.
    rate = Rate(10, 1.0)
    turns = 0
    start = trio.current_time()
    while trio.current_time() - start < 2.0:
        if await a.take("max_message_rate", "q", rate) == 0:
            turns += 1
        else:
            await trio.sleep(0.01)
    assert 5 <= turns <= 2 * 5 + 1
    await a.beat()
    await a.beat()
    warnings = [r for r in caplog.records if "delivering under local limits" in r.getMessage()]
    assert len(warnings) == 1 and "/ 2 node(s)" in warnings[0].getMessage()
    assert a.statistics().outages == 1

    store.down = False
    await a.beat()
    assert a.statistics().available
    # The leases taken locally are in the store now: b sees them.
    assert len(store.live("conn")) == 2
    assert any("limits are shared again" in r.getMessage() for r in caplog.records)
    await a.take("max_message_rate", "q", rate)
    assert store.taken[-1] == ("max_message_rate", "q")


async def test_a_node_above_its_share_when_the_store_goes_lets_connections_close(autojump_clock):
    store = Store()
    a, b = (ClusterLimits(store, node_id=n, lease_period_s=3) for n in ("a", "b"))
    await a.beat()
    await b.beat()
    await a.beat()
    leases = [await a.lease("conn", 3) for _ in range(3)]
    assert all(leases)
    assert a.keep([leases[0]])  # shared: the node may go on
    store.down = True
    await a.beat()
    # 3 held, share 3 // 2 = 1: connections close after their message until one is left.
    assert not a.keep([leases[0]])
    await a.release(leases[1])
    await a.release(leases[2])
    assert a.keep([leases[0]])


@pytest.mark.parametrize(("limit", "nodes", "share"), [(3, 2, 1), (1, 4, 1), (20, 3, 6), (7, 1, 7)])
def test_a_local_share_is_the_limit_divided_by_the_nodes_at_least_one(limit, nodes, share):
    local = NodeLimits(clock=lambda: 0.0, share=nodes)
    assert local.limit_share(limit) == share
    assert local.rate_share(Rate(limit, 1.0)).limit == max(1.0, limit / nodes)


def test_local_limits_are_never_shared():
    local = NodeLimits(clock=lambda: 0.0)
    assert not local.shares(Rate(5, 1.0, local=True)) and local.shares(Rate(5, 1.0))
    assert not local.shares(True) and local.shares(False)


async def test_an_unexpected_error_in_a_beat_is_logged_and_the_node_goes_on_locally(autojump_clock, caplog):
    class Broken(Store):
        async def heartbeat(self, node_id: str, ttl_s: float) -> int:
            raise RuntimeError("a bug")

    limits = ClusterLimits(Broken(), node_id="a", lease_period_s=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(limits.run)
        await trio.sleep(10)
        assert not limits.statistics().available
        assert await limits.lease("conn", 2) is not None
        nursery.cancel_scope.cancel()
    assert "the heartbeat failed" in caplog.text


async def test_a_node_starting_while_the_store_is_away_divides_by_the_nodes_it_saw_last(autojump_clock, tmp_path):
    from trimta.adapters.cluster_config import read_nodes_seen, write_nodes_seen

    store = Store()
    others = [ClusterLimits(store, node_id=n, lease_period_s=3) for n in ("b", "c")]
    for node in others:
        await node.beat()
    first = ClusterLimits(store, node_id="a", lease_period_s=3, nodes_seen=read_nodes_seen(tmp_path),
                          keep_nodes_seen=lambda n: write_nodes_seen(tmp_path, n))
    assert first.nodes_alive == 1  # nothing kept yet
    await first.beat()
    assert first.nodes_alive == 3 and read_nodes_seen(tmp_path) == 3
    # A restart of "a" while the store is away: a limit of 9 leases gives it 9 / 3.
    store.down = True
    again = ClusterLimits(store, node_id="a", lease_period_s=3, nodes_seen=read_nodes_seen(tmp_path))
    await again.beat()
    leases = [await again.lease("conn", 9) for _ in range(4)]
    assert [lease is not None for lease in leases] == [True, True, True, False]
    # Without the kept count (a node that never saw the others) it counts itself alone.
    alone = ClusterLimits(store, node_id="d", lease_period_s=3, nodes_seen=read_nodes_seen(tmp_path / "new"))
    await alone.beat()
    assert sum([await alone.lease("conn", 9) is not None for _ in range(10)]) == 9


def test_the_kept_count_of_nodes_tolerates_a_damaged_file(tmp_path):
    from trimta.adapters.cluster_config import NODES_SEEN_FILE, read_nodes_seen

    for text in ("", "three\n", "0\n", "-2\n"):
        (tmp_path / NODES_SEEN_FILE).write_text(text)
        assert read_nodes_seen(tmp_path) == 1
