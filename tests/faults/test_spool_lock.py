"""Two daemons on one spool: the second exits at once, naming the first; readers still read."""

from __future__ import annotations

import os
import smtplib
import socket
import sqlite3
import subprocess
import sys
from email.message import EmailMessage

from trimta.adapters.spool_lock import SpoolInUse, SpoolLock

from .conftest import restored_spool, tool

MESSAGE = EmailMessage()
MESSAGE["Subject"] = "locked"
MESSAGE.set_content("one spool, one daemon\n")


def _share_spool(second, first) -> None:
    text = second.config_path.read_text()
    second.config_path.write_text(text.replace('path = "spool"', f'path = "{first.spool_path}"', 1))


def test_second_daemon_on_the_same_spool_exits_1_naming_the_first(make_daemon):
    first = make_daemon().start()
    with smtplib.SMTP(first.host, first.port, timeout=30) as s:
        s.send_message(MESSAGE, "a@example.com", ["queued@example.net"])
    second = make_daemon()
    _share_spool(second, first)
    done = subprocess.run(
        [sys.executable, "-m", "trimta", "serve", "--config", str(second.config_path)],
        capture_output=True, text=True, timeout=120, cwd=second.directory,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"trimta serve: spool {first.spool_path} is in use by process {first.proc.pid}"
    assert "Traceback" not in done.stderr
    # It stopped before restoring or listening: nothing of the first's mail was read.
    assert "restored" not in done.stderr
    with socket.socket() as probe:
        assert probe.connect_ex((second.host, second.port)) != 0
    # The first is untouched and still takes mail.
    assert first.proc.poll() is None
    with smtplib.SMTP(first.host, first.port, timeout=30) as s:
        s.send_message(MESSAGE, "a@example.com", ["second@example.net"])
    first.stop()
    assert sorted(m.recipient for m in restored_spool(first.spool_path).messages) == [
        "queued@example.net", "second@example.net"]


def test_readers_of_a_running_spool_keep_working(make_daemon, tmp_path):
    daemon = make_daemon().start()
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as s:
        s.send_message(MESSAGE, "a@example.com", ["one@example.net", "two@example.net"])
    database = daemon.spool_path / "spool.db"
    counted = subprocess.run([tool("sqlite3"), str(database), "SELECT count(*) FROM messages"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert counted.stdout.strip() == "2"
    copy = tmp_path / "copy.db"
    subprocess.run([tool("sqlite3"), str(database), f".backup {copy}"],
                   capture_output=True, text=True, timeout=60, check=True)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (2,)
    assert daemon.proc.poll() is None


def test_the_lock_goes_with_its_process_even_after_kill_9(make_daemon):
    daemon = make_daemon().start()
    pid = daemon.proc.pid
    daemon.kill9()
    # The file still names the dead process, but the kernel dropped its lock.
    assert (daemon.spool_path / "lock").read_text().strip() == str(pid)
    daemon.start()
    assert (daemon.spool_path / "lock").read_text().strip() == str(daemon.proc.pid)


def test_a_lock_is_refused_while_held_and_free_once_released(tmp_path):
    held = SpoolLock.acquire(tmp_path / "spool")
    # flock locks belong to an open file: a second open, even in this process, is refused.
    try:
        SpoolLock.acquire(tmp_path / "spool")
    except SpoolInUse as exc:
        assert str(exc) == f"spool {tmp_path / 'spool'} is in use by process {os.getpid()}"
    else:
        raise AssertionError("the second lock was granted")
    held.release()
    with SpoolLock.acquire(tmp_path / "spool"):
        pass
