"""The soak (`make soak`): trimta relaying at half its measured capacity for 30 minutes.

    .venv/bin/python bench/soak.py                 # 30 minutes
    .venv/bin/python bench/soak.py --minutes 5     # a shorter look

First the capacity is measured: `smtp-source -s 20` sends `--probe` messages through
trimta to a counting `smtp-sink` (the relay benchmark's set-up: dnsmasq serving the MX,
the sink on 127.0.0.50), and messages/s is taken from the first send to the last
arrival. Then paced clients (`--clients` persistent, pipelining SMTP sessions) offer
half that rate for `--minutes`, each message due at its slot of a fixed schedule.
Every minute one row is printed: trimta's resident memory (its process tree), its
open file descriptors, the p50 and p99 acceptance latency of that minute's messages
(from writing MAIL to reading the 250 to the data), and the messages accepted and
delivered so far. At the end: accepted vs delivered (none lost, duplicates counted).

What "flat" means is read off the table: RSS and descriptors neither climb nor step
up over the run, and p99 latency stays in one band. This is a script, not a test: it
prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import find_tool, format_table, machine_summary, process_tree  # noqa: E402
from relay import DnsZone, Sinks, TrimtaRelay  # noqa: E402

SINK = "127.0.0.50"
BODY = b"Subject: soak\r\n\r\n" + (b"y" * 76 + b"\r\n") * 25  # about 2 KB


def tree_rss_kib(root_pid: int) -> int:
    total = 0
    for pid in process_tree(root_pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def tree_fds(root_pid: int) -> int:
    total = 0
    for pid in process_tree(root_pid):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def measure_capacity(daemon: TrimtaRelay, sinks: Sinks, messages: int) -> float:
    """Relayed messages/s: smtp-source's start to the sink's `messages`-th arrival."""
    sinks.reset()
    started = time.perf_counter()
    subprocess.run([find_tool("smtp-source"), "-s", "20", "-m", str(messages), "-l", "2048",
                    "-f", "s@example.com", "-t", "probe@soak.test", f"127.0.0.1:{daemon.port}"],
                   check=True, capture_output=True, timeout=1800)
    deadline = time.monotonic() + 600
    while sinks.received() < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"capacity probe: only {sinks.received()} of {messages} arrived")
        time.sleep(0.01)
    return messages / (time.perf_counter() - started)


@dataclass
class Client:
    """One persistent SMTP session sending pipelined transactions on a shared schedule."""

    host: str
    port: int

    def __post_init__(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=60)
        self.buffer = b""
        self._reply()
        self.sock.sendall(b"EHLO soak.example\r\n")
        self._reply()

    def _reply(self) -> bytes:
        while True:
            lines = self.buffer.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line[3:4] == b" ":
                    out = b"\r\n".join(lines[: i + 1])
                    self.buffer = self.buffer[len(out) + 2:]
                    return out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the session")
            self.buffer += chunk

    def send(self, n: int) -> tuple[float, bool]:
        """One message; (seconds from MAIL to the final reply, accepted)."""
        started = time.perf_counter()
        self.sock.sendall(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r%d@soak.test>\r\nDATA\r\n" % n)
        ok = self._reply().startswith(b"250") & self._reply().startswith(b"250")
        if not self._reply().startswith(b"354"):
            self.sock.sendall(b"RSET\r\n")
            self._reply()
            return time.perf_counter() - started, False
        self.sock.sendall(BODY + b".\r\n")
        ok &= self._reply().startswith(b"250")
        return time.perf_counter() - started, ok


class Schedule:
    """Message i is due at start + i / rate; clients take the next due index in turn."""

    def __init__(self, rate: float, seconds: float) -> None:
        self.rate = rate
        self.start = time.perf_counter()
        self.end = self.start + seconds
        self.next = 0
        self.lock = threading.Lock()
        self.latencies: list[tuple[float, float]] = []  # (when done, latency)
        self.accepted = 0
        self.refused = 0
        self.reconnects = 0

    def take(self) -> int | None:
        with self.lock:
            n = self.next
            self.next += 1
        due = self.start + n / self.rate
        if due >= self.end:
            return None
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        return n

    def done(self, latency: float, ok: bool) -> None:
        with self.lock:
            self.latencies.append((time.perf_counter(), latency))
            if ok:
                self.accepted += 1
            else:
                self.refused += 1


def run(args: argparse.Namespace) -> str:
    directory = Path(tempfile.mkdtemp(prefix="trimta-soak-"))
    zone = DnsZone(["--mx-host=soak.test,mx.soak.test,10", f"--host-record=mx.soak.test,{SINK}"],
                   directory).start()
    sinks = Sinks([SINK], directory).start()
    daemon = TrimtaRelay(nameserver=zone.nameserver, smtp_port=sinks.port, connections=args.connections,
                         keep=args.keep)
    try:
        daemon.start()
        capacity = measure_capacity(daemon, sinks, args.probe)
        rate = capacity / 2
        print(f"capacity {capacity:,.0f} messages/s relayed; soaking at {rate:,.0f}/s for {args.minutes} min",
              flush=True)
        sinks.reset()
        schedule = Schedule(rate, args.minutes * 60)
        errors: list[BaseException] = []

        def client_loop() -> None:
            # A session ends after max_messages_per_connection (421 at the next MAIL):
            # the client opens a new one, as a real one does, and resends that message.
            client = None
            n = schedule.take()
            while n is not None:
                try:
                    if client is None:
                        client = Client("127.0.0.1", daemon.port)
                    schedule.done(*client.send(n))
                    n = schedule.take()
                except (OSError, ConnectionError) as exc:
                    client = None
                    with schedule.lock:
                        schedule.reconnects += 1
                        if schedule.reconnects > 1000:
                            errors.append(exc)
                            return

        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        rows = []
        seen = 0
        for minute in range(1, args.minutes + 1):
            time.sleep(max(0.0, schedule.start + minute * 60 - time.perf_counter()))
            with schedule.lock:
                window = [lat for when, lat in schedule.latencies[seen:]]
                seen = len(schedule.latencies)
                accepted = schedule.accepted
            window.sort()
            p50 = window[len(window) // 2] * 1000 if window else float("nan")
            p99 = window[min(len(window) - 1, int(len(window) * 0.99))] * 1000 if window else float("nan")
            rows.append([str(minute), f"{tree_rss_kib(daemon.pid) / 1024:.0f}", str(tree_fds(daemon.pid)),
                         f"{p50:.1f}", f"{p99:.1f}", f"{len(window):,}", f"{accepted:,}",
                         f"{sinks.received():,}"])
            print(" | ".join(rows[-1]), flush=True)
        for t in threads:
            t.join(timeout=120)
        deadline = time.monotonic() + 300
        while sinks.received() < schedule.accepted and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # a duplicate would arrive late
        delivered = sinks.received()
        table = format_table(["minute", "RSS MiB", "open fds", "p50 ms", "p99 ms", "messages this minute",
                              "accepted so far", "delivered so far"], rows)
        lat = [lat for _, lat in schedule.latencies]
        summary = (f"\n{machine_summary()}\ncapacity {capacity:,.0f}/s, offered {rate:,.0f}/s over "
                   f"{args.minutes} min by {args.clients} clients; accepted {schedule.accepted:,}, "
                   f"refused {schedule.refused:,}, delivered {delivered:,} "
                   f"(lost {max(0, schedule.accepted - delivered):,}, extra {max(0, delivered - schedule.accepted):,}); "
                   f"latency p50 {statistics.median(lat) * 1000:.1f} ms overall; sessions reopened: {schedule.reconnects}; "
                   f"client errors: {len(errors)}"
                   + (f" ({errors[0]!r})" if errors else ""))
        return table + summary
    finally:
        daemon.cleanup()
        sinks.stop()
        zone.stop()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too stops the daemon, the sink and dnsmasq on the way out


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--probe", type=int, default=5000, help="messages of the capacity probe")
    parser.add_argument("--clients", type=int, default=8, help="paced SMTP sessions")
    parser.add_argument("--connections", type=int, default=20, help="egress connection_limit")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
