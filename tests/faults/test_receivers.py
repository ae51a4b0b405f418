"""Receivers that misbehave: the real daemon delivering to scripted SMTP peers.

Each destination domain has its MX on a loopback address of its own (dnsmasq serves
the zone); its receiver follows a script, one behaviour per connection. What a user
observes is asserted: the log records (TransientFailure with the receiver's answer,
Delivery), the messages at the receiver (counted by trimta's id, duplicates too), and
the daemon's health afterwards (alive, no traceback, bounded memory).
"""

from __future__ import annotations

import smtplib

import pytest

from tests.dnsmasq import Dnsmasq

from . import peers
from .conftest import free_port, peak_rss_kib, record_fault
from .peers import ScriptedReceiver, wait_until

DOMAINS = {  # domain -> its MX's loopback address
    "refuse.test": "127.0.0.31",
    "greet421.test": "127.0.0.32",
    "stall.test": "127.0.0.33",
    "drop.test": "127.0.0.34",
    "tlsreq.test": "127.0.0.35",
    "tlsopp.test": "127.0.0.36",
    "garbage.test": "127.0.0.37",
    "huge.test": "127.0.0.38",
}
ZONE = [opt for d, a in DOMAINS.items()
        for opt in (f"--mx-host={d},mx.{d},10", f"--host-record=mx.{d},{a}")]


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mx_port():
    return free_port("127.0.0.31")


@pytest.fixture
def relay(make_daemon, zone, mx_port):
    def start(egress: str = ""):
        return make_daemon(
            dns=f'nameservers = ["{zone.nameserver}"]\ntimeout = "2s"',
            extra_config=f"""
[queues]
retry_interval = "1s"
max_retry_interval = "2s"
[egress.default]
smtp_port = {mx_port}
prohibited_hosts = []
enable_tls = "Disabled"
idle_timeout = "1s"
{egress}
""",
        ).start()
    return start


@pytest.fixture
def receivers():
    made: list[ScriptedReceiver] = []

    def make(domain: str, port: int, script: list[str], **kwargs) -> ScriptedReceiver:
        r = ScriptedReceiver(DOMAINS[domain], port, script, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def send(daemon, domain: str, n: int = 1) -> None:
    """`n` messages to `domain`, one per transaction, each acknowledged with 250."""
    with smtplib.SMTP(daemon.host, daemon.port, timeout=60) as s:
        for i in range(n):
            assert s.sendmail("sender@example.com", [f"user{i}@{domain}"],
                              f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()) == {}


def outcomes(daemon, domain: str, kind: str) -> list[dict]:
    return [r for r in daemon.records(kind) if r["queue"] == domain]


def healthy(daemon) -> None:
    assert daemon.proc.poll() is None, "the daemon died"
    assert "Traceback" not in daemon.stderr()


def test_a_receiver_refusing_connections_defers_then_delivers_when_it_listens(relay, receivers, mx_port):
    daemon = relay()
    send(daemon, "refuse.test", 3)
    failures = wait_until(lambda: len(r := outcomes(daemon, "refuse.test", "TransientFailure")) >= 3 and r,
                          what="TransientFailure while the receiver refuses")
    assert all("refused" in r["response"]["content"].lower() for r in failures)
    assert not outcomes(daemon, "refuse.test", "Bounce")
    receiver = receivers("refuse.test", mx_port, [peers.OK])
    wait_until(lambda: len(receiver.ids()) == 3, what="delivery once the receiver listens")
    healthy(daemon)
    record_fault("receiver refuses connections", "TransientFailure, retried; delivered when it listens",
                 acknowledged=3, delivered=len(receiver.ids()), duplicated=receiver.duplicates())


def test_a_421_greeting_defers_and_the_next_session_delivers(relay, receivers, mx_port):
    receiver = receivers("greet421.test", mx_port, [peers.GREET_421, peers.GREET_421, peers.OK])
    daemon = relay()
    send(daemon, "greet421.test", 2)
    wait_until(lambda: len(receiver.ids()) == 2, what="delivery after two 421 greetings")
    failures = outcomes(daemon, "greet421.test", "TransientFailure")
    # The receiver's own words are in the record: "No session with ...: 421 4.3.2 ...".
    assert failures and all("421 4.3.2 Service not available" in r["response"]["content"] for r in failures)
    assert receiver.duplicates() == 0
    healthy(daemon)
    record_fault("receiver greets 421", "TransientFailure (421), next session delivers",
                 acknowledged=2, delivered=len(receiver.ids()), duplicated=receiver.duplicates())


def test_a_receiver_stalling_in_data_is_cut_off_by_data_timeout(relay, receivers, mx_port):
    receiver = receivers("stall.test", mx_port, [peers.STALL_IN_DATA, peers.OK])
    daemon = relay('[egress.domains."stall.test"]\ndata_timeout = "2s"\ndata_dot_timeout = "2s"\n')
    send(daemon, "stall.test", 1)
    wait_until(lambda: len(receiver.ids()) == 1, what="delivery after the stalled session")
    (failure, *_) = outcomes(daemon, "stall.test", "TransientFailure")
    assert "timed out" in failure["response"]["content"].lower() or "timeout" in failure["response"]["content"].lower()
    assert receiver.duplicates() == 0
    healthy(daemon)
    record_fault("receiver stalls mid-DATA past data_timeout", "TransientFailure (timeout), next session delivers",
                 acknowledged=1, delivered=len(receiver.ids()), duplicated=receiver.duplicates())


def test_a_drop_after_the_final_dot_is_delivered_again_and_counted_as_a_duplicate(relay, receivers, mx_port):
    receiver = receivers("drop.test", mx_port, [peers.DROP_AFTER_DOT, peers.OK])
    daemon = relay()
    send(daemon, "drop.test", 1)
    wait_until(lambda: outcomes(daemon, "drop.test", "Delivery"), what="a Delivery record")
    # The receiver had the message when it dropped the line: at least once, here twice.
    assert len(receiver.ids()) == 1
    assert receiver.duplicates() == 1
    assert len(outcomes(daemon, "drop.test", "TransientFailure")) == 1
    healthy(daemon)
    record_fault("receiver drops the connection after the final dot", "TransientFailure, resent: at least once",
                 acknowledged=1, delivered=1, duplicated=receiver.duplicates())


def test_a_failed_handshake_under_required_tls_never_falls_back_to_plaintext(relay, receivers, mx_port):
    receiver = receivers("tlsreq.test", mx_port, [peers.TLS_BROKEN])
    daemon = relay('[egress.domains."tlsreq.test"]\nenable_tls = "RequiredInsecure"\n')
    send(daemon, "tlsreq.test", 2)
    failures = wait_until(lambda: len(r := outcomes(daemon, "tlsreq.test", "TransientFailure")) >= 4 and r,
                          what="repeated TransientFailure on the broken handshake")
    assert all(r["response"]["code"] // 100 == 4 for r in failures), failures[0]
    assert all("tls" in r["response"]["content"].lower() for r in failures), failures[0]
    assert receiver.ids() == set()  # nothing ever went in plaintext
    assert not outcomes(daemon, "tlsreq.test", "Bounce")
    healthy(daemon)
    daemon.stop()
    from .conftest import restored_spool

    assert len(restored_spool(daemon.spool_path).messages) == 2  # still queued
    record_fault("TLS handshake fails, enable_tls = Required", "TransientFailure (TLS failed), kept queued, never plaintext",
                 acknowledged=2, delivered=0, lost=0, duplicated=0, note="both kept in the spool")


def test_a_failed_handshake_under_opportunistic_tls_is_transient_by_default(relay, receivers, mx_port):
    # KumoMTA's default: opportunistic_tls_reconnect_on_failed_handshake = false, so a
    # broken handshake is a transient failure like any broken connection.
    receiver = receivers("tlsopp.test", mx_port, [peers.TLS_BROKEN, peers.TLS_BROKEN, peers.OK])
    daemon = relay('[egress.domains."tlsopp.test"]\nenable_tls = "OpportunisticInsecure"\n')
    send(daemon, "tlsopp.test", 1)
    wait_until(lambda: len(receiver.ids()) == 1, what="delivery once the receiver's TLS works")
    failures = outcomes(daemon, "tlsopp.test", "TransientFailure")
    assert len(failures) >= 1 and receiver.behaviours_seen[:2] == [peers.TLS_BROKEN, peers.TLS_BROKEN]
    healthy(daemon)
    record_fault("TLS handshake fails, enable_tls = Opportunistic", "TransientFailure, retried; delivered later",
                 acknowledged=1, delivered=1, duplicated=receiver.duplicates())


def test_opportunistic_tls_reconnect_on_failed_handshake_delivers_in_plaintext(relay, receivers, mx_port):
    receivers("tlsopp.test", mx_port, [peers.TLS_BROKEN, peers.OK], offer_starttls=True)
    daemon = relay('[egress.domains."tlsopp.test"]\nenable_tls = "OpportunisticInsecure"\n'
                   "opportunistic_tls_reconnect_on_failed_handshake = true\n")
    send(daemon, "tlsopp.test", 1)
    wait_until(lambda: outcomes(daemon, "tlsopp.test", "Delivery"), timeout_s=10, what="a Delivery")
    # Reconnected at once without STARTTLS: no TransientFailure in between.
    assert outcomes(daemon, "tlsopp.test", "TransientFailure") == []


def test_garbage_replies_are_transient_failures_and_the_daemon_carries_on(relay, receivers, mx_port):
    receiver = receivers("garbage.test", mx_port, [peers.GARBAGE, peers.GARBAGE, peers.OK])
    daemon = relay()
    send(daemon, "garbage.test", 2)
    wait_until(lambda: len(receiver.ids()) == 2, what="delivery after the garbage sessions")
    assert len(outcomes(daemon, "garbage.test", "TransientFailure")) >= 2
    assert not outcomes(daemon, "garbage.test", "Bounce")
    healthy(daemon)
    record_fault("receiver replies with garbage", "TransientFailure, next session delivers",
                 acknowledged=2, delivered=len(receiver.ids()), duplicated=receiver.duplicates())


def test_a_10_mb_multiline_reply_is_refused_with_bounded_memory(relay, receivers, mx_port):
    receiver = receivers("huge.test", mx_port, [peers.HUGE_REPLY, peers.HUGE_REPLY, peers.OK])
    daemon = relay()
    base_kib = peak_rss_kib(daemon.proc.pid)
    send(daemon, "huge.test", 1)
    wait_until(lambda: len(receiver.ids()) == 1, what="delivery after two 10 MB replies")
    failures = outcomes(daemon, "huge.test", "TransientFailure")
    assert len(failures) >= 2
    grown_kib = peak_rss_kib(daemon.proc.pid) - base_kib
    # The reply parser keeps a bounded number of lines of bounded length: the 10 MB
    # never sit in memory at once (2 sessions of 10 MB would be 20 MB and more).
    assert grown_kib < 8 * 1024, f"peak RSS grew by {grown_kib} KiB"
    healthy(daemon)
    record_fault("receiver sends a 10 MB multiline reply", "TransientFailure (reply too long), next session delivers",
                 acknowledged=1, delivered=len(receiver.ids()), duplicated=receiver.duplicates(),
                 peak_rss_kib=peak_rss_kib(daemon.proc.pid))
