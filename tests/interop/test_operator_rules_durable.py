"""Operator rules outlive the daemon: a suspension, a bounce rule and a ready-queue
suspension made through the HTTP API hold after `kill -9` and a restart, with their
remaining time, and the suspended tenant's backlog is not delivered on restart."""

from __future__ import annotations

import smtplib
import socket
import time

from .test_delivery_e2e import wait_for
from .test_operations_e2e import api, daemon_for, dns, receiver  # noqa: F401  (fixtures)


def test_suspension_and_bounce_survive_kill_9(make_daemon, dns, receiver):
    handler, port = receiver
    d = daemon_for(make_daemon, dns, port)
    status, suspended = api(d, "POST", "/api/admin/suspend/v1",
                            {"tenant": "acme", "reason": "incident 42", "duration": "2h"})
    assert status == 200
    status, bounced = api(d, "POST", "/api/admin/bounce/v1",
                          {"tenant": "spammer", "reason": "terminated", "duration": "2h"})
    assert status == 200
    # a ready queue must exist to be suspended: one held open by a host that never greets
    mute = socket.create_server(("127.0.0.42", port))
    stalled = "unspecified->mx.stall.ops.test@smtp_client"
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.sendmail("s@example.com", ["z@stall.ops.test"], "Subject: z\r\n\r\nhi\r\n")
    wait_for(lambda: any(q["name"] == stalled for q in api(d, "GET", "/api/admin/queue-summary/v1")[1]["ready"]),
             what="the stalled ready queue")
    status, ready = api(d, "POST", "/api/admin/suspend-ready-q/v1",
                        {"name": stalled, "reason": "asked", "duration": "2h"})
    assert status == 200
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        for i in range(5):
            client.sendmail("s@example.com", [f"a{i}@ops.test"], "Subject: a\r\nX-Tenant: acme\r\n\r\nhi\r\n")
    d.kill9()

    d.start()  # same spool, same config
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.sendmail("s@example.com", ["g@ops.test"], "Subject: g\r\nX-Tenant: globex\r\n\r\nhi\r\n")
        client.sendmail("s@example.com", ["x@ops.test"], "Subject: x\r\nX-Tenant: spammer\r\n\r\nhi\r\n")
    wait_for(lambda: "g@ops.test" in handler.recipients, what="the other tenant's delivery")
    wait_for(lambda: d.records("AdminBounce"), what="the bounce rule's AdminBounce after the restart")
    time.sleep(1)  # what the restored daemon would have delivered by now, it has
    assert not any(r.startswith("a") for r in handler.recipients)  # acme's backlog stays held

    status, listed = api(d, "GET", "/api/admin/suspend/v1")
    assert status == 200 and [r["id"] for r in listed] == [suspended["id"]]
    assert listed[0]["reason"] == "incident 42" and listed[0]["tenant"] == "acme"
    status, listed_bounces = api(d, "GET", "/api/admin/bounce/v1")
    assert [r["id"] for r in listed_bounces] == [bounced["id"]]
    status, listed_ready = api(d, "GET", "/api/admin/suspend-ready-q/v1")
    assert [r["id"] for r in listed_ready] == [ready["id"]]
    (admin_bounce,) = d.records("AdminBounce")
    assert admin_bounce["recipient"] == "x@ops.test" and admin_bounce["tenant"] == "spammer"

    status, _ = api(d, "DELETE", "/api/admin/suspend/v1", {"id": suspended["id"]})
    assert status == 200
    wait_for(lambda: sum(r.startswith("a") for r in handler.recipients) == 5,
             what="acme's five messages once the suspension is lifted")
    d.stop()
    d.start()
    status, listed = api(d, "GET", "/api/admin/suspend/v1")
    assert status == 200 and listed == []  # a cancelled rule stays cancelled
    mute.close()
