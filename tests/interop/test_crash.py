"""kill -9 while clients are sending: every message that got 250 survives the restart."""

import re
import smtplib
import threading
import time

import pytest

from .conftest import restored_spool

BODY = b"x" * 76 + b"\r\n" * 1 + (b"y" * 76 + b"\r\n") * 25  # about 2 KB in lines


@pytest.mark.parametrize("workers", [1, 2])
def test_every_acknowledged_message_survives_kill_9(make_daemon, workers):
    d = make_daemon(extra_listener=f"workers = {workers}").start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        try:
            with smtplib.SMTP(d.host, d.port, timeout=10) as smtp:
                smtp.ehlo(f"client{n}.example")
                i = 0
                while not stop.is_set():
                    smtp.mail("sender@example.com")
                    smtp.rcpt(f"user{n}-{i}@example.net")
                    code, text = smtp.data(f"Subject: {n}-{i}\r\n\r\n".encode() + BODY)
                    if code == 250:
                        (ids,) = re.findall(rb"ids=(\w+)", text)
                        with lock:
                            acknowledged.append(ids.decode())
                    i += 1
        except (smtplib.SMTPException, OSError):
            pass  # the daemon died under us: that is the point

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(acknowledged) >= 500:
                break
        time.sleep(0.01)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=20)
    with lock:
        acked = set(acknowledged)
    assert len(acked) >= 500

    # A restarted daemon restores them; check through the spool as it would see it...
    restored = restored_spool(d.spool_path)
    spooled = {m.id for m in restored.messages}
    assert acked <= spooled, f"lost {len(acked - spooled)} acknowledged messages"
    # ...and through the daemon itself coming back up on the same spool.
    d.start()
    assert "restored" in d.stderr()
    d.stop()
