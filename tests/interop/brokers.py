"""Real brokers for the log hook tests: rabbitmq-server and redis-server on free loopback ports.

Each runs as its own node with its own data directory, so it clashes with nothing
else on the machine (a system RabbitMQ, another test's Redis): RabbitMQ gets its own
node name, Mnesia directory, AMQP port, distribution port and epmd port. Both can be
stopped and started again on the same port and data (the outage tests).

Missing binaries skip the test, saying why, except under ``CI=true``, where they fail
(``make test`` installs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

RABBITMQ_START_TIMEOUT_S = 180.0  # the first start of a node writes its database: slow on a loaded machine


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def need(path: str | None, what: str, package: str) -> str:
    if path is None or not os.access(path, os.X_OK):
        message = f"{what} is not installed (make test installs the {package} package)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class RabbitMQ:
    """One rabbitmq-server node on loopback, `port` for AMQP, guest/guest allowed from loopback."""

    def __init__(self, directory: Path) -> None:
        self.server = need("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server", "rabbitmq-server")
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"trimta-test-{os.getpid()}-{self.port}@localhost"
        self.proc: subprocess.Popen | None = None
        (directory / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(directory),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> RabbitMQ:
        self.proc = subprocess.Popen(
            [self.server], env=self.env, cwd=self.directory, start_new_session=True,
            stdout=open(self.directory / "server.out", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        deadline = time.monotonic() + RABBITMQ_START_TIMEOUT_S
        while not _listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}: "
                                   f"{(self.directory / 'server.out').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"rabbitmq-server not listening on {self.port} after {RABBITMQ_START_TIMEOUT_S}s")
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        """Stop the node (SIGTERM, as `rabbitmqctl stop` would) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 30
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.stop()
        # The node's own epmd (on its own port) outlives it: ask it to go.
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if os.access(epmd, os.X_OK):
            subprocess.run([epmd, "-kill"], env=self.env, capture_output=True, timeout=30, check=False)


class Redis:
    """One redis-server on loopback, its data (append-only file) in its own directory."""

    def __init__(self, directory: Path) -> None:
        self.server = need(shutil.which("redis-server") or "/usr/bin/redis-server", "redis-server", "redis-server")
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=open(self.directory / "server.out", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.directory / 'server.out').read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # redis-server flushes its append-only file on SIGTERM
            self.proc.wait(timeout=60)
        self.proc = None

    close = stop


def hook_pending_records(http_port: int) -> int | None:
    """A daemon's log hook records not yet confirmed, as its /metrics says (None if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("trimta_log_hook_pending_records{")]
    return int(sum(values)) if values else None


def metric(http_port: int, name: str) -> float | None:
    """One unlabelled metric of a daemon's /metrics (None if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else None
