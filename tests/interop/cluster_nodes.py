"""Several real `trimta serve` nodes sharing one real redis-server, for the cluster tests.

Use it from a test module under tests/interop::

    from .cluster_nodes import CountingReceiver, make_cluster  # noqa: F401 (a fixture)

    def test_something(make_cluster):
        receiver = CountingReceiver("127.0.0.30", delay_s=0.05).start()
        cluster = make_cluster(2, extra_config=receiver.egress_config())
        cluster.nodes[0].send(["u1@[127.0.0.30]"])
        ...
        cluster.redis_stop(); cluster.redis_start()   # or redis_kill9(), redis_pause()/redis_resume()
        cluster.kill9(0); cluster.restart(0)

Each node is a `Daemon` (tests/interop/conftest.py) in its own directory: its own
spool, logs and HTTP port, its SMTP listener on its own loopback address (127.0.0.21,
.22, ...), ``node_id`` "node-a", "node-b", ... and a ``[cluster]`` table pointing at the
shared Redis (``timeout`` short, so an outage is noticed fast). Redis keeps its
append-only file across `redis_stop`/`redis_start` on the same port; `redis_kill9`
is the crash.

`CountingReceiver` is a slow aiosmtpd receiver that counts what a limit is about:
sessions open at once (the most ever seen), and when each message arrived, so a test
can ask for the most arrivals within any window. Recipients are domain literals
(``user@[127.0.0.30]``): no DNS server is needed to reach it.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from .brokers import Redis, metric
from .conftest import Daemon, free_port

NODE_NAMES = "abcdefgh"


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition", every: float = 0.05) -> Any:
    """Poll `predicate` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class CountingReceiver:
    """An aiosmtpd receiver on `host` that is slow on purpose (`delay_s` in DATA) and counts:
    the sessions open now and the most open at once, and each message's arrival time."""

    def __init__(self, host: str = "127.0.0.30", *, delay_s: float = 0.05, port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.open_sessions = 0
        self.max_sessions = 0
        self.arrivals: list[float] = []  # time.monotonic() at the end of each DATA
        self.recipients: list[str] = []
        self.sessions_total = 0
        self._controller: Controller | None = None

    # aiosmtpd's SMTP protocol sees every connection come and go.
    def _factory(self) -> SMTP:
        receiver = self

        class CountingSMTP(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                with receiver.lock:
                    receiver.open_sessions += 1
                    receiver.sessions_total += 1
                    receiver.max_sessions = max(receiver.max_sessions, receiver.open_sessions)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                with receiver.lock:
                    receiver.open_sessions -= 1
                super().connection_lost(exc)

        return CountingSMTP(self, hostname="mx.receiver.test")

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        with self.lock:
            self.arrivals.append(time.monotonic())
            self.recipients.extend(envelope.rcpt_tos)
        return "250 2.0.0 Message accepted"

    def start(self) -> CountingReceiver:
        controller = Controller(self, hostname=self.host, port=self.port)
        controller.factory = self._factory  # type: ignore[method-assign]
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def address(self, local_part: str) -> str:
        return f"{local_part}@[{self.host}]"

    def egress_config(self, **options: object) -> str:
        """``[egress.default]`` reaching this receiver (loopback allowed, no TLS), plus `options`
        (TOML values as Python: ``connection_limit=3``, ``max_message_rate="100/s"``)."""
        lines = [f"smtp_port = {self.port}", "prohibited_hosts = []", 'enable_tls = "Disabled"']
        lines += [f"{key} = {_toml(value)}" for key, value in options.items()]
        return "[egress.default]\n" + "\n".join(lines) + "\n"

    def delivered(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def most_in_window(self, window_s: float = 1.0) -> int:
        """The most arrivals within any window of `window_s` (sliding, not calendar seconds)."""
        with self.lock:
            times = sorted(self.arrivals)
        most, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            most = max(most, end - start + 1)
        return most

    def reset(self) -> None:
        with self.lock:
            self.arrivals.clear()
            self.recipients.clear()
            self.max_sessions = self.open_sessions
            self.sessions_total = 0


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@dataclass
class Node:
    """One node of the cluster: a `Daemon` with its name."""

    name: str
    daemon: Daemon

    @property
    def host(self) -> str:
        return self.daemon.host

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def http_port(self) -> int:
        return self.daemon.http_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http_port}"

    @property
    def running(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def send(self, recipients: Iterable[str], *, sender: str = "s@example.com", tenant: str | None = None,
             per_message: int = 1) -> int:
        """Inject one message per `per_message` recipients over SMTP; returns how many messages."""
        recipients = list(recipients)
        header = f"X-Tenant: {tenant}\r\n" if tenant else ""
        count = 0
        with smtplib.SMTP(self.host, self.port, timeout=30) as client:
            for i in range(0, len(recipients), per_message):
                batch = recipients[i:i + per_message]
                client.sendmail(sender, batch, f"Subject: {i}\r\n{header}\r\nhello from {self.name}\r\n")
                count += 1
        return count

    def metric(self, name: str) -> float | None:
        """An unlabelled metric from the node's /metrics (None if it does not answer or has none)."""
        return metric(self.daemon.http_port, name)

    def records(self, kind: str | None = None) -> list[dict]:
        return self.daemon.records(kind)

    def stderr(self) -> str:
        return self.daemon.stderr()


@dataclass
class Cluster:
    """A redis-server and the nodes sharing it."""

    redis: Redis
    nodes: list[Node] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    # --- nodes ---------------------------------------------------------------------------------

    def stop(self, index: int) -> int:
        """Stop node `index` gracefully (SIGTERM); its exit code."""
        return self.nodes[index].daemon.stop()

    def kill9(self, index: int) -> None:
        self.nodes[index].daemon.kill9()

    def restart(self, index: int) -> Node:
        """Start node `index` again on the same spool, ports and configuration (after stop or kill9)."""
        node = self.nodes[index]
        if node.running:
            node.daemon.stop()
        node.daemon.start()
        return node

    def wait_until_all_alive(self, timeout: float = 60.0) -> None:
        """Until every running node has seen all the running ones alive (its heartbeat count),
        so a local share taken in an outage divides by the real number of nodes."""
        running = [node for node in self.nodes if node.running]
        for node in running:
            wait_for(lambda node=node: node.metric("trimta_cluster_nodes_alive") == len(running), timeout=timeout,
                     what=f"{node.name} to see {len(running)} nodes alive")

    # --- Redis ---------------------------------------------------------------------------------

    def redis_stop(self) -> None:
        """Stop Redis gracefully (it writes its append-only file); nodes see it go away."""
        self.redis.stop()

    def redis_kill9(self) -> None:
        proc = self.redis.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        self.redis.proc = None

    def redis_pause(self) -> None:
        """Freeze Redis (SIGSTOP): it accepts connections and answers nothing, a Redis too slow to use."""
        import signal

        assert self.redis.proc is not None
        self.redis.proc.send_signal(signal.SIGSTOP)

    def redis_resume(self) -> None:
        import signal

        assert self.redis.proc is not None
        self.redis.proc.send_signal(signal.SIGCONT)

    def redis_start(self) -> None:
        """Start Redis again on the same port and data."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()

    def redis_command(self, *args: str) -> str:
        """One command through redis-cli, its reply as text (for looking at shared keys)."""
        import shutil
        import subprocess

        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        return subprocess.run([cli, "-p", str(self.redis.port), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout


@pytest.fixture
def make_cluster(tmp_path) -> Iterator[Callable[..., Cluster]]:
    """`make_cluster(n, extra_config="", cluster_config="", per_node=None, start=True)`: a Redis and
    `n` started nodes. `extra_config` is TOML added to every node's file (tables such as
    ``[egress.default]``); `cluster_config` is more keys for ``[cluster]`` (``timeout = "2s"``);
    `per_node(i)` may add TOML for node i only. Everything is stopped at the end."""
    clusters: list[Cluster] = []

    def make(n: int = 2, *, extra_config: str = "", cluster_config: str = "",
             per_node: Callable[[int], str] | None = None, start: bool = True,
             hosts: Sequence[str] | None = None) -> Cluster:
        directory = tmp_path / f"cluster{len(clusters)}"
        (directory / "redis").mkdir(parents=True)
        cluster = Cluster(Redis(directory / "redis").start())
        clusters.append(cluster)
        for i in range(n):
            name = f"node-{NODE_NAMES[i]}"
            host = hosts[i] if hosts is not None else f"127.0.0.{21 + i}"
            config = (
                f"[cluster]\n"
                f'redis = "{cluster.redis.url}"\n'
                f'node_id = "{name}"\n'
                f'timeout = "500ms"\n'
                f"{cluster_config}\n"
                f"{extra_config}\n"
                f"{per_node(i) if per_node is not None else ''}\n"
            )
            daemon = Daemon(directory=directory / name, port=free_port(host), host=host, extra_config=config)
            cluster.nodes.append(Node(name, daemon))
        if start:
            for node in cluster.nodes:
                node.daemon.start()
            cluster.wait_until_all_alive()
        return cluster

    yield make
    for cluster in clusters:
        for node in cluster.nodes:
            node.daemon.stop()
        cluster.redis.stop()


def node_dirs(cluster: Cluster) -> list[Path]:
    return [node.daemon.directory for node in cluster.nodes]
