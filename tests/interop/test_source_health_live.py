"""An unplumbed egress source on the real daemon: KumoMTA's sources.toml with
``suspend_when_unplumbed`` and ``remote_port``. The unplumbed address is 192.0.2.1
(TEST-NET-1, on no interface here): binding it fails with EADDRNOTAVAIL before any
packet is sent. What is checked is what an operator sees: the mail at the receiver
through the other source, the TransientFailure record, the log line and KumoMTA's
source-health metrics.
"""

from __future__ import annotations

import smtplib
import time

from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq

from .conftest import free_port, metric


class Receiver:
    def __init__(self) -> None:
        self.messages: list[list[str]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(list(envelope.rcpt_tos))
        return "250 2.0.0 accepted"


def test_an_unplumbed_source_is_suspended_and_its_pool_sends_through_the_other(make_daemon, tmp_path):
    (tmp_path / "dnsmasq").mkdir()
    dns = Dnsmasq(tmp_path / "dnsmasq", ["--mx-host=health.test,mx.health.test,10",
                                         "--host-record=mx.health.test,127.0.0.42"])
    dns.start()
    mx_port = free_port("127.0.0.42")
    receiver = Receiver()
    controller = Controller(receiver, hostname="127.0.0.42", port=mx_port)
    controller.start()
    (tmp_path / "sources.toml").write_text(f"""
[source."ip-1"]
source_address = "192.0.2.1"
suspend_when_unplumbed = {{ duration = "5m" }}

[source."ip-2"]
source_address = "127.0.0.3"
remote_port = {mx_port}

[pool."BestReputation"]
[pool."BestReputation"."ip-1"]
weight = 1
[pool."BestReputation"."ip-2"]
weight = 1
""")
    try:
        daemon = make_daemon(dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"', extra_config=f"""
[kumomta]
sources = "{tmp_path / 'sources.toml'}"
[queues]
egress_pool = "BestReputation"
retry_interval = "1h"
[egress.default]
smtp_port = 9  # nothing listens there: only ip-2's remote_port reaches the receiver
prohibited_hosts = []
enable_tls = "Disabled"
""").start()
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            for i in range(6):
                client.sendmail("s@example.com", [f"r{i}@health.test"], "Subject: x\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 60
        while len(daemon.records("Delivery")) + len(daemon.records("TransientFailure")) < 6:
            assert time.monotonic() < deadline, (daemon.records(), daemon.stderr())
            time.sleep(0.05)
        (failure,) = daemon.records("TransientFailure")  # ip-1's one turn; suspended after it
        assert "cannot use source address 192.0.2.1" in failure["response"]["content"]
        assert failure["egress_source"] == "ip-1"
        assert {r["egress_source"] for r in daemon.records("Delivery")} == {"ip-2"}
        assert len(receiver.messages) == 5
        assert "egress source ip-1 suspended for 300s" in daemon.stderr()
        labels = '{source="ip-1",reason="Unplumbed"}'
        assert metric(daemon, f"egress_source_health_suspended{labels}") == 1
        assert metric(daemon, f"egress_source_health_suspensions_total{labels}") == 1
        assert metric(daemon, 'egress_source_connection_failures_total{source="ip-1",kind="Unplumbed"}') == 1
        assert metric(daemon, 'egress_source_connection_failures_total{source="ip-2",kind="Unplumbed"}') == 0
    finally:
        controller.stop()
        dns.stop()
