"""A full disk under the real daemon: the spool's, then the log directory's.

The spool (or the log directory) is a small tmpfs mounted for the test and unmounted
after it. Filled, the spool makes trimta answer ``452 4.3.1`` (never 250 without the
message on disk, never a 5xx, never a crash); grown with ``mount -o remount,size=``,
it takes mail again, and every acknowledged message is delivered once the receiver
listens. A full log directory stops no mail: the log sink reports the outage, holds
the records, and writes them when there is room again.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import subprocess
from pathlib import Path

import pytest

from tests.dnsmasq import Dnsmasq

from .conftest import free_port, record_fault
from .peers import OK, ScriptedReceiver, wait_until

BODY = ("Subject: filler\r\n\r\n" + ("x" * 998 + "\r\n") * 64).encode()  # about 64 KB


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted on `path` for the duration; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs (needs root): {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def send_one(daemon, n: int) -> tuple[int, bytes]:
    """One message in its own session: the first refusal (MAIL, RCPT or DATA), or the
    reply to its data."""
    with smtplib.SMTP(daemon.host, daemon.port, timeout=60) as s:
        s.ehlo()
        for step in (lambda: s.mail("sender@example.com"), lambda: s.rcpt(f"user{n}@full.test")):
            code, text = step()
            if code != 250:
                return code, text
        try:
            return s.data(BODY)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error


def test_a_full_spool_answers_452_and_every_acknowledged_message_is_delivered_after_it_grows(
        make_daemon, tmp_path):
    (tmp_path / "dns").mkdir()
    zone = Dnsmasq(tmp_path / "dns", ["--mx-host=full.test,mx.full.test,10",
                                      "--host-record=mx.full.test,127.0.0.51"])
    zone.start()
    port = free_port("127.0.0.51")
    daemon = make_daemon(
        dns=f'nameservers = ["{zone.nameserver}"]\ntimeout = "2s"',
        extra_config=f'[queues]\nretry_interval = "1s"\nmax_retry_interval = "2s"\n'
                     f'[egress.default]\nsmtp_port = {port}\nprohibited_hosts = []\n'
                     f'enable_tls = "Disabled"\nidle_timeout = "1s"\n',
    )
    receiver = None
    try:
        with tmpfs(daemon.spool_path, "2m") as spool:
            daemon.start()  # the receiver is not listening yet: mail stays in the spool
            replies: list[tuple[int, bytes]] = []
            for n in range(200):
                replies.append(send_one(daemon, n))
                if sum(code == 452 for code, _ in replies) >= 5:
                    break
            codes = [code for code, _ in replies]
            assert set(codes) <= {250, 452}, codes  # never a 5xx
            assert 452 in codes and 250 in codes
            assert all(text.startswith(b"4.3.1") for code, text in replies if code == 452), replies
            acknowledged_full = codes.count(250)
            assert daemon.proc.poll() is None
            grow(spool, "64m")
            after = [send_one(daemon, 1000 + n)[0] for n in range(10)]
            assert after == [250] * 10
            acknowledged = acknowledged_full + 10
            receiver = ScriptedReceiver("127.0.0.51", port, [OK])
            wait_until(lambda: len(receiver.ids()) >= acknowledged, timeout_s=180,
                       what="every acknowledged message at the receiver")
            # Every message the log says was received has its Delivery record too.
            wait_until(lambda: {r["recipient"] for r in daemon.records("Reception")}
                       <= {r["recipient"] for r in daemon.records("Delivery")}, timeout_s=60,
                       what="a Delivery record for every Reception")
            assert len(daemon.records("Reception")) == acknowledged
            assert "Traceback" not in daemon.stderr()
            daemon.stop()
    finally:
        daemon.stop()
        if receiver is not None:
            receiver.close()
        zone.stop()
    record_fault("spool disk full (2 MB tmpfs), then grown to 64 MB",
                 f"452 4.3.1 while full ({codes.count(452)} refusals), no 5xx; all delivered after growing",
                 acknowledged=acknowledged, delivered=len(receiver.ids()), duplicated=receiver.duplicates())


def receptions(logs: Path) -> list[dict]:
    import json

    return [record for f in sorted(logs.glob("*.jsonl")) for line in f.read_text().splitlines()
            if (record := json.loads(line))["type"] == "Reception"]


def test_a_full_log_directory_stops_no_mail_and_its_records_are_written_after(make_daemon):
    daemon = make_daemon()
    logs = daemon.directory / "logs"
    with tmpfs(logs, "64k"):
        # Fill it to the last block, so the first record that comes does not fit.
        with contextlib.suppress(OSError), open(logs / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        daemon.start()
        codes = []
        for n in range(20):
            with smtplib.SMTP(daemon.host, daemon.port, timeout=60) as s:
                s.ehlo()
                s.mail("sender@example.com")
                s.rcpt(f"user{n}@example.net")
                codes.append(s.data(b"Subject: logs full\r\n\r\nstill flowing\r\n")[0])
        assert codes == [250] * 20  # mail keeps flowing
        wait_until(lambda: "log writes" in daemon.stderr() and "are failing" in daemon.stderr(),
                   what="the log sink reporting the outage")
        grow(logs, "16m")
        records = wait_until(lambda: len(r := receptions(logs)) >= 20 and r, timeout_s=60,
                             what="the held Reception records written after growing")
        assert sorted(r["recipient"] for r in records) == sorted(f"user{n}@example.net" for n in range(20))
        assert "work again" in daemon.stderr()
        assert daemon.proc.poll() is None and "Traceback" not in daemon.stderr()
        daemon.stop()
    record_fault("log directory full (64 KB tmpfs), then grown", "mail flows (250); log sink reports, holds "
                 "the records and writes them all after growing", acknowledged=20, delivered="",
                 lost="", duplicated="", note="20 of 20 Reception records written late")
