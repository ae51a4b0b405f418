"""The two-daemon fixture itself (tests/interop/cluster_nodes.py): nodes with their own spools
and ports deliver to one receiver, survive a kill -9 and a Redis restart."""

from __future__ import annotations

from .cluster_nodes import CountingReceiver, make_cluster, wait_for  # noqa: F401 (make_cluster is a fixture)


def test_two_nodes_deliver_to_one_receiver_and_come_back_after_kill_9(make_cluster):
    receiver = CountingReceiver(delay_s=0.0).start()
    try:
        cluster = make_cluster(2, extra_config=receiver.egress_config())
        a, b = cluster
        assert a.host != b.host and a.http_port != b.http_port
        assert a.daemon.spool_path != b.daemon.spool_path
        a.send([receiver.address(f"a{i}") for i in range(5)])
        b.send([receiver.address(f"b{i}") for i in range(5)])
        wait_for(lambda: receiver.delivered() == 10, what="10 messages at the receiver")
        # the receiver has them; each node's log is written a moment later
        wait_for(lambda: len(a.records("Delivery")) == 5 and len(b.records("Delivery")) == 5,
                 what="each node's 5 Delivery records")

        cluster.kill9(0)
        assert not a.running
        cluster.redis_stop()
        cluster.redis_start()
        cluster.restart(0)
        a.send([receiver.address("again")])
        wait_for(lambda: receiver.delivered() == 11, what="a delivery after the restart")
        assert cluster.redis_command("PING").strip() == "PONG"
    finally:
        receiver.stop()
