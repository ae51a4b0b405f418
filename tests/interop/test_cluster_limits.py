"""Two real daemons sharing one real redis-server and one slow aiosmtpd receiver: the
limits hold across both together (the receiver counts), and hold up when Redis or a
node goes away.

Bounds, not timings: each test polls for what it waits for under generous deadlines
and asserts what the receiver saw (sessions open at once, arrivals within any window).
"""

from __future__ import annotations

import re
from collections import Counter

from .cluster_nodes import CountingReceiver, make_cluster, wait_for  # noqa: F401 (make_cluster is a fixture)

FAST = 'lease_period = "3s"'
OUTAGE_WARNING = "delivering under local limits"


def all_delivered(receiver: CountingReceiver, expected: set[str]) -> bool:
    with receiver.lock:
        return set(receiver.recipients) >= expected


def test_connection_limit_3_is_never_exceeded_by_both_nodes_together(make_cluster):
    receiver = CountingReceiver(delay_s=0.2).start()
    try:
        cluster = make_cluster(2, cluster_config=FAST, extra_config=receiver.egress_config(connection_limit=3))
        a, b = cluster
        expected = {receiver.address(f"a{i}") for i in range(40)} | {receiver.address(f"b{i}") for i in range(40)}
        a.send(sorted(r for r in expected if r.startswith("a")))
        b.send(sorted(r for r in expected if r.startswith("b")))
        wait_for(lambda: all_delivered(receiver, expected), timeout=180, what="80 messages at the receiver")
        # Each node alone would open 3: together they never had more than 3 open.
        assert receiver.max_sessions <= 3
        # Each node's records are written a moment after the receiver's 250.
        wait_for(lambda: len(a.records("Delivery")) == 40 and len(b.records("Delivery")) == 40,
                 what="40 Delivery records on each node")
        assert Counter(receiver.recipients) == Counter(expected)
        assert a.metric("trimta_cluster_redis_available") == 1.0
    finally:
        receiver.stop()


def test_max_message_rate_100_per_second_holds_across_both_nodes(make_cluster):
    # The shared GCRA allows at most ceil(N) + B - 1 = 100 turns (burst 1) in any second of
    # the Redis server's clock, across both nodes (docs/cluster.md). The receiver stamps a
    # message when its DATA ends, a little after its turn was taken, by a delay that varies
    # with the load: the bound asserted allows 15 more for that (0.15 s of jitter at 100/s).
    receiver = CountingReceiver(delay_s=0.0).start()
    try:
        cluster = make_cluster(2, cluster_config=FAST, extra_config=receiver.egress_config(
            connection_limit=8, max_message_rate="100/s"))
        a, b = cluster
        expected = {receiver.address(f"a{i}") for i in range(400)} | {receiver.address(f"b{i}") for i in range(400)}
        a.send(sorted(r for r in expected if r.startswith("a")))
        b.send(sorted(r for r in expected if r.startswith("b")))
        wait_for(lambda: all_delivered(receiver, expected), timeout=300, what="800 messages at the receiver")
        most = receiver.most_in_window(1.0)
        with receiver.lock:
            span = max(receiver.arrivals) - min(receiver.arrivals)
        print(f"most arrivals in any 1 s window: {most}; 800 messages in {span:.2f}s")
        assert most <= 115
        # Both nodes at 100/s each would take 4 s; shared, 800 take at least 7 s (less the jitter).
        assert span >= (800 - 100) / 100 - 0.15
        assert Counter(receiver.recipients) == Counter(expected)
    finally:
        receiver.stop()


def test_redis_killed_mid_run_both_keep_delivering_then_share_again(make_cluster):
    receiver = CountingReceiver(delay_s=0.05).start()
    try:
        cluster = make_cluster(2, cluster_config=FAST, extra_config=receiver.egress_config(connection_limit=3))
        a, b = cluster
        first = {receiver.address(f"a{i}") for i in range(30)} | {receiver.address(f"b{i}") for i in range(30)}
        a.send(sorted(r for r in first if r.startswith("a")))
        b.send(sorted(r for r in first if r.startswith("b")))
        wait_for(lambda: receiver.delivered() >= 10, timeout=120, what="delivery under way")

        cluster.redis_kill9()
        # Both notice (at the latest at their next beat) and fall back to local shares: 3 // 2 = 1
        # connection each. A node above its share closes connections after their message; the
        # other may open its one meanwhile, so for that moment the receiver may see the limit
        # plus one node's share.
        for node in cluster:
            wait_for(lambda node=node: node.metric("trimta_cluster_redis_available") == 0.0, timeout=60,
                     what=f"{node.name} to see Redis gone")
        assert receiver.max_sessions <= 3 + 1
        wait_for(lambda: receiver.open_sessions <= 2, timeout=60, what="both nodes down to their shares")
        with receiver.lock:
            delivered_before = set(receiver.recipients)
        seen = Counter(receiver.recipients)
        receiver.reset()
        second = {receiver.address(f"a-down{i}") for i in range(30)} | {receiver.address(f"b-down{i}") for i in range(30)}
        a.send(sorted(r for r in second if r.startswith("a")))
        b.send(sorted(r for r in second if r.startswith("b")))
        wait_for(lambda: all_delivered(receiver, (first - delivered_before) | second), timeout=180,
                 what="every message while Redis is down")
        assert receiver.max_sessions <= 2
        wait_for(lambda: len(a.records("Delivery")) >= 30 + 30 and len(b.records("Delivery")) >= 30 + 30,
                 what="both nodes delivered while Redis was down")

        cluster.redis_start()
        for node in cluster:
            wait_for(lambda node=node: node.metric("trimta_cluster_redis_available") == 1.0, timeout=60,
                     what=f"{node.name} back on shared limits")
        third = {receiver.address(f"a-up{i}") for i in range(30)} | {receiver.address(f"b-up{i}") for i in range(30)}
        a.send(sorted(r for r in third if r.startswith("a")))
        b.send(sorted(r for r in third if r.startswith("b")))
        wait_for(lambda: all_delivered(receiver, (first - delivered_before) | second | third), timeout=180,
                 what="every message after Redis came back")
        assert receiver.max_sessions <= 3
        # Nothing lost, nothing twice.
        assert seen + Counter(receiver.recipients) == Counter(first | second | third)
        for node in cluster:
            assert node.stderr().count(OUTAGE_WARNING) == 1, node.stderr()[-3000:]
            assert "limits are shared again" in node.stderr()
            assert node.metric("trimta_cluster_redis_outages_total") == 1.0
    finally:
        receiver.stop()


def test_kill_9_of_a_node_holding_leases_gives_the_full_limit_to_the_other_after_the_lease_period(make_cluster):
    receiver = CountingReceiver(delay_s=0.5).start()
    try:
        cluster = make_cluster(2, cluster_config=FAST, extra_config=receiver.egress_config(connection_limit=3))
        a, b = cluster
        a.send([receiver.address(f"a{i}") for i in range(200)])
        wait_for(lambda: receiver.open_sessions == 3, timeout=120, what="node a holding all 3 connections")
        leases = [k for k in cluster.redis_command("KEYS", "trimta:leases:*").split() if "connection_limit" in k]
        assert len(leases) == 1
        assert cluster.redis_command("ZCARD", leases[0]).strip() == "3"
        cluster.kill9(0)  # its leases stay in Redis until they lapse (3 s)

        receiver.reset()
        b.send([receiver.address(f"b{i}") for i in range(200)])
        wait_for(lambda: receiver.open_sessions == 3, timeout=120,
                 what="node b holding all 3 connections once a's leases lapsed")
        assert receiver.max_sessions <= 3
        members = cluster.redis_command("ZRANGE", leases[0], "0", "-1").split()
        assert len(members) == 3 and all(re.match(r"node-b-", m) for m in members), members
    finally:
        receiver.stop()


def test_a_redis_that_answers_nothing_does_not_hold_delivery_up(make_cluster):
    receiver = CountingReceiver(delay_s=0.0).start()
    cluster = None
    try:
        cluster = make_cluster(2, cluster_config=FAST, extra_config=receiver.egress_config(
            connection_limit=3, max_message_rate="50/s"))
        a, b = cluster
        cluster.redis_pause()
        frozen = {receiver.address(f"a{i}") for i in range(20)} | {receiver.address(f"b{i}") for i in range(20)}
        a.send(sorted(r for r in frozen if r.startswith("a")))
        b.send(sorted(r for r in frozen if r.startswith("b")))
        # Every call gives up after the timeout (500 ms): the nodes deliver under local shares.
        wait_for(lambda: all_delivered(receiver, frozen), timeout=120, what="delivery while Redis is frozen")
        for node in cluster:
            wait_for(lambda node=node: node.metric("trimta_cluster_redis_available") == 0.0, timeout=60,
                     what=f"{node.name} to give up on Redis")
        assert receiver.max_sessions <= 3 + 1
        cluster.redis_resume()
        for node in cluster:
            wait_for(lambda node=node: node.metric("trimta_cluster_redis_available") == 1.0, timeout=60,
                     what=f"{node.name} back on shared limits")
        after = {receiver.address(f"a-after{i}") for i in range(20)} | {receiver.address(f"b-after{i}") for i in range(20)}
        a.send(sorted(r for r in after if r.startswith("a")))
        b.send(sorted(r for r in after if r.startswith("b")))
        wait_for(lambda: all_delivered(receiver, frozen | after), timeout=120, what="delivery after Redis thawed")
        assert Counter(receiver.recipients) == Counter(frozen | after)
        assert "within 0.5s" in a.stderr() + b.stderr()
    finally:
        if cluster is not None and cluster.redis.proc is not None:
            cluster.redis_resume()
        receiver.stop()
