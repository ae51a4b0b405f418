"""A port held by anything outside the daemon is refused; the daemon's own workers share it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from .conftest import free_port

START_TIMEOUT_S = 60  # the machine is loaded; a daemon that refuses exits in a second or two


def _serve_and_wait(daemon) -> tuple[int, str]:
    """Start `daemon`'s process and wait for it to exit; (status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trimta", "serve", "--config", str(daemon.config_path)],
        cwd=daemon.directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, err = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the daemon started on a port already in use")
    return proc.returncode, err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_daemon_on_the_same_port_exits_with_address_in_use(make_daemon, workers):
    first = make_daemon(extra_listener=f"workers = {workers}").start()
    second = make_daemon(extra_listener=f"workers = {workers}")
    second.port = first.port
    second.__post_init__()  # rewrite its config with the first one's port
    status, err = _serve_and_wait(second)
    assert status == 1
    assert "Address already in use" in err and f"127.0.0.1:{first.port}" in err
    assert "Traceback" not in err
    # The first one still serves, with all its processes.
    with socket.create_connection(("127.0.0.1", first.port), timeout=10) as client:
        assert client.recv(100).startswith(b"220 ")


@pytest.mark.parametrize("reuseport", [False, True])
def test_a_foreign_listening_socket_keeps_the_daemon_from_starting(make_daemon, reuseport):
    port = free_port()
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:  # the kind of socket that would otherwise share the port silently
            foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        daemon = make_daemon(extra_listener="workers = 2")
        daemon.port = port
        daemon.__post_init__()
        status, err = _serve_and_wait(daemon)
    assert status == 1
    assert "Address already in use" in err and "Traceback" not in err


def test_shared_port_lets_two_daemons_share_on_purpose(make_daemon):
    first = make_daemon(extra_listener="workers = 2\nshared_port = true").start()
    second = make_daemon(extra_listener="workers = 1\nshared_port = true")
    second.port = first.port
    second.__post_init__()
    second.start()
    assert second.proc.poll() is None
