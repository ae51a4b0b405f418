"""A live daemon's /metrics and /metrics.json have what KumoMTA's kcli and dashboards read.

`kcli top`, `kcli queue-summary` and `kcli provider-summary` read these names and labels
from KumoMTA's /metrics (crates/kcli/src/top/mod.rs, queue_summary.rs,
provider_summary.rs); KumoMTA's dashboards query the same families.
"""

from __future__ import annotations

import json
import smtplib
import socket
import time
import urllib.request

from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq
from tests.kumomta_compat.metric_table import supported_kumod_metrics

from .conftest import free_port
from .test_grafana_dashboard import Receiver, exposition, scrape

# name -> the label (and value) kcli matches on, or None for a family without labels
KCLI_READS = {
    "message_count": None,
    "memory_usage": None,
    "scheduled_count_total": None,
    "ready_count": ("service", "smtp_client"),
    "total_messages_delivered": ("service", "smtp_client"),
    "total_messages_transfail": ("service", "smtp_client"),
    "total_messages_fail": ("service", "smtp_client"),
    "total_messages_received": ("service", "esmtp_listener"),
    "connection_count": ("service", "esmtp_listener"),
    "scheduled_count": ("queue", None),
    "total_messages_delivered_by_provider": ("provider", None),
    "total_messages_transfail_by_provider": ("provider", None),
    "total_messages_fail_by_provider": ("provider", None),
    "connection_count_by_provider": ("provider", None),
    "queued_count_by_provider": ("provider", None),
    "total_messages_delivered_by_provider_and_source": ("source", None),
}


def test_kcli_and_kumomta_dashboards_find_their_metrics(make_daemon, tmp_path):
    (tmp_path / "dnsmasq").mkdir()
    dns = Dnsmasq(tmp_path / "dnsmasq", ["--mx-host=a.test,mx.a.test,10", "--host-record=mx.a.test,127.0.0.31"])
    dns.start()
    mx_port = free_port("127.0.0.31")
    receiver = Controller(Receiver(), hostname="127.0.0.31", port=mx_port)
    receiver.start()
    try:
        daemon = make_daemon(dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"', extra_config=f"""
[egress.default]
smtp_port = {mx_port}
prohibited_hosts = []
enable_tls = "Disabled"
""").start()
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            client.sendmail("s@example.com", ["ok@a.test", "later@a.test", "no@a.test"],
                            "X-Tenant: acme\r\nSubject: x\r\n\r\nhi\r\n")
        send_bare_lf_message(daemon.host, daemon.port)  # refused: a Rejection record
        deadline = time.monotonic() + 60
        while not all(f'total_messages_{kind}{{service="smtp_client"}} 1' in (text := scrape(daemon))
                      for kind in ("delivered", "transfail", "fail")):
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics.json", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/json")
            document = json.loads(response.read())
    finally:
        receiver.stop()
        dns.stop()

    names, labels = exposition(text)
    for name, label in KCLI_READS.items():
        assert name in names, name
        if label is not None:
            assert label[0] in labels.get(name, set()), (name, labels.get(name))
            if label[1] is not None:
                assert f'{name}{{{label[0]}="{label[1]}"}}' in text, name
    # every KumoMTA metric docs/kumomta.md says is supported is served, in both renderings
    for name in supported_kumod_metrics():
        assert name in names, name
        assert name in document, name
    assert 'total_messages_received{service="esmtp_listener"} 3' in text
    assert f'total_messages_received{{service="esmtp_listener:{daemon.host}:{daemon.port}"}} 3' in text
    assert 'disk_free_bytes{name="data spool"}' in text
    assert 'smtp_server_rejections{service="esmtp_listener"} 1' in text
    for name in ("process_cpu_usage_sum", "process_cpu_usage_normalized", "system_cpu_usage_sum",
                 "system_cpu_usage_normalized"):
        assert name in names, name
    assert 0 <= document["process_cpu_usage_normalized"]["value"] <= 100
    assert 0 < document["system_cpu_usage_normalized"]["value"] <= 100
    assert "process_cpu_seconds_total" in names and "process_resident_memory_bytes" in names
    assert "trimta_tenant_messages_total" in names  # trimta's own families stay

    # /metrics.json: KumoMTA's shape, the same values
    assert document["total_messages_delivered"]["type"] == "counter"
    assert document["total_messages_delivered"]["value"]["service"]["smtp_client"] == 1
    assert document["scheduled_count_total"]["value"] == 1  # later@ waits for its retry
    assert document["memory_usage"]["value"] > 0
    assert document["disk_free_percent"]["value"]["name"]["data spool"] >= 0
    assert isinstance(document["total_messages_delivered_by_provider_and_source"]["value"], list)
    assert document["trimta_tenant_messages_total"]["type"] == "counter"
    assert document["trimta_event_loop_lag_seconds"]["type"] == "histogram"


def send_bare_lf_message(host: str, port: int) -> None:
    """A message with a bare LF in its data (RFC 5321 2.3.8): the server must refuse it."""
    with socket.create_connection((host, port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while (line := reader.readline())[3:4] == b"-":
                pass
            return line

        assert reply().startswith(b"220")
        for command in (b"EHLO client.test", b"MAIL FROM:<s@example.com>", b"RCPT TO:<ok@a.test>", b"DATA"):
            sock.sendall(command + b"\r\n")
            assert reply()[:1] in (b"2", b"3"), command
        sock.sendall(b"Subject: x\r\n\r\nbare\nline feed\r\n.\r\n")
        assert reply().startswith(b"5")
        sock.sendall(b"QUIT\r\n")
