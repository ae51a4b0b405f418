"""Operator rules across two real daemons sharing one real Redis (tests/interop/cluster_nodes.py).

A suspension POSTed to node A's HTTP API holds the tenant's mail on node B, and lifting
it on A releases B's: the receiver (aiosmtpd) is what sees it.
"""

from __future__ import annotations

import http.client
import json
import time

from .cluster_nodes import CountingReceiver, Node, make_cluster, wait_for  # noqa: F401 (make_cluster: a fixture)

DEADLINE_S = 60
QUIET_S = 3  # how long nothing is to arrive while the suspension holds


def api(node: Node, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=DEADLINE_S)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw.strip() else None
    finally:
        conn.close()


def answers(node: Node) -> bool:
    try:
        return api(node, "GET", "/api/admin/suspend/v1")[0] == 200
    except OSError:
        return False


def test_a_suspension_posted_to_one_node_holds_the_other_nodes_mail_until_lifted_there(make_cluster):
    receiver = CountingReceiver("127.0.0.30", delay_s=0).start()
    try:
        cluster = make_cluster(2, extra_config=receiver.egress_config())
        a, b = cluster[0], cluster[1]
        status, answer = api(a, "POST", "/api/admin/suspend/v1",
                             {"tenant": "acme", "duration": "1h", "reason": "complaints"})
        assert status == 200, answer
        rule_id = answer["id"]
        wait_for(lambda: [r["id"] for r in api(b, "GET", "/api/admin/suspend/v1")[1]] == [rule_id],
                 DEADLINE_S, "node b to list node a's suspension")
        b.send([receiver.address("held")], tenant="acme")
        b.send([receiver.address("flows")], tenant="globex")
        wait_for(lambda: "flows@[127.0.0.30]" in receiver.recipients, DEADLINE_S, "globex's mail")
        time.sleep(QUIET_S)
        assert receiver.recipients == ["flows@[127.0.0.30]"]  # acme's waits on b
        status, _ = api(a, "DELETE", "/api/admin/suspend/v1", {"id": rule_id})
        assert status == 200
        wait_for(lambda: "held@[127.0.0.30]" in receiver.recipients, DEADLINE_S, "acme's mail, released on b")
        assert api(b, "GET", "/api/admin/suspend/v1")[1] == []
        delivered = wait_for(lambda: [r for r in b.records("Delivery") if r.get("tenant") == "acme"],
                             DEADLINE_S, "b's Delivery record")  # written a moment after the receiver's 250
        assert [r["num_attempts"] for r in delivered] == [1]  # being held was not an attempt
    finally:
        receiver.stop()


def test_a_suspension_lifted_on_one_node_while_redis_is_down_is_lifted_on_the_other_once_it_returns(make_cluster):
    receiver = CountingReceiver("127.0.0.30", delay_s=0).start()
    try:
        cluster = make_cluster(2, extra_config=receiver.egress_config())
        a, b = cluster[0], cluster[1]
        _, answer = api(a, "POST", "/api/admin/suspend/v1", {"tenant": "acme", "duration": "1h", "reason": "x"})
        rule_id = answer["id"]
        wait_for(lambda: [r["id"] for r in api(b, "GET", "/api/admin/suspend/v1")[1]] == [rule_id],
                 DEADLINE_S, "node b to list node a's suspension")
        b.send([receiver.address("held")], tenant="acme")
        cluster.redis_stop()
        status, _ = api(a, "DELETE", "/api/admin/suspend/v1", {"id": rule_id})
        assert status == 200  # lifted on a at once
        assert api(a, "GET", "/api/admin/suspend/v1")[1] == []
        time.sleep(QUIET_S)
        assert receiver.recipients == []  # b still holds it: it cannot hear of the change
        cluster.redis_start()
        wait_for(lambda: "held@[127.0.0.30]" in receiver.recipients, DEADLINE_S, "acme's mail, released on b")
        assert api(b, "GET", "/api/admin/suspend/v1")[1] == []
        assert "Traceback" not in a.stderr() + b.stderr()
    finally:
        receiver.stop()


def test_nodes_started_while_redis_is_down_deliver_and_share_rules_once_it_is_up(make_cluster):
    receiver = CountingReceiver("127.0.0.30", delay_s=0).start()
    try:
        cluster = make_cluster(2, extra_config=receiver.egress_config(), start=False)
        cluster.redis_stop()
        for node in cluster:
            node.daemon.start()
        a, b = cluster[0], cluster[1]
        b.send([receiver.address("early")], tenant="acme")
        wait_for(lambda: "early@[127.0.0.30]" in receiver.recipients, DEADLINE_S, "mail sent while Redis is down")
        cluster.redis_start()
        # Made on a once Redis is back (a may not have reconnected yet: then it is written on reconnect).
        _, answer = api(a, "POST", "/api/admin/suspend/v1", {"tenant": "acme", "duration": "1h", "reason": "x"})
        wait_for(lambda: [r["id"] for r in api(b, "GET", "/api/admin/suspend/v1")[1]] == [answer["id"]],
                 DEADLINE_S, "node b to list node a's suspension")
        b.send([receiver.address("held")], tenant="acme")
        b.send([receiver.address("flows")], tenant="globex")
        wait_for(lambda: "flows@[127.0.0.30]" in receiver.recipients, DEADLINE_S, "globex's mail")
        time.sleep(QUIET_S)
        assert "held@[127.0.0.30]" not in receiver.recipients
        assert "Traceback" not in a.stderr() + b.stderr()
    finally:
        receiver.stop()


def test_two_nodes_on_one_smtp_port_share_the_mail_and_the_rules(make_cluster):
    """The one-machine layout of docs/cluster.md: one SMTP port (shared_port), own spools and
    HTTP ports, one Redis."""
    receiver = CountingReceiver("127.0.0.30", delay_s=0).start()
    try:
        cluster = make_cluster(2, extra_config=receiver.egress_config(), start=False,
                               hosts=["127.0.0.21", "127.0.0.21"])
        a, b = cluster[0], cluster[1]
        for node in cluster:
            node.daemon.extra_listener = "shared_port = true"
            node.daemon.port = a.daemon.port
            node.daemon.__post_init__()  # its config again, with the one port
        a.daemon.start()
        b.daemon.start()
        # The port answered at once (a's): b is up once its API answers.
        wait_for(lambda: answers(b), DEADLINE_S, "node b's API")
        _, answer = api(a, "POST", "/api/admin/suspend/v1", {"tenant": "acme", "duration": "1h", "reason": "x"})
        wait_for(lambda: [r["id"] for r in api(b, "GET", "/api/admin/suspend/v1")[1]] == [answer["id"]],
                 DEADLINE_S, "node b to list node a's suspension")
        count = 30
        for i in range(count):  # one connection each: the kernel spreads them over the nodes
            a.send([receiver.address(f"m{i}")], tenant="acme")
        taken = wait_for(lambda: (lambda n: n if sum(n) == count else None)(
            [len(node.records("Reception")) for node in cluster]), DEADLINE_S, "both nodes' Reception records")
        assert min(taken) > 0, taken  # both nodes took some of the mail
        time.sleep(QUIET_S)
        assert receiver.recipients == []  # held on both nodes
        api(b, "DELETE", "/api/admin/suspend/v1", {"id": answer["id"]})
        wait_for(lambda: receiver.delivered() == count, DEADLINE_S, "every message, once the rule is lifted")
        assert sorted(receiver.recipients) == sorted(receiver.address(f"m{i}") for i in range(count))
    finally:
        receiver.stop()
