"""contrib/grafana/trimta.json asks only for metrics a live daemon's /metrics has.

The dashboard's PromQL (panels and template variables) and the example queries in
docs/api.md are read; every `trimta_*` name they use must be a series name on a
running daemon's /metrics (a counter family ``X`` exposes ``X_total``, a histogram
``X_bucket``, ``X_sum`` and ``X_count``, as the Prometheus text format says), and
every label a selector matches on must be a label of that metric's series.
"""

from __future__ import annotations

import json
import re
import smtplib
import time
import urllib.request
from pathlib import Path

from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq
from tests.docs.markdown import blocks

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "trimta.json"
NAME = re.compile(r"\btrimta_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(trimta_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "untyped": ("",)}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return queries


def exposition(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """The series names a scrape offers, and the label names seen on each."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.update(family + suffix for suffix in SUFFIXES[kind])
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
            assert m, line
            names.add(m.group(1))
            labels.setdefault(m.group(1), set()).update(re.findall(r'(\w+)="', m.group(2) or ""))
    return names, labels


def scrape(daemon) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=10) as response:
        return response.read().decode()


class Receiver:
    """Accepts ok@, defers later@, refuses no@: a delivery, a deferral and a bounce."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("later@"):
            return "451 4.3.0 Try again later"
        if address.startswith("no@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"


def test_every_metric_the_dashboard_queries_exists_on_a_live_daemon(make_daemon, tmp_path):
    # Series appear once they have samples: a delivery, a deferral and a bounce make them.
    (tmp_path / "dnsmasq").mkdir()
    dns = Dnsmasq(tmp_path / "dnsmasq", ["--mx-host=a.test,mx.a.test,10", "--host-record=mx.a.test,127.0.0.30"])
    dns.start()
    mx_port = free_port("127.0.0.30")
    receiver = Controller(Receiver(), hostname="127.0.0.30", port=mx_port)
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
        deadline = time.monotonic() + 60
        while not all(f'event="{event}",site="mx.a.test"' in (text := scrape(daemon))
                      for event in ("delivered", "transient_failure", "bounced")):
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
    finally:
        receiver.stop()
        dns.stop()
    names, labels = exposition(text)

    queries = dashboard_queries()
    api_examples = [b.text for b in blocks(ROOT / "docs" / "api.md") if "trimta_" in b.text and "histogram_quantile" in b.text]
    assert api_examples, "docs/api.md's example queries were not found"
    used = {n for q in queries + api_examples for n in NAME.findall(q)}
    assert len(used) >= 15, sorted(used)
    assert sorted(used - names) == []

    wrong_labels = []
    for query in queries + api_examples:
        for metric, matchers in SELECTOR.findall(query):
            for label in MATCHER.findall(matchers):
                if metric in labels and label not in labels[metric]:
                    wrong_labels.append(f"{metric}: {label}")
    assert wrong_labels == []


def test_the_dashboard_covers_volume_failures_queues_and_connections():
    queries = "\n".join(dashboard_queries())
    for event in ("received", "delivered", "transient_failure", "bounced", "expired"):
        assert f'event="{event}"' in queries or event in queries
    for needle in ("sum by (tenant)", "sum by (site)", "trimta_scheduled_messages", "trimta_ready_messages",
                   "trimta_ready_queue_connections", "trimta_smtp_connections_open"):
        assert needle in queries
