"""Many tenants to one rate-limited site: the `tenants` workload of issue 7.

20 tenants (`--tenants`) send to one site (domain `tenants.test`, MX on 127.0.0.60, an
`smtp-sink`) whose `max_message_rate` (`--rate`, default 300/s) is below what trimta
relays, so a backlog builds and the limit decides the pace. Every tenant but the last
sends `--per-tenant` messages (1,000); the last, the smallest, sends `--smallest` (100),
spread evenly through the injection, so its messages arrive behind the others' backlog.
The tenant is named by the `X-Tenant` header (trimta's default `tenant_header`); the
client is `bench/fanout.py`'s `BlastClient` (20 sessions, one message per connection).

Measured:

- **throughput at the limit**: messages/s at the receiver between the 10th and the
  90th percentile of arrivals (the steady part, without ramp-up and tail), next to the
  configured limit and as a share of it; and over the whole run, client start to last
  arrival. The limit is a cap (at most N in any window of the period, see
  docs/shaping.md), so 100% is the most a run can show, give or take the few tenths
  that sampling the receiver every 5 ms and the varying time to the receiver blur;
- **client messages/s**: how fast the client handed messages to trimta. Below the
  limit, the backlog never builds and the run does not test the limit: the note says so;
- **wait**: for each message, from its reception (the time in its id, microseconds) to
  its `Delivery` log record (whole seconds in the log, so each wait is taken at the
  middle of its second: ±0.5 s); the p50 and p99 of the smallest tenant's messages,
  and the p99 of all;
- CPU seconds of trimta per 1,000 messages; every message counted at the receiver.

Postfix has no equivalent: its only per-destination rate control,
`default_destination_rate_delay`, takes whole seconds (at most one message per second
per destination), and it has no notion of tenants. So this workload runs trimta only;
the other workloads give the side-by-side figures.

    .venv/bin/python bench/tenants.py                           # 19,100 messages at 300/s
    .venv/bin/python bench/tenants.py --per-tenant 100 --smallest 20 --rate 100/s
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))  # trimta.core.units, for reading --rate

from common import BenchError, format_table, tree_cpu_seconds  # noqa: E402
from fanout import BlastClient  # noqa: E402
from trimta.core.units import parse_rate  # noqa: E402
from relay import (  # noqa: E402
    HOST,
    DnsZone,
    Sinks,
    TrimtaRelay,
    add_common_arguments,
    print_header,
    say,
)

DOMAIN = "tenants.test"
SINK_ADDRESS = "127.0.0.60"


@dataclass(frozen=True)
class TenantsResult:
    mta: str
    messages: int
    received: int
    seconds: float  # client start to last arrival
    steady_rate: float  # arrivals/s between the 10th and 90th percentile of arrivals
    limit: str
    client_rate: float  # messages/s the client handed over
    small_p50_s: float
    small_p99_s: float
    all_p99_s: float
    cpu_seconds: float
    ok: bool
    note: str = ""

    @property
    def cpu_s_per_1k(self) -> float:
        return self.cpu_seconds * 1000 / self.messages if self.messages else 0.0

    @property
    def lost(self) -> bool:
        return self.received != self.messages or not self.ok


def tenants_table(results: list[TenantsResult]) -> str:
    headers = ["MTA", "messages", "received", "seconds", "messages/s at the limit", "limit",
               "% of limit", "client messages/s", "smallest tenant p50 wait s",
               "smallest tenant p99 wait s", "all p99 wait s", "CPU s per 1k msgs", "note"]
    return format_table(headers, [
        [r.mta, f"{r.messages:,}", f"{r.received:,}", f"{r.seconds:.1f}",
         f"{r.steady_rate:,.1f}", r.limit, f"{100 * r.steady_rate / limit_per_second(r.limit):.1f}",
         f"{r.client_rate:,.0f}", f"{r.small_p50_s:.1f}", f"{r.small_p99_s:.1f}",
         f"{r.all_p99_s:.1f}", f"{r.cpu_s_per_1k:.2f}", r.note] for r in results])


class ArrivalLog:
    """A thread sampling the receiver's count every 5 ms: (time, count) pairs."""

    def __init__(self, sinks: Sinks, expected: int) -> None:
        self.sinks = sinks
        self.expected = expected
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self.sinks.received()
            if not self.samples or n != self.samples[-1][1]:
                self.samples.append((time.perf_counter(), n))
            if n >= self.expected:
                return
            time.sleep(0.005)

    def wait(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        self._stop.set()
        self._thread.join()

    def time_of(self, count: int) -> float | None:
        return next((t for t, n in self.samples if n >= count), None)

    def steady_rate(self) -> float:
        lo, hi = self.time_of(self.expected // 10), self.time_of(self.expected * 9 // 10)
        if lo is None or hi is None or hi <= lo:
            return 0.0
        return (self.expected * 9 // 10 - self.expected // 10) / (hi - lo)


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The injection order: big tenants round-robin, the smallest spread evenly through."""
    big = [(f"t{t:02d}", i) for i in range(args.per_tenant) for t in range(1, args.tenants)]
    small_name = f"t{args.tenants:02d}"
    order: list[tuple[str, int]] = []
    step = max(1, len(big) // max(1, args.smallest))
    j = 0
    for k, item in enumerate(big):
        if k % step == step // 2 and j < args.smallest:
            order.append((small_name, j))
            j += 1
        order.append(item)
    order.extend((small_name, i) for i in range(j, args.smallest))
    return [(f"{tenant}-{i}@{DOMAIN}", f"X-Tenant: {tenant}\r\n") for tenant, i in order]


def limit_per_second(limit: str) -> float:
    return parse_rate(limit).per_second


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def waits_from_logs(daemon: TrimtaRelay) -> dict[str, list[float]]:
    """Per tenant, each delivered message's wait: Delivery timestamp (mid-second) - reception."""
    waits: dict[str, list[float]] = {}
    for record in daemon.records("Delivery"):
        received_at = int(record["id"][:16], 16) / 1e6
        wait = record["timestamp"] + 0.5 - received_at
        tenant = record.get("tenant") or record["recipient"].split("-", 1)[0]
        waits.setdefault(tenant, []).append(max(0.0, wait))
    return waits


def bench_trimta(args: argparse.Namespace, directory: Path) -> TenantsResult:
    dns = DnsZone([f"--mx-host={DOMAIN},mx.{DOMAIN},10",
                   f"--host-record=mx.{DOMAIN},{SINK_ADDRESS}"], directory)
    sinks = Sinks([SINK_ADDRESS], directory)
    daemon: TrimtaRelay | None = None
    messages = plan(args)
    try:
        dns.start()
        sinks.start()
        daemon = TrimtaRelay(
            nameserver=dns.nameserver, smtp_port=sinks.port, connections=args.connections,
            keep=args.keep, tree=args.trimta_tree, workers=args.workers,
            extra=f'\n[egress.domains."{DOMAIN}"]\nmax_message_rate = "{args.rate}"\n')
        say(f"trimta: tenants: starting in {daemon.directory} (port {daemon.port}), "
            f"{len(messages):,} messages, limit {args.rate}")
        daemon.start()
        client = BlastClient(HOST, daemon.port, sessions=args.sessions, size=args.size)
        sinks.reset()
        arrivals = ArrivalLog(sinks, len(messages))
        cpu_before = tree_cpu_seconds(daemon.pid)
        started = time.perf_counter()
        ok, errors = client.send_all(messages)
        client_rate = len(messages) / (time.perf_counter() - started)
        if not ok:
            say(f"trimta: the client reported errors:\n{errors}")
        arrivals.wait(max(1.0, args.timeout - (time.perf_counter() - started)))
        cpu = tree_cpu_seconds(daemon.pid) - cpu_before
        last = arrivals.time_of(len(messages))
        note = "" if last is not None else "timed out"
        if client_rate < limit_per_second(args.rate):
            note = f"client below the limit: the limit was not tested; {note}".rstrip("; ")
        seconds = (last if last is not None else time.perf_counter()) - started
        time.sleep(1.0)
        received = sinks.received()
        status = daemon.stop()
        if status != 0:
            say(f"trimta: the daemon exited with status {status}\n{daemon.stderr_tail()}")
            ok, note = False, f"daemon exit {status}"
        waits = waits_from_logs(daemon)
        small = waits.get(f"t{args.tenants:02d}", [])
        everyone = [w for ws in waits.values() for w in ws]
        if len(everyone) != len(messages):
            say(f"trimta: {len(everyone):,} Delivery records for {len(messages):,} messages")
        return TenantsResult("trimta", len(messages), received, seconds,
                             arrivals.steady_rate(), args.rate, client_rate,
                             statistics.median(small) if small else float("nan"),
                             percentile(small, 99), percentile(everyone, 99), cpu, ok, note)
    finally:
        if daemon is not None:
            daemon.cleanup()
        sinks.stop()
        dns.stop()


def run(args: argparse.Namespace) -> list[TenantsResult]:
    directory = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    try:
        return [bench_trimta(args, directory)]
    except BenchError as exc:
        say(f"trimta: tenants: could not run: {exc}")
        return [TenantsResult("trimta", 0, 0, 0.0, 0.0, args.rate, 0.0, float("nan"),
                              float("nan"), float("nan"), 0.0, False, "did not run")]
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, messages=0)
    parser.add_argument("--tenants", type=int, default=20, help="tenants (20)")
    parser.add_argument("--per-tenant", type=int, default=1000,
                        help="messages of each tenant but the smallest (1000)")
    parser.add_argument("--smallest", type=int, default=100,
                        help="messages of the smallest tenant (100)")
    parser.add_argument("--rate", default="300/s", type=rate_argument,
                        help="the site's max_message_rate (300/s)")
    parser.add_argument("--size", type=int, default=2048, help="body bytes per message (2048)")


def rate_argument(value: str) -> str:
    try:
        parse_rate(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.tenants < 2:
        parser.error("--tenants must be at least 2")
    args.trimta_tree = args.trimta_tree.resolve()
    args.load_before = os.getloadavg()[0]
    results = run(args)
    print_header("tenants", args,
                 f"{args.tenants - 1} tenants x {args.per_tenant:,} messages and one of "
                 f"{args.smallest:,}, to one site limited to {args.rate}, "
                 f"{args.sessions} client sessions, connection_limit {args.connections}; "
                 "Postfix has no equivalent (see --help)")
    print(tenants_table(results))
    lost = [r for r in results if r.lost]
    for r in lost:
        print(f"\n{r.mta}: the run does not count: {r.received:,} of {r.messages:,} received")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
