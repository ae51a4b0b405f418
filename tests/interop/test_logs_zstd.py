"""zstd log segments from the real daemon: kill -9 never leaves one torn; zstdcat and a
KumoMTA-style tailer read them."""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import threading
import time

from tests.kumomta_compat.kumo_tailer import KumoStyleTailer
from trimta.adapters.logfile import is_done



def zstd_tool(name: str) -> str:
    tool = shutil.which(name)
    assert tool, f"{name} is needed (Debian package zstd)"
    return tool


def with_zstd(daemon) -> None:
    # The fixture writes its own [logs] table last: add the keys to it.
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text.replace('[logs]\n', '[logs]\ncompression = "zstd"\n'))


def send_until(daemon, stop: threading.Event, sent: list[str], n: int) -> None:
    try:
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as smtp:
            i = 0
            while not stop.is_set():
                recipient = f"user{n}-{i}@example.net"
                smtp.sendmail("sender@example.com", [recipient], f"Subject: {i}\r\n\r\nhello\r\n")
                sent.append(recipient)
                i += 1
    except (smtplib.SMTPException, OSError):
        pass  # killed under us


def test_kill_9_mid_traffic_leaves_no_torn_segment_and_every_record_reads(make_daemon):
    d = make_daemon()
    with_zstd(d)
    d.start()
    stop = threading.Event()
    sent: list[str] = []
    threads = [threading.Thread(target=send_until, args=(d, stop, sent, n)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(sent) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    d.kill9()  # in the middle of writing batches
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert len(sent) >= 300
    logs = d.directory / "logs"
    d.start()  # the next start finishes what the killed one left open
    d.stop()
    segments = sorted(logs.glob("*.jsonl.zst"))
    assert segments
    test = zstd_tool("zstd")
    for path in segments:
        assert is_done(path), path
        subprocess.run([test, "-t", "-q", str(path)], check=True)
    out = subprocess.run([zstd_tool("zstdcat"), *map(str, segments)], check=True, capture_output=True).stdout
    records = [json.loads(line) for line in out.splitlines()]
    received = {r["recipient"] for r in records if r["type"] == "Reception"}
    # Records are not part of the durability promise: what was still being batched is
    # lost in a kill -9 (on a loaded machine a third of this run's records), but what is
    # there is whole and names only messages that were sent. (A fraction "nearly all"
    # made this test follow the machine's load: 216 of 315 failed an 80% bound.)
    assert received and received <= set(sent)


def test_a_kumomta_style_tailer_follows_the_live_segment(make_daemon):
    d = make_daemon()
    with_zstd(d)
    d.start()
    logs = d.directory / "logs"
    with smtplib.SMTP(d.host, d.port, timeout=10) as smtp:
        for i in range(20):
            smtp.sendmail("sender@example.com", [f"u{i}@example.net"], f"Subject: {i}\r\n\r\nhello\r\n")
    tailer = KumoStyleTailer(logs)
    seen = []
    for record in tailer.records(until=time.monotonic() + 30):
        if record["type"] == "Reception":
            seen.append(record["recipient"])
        if len(seen) == 20:
            break
    assert seen == [f"u{i}@example.net" for i in range(20)]
    # The segment is still being written: writable, and the tailer read it as it grew.
    assert any(not is_done(p) for p in logs.glob("*.zst"))
    d.stop()
    assert all(is_done(p) for p in logs.glob("*.zst"))
