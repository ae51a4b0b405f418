"""DNS failing under the real daemon: resolver stopped, answering SERVFAIL, answering late.

Each time: the messages are accepted while DNS fails (MX lookups never hold up the
SMTP listener), each attempt is a TransientFailure naming the DNS trouble (never a
bounce), and they are delivered once DNS works again.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.dnsmasq import Dnsmasq

from .conftest import free_port, record_fault
from .peers import OK, LateDns, ScriptedReceiver, wait_until


@pytest.fixture
def receiver_port():
    return free_port("127.0.0.61")


def relay(make_daemon, nameserver: str, port: int, timeout: str = "2s"):
    return make_daemon(
        dns=f'nameservers = ["{nameserver}"]\ntimeout = "{timeout}"',
        extra_config=f'[queues]\nretry_interval = "1s"\nmax_retry_interval = "2s"\n'
                     f'[egress.default]\nsmtp_port = {port}\nprohibited_hosts = []\n'
                     f'enable_tls = "Disabled"\nidle_timeout = "1s"\n',
    ).start()


def send(daemon, domain: str, n: int) -> list[int]:
    """`n` messages in one session; the reply code each got (smtplib raises on a refusal)."""
    codes = []
    with smtplib.SMTP(daemon.host, daemon.port, timeout=60) as s:
        for i in range(n):
            # sendmail raises unless DATA got 250 and returns the refused recipients.
            refused = s.sendmail("sender@example.com", [f"user{i}@{domain}"], b"Subject: dns\r\n\r\nx\r\n")
            codes.append(250 if refused == {} else 550)
    return codes


def transient(daemon, domain: str) -> list[dict]:
    return [r for r in daemon.records("TransientFailure") if r["queue"] == domain]


def test_resolver_stopped_defers_and_delivers_when_it_is_back(make_daemon, tmp_path, receiver_port):
    (tmp_path / "dns").mkdir()
    zone = Dnsmasq(tmp_path / "dns", ["--mx-host=down.test,mx.down.test,10",
                                      "--host-record=mx.down.test,127.0.0.61"])
    zone.start()
    receiver = ScriptedReceiver("127.0.0.61", receiver_port, [OK])
    try:
        daemon = relay(make_daemon, zone.nameserver, receiver_port)
        zone.kill()  # the resolver is gone: nothing answers on its port
        assert send(daemon, "down.test", 5) == [250] * 5
        failures = wait_until(lambda: len(r := transient(daemon, "down.test")) >= 5 and r,
                              what="TransientFailure while DNS is down")
        assert not [r for r in daemon.records("Bounce") if r["queue"] == "down.test"]
        assert receiver.ids() == set()
        zone.restart()  # back, on the same port
        wait_until(lambda: len(receiver.ids()) == 5, what="delivery once DNS is back")
        assert daemon.proc.poll() is None and "Traceback" not in daemon.stderr()
    finally:
        receiver.close()
        zone.stop()
    record_fault("DNS resolver stopped (dnsmasq), then restarted",
                 f"TransientFailure ({failures[0]['response']['content'][:60]}...), delivered when back",
                 acknowledged=5, delivered=len(receiver.ids()), duplicated=receiver.duplicates())


def test_servfail_defers_and_delivers_when_dns_answers(make_daemon, tmp_path, receiver_port):
    upstream = LateDns({"sf.test": {"MX": [(10, "mx.sf.test")]}, "mx.sf.test": {"A": ["127.0.0.61"]}},
                       servfail=True)
    (tmp_path / "dns").mkdir()
    # dnsmasq (the resolver trimta asks) forwards sf.test to an upstream that says SERVFAIL.
    zone = Dnsmasq(tmp_path / "dns", [f"--server=/sf.test/127.0.0.1#{upstream.port}"])
    zone.start()
    receiver = ScriptedReceiver("127.0.0.61", receiver_port, [OK])
    try:
        daemon = relay(make_daemon, zone.nameserver, receiver_port)
        assert send(daemon, "sf.test", 5) == [250] * 5
        failures = wait_until(lambda: len(r := transient(daemon, "sf.test")) >= 5 and r,
                              what="TransientFailure while DNS answers SERVFAIL")
        assert any("servfail" in r["response"]["content"].lower() for r in failures), failures[0]
        assert receiver.ids() == set()
        upstream.servfail = False
        wait_until(lambda: len(receiver.ids()) == 5, what="delivery once DNS answers")
        assert daemon.proc.poll() is None and "Traceback" not in daemon.stderr()
    finally:
        receiver.close()
        zone.stop()
        upstream.close()
    record_fault("DNS answers SERVFAIL (dnsmasq passing on its upstream's), then recovers",
                 "TransientFailure (SERVFAIL), delivered when DNS answers",
                 acknowledged=5, delivered=len(receiver.ids()), duplicated=receiver.duplicates())


def test_dns_answering_after_10s_never_stalls_reception(make_daemon, receiver_port):
    late = LateDns({"late.test": {"MX": [(10, "mx.late.test")]}, "mx.late.test": {"A": ["127.0.0.61"]}},
                   delay_s=10.0)
    receiver = ScriptedReceiver("127.0.0.61", receiver_port, [OK])
    try:
        daemon = relay(make_daemon, late.nameserver, receiver_port, timeout="3s")
        assert send(daemon, "late.test", 1) == [250]
        wait_until(lambda: late.pending > 0, what="a DNS question left hanging")
        # While that question hangs, the listener takes mail as usual: twenty messages,
        # each acknowledged, before the DNS server has answered anything.
        assert send(daemon, "late.test", 20) == [250] * 20
        assert late.answered == 0
        failures = wait_until(lambda: transient(daemon, "late.test"), timeout_s=60,
                              what="TransientFailure from the DNS timeout")
        assert "time" in failures[0]["response"]["content"].lower(), failures[0]
        late.delay_s = 0.0  # DNS recovers
        wait_until(lambda: len(receiver.ids()) == 21, timeout_s=120, what="delivery once DNS answers in time")
        assert daemon.proc.poll() is None and "Traceback" not in daemon.stderr()
    finally:
        receiver.close()
        late.close()
    record_fault("DNS answers only after 10 s (dns timeout 3 s), then in time",
                 "20 messages accepted while a lookup hung; TransientFailure (timeout); delivered after",
                 acknowledged=21, delivered=len(receiver.ids()), duplicated=receiver.duplicates())
