"""Egress through HAProxy (KumoMTA's ``ha_proxy_server``/``ha_proxy_source_address``), with
Debian's haproxy as the proxy: it takes the PROXY v2 header (``accept-proxy``) and connects
to the MX host from the address the header names (``source 0.0.0.0 usesrc clientip``).
What is checked is what an operator sees: the receiver's peer address is the proxy source
address, the records say the mail went through the proxy, and a source whose proxy does not
answer is suspended (``suspend_when_proxy_unhealthy``) while its pool sends through the other.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import time

import jsonschema
import pytest
from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq
from tests.kumomta_compat.log_record_schema import SCHEMA, TRIMTA_SCHEMA

from .conftest import free_port, metric, tool

PROXY = "127.0.0.50"
PROXY_SOURCE = "127.0.0.61"  # the address the proxy connects from, as the header asks
DEAD_PROXY = "127.0.0.51"  # nothing listens there
MX = "127.0.0.62"


class Receiver:
    def __init__(self) -> None:
        self.peers: list[str] = []

    async def handle_DATA(self, server, session, envelope):
        self.peers.append(session.peer[0])
        return "250 2.0.0 accepted"


@pytest.fixture
def haproxy(tmp_path):
    port = free_port(PROXY)
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend egress
  bind {PROXY}:{port} accept-proxy
  default_backend out
backend out
  source 0.0.0.0 usesrc clientip
  server mx 0.0.0.0:0
""")
    proc = subprocess.Popen([tool("haproxy"), "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "haproxy.log", "wb"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 20
        while True:  # listening once a connection gets through (no probe session: it wants a PROXY header)
            assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
            try:
                socket.create_connection((PROXY, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_mail_goes_out_through_haproxy_and_a_dead_proxy_suspends_its_source(make_daemon, haproxy, tmp_path):
    (tmp_path / "dnsmasq").mkdir()
    dns = Dnsmasq(tmp_path / "dnsmasq", ["--mx-host=proxy.test,mx.proxy.test,10", f"--host-record=mx.proxy.test,{MX}"])
    dns.start()
    mx_port = free_port(MX)
    receiver = Receiver()
    controller = Controller(receiver, hostname=MX, port=mx_port)
    controller.start()
    dead_port = free_port(DEAD_PROXY)
    (tmp_path / "sources.toml").write_text(f"""
[source."proxied"]
ha_proxy_server = "{PROXY}:{haproxy}"
ha_proxy_source_address = "{PROXY_SOURCE}"

[source."dead"]
ha_proxy_server = "{DEAD_PROXY}:{dead_port}"
ha_proxy_source_address = "127.0.0.63"
suspend_when_proxy_unhealthy = {{ duration = "5m" }}

[pool."proxies"]
[pool."proxies"."proxied"]
weight = 1
[pool."proxies"."dead"]
weight = 1
""")
    try:
        daemon = make_daemon(dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"', extra_config=f"""
[kumomta]
sources = "{tmp_path / 'sources.toml'}"
[queues]
egress_pool = "proxies"
retry_interval = "1h"
[egress.default]
smtp_port = {mx_port}
prohibited_hosts = []
enable_tls = "Disabled"
idle_timeout = "1s"  # the traced session ends soon after the last message
""").start()
        # kcli's trace of the first session to the MX host: known behind the proxy from the PROXY header.
        tracer = subprocess.Popen([sys.executable, "-m", "trimta", "--endpoint", f"http://127.0.0.1:{daemon.http_port}",
                                   "trace-smtp-client", "--mx-addr", MX, "--only-one"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert tracer.stderr.readline() == "tracing outgoing SMTP sessions (Ctrl-C to stop)\n"
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            for i in range(6):
                client.sendmail("s@example.com", [f"r{i}@proxy.test"], "Subject: x\r\n\r\nhi\r\n")
        try:
            traced, _ = tracer.communicate(timeout=60)
        finally:
            tracer.kill()
        tag = traced.split()[0]
        assert f"connected to proxy {PROXY}:{haproxy} from proxied" in traced
        assert f"{tag} === Proxy PROXY from {PROXY_SOURCE} to {MX}:{mx_port}" in traced
        assert f"{tag} -> EHLO mx.trimta.test" in traced and f"{tag} <- 250 " in traced
        deadline = time.monotonic() + 60
        while len(daemon.records("Delivery")) + len(daemon.records("TransientFailure")) < 6:
            assert time.monotonic() < deadline, (daemon.records(), daemon.stderr())
            time.sleep(0.05)
        (failure,) = daemon.records("TransientFailure")  # the dead proxy's one turn; suspended after it
        assert failure["egress_source"] == "dead"
        assert f"through proxy {DEAD_PROXY}:{dead_port} failed: the proxy:" in failure["response"]["content"]
        deliveries = daemon.records("Delivery")
        assert {r["egress_source"] for r in deliveries} == {"proxied"} and len(deliveries) == 5
        # The receiver saw the proxy's connections from the address the header asked for.
        assert receiver.peers == [PROXY_SOURCE] * 5
        assert deliveries[0]["source_address"] == {"address": f"{PROXY_SOURCE}:0", "server": f"{PROXY}:{haproxy}",
                                                   "protocol": "haproxy"}
        for record in (*deliveries, failure):  # as KumoMTA's JsonLogRecord (its MaybeProxiedSourceAddress)
            jsonschema.validate(record, SCHEMA)
            jsonschema.validate(record, TRIMTA_SCHEMA)
        assert "egress source dead suspended for 300s: its proxy" in daemon.stderr()
        labels = '{source="dead",reason="ProxyUnhealthy"}'
        assert metric(daemon, f"egress_source_health_suspended{labels}") == 1
        assert metric(daemon, f"egress_source_health_suspensions_total{labels}") == 1
        assert metric(daemon, 'egress_source_connection_failures_total{source="dead",kind="ProxyUnhealthy"}') == 1
        assert metric(daemon, 'egress_source_connection_failures_total{source="proxied",kind="ProxyUnhealthy"}') == 0
        assert metric(daemon, "proxy_connection_failures") == 1
    finally:
        controller.stop()
        dns.stop()
