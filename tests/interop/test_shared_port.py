"""Several daemons on one SMTP port, only when every one of them says `shared_port = true`.

This is how one machine runs several nodes (docs/cluster.md): the kernel spreads the
connections over the daemons' sockets. A daemon that does not say so keeps the port
to itself, whichever of the two starts first.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
import urllib.request

import pytest

START_TIMEOUT_S = 60
CONNECTIONS = 40
DEADLINE_S = 120


def _serve_and_wait(daemon) -> tuple[int, str]:
    """Start `daemon`'s process, expecting it to refuse: (status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trimta", "serve", "--config", str(daemon.config_path)],
        cwd=daemon.directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, err = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the daemon started on a port another daemon holds without sharing")
    return proc.returncode, err


def _wait_for_http(daemon) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert daemon.proc.poll() is None, "the daemon exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=10):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _on_port_of(make_daemon, first, extra_listener: str):
    second = make_daemon(extra_listener=extra_listener)
    second.port = first.port
    second.__post_init__()  # its config, with the first one's port
    return second


def test_two_daemons_with_shared_port_on_one_port_both_take_mail(make_daemon):
    first = make_daemon(extra_listener="shared_port = true").start()
    second = _on_port_of(make_daemon, first, "shared_port = true").start()
    # The port answered already (the first daemon's): the second listens once its HTTP API does.
    _wait_for_http(second)
    for i in range(CONNECTIONS):
        with smtplib.SMTP("127.0.0.1", first.port, timeout=30) as client:
            client.sendmail("sender@example.com", [f"r{i}@example.net"], b"Subject: shared\r\n\r\nhello\r\n")
    deadline = time.monotonic() + DEADLINE_S
    while True:
        counts = [len(first.records("Reception")), len(second.records("Reception"))]
        if sum(counts) == CONNECTIONS or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sum(counts) == CONNECTIONS, counts  # every message taken, by one daemon or the other
    assert min(counts) > 0, counts  # and both daemons took some
    assert first.proc.poll() is None and second.proc.poll() is None


def test_a_daemon_with_shared_port_refuses_a_port_held_by_one_without(make_daemon):
    first = make_daemon().start()
    second = _on_port_of(make_daemon, first, "shared_port = true")
    status, err = _serve_and_wait(second)
    assert status == 1
    assert "Address already in use by a listener without shared_port = true" in err, err
    assert f"127.0.0.1:{first.port}" in err and "Traceback" not in err


def test_a_daemon_without_shared_port_refuses_a_port_shared_by_others(make_daemon):
    first = make_daemon(extra_listener="shared_port = true").start()
    second = _on_port_of(make_daemon, first, "")
    status, err = _serve_and_wait(second)
    assert status == 1
    assert "Address already in use" in err and f"127.0.0.1:{first.port}" in err and "Traceback" not in err
