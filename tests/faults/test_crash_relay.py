"""kill -9, five times in a row, while Postfix's smtp-source relays through trimta.

Acknowledged is what smtp-source was told: each ``250 2.0.0 OK ids=ID`` in its
verbose dialog. Delivered is what a counting receiver (aiosmtpd) got, by the id in
trimta's Received header. After the fifth crash one last start must deliver every
acknowledged message: none lost. Duplicates (a delivery the crash interrupted before
the spool heard of it) are counted and reported, not forbidden: at least once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections import Counter

from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq

from .conftest import free_port, record_fault, tool
from .peers import TRIMTA_ID, wait_until

ACKNOWLEDGED = re.compile(r"<<< 250 2\.0\.0 OK ids=(\w+)")
KILLS = 5
ACKED_PER_ROUND = 300


class Counting:
    """An aiosmtpd handler counting deliveries by trimta's id."""

    def __init__(self) -> None:
        self.delivered: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        m = TRIMTA_ID.search(envelope.original_content or envelope.content)
        with self.lock:
            self.delivered[m.group(1).decode() if m else "?"] += 1
        return "250 2.0.0 Counted"

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.delivered)


def test_five_kill_9s_under_relay_load_lose_no_acknowledged_message(make_daemon, tmp_path):
    (tmp_path / "dns").mkdir()
    zone = Dnsmasq(tmp_path / "dns", ["--mx-host=crash.test,mx.crash.test,10",
                                      "--host-record=mx.crash.test,127.0.0.41"])
    zone.start()
    port = free_port("127.0.0.41")
    counting = Counting()
    receiver = Controller(counting, hostname="127.0.0.41", port=port)
    receiver.start()
    daemon = make_daemon(
        dns=f'nameservers = ["{zone.nameserver}"]\ntimeout = "2s"',
        extra_config=f'[queues]\nretry_interval = "1s"\nmax_retry_interval = "2s"\n'
                     f'[egress.default]\nsmtp_port = {port}\nprohibited_hosts = []\n'
                     f'enable_tls = "Disabled"\nidle_timeout = "2s"\n',
    )
    acknowledged: set[str] = set()
    try:
        for round_ in range(KILLS):
            daemon.start()
            dialog = tmp_path / f"smtp-source-{round_}.log"
            with open(dialog, "wb") as out:
                source = subprocess.Popen(
                    [tool("smtp-source"), "-v", "-N", "-s", "10", "-m", "100000", "-l", "1024",
                     "-f", "sender@example.com", "-t", "rcpt@crash.test", f"{daemon.host}:{daemon.port}"],
                    stdout=out, stderr=subprocess.STDOUT,
                )

            def acked_now(dialog=dialog) -> set[str]:
                return set(ACKNOWLEDGED.findall(dialog.read_text(errors="replace")))

            try:
                wait_until(lambda: len(acked_now()) >= ACKED_PER_ROUND, timeout_s=180,
                           what=f"{ACKED_PER_ROUND} acknowledged messages in round {round_}")
                daemon.kill9()
            finally:
                if source.poll() is None:
                    source.send_signal(signal.SIGTERM)
                source.wait(timeout=30)
            acknowledged |= acked_now()
        # The sixth start delivers everything that was acknowledged.
        daemon.start()
        wait_until(lambda: acknowledged <= counting.ids(), timeout_s=300,
                   what="every acknowledged message at the receiver")
        assert daemon.proc.poll() is None
        assert "Traceback" not in daemon.stderr()
    finally:
        daemon.stop()
        receiver.stop()
        zone.stop()
    delivered = counting.ids()
    lost = acknowledged - delivered
    duplicated = sum(n - 1 for n in counting.delivered.values())
    assert not lost, f"{len(lost)} acknowledged messages lost"
    record_fault(f"kill -9 {KILLS} times under relay load (smtp-source, 10 sessions)",
                 "restart restores the spool; every acknowledged message delivered",
                 acknowledged=len(acknowledged), delivered=len(acknowledged & delivered), lost=len(lost),
                 duplicated=duplicated,
                 note=f"{len(delivered - acknowledged)} delivered whose 250 the crash cut off")
