"""relay-2k through one node and through two nodes sharing one Redis (issue 19), same run.

  smtp-source -> node(s) -> smtp-sink via MX (as `bench/relay.py`), every node with
  `[cluster] redis = ...` on one private redis-server, `[egress.default]
  connection_limit` = `--connections` shared by the nodes (leases in Redis).

With two nodes, the messages are split between them: one smtp-source per node, half the
messages and half the sessions each, started together. Measured: wall time from the
clients' start to the sink's N-th message, aggregate messages/s, and CPU seconds per
1,000 messages of all the nodes' process trees (Redis's CPU shown apart).

    .venv/bin/python bench/cluster.py                      # 10,000 messages of 2 KB
    .venv/bin/python bench/cluster.py --messages 4000 --connections 20

This is a benchmark, not a test: it prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import find_tool, format_table, free_port, machine_summary, run_smtp_source, tree_cpu_seconds  # noqa: E402
from relay import DOMAIN, HOST, SINK_ADDRESS, DnsZone, Sinks, TrimtaRelay, say  # noqa: E402


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port(HOST)
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory), "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        import socket

        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def run_nodes(n: int, args: argparse.Namespace, dns: DnsZone, sinks: Sinks, redis: RedisServer | None) -> list[str]:
    """`n` nodes sharing `redis` (None: each alone, with connection_limit / n of its own)."""
    nodes = [TrimtaRelay(nameserver=dns.nameserver, smtp_port=sinks.port, keep=False,
                         connections=args.connections if redis is not None else max(1, args.connections // n),
                         extra=f'[cluster]\nredis = "{redis.url}"\nnode_id = "bench-{i}"\n' if redis else "")
             for i in range(n)]
    try:
        for node in nodes:
            node.start()
        time.sleep(2.0)  # every node has beaten once and sees the others
        sinks.reset()
        cpu_before = sum(tree_cpu_seconds(node.pid) for node in nodes)
        redis_before = tree_cpu_seconds(redis.proc.pid) if redis and redis.proc else 0.0
        started = time.perf_counter()
        errors: list[str] = []

        def send(node: TrimtaRelay, count: int) -> None:
            run = run_smtp_source(HOST, node.port, messages=count, sessions=max(1, args.sessions // n),
                                  size=args.size, recipient=f"r@{DOMAIN}", timeout_s=args.timeout)
            if not run.ok:
                errors.append(run.stderr[-500:])

        threads = [threading.Thread(target=send, args=(node, args.messages // n)) for node in nodes]
        for t in threads:
            t.start()
        total = (args.messages // n) * n
        deadline = started + args.timeout
        while sinks.received() < total and time.perf_counter() < deadline:
            time.sleep(0.01)
        reached = time.perf_counter() - started
        cpu = sum(tree_cpu_seconds(node.pid) for node in nodes) - cpu_before
        redis_cpu = (tree_cpu_seconds(redis.proc.pid) if redis and redis.proc else 0.0) - redis_before
        for t in threads:
            t.join()
        time.sleep(1.0)
        received = sinks.received()
        note = "" if received == total and not errors else f"received {received} of {total}; {errors[:1]}"
        label = f"{n}" + (" shared" if redis is not None else " alone")
        return [label, f"{total:,}", f"{reached:.1f}", f"{total / reached:,.0f}", f"{cpu / total * 1000:.2f}",
                f"{redis_cpu / total * 1000:.3f}", note]
    finally:
        for node in nodes:
            node.stop()
            node.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    find_tool("smtp-source")
    directory = Path(tempfile.mkdtemp(prefix="trimta-bench-cluster-"))
    dns = DnsZone([f"--mx-host={DOMAIN},mx.{DOMAIN},10", f"--host-record=mx.{DOMAIN},{SINK_ADDRESS}"], directory)
    sinks = Sinks([SINK_ADDRESS], directory)
    redis = RedisServer(directory)
    rows = []
    try:
        dns.start()
        sinks.start()
        redis.start()
        for n, shared in ((1, True), (2, True), (2, False)):
            say(f"relay-{args.size // 1024}k with {n} node(s){' sharing Redis' if shared else ' without [cluster]'} ...")
            rows.append(run_nodes(n, args, dns, sinks, redis if shared else None))
    finally:
        redis.stop()
        sinks.stop()
        dns.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(machine_summary())
    print(format_table(["nodes", "messages", "seconds", "msg/s", "node CPU s/1k", "redis CPU s/1k", "note"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
