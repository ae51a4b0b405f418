"""Two delivery engines (two nodes) sharing limits through one store, in virtual time.

The store keeps the same rules as the Redis scripts (a GCRA per (limit, scope) on one
clock that forgives no lateness, leases per scope) in memory; both nodes deliver to
one fake network, so its counters are what the receiver sees from both together.
"""

from __future__ import annotations

import trio

from tests.services.test_cluster_limits import Store
from trimta.core.throttle import Gcra
from trimta.core.units import Rate
from trimta.services.cluster_limits import ClusterLimits
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import FakeNetwork, accepting


class GcraStore(Store):
    """`Store` whose rates are real: one GCRA per (limit, scope), as the Lua script keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.rates: dict[tuple[str, str], Gcra] = {}

    async def take(self, limit: str, scope: str, rate: Rate) -> float:
        self._check()
        gcra = self.rates.setdefault((limit, scope), Gcra.from_rate(rate, lateness_s=0.0))
        wait = gcra.try_acquire(trio.current_time())
        if wait == 0:
            self.taken.append((limit, scope))
        return wait


def two_nodes(config: str, store: Store) -> tuple[DeliveryHarness, DeliveryHarness, FakeNetwork]:
    network = FakeNetwork()
    nodes = []
    for name in ("a", "b"):
        h = DeliveryHarness(config=config, network=network,
                            cluster=ClusterLimits(store, node_id=name, lease_period_s=3))
        h.resolver.add_domain("example.net", "127.0.0.10")
        nodes.append(h)
    return nodes[0], nodes[1], network


async def deliver_all(a: DeliveryHarness, b: DeliveryHarness, count: int) -> None:
    with trio.fail_after(3600):
        async with trio.open_nursery() as beats, a.running(), b.running():
            for h in (a, b):  # as the daemon runs it: heartbeats, and leases extended while held
                assert h.engine.cluster is not None
                await beats.start(h.engine.cluster.run)
            await a.inject(recipients=[f"a{i}@example.net" for i in range(count)])
            await b.inject(recipients=[f"b{i}@example.net" for i in range(count)])
            await a.wait_until_settled()
            await b.wait_until_settled()
            beats.cancel_scope.cancel()


async def test_a_connection_limit_holds_across_both_nodes(autojump_clock):
    store = GcraStore()
    a, b, network = two_nodes("""
        [egress.default]
        prohibited_hosts = []
        connection_limit = 3
    """, store)
    mx = network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.2))
    await deliver_all(a, b, 60)
    assert len(mx.messages) == 120
    assert mx.peak_connections <= 3
    assert not store.leases or all(not held for held in store.leases.values())  # all given back


async def test_a_local_connection_limit_stays_on_each_node(autojump_clock):
    store = GcraStore()
    a, b, network = two_nodes("""
        [egress.default]
        prohibited_hosts = []
        connection_limit = "local:2"
    """, store)
    mx = network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.2))
    await deliver_all(a, b, 40)
    assert len(mx.messages) == 80
    assert mx.peak_connections == 4  # 2 per node: nothing asked of the store
    assert store.leases == {}


async def test_message_rates_hold_across_both_nodes_in_every_window(autojump_clock):
    store = GcraStore()
    a, b, network = two_nodes("""
        [queues]
        max_message_rate = "30/s"
        [egress.default]
        prohibited_hosts = []
        connection_limit = 4
        max_message_rate = "10/s"
        source_selection_rate = "20/s"
    """, store)
    mx = network.add_receiver("127.0.0.10", 25, accepting())
    await deliver_all(a, b, 50)
    times = sorted(m.received_at for m in mx.messages)
    assert len(times) == 100
    # 10/s with a burst of 1: at most 10 in any window of 1 s, both nodes together.
    for i in range(len(times) - 10):
        assert times[i + 10] - times[i] >= 1.0 - 1e-6, times[i:i + 11]
    kinds = {limit for limit, _ in store.taken}
    assert {"max_message_rate", "source_selection_rate", "scheduled_max_message_rate"} <= kinds
