"""Operator rules in force survive kill -9: a suspended tenant's backlog is not
delivered the moment the daemon comes back, and rules keep their remaining time.

(The rules are the lead's durable operator-rules service, issue 13; this is the fault
suite's check of it, from outside: the HTTP API before and after a kill -9, the mail
at a real receiver.)
"""

from __future__ import annotations

import json
import smtplib
import time
import urllib.request


from tests.dnsmasq import Dnsmasq

from .conftest import free_port, record_fault
from .peers import OK, ScriptedReceiver, wait_until

def api(daemon, method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_a_suspension_and_a_bounce_rule_outlive_kill_9_with_their_remaining_time(make_daemon, tmp_path):
    (tmp_path / "dns").mkdir()
    zone = Dnsmasq(tmp_path / "dns", ["--mx-host=rules.test,mx.rules.test,10",
                                      "--host-record=mx.rules.test,127.0.0.71"])
    zone.start()
    port = free_port("127.0.0.71")
    receiver = ScriptedReceiver("127.0.0.71", port, [OK])
    try:
        daemon = make_daemon(
            dns=f'nameservers = ["{zone.nameserver}"]\ntimeout = "2s"',
            extra_config=f'[queues]\nretry_interval = "1s"\n[egress.default]\nsmtp_port = {port}\n'
                         f'prohibited_hosts = []\nenable_tls = "Disabled"\nidle_timeout = "1s"\n',
        ).start()
        status, suspended = api(daemon, "POST", "/api/admin/suspend/v1",
                                {"tenant": "acme", "reason": "incident", "duration": "2h"})
        assert status == 200
        status, _ = api(daemon, "POST", "/api/admin/bounce/v1",
                        {"tenant": "spammer", "reason": "terminated", "duration": "2h"})
        assert status == 200
        (before,) = api(daemon, "GET", "/api/admin/suspend/v1")[1]
        with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as s:
            for i in range(10):
                s.sendmail("s@example.com", [f"held{i}@rules.test"], b"X-Tenant: acme\r\nSubject: a\r\n\r\nx\r\n")
        daemon.kill9()
        time.sleep(1)  # so that a rule restored with its full duration would show a later expiry
        daemon.start()
        with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as s:
            s.sendmail("s@example.com", ["other@rules.test"], b"X-Tenant: globex\r\nSubject: g\r\n\r\nx\r\n")
            s.sendmail("s@example.com", ["gone@rules.test"], b"X-Tenant: spammer\r\nSubject: s\r\n\r\nx\r\n")
        wait_until(lambda: len(receiver.ids()) == 1, what="the other tenant's message")
        wait_until(lambda: daemon.records("AdminBounce"), what="the bounce rule applied after the restart")
        (after,) = api(daemon, "GET", "/api/admin/suspend/v1")[1]
        assert after["id"] == suspended["id"] and after["expires"] == before["expires"]
        assert len(receiver.ids()) == 1  # acme's ten are still held
        api(daemon, "DELETE", "/api/admin/suspend/v1", {"id": suspended["id"]})
        wait_until(lambda: len(receiver.ids()) == 11, what="acme's backlog once the suspension is lifted")
        assert "Traceback" not in daemon.stderr()
    finally:
        receiver.close()
        zone.stop()
    record_fault("kill -9 with a tenant suspended and a bounce rule in force",
                 "rules restored with their expiry; backlog held until lifted, then delivered",
                 acknowledged=12, delivered=len(receiver.ids()), lost=0, duplicated=receiver.duplicates(),
                 note="1 bounced by the restored rule")
