"""Abuse of the real daemon's SMTP listener: slow clients, many connections, descriptors, AUTH.

Each case is what an attacker on loopback tried (issue 21). The daemons run with short
configured timeouts, so the tests take seconds; every wait has a generous bound and no
assertion is about how long something took.
"""

from __future__ import annotations

import base64
import resource
import socket
import subprocess
import sys
import time

import pytest

from .conftest import Daemon, free_port, wait_for_port

pytestmark = pytest.mark.interop

BOUND_S = 60  # a backstop for every wait on a loaded machine


def connect(daemon: Daemon) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", daemon.port), timeout=BOUND_S)
    return client


def read_reply(client: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.splitlines()[-1][3:4] == b"-":
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def trickle(client: socket.socket, data: bytes, interval_s: float) -> bytes:
    """Send `data` a byte at a time until the server answers or hangs up; what it answered."""
    client.setblocking(False)
    answer = b""
    deadline = time.monotonic() + BOUND_S
    for byte in data:
        if time.monotonic() > deadline:
            break
        try:
            client.send(bytes([byte]))
        except OSError:
            break
        time.sleep(interval_s)  # a real client on a real daemon: real time
        try:
            chunk = client.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            break
        answer += chunk
        if not chunk or answer.endswith(b"\r\n"):
            break
    client.setblocking(True)
    return answer


# --- slowloris ------------------------------------------------------------------------


def test_a_command_trickled_a_byte_at_a_time_runs_out_of_command_timeout(make_daemon):
    d = make_daemon(extra_listener='client_timeout = "60s"\ncommand_timeout = "2s"').start()
    with connect(d) as client:
        assert read_reply(client).startswith(b"220 ")
        # Never silent for client_timeout, but the line never completes.
        answer = trickle(client, b"EHLO " + b"x" * 400, 0.2)
        assert answer.startswith(b"421 4.4.2"), answer


def test_message_lines_trickled_run_out_of_data_timeout(make_daemon):
    d = make_daemon(extra_listener='client_timeout = "60s"\ndata_timeout = "2s"').start()
    with connect(d) as client:
        assert read_reply(client).startswith(b"220 ")
        for command, code in ((b"EHLO c.example", b"250"), (b"MAIL FROM:<s@example.com>", b"250"),
                              (b"RCPT TO:<r@example.net>", b"250"), (b"DATA", b"354")):
            client.sendall(command + b"\r\n")
            assert read_reply(client).startswith(code)
        answer = trickle(client, b"Subject: " + b"y" * 900, 0.2)
        assert answer.startswith(b"421 4.4.2"), answer


def test_whole_lines_sent_slowly_are_served(make_daemon):
    """A slow but line-by-line client is not a slowloris: each line completes in time."""
    d = make_daemon(extra_listener='client_timeout = "60s"\ncommand_timeout = "3s"').start()
    with connect(d) as client:
        assert read_reply(client).startswith(b"220 ")
        for _ in range(3):
            time.sleep(1)  # well inside command_timeout each time
            client.sendall(b"NOOP\r\n")
            assert read_reply(client).startswith(b"250 ")


def test_connections_from_one_address_are_capped(make_daemon):
    d = make_daemon(extra_listener="max_connections_per_client = 3").start()
    held = [connect(d) for _ in range(3)]
    try:
        for client in held:
            assert read_reply(client).startswith(b"220 ")
        with connect(d) as fourth:
            assert read_reply(fourth).startswith(b"421 4.7.0")
        # Another address is not held back by this one's connections.
        with socket.create_connection(("127.0.0.1", d.port), timeout=BOUND_S, source_address=("127.0.0.2", 0)) as other:
            assert read_reply(other).startswith(b"220 ")
    finally:
        for client in held:
            client.close()


def test_the_connection_limit_holds_over_every_worker_process(make_daemon):
    """max_connections is the listener's, whichever process the kernel hands a connection to."""
    d = make_daemon(extra_listener="workers = 2\nmax_connections = 6\nmax_connections_per_client = 0").start()
    held = []
    try:
        for _ in range(6):
            client = connect(d)
            held.append(client)
            assert read_reply(client).startswith(b"220 ")
        for _ in range(4):
            with connect(d) as extra:
                assert read_reply(extra).startswith(b"421 4.3.2")
    finally:
        for client in held:
            client.close()


# --- descriptor exhaustion ----------------------------------------------------------------


def test_under_a_file_limit_of_1024_every_client_gets_a_greeting_or_a_421(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.fail(f"this test needs a hard file limit of at least 4096 to open its clients (it is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    d = Daemon(directory=tmp_path / "d", port=free_port(), extra_listener="max_connections_per_client = 0")
    proc = subprocess.Popen(
        ["bash", "-c", f'ulimit -n 1024 && exec "{sys.executable}" -m trimta serve --config "{d.config_path}"'],
        cwd=d.directory, stdout=subprocess.DEVNULL, stderr=open(d.stderr_path, "ab"),  # noqa: SIM115
    )
    d.proc = proc
    clients = []
    try:
        wait_for_port("127.0.0.1", d.port, proc, timeout=BOUND_S)
        greeted = refused = 0
        for _ in range(1100):
            client = connect(d)
            clients.append(client)
            reply = read_reply(client)
            if reply.startswith(b"220 "):
                greeted += 1
            else:
                assert reply.startswith(b"421 4.3.2"), (greeted, refused, reply)
                refused += 1
                client.close()
                clients.remove(client)
        assert greeted > 0 and refused > 0 and greeted + refused == 1100
        stderr = d.stderr()
        assert "max_connections" in stderr and "lowered" in stderr
        assert stderr.count("EMFILE") <= 1
        # The daemon still serves when the crowd has gone.
        for client in clients:
            client.close()
        clients.clear()
        time.sleep(0.5)
        with connect(d) as late:
            assert read_reply(late).startswith(b"220 ")
    finally:
        for client in clients:
            client.close()
        d.stop()


# --- AUTH PLAIN's authorization identity ------------------------------------------------------


AUTH_USERS = ('auth = [{ username = "app", password = "s3cret", tenant = "t-app" },'
              ' { username = "admin", password = "root-pw", tenant = "t-admin" },'
              ' { username = "relay", password = "r-pw", authorize_as = ["app"] }]')


def auth_plain(daemon: Daemon, authzid: str, authcid: str, password: str) -> bytes:
    with connect(daemon) as client:
        read_reply(client)
        client.sendall(b"EHLO c.example\r\n")
        read_reply(client)
        token = base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()
        client.sendall(f"AUTH PLAIN {token}\r\n".encode())
        return read_reply(client)


def test_auth_plain_refuses_an_authorization_identity_other_than_the_user(make_daemon):
    d = make_daemon(extra_listener=AUTH_USERS).start()
    assert auth_plain(d, "admin", "app", "s3cret").startswith(b"535 5.7.8")
    assert auth_plain(d, "", "app", "s3cret").startswith(b"235 ")
    assert auth_plain(d, "app", "app", "s3cret").startswith(b"235 ")
    # A rule lets "relay" act as "app", and only as "app".
    assert auth_plain(d, "app", "relay", "r-pw").startswith(b"235 ")
    assert auth_plain(d, "admin", "relay", "r-pw").startswith(b"535 5.7.8")
