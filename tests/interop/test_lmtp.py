"""LMTP delivery (KumoMTA's ``use_lmtp``, RFC 2033) to aiosmtpd's LMTP server, which knows
only LHLO (EHLO and HELO get 500): delivered mail and a per-recipient refusal after the
message, as the receiver and the records show them."""

from __future__ import annotations

import smtplib
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP

from tests.dnsmasq import Dnsmasq

from .conftest import free_port


class Mailstore:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, str]] = []  # (LHLO name, recipient)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        # One status line per recipient, in RCPT order (aiosmtpd's LMTP form of the reply).
        statuses = []
        for recipient in envelope.rcpt_tos:
            if recipient.startswith("full@"):
                statuses.append("452 4.2.2 Mailbox full")
            else:
                with self.lock:
                    self.delivered.append((session.host_name, recipient))
                statuses.append("250 2.0.0 Delivered")
        return "\r\n".join(statuses)


class LmtpController(Controller):
    def factory(self):
        return LMTP(self.handler)


def test_mail_goes_to_an_lmtp_server_with_lhlo_and_per_recipient_replies(make_daemon, tmp_path):
    (tmp_path / "dnsmasq").mkdir()
    dns = Dnsmasq(tmp_path / "dnsmasq", ["--mx-host=lmtp.test,store.lmtp.test,10",
                                         "--host-record=store.lmtp.test,127.0.0.43"])
    dns.start()
    port = free_port("127.0.0.43")
    store = Mailstore()
    controller = LmtpController(store, hostname="127.0.0.43", port=port)
    controller.start()
    try:
        daemon = make_daemon(dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"', extra_config=f"""
[queues]
retry_interval = "1h"
[egress.default]
prohibited_hosts = []
enable_tls = "Disabled"
[egress.domains."lmtp.test"]
use_lmtp = true
smtp_port = {port}
""").start()
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            client.sendmail("s@example.com", ["alice@lmtp.test", "full@lmtp.test", "bob@lmtp.test"],
                            "Subject: lmtp\r\n\r\nhello\r\n")
        deadline = time.monotonic() + 60
        while len(daemon.records("Delivery")) < 2 or not daemon.records("TransientFailure"):
            assert time.monotonic() < deadline, (daemon.records(), daemon.stderr())
            time.sleep(0.05)
    finally:
        controller.stop()
        dns.stop()
    assert sorted(store.delivered) == [("mx.trimta.test", "alice@lmtp.test"), ("mx.trimta.test", "bob@lmtp.test")]
    (failure,) = daemon.records("TransientFailure")
    assert failure["recipient"] == "full@lmtp.test"
    assert (failure["response"]["code"], failure["response"]["content"]) == (452, "Mailbox full")
    assert failure["response"]["enhanced_code"] == {"class": 4, "subject": 2, "detail": 2}
