"""A real daemon relays mail for a domain to its routing domain (a domain literal), with
reception workers preparing the messages."""

from __future__ import annotations

import smtplib
import time

from aiosmtpd.controller import Controller

from .conftest import free_port


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 OK"


def test_mail_for_a_domain_is_relayed_to_its_routing_domain(make_daemon):
    port = free_port("127.0.0.32")
    recorder = Recorder()
    receiver = Controller(recorder, hostname="127.0.0.32", port=port)
    receiver.start()
    try:
        daemon = make_daemon(extra_listener="workers = 2", extra_config=f"""
[egress.default]
smtp_port = {port}
prohibited_hosts = []
enable_tls = "Disabled"
[queues.domains."inside.test"]
routing_domain = "[127.0.0.32]"
""").start()
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            client.sendmail("s@example.com", ["a@inside.test", "b@inside.test"],
                            "X-Tenant: acme\r\nSubject: routed\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 60
        while len(daemon.records("Delivery")) < 2:
            assert time.monotonic() < deadline, (daemon.records(), daemon.stderr())
            time.sleep(0.1)
    finally:
        receiver.stop()
    assert sorted(r for _, rcpts in recorder.received for r in rcpts) == ["a@inside.test", "b@inside.test"]
    receptions = daemon.records("Reception")
    assert {r["queue"] for r in receptions} == {"acme@inside.test![127.0.0.32]"}
    assert {r["queue"] for r in daemon.records("Delivery")} == {"acme@inside.test![127.0.0.32]"}
    assert {r["recipient"] for r in daemon.records("Delivery")} == {"a@inside.test", "b@inside.test"}
