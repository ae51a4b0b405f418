"""Fan-out to many domains, trimta next to Postfix: the `fanout` workload of issue 7.

20,000 messages (`--messages`) to 2,000 domains (`--domains`) whose MX records point at
50 sites (`--sites`, MX sets) on 50 loopback addresses 127.0.1.1 to 127.0.1.50, each an
`smtp-sink` counting what it receives (`bench/relay.py`'s `Sinks`). Message i goes to
`u{i}@d{i mod domains}.fan.test`; domain d goes to site d mod sites.

The client is `BlastClient` below (smtp-source sends to one recipient only): 20 threads,
one message per connection like smtp-source, 2 KB bodies, so both MTAs see the same
sessions and bytes.

  trimta   DNS from a private dnsmasq (`bench/relay.py`'s `DnsZone`) serving the 2,000
           MX records and 50 A records; `connection_limit` = `--connections` per site.
  postfix  the system resolver cannot be given the test zone, so a transport map
           (`texthash:`) sends each domain to `smtp:[127.0.1.N]:PORT`: no MX lookups (an
           advantage to Postfix), and its destination is then the site, so
           `default_destination_concurrency_limit` = `--connections` applies per site as
           trimta's `connection_limit` does. Postfix's `default_process_limit` (100 smtp
           processes, as shipped) caps its total; trimta has no such total.

Measured and counted as in `bench/relay.py`: wall time from the client's start to the
last message at the sinks, CPU of the MTA's tree, per 1,000 messages; every message must
be counted at the sinks.

    .venv/bin/python bench/fanout.py                        # 20,000 messages
    .venv/bin/python bench/fanout.py --messages 2000 --only trimta
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import BenchError  # noqa: E402
from postfix import PostfixInstance  # noqa: E402
from relay import (  # noqa: E402
    HOST,
    DnsZone,
    RelayResult,
    Sinks,
    TrimtaRelay,
    add_common_arguments,
    finish_trimta,
    measure,
    print_header,
    relay_table,
    say,
)


# --- the client ------------------------------------------------------------------------------


class SmtpReplyError(Exception):
    pass


class BlastClient:
    """Send prepared messages over `sessions` threads, one message per connection.

    Each message is (recipient, extra header lines); the body is `size` bytes of text.
    Plain blocking sockets and a hand-written dialogue keep the client's own CPU small
    (no parsing beyond reply codes); errors are collected, not raised, so a run reports
    how many failed.
    """

    def __init__(self, host: str, port: int, *, sessions: int = 20, size: int = 2048,
                 sender: str = "s@example.com") -> None:
        self.host = host
        self.port = port
        self.sessions = sessions
        self.sender = sender
        # `size` bytes of body: full 72-byte lines, then a shorter last line.
        line = b"X" * 70 + b"\r\n"
        tail = size % len(line)
        self.body = line * (size // len(line)) + (b"X" * (tail - 2) + b"\r\n" if tail >= 2 else b"")
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def send_all(self, messages: Sequence[tuple[str, str]],
                 on_sent: Callable[[int], None] | None = None) -> tuple[bool, str]:
        """Send every message; (no errors, the first few errors' text)."""
        next_index = iter(range(len(messages)))

        def worker() -> None:
            while True:
                with self._lock:
                    i = next(next_index, None)
                if i is None:
                    return
                recipient, headers = messages[i]
                try:
                    self._send_one(recipient, headers)
                    if on_sent is not None:
                        on_sent(i)
                except (OSError, SmtpReplyError) as exc:
                    with self._lock:
                        self.errors.append(f"message {i} to {recipient}: {exc}")

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return not self.errors, "\n".join(self.errors[:10]) + (
            f"\n... {len(self.errors)} errors in all" if len(self.errors) > 10 else "")

    def _send_one(self, recipient: str, headers: str) -> None:
        with socket.create_connection((self.host, self.port), timeout=120) as sock:
            reader = sock.makefile("rb")
            _expect(reader, 220)
            sock.sendall(b"EHLO client.bench.test\r\n")
            _expect(reader, 250)
            sock.sendall(f"MAIL FROM:<{self.sender}>\r\n".encode())
            _expect(reader, 250)
            sock.sendall(f"RCPT TO:<{recipient}>\r\n".encode())
            _expect(reader, 250)
            sock.sendall(b"DATA\r\n")
            _expect(reader, 354)
            head = (f"From: <{self.sender}>\r\nTo: <{recipient}>\r\nSubject: bench\r\n"
                    f"{headers}\r\n").encode()
            sock.sendall(head + self.body + b".\r\n")
            _expect(reader, 250)
            sock.sendall(b"QUIT\r\n")
            try:
                _expect(reader, 221)
            except (OSError, SmtpReplyError):
                pass  # the message is accepted; a lost 221 does not matter


def _expect(reader: BinaryIO, code: int) -> None:
    while True:
        line = reader.readline(1024)
        if not line:
            raise SmtpReplyError(f"connection closed while waiting for {code}")
        if len(line) < 4 or line[3:4] != b"-":
            break
    if not line.startswith(str(code).encode()):
        raise SmtpReplyError(f"expected {code}, got {line.decode(errors='replace').strip()}")


# --- the workload ----------------------------------------------------------------------------


def site_address(site: int) -> str:
    return f"127.0.1.{site + 1}"


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(f"u{i}@d{i % args.domains}.fan.test", "") for i in range(args.messages)]


def bench_trimta(args: argparse.Namespace, directory: Path) -> RelayResult:
    zone = [f"--mx-host=d{d}.fan.test,mx{d % args.sites}.fan.test,10" for d in range(args.domains)]
    zone += [f"--host-record=mx{s}.fan.test,{site_address(s)}" for s in range(args.sites)]
    dns = DnsZone(zone, directory)
    sinks = Sinks([site_address(s) for s in range(args.sites)], directory)
    daemon: TrimtaRelay | None = None
    try:
        dns.start()
        sinks.start()
        daemon = TrimtaRelay(nameserver=dns.nameserver, smtp_port=sinks.port,
                             connections=args.connections, keep=args.keep,
                             tree=args.trimta_tree, workers=args.workers)
        say(f"trimta: fanout: starting in {daemon.directory} (port {daemon.port})")
        daemon.start()
        client = BlastClient(HOST, daemon.port, sessions=args.sessions, size=args.size)
        messages = plan(args)
        result = measure("trimta", "fanout", root_pid=lambda: daemon.pid, sinks=sinks,
                         send=lambda: client.send_all(messages), messages=args.messages,
                         size=args.size, timeout_s=args.timeout)
        return finish_trimta(daemon, result)
    finally:
        if daemon is not None:
            daemon.cleanup()
        sinks.stop()
        dns.stop()


def bench_postfix(args: argparse.Namespace, directory: Path) -> RelayResult:
    sinks = Sinks([site_address(s) for s in range(args.sites)], directory)
    try:
        sinks.start()
        transport = directory / "transport"
        transport.write_text("".join(
            f"d{d}.fan.test smtp:[{site_address(d % args.sites)}]:{sinks.port}\n"
            for d in range(args.domains)))
        directory.chmod(0o755)  # Postfix's daemons run as the postfix user
        transport.chmod(0o644)
        instance = PostfixInstance(mode="relay", keep=args.keep, settings={
            "default_destination_concurrency_limit": str(args.connections),
            "transport_maps": f"texthash:{transport}",
        })
        say(f"postfix: fanout: starting in {instance.directory} (port {instance.port})")
        with instance:
            client = BlastClient(HOST, instance.port, sessions=args.sessions, size=args.size)
            messages = plan(args)
            result = measure("postfix", "fanout", root_pid=lambda: instance.master_pid,
                             sinks=sinks, send=lambda: client.send_all(messages),
                             messages=args.messages, size=args.size, timeout_s=args.timeout)
            if not instance.wait_until_empty(timeout_s=10):
                say(f"postfix: queue not empty after the run: {instance.queue_counts()}")
        return result
    finally:
        sinks.stop()


def run(args: argparse.Namespace) -> list[RelayResult]:
    results = []
    for _ in range(args.rounds):
        for mta, bench in (("trimta", bench_trimta), ("postfix", bench_postfix)):
            if args.only not in (None, mta):
                continue
            directory = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
            try:
                results.append(bench(args, directory))
            except BenchError as exc:
                say(f"{mta}: fanout: could not run: {exc}")
                results.append(RelayResult("fanout", mta, args.messages, 0, 0.0, 0.0, args.size,
                                           client_ok=False, note="did not run"))
            finally:
                if not args.keep:
                    shutil.rmtree(directory, ignore_errors=True)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, messages=20_000)
    parser.add_argument("--domains", type=int, default=2000, help="recipient domains (2000)")
    parser.add_argument("--sites", type=int, default=50, help="MX sets / receivers (50, max 254)")
    parser.add_argument("--size", type=int, default=2048, help="body bytes per message (2048)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.sites <= 254:
        parser.error("--sites must be 1 to 254")
    args.trimta_tree = args.trimta_tree.resolve()
    args.load_before = os.getloadavg()[0]
    started = time.monotonic()
    results = run(args)
    print_header("fanout", args,
                 f"{args.messages:,} messages of {args.size} bytes to {args.domains:,} domains "
                 f"over {args.sites} sites, {args.sessions} client sessions, "
                 f"{args.connections} connections per site "
                 f"({time.monotonic() - started:.0f}s in all)")
    print(relay_table(results))
    lost = [r for r in results if r.lost]
    for r in lost:
        print(f"\n{r.mta}: the run does not count: {r.received:,} of {r.messages:,} received")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
