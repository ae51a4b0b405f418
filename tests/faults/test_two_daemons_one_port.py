"""Two daemons on one port: the second must fail to bind, as any program would.

The listeners use SO_REUSEPORT between the daemon and its own worker processes; that
must not let a second, unrelated trimta (another spool, another config) bind the same
SMTP address and take half of the mail. The second exits 1 with the usual
"Address already in use", and every connection keeps reaching the first.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys

import pytest

from .conftest import record_fault


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_daemon_on_the_same_smtp_address_exits_1_address_in_use(make_daemon, workers):
    first = make_daemon(extra_listener=f"workers = {workers}").start()
    second = make_daemon(extra_listener=f"workers = {workers}")
    text = second.config_path.read_text()
    second.config_path.write_text(text.replace(f'listen = "{second.host}:{second.port}"',
                                               f'listen = "{first.host}:{first.port}"', 1))
    proc = subprocess.Popen([sys.executable, "-m", "trimta", "serve", "--config", str(second.config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=second.directory)
    try:
        _, stderr = proc.communicate(timeout=60)  # it must exit at once; 60 s is the machine's load
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the second daemon bound the first's address and kept running") from None
    assert proc.returncode == 1, stderr[-2000:]
    assert stderr.splitlines()[-1].endswith("Address already in use"), stderr[-2000:]
    assert "Traceback" not in stderr
    # Every session still reaches the first daemon: its spool has them all.
    for n in range(20):
        with smtplib.SMTP(first.host, first.port, timeout=30) as s:
            s.sendmail("a@example.com", [f"r{n}@example.net"], b"Subject: x\r\n\r\ny\r\n")
    first.stop()
    from .conftest import restored_spool

    assert len(restored_spool(first.spool_path).messages) == 20
    record_fault(f"second daemon on the same SMTP address (workers = {workers})",
                 "exits 1, Address already in use; all mail reaches the first",
                 acknowledged=20, delivered="", lost=0, duplicated="", note="20 of 20 in the first's spool")
