"""Relaying throughput, trimta next to Postfix: `relay-2k` and `relay-100k` of issue 7.

In one invocation, one after the other, with the same client, inputs and receiver:

  smtp-source -s 20 -m N -l SIZE -f s@example.com -t r@relay.test  ->  the MTA  ->  smtp-sink

The receiver is Postfix's `smtp-sink` on a loopback address of its own (127.0.0.50, a
free port), started with `-c` so it keeps a running count of the messages it received
(the `mesg=` counter on its stdout, updated when "." is received). A thread reads that
counter while the run goes on and notes the moment it reaches N.

  trimta   `python -m trimta serve`, config in a temp dir; the recipient's domain has MX
           records served by a private `dnsmasq` on a loopback port (`[dns] nameservers`),
           pointing at the sink; `[egress.default] connection_limit` = `--connections`.
  postfix  a private Postfix instance (`bench/postfix.py`, relay mode) with
           `relayhost = [127.0.0.50]:PORT` and `default_destination_concurrency_limit` =
           `--connections`. Postfix uses the system resolver, which must not be pointed at
           a test zone; relayhost skips the MX lookup, a small advantage to Postfix.

Measured per MTA: wall time from smtp-source's start to the sink's N-th message
(messages/s and MB/s of payload), and the CPU seconds of the MTA's process tree over the
same span, per 1,000 messages. A run counts only if the sink received exactly N messages
(no fewer within the timeout, no more: duplicates would show) and the client saw no error.

    .venv/bin/python bench/relay.py                        # relay-2k, 20,000 messages
    .venv/bin/python bench/relay.py --size 102400 --messages 2000   # relay-100k
    .venv/bin/python bench/relay.py --messages 1000 --only trimta   # a quick look
    .venv/bin/python bench/relay.py --messages 5000 --only trimta --profile   # py-spy summary

The pieces other workloads reuse live here: `Sinks` (counting smtp-sinks on loopback
addresses), `DnsZone` (dnsmasq on a loopback port), `TrimtaRelay` (a delivering trimta)
and `RelayResult` with `relay_table`.

This is a benchmark, not a test: it prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import (  # noqa: E402
    ROOT,
    BenchError,
    find_tool,
    format_table,
    free_port,
    machine_summary,
    run_smtp_source,
    tree_cpu_seconds,
)
from postfix import PostfixInstance  # noqa: E402
from reception import Profiler, TrimtaDaemon, summarise_profile, trimta_version  # noqa: E402

HOST = "127.0.0.1"
SINK_ADDRESS = "127.0.0.50"
DOMAIN = "relay.test"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the receiver -----------------------------------------------------------------------


_COUNTER = re.compile(rb"mesg=(\d+)")


class Sinks:
    """smtp-sink on each of `addresses`, all on one port, counting what they receive.

    `smtp-sink -c` rewrites a line `sess=.. quit=.. mesg=N` (ended by a carriage return)
    on its stdout as it goes; each sink's stdout is a file here, read from where the last
    read stopped. As root, smtp-sink must drop privileges (`-u nobody`) after binding.
    """

    def __init__(self, addresses: Sequence[str], directory: Path, *, backlog: int = 1024) -> None:
        self.addresses = list(addresses)
        self.directory = directory
        self.port = free_port(self.addresses[0])
        self.backlog = backlog
        self.procs: list[subprocess.Popen] = []
        self._outputs: list[Path] = []
        self._offsets: list[int] = []
        self._counts: list[int] = []

    def start(self) -> Sinks:
        sink = find_tool("smtp-sink")
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        for i, address in enumerate(self.addresses):
            out = self.directory / f"sink-{i}.out"
            with open(out, "wb") as stdout:
                self.procs.append(subprocess.Popen(
                    # -m: as many parallel sessions as the MTAs may open, and more.
                    [sink, "-c", "-m", "512", *user, f"{address}:{self.port}", str(self.backlog)],
                    stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT))
            self._outputs.append(out)
            self._offsets.append(0)
            self._counts.append(0)
        for address, proc in zip(self.addresses, self.procs, strict=True):
            _wait_listening(address, self.port, proc)
        self.reset()
        return self

    def reset(self) -> None:
        """Count from zero again (the probe connections of `start` count as sessions only)."""
        self._base = self._read()

    def _read(self) -> int:
        for i, out in enumerate(self._outputs):
            with open(out, "rb") as f:
                f.seek(self._offsets[i])
                chunk = f.read()
            # Only the last complete counter matters; keep a partial one for the next read.
            cut = chunk.rfind(b"\r")
            if cut >= 0:
                found = _COUNTER.findall(chunk[:cut])
                if found:
                    self._counts[i] = int(found[-1])
                self._offsets[i] += cut + 1
        return sum(self._counts)

    def received(self) -> int:
        """Messages received since the last `reset`."""
        return self._read() - self._base

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"smtp-sink on {host}:{port} exited ({proc.returncode})")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"smtp-sink on {host}:{port} did not listen")


class ArrivalWatch:
    """A thread that notes when the receiver's count first reaches `expected`.

    Polled every 5 ms, so the end of a run is known to about 5 ms. `wait(timeout_s)`
    returns the perf_counter time of the N-th arrival, or None on timeout.
    """

    def __init__(self, count: Callable[[], int], expected: int) -> None:
        self.count = count
        self.expected = expected
        self.reached_at: float | None = None
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arrival-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last = self.count()
            if self.last >= self.expected:
                self.reached_at = time.perf_counter()
                return
            time.sleep(0.005)

    def wait(self, timeout_s: float) -> float | None:
        self._thread.join(timeout_s)
        self._stop.set()
        self._thread.join()
        return self.reached_at


# --- DNS ----------------------------------------------------------------------------------


class DnsZone:
    """dnsmasq on 127.0.0.1:PORT answering for `.test` names from dnsmasq options.

    `--local=/test/` makes every other `.test` name NXDOMAIN; nothing is forwarded
    (`--no-resolv`), so no query leaves the machine.
    """

    def __init__(self, zone: Sequence[str], directory: Path) -> None:
        self.zone = list(zone)
        self.directory = directory
        self.port = _free_udp_and_tcp_port()
        self.proc: subprocess.Popen | None = None

    @property
    def nameserver(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, attempts: int = 5) -> DnsZone:
        """Start dnsmasq; on a port taken meanwhile (dnsmasq binds UDP and TCP), another."""
        for attempt in range(attempts):
            try:
                return self._start()
            except BenchError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.port = _free_udp_and_tcp_port()
        raise AssertionError("unreachable")

    def _start(self) -> DnsZone:
        dnsmasq = find_tool("dnsmasq")
        # Many options: put them in a file (fanout has thousands of records).
        conf = self.directory / "dnsmasq.conf"
        conf.write_text("".join(opt.removeprefix("--") + "\n" for opt in self.zone))
        args = [dnsmasq, "-k", f"--port={self.port}", f"--listen-address={HOST}",
                "--bind-interfaces", "--no-resolv", "--no-hosts", f"--conf-file={conf}",
                "--pid-file=", "--local=/test/", "--local-ttl=3600", "--cache-size=0"]
        if os.geteuid() == 0:
            args.append("--user=root")
        err = self.directory / "dnsmasq.stderr"
        with open(err, "wb") as stderr:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 10
        query = _dns_query("probe.test")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"dnsmasq exited: {err.read_text(errors='replace')}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                try:
                    s.sendto(query, (HOST, self.port))
                    s.recv(512)
                    return self
                except OSError:
                    time.sleep(0.02)
        raise BenchError("dnsmasq did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_udp_and_tcp_port() -> int:
    """A loopback port free for UDP and for TCP at this moment (dnsmasq binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port


def _dns_query(name: str) -> bytes:
    """A minimal DNS query for `name` type A (enough to see whether dnsmasq answers)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"


# --- a delivering trimta ---------------------------------------------------------------------


class TrimtaRelay(TrimtaDaemon):
    """`trimta serve` that delivers: DNS from `nameserver`, receivers on loopback at `smtp_port`.

    `extra` is appended to the config (e.g. `[egress.sites."..."]` tables); `egress`
    lines go under `[egress.default]`.
    """

    def __init__(self, *, nameserver: str, smtp_port: int, connections: int, keep: bool,
                 tree: Path = ROOT, workers: int | None = None, egress: str = "",
                 extra: str = "", listener: str = "") -> None:
        super().__init__(keep=keep, workers=workers, tree=tree)
        self.logs_path = self.directory / "logs"
        self.config_path.write_text(
            'hostname = "trimta.bench.test"\n'
            f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = "2s"\n'
            "\n[egress.default]\n"
            f"smtp_port = {smtp_port}\n"
            "prohibited_hosts = []\n"
            'enable_tls = "Disabled"\n'
            f"connection_limit = {connections}\n"
            f"{egress}\n"
            f"{extra}\n"
            "\n[[listener]]\n"
            f'listen = "{HOST}:{self.port}"\n'
            + (f"workers = {workers}\n" if workers is not None else "")
            + listener
            + f'\n[spool]\npath = "{self.spool_path}"\n'
            + f'\n[logs]\npath = "{self.logs_path}"\n'
            # Not the default port: another daemon on this machine may hold it.
            + f'\n[http]\nlisten = "{HOST}:{free_port(HOST)}"\n'
        )

    def records(self, *kinds: str) -> list[dict]:
        """trimta's log records of these types (all types if none given)."""
        import json

        out = []
        if self.logs_path.is_dir():
            for f in sorted(self.logs_path.rglob("*")):
                if not f.is_file():
                    continue
                for line in f.read_text(errors="replace").splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if not kinds or record.get("type") in kinds:
                        out.append(record)
        return out


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelayResult:
    """One MTA's figures for one relaying workload: counted at the receiver."""

    workload: str
    mta: str
    messages: int  # sent
    received: int  # counted at the receiver
    seconds: float  # client start to the last message received
    cpu_seconds: float  # the MTA's process tree over the same span
    size: int  # payload bytes per message
    client_ok: bool
    note: str = ""

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.messages_per_s * self.size / 1e6

    @property
    def cpu_s_per_1k(self) -> float:
        return self.cpu_seconds * 1000 / self.messages if self.messages else 0.0

    @property
    def lost(self) -> bool:
        return self.received != self.messages or not self.client_ok


def relay_table(results: Sequence[RelayResult], *, reference: str = "postfix") -> str:
    """One row per run; per workload, a ratio row (trimta / Postfix; medians if several)."""
    headers = ["workload", "MTA", "messages", "received", "seconds", "messages/s", "MB/s",
               "CPU s per 1k msgs", "note"]
    rows = []
    for workload in dict.fromkeys(r.workload for r in results):
        mine = [r for r in results if r.workload == workload]
        for r in mine:
            rows.append([workload, r.mta, f"{r.messages:,}", f"{r.received:,}",
                         f"{r.seconds:.1f}", f"{r.messages_per_s:,.0f}", f"{r.mb_per_s:.2f}",
                         f"{r.cpu_s_per_1k:.2f}", r.note])
        ref = [r for r in mine if r.mta == reference]
        oth = [r for r in mine if r.mta != reference]
        if ref and oth:
            rate = _median_ratio([r.messages_per_s for r in oth], [r.messages_per_s for r in ref])
            cpu = _median_ratio([r.cpu_s_per_1k for r in oth], [r.cpu_s_per_1k for r in ref])
            rows.append([workload, f"ratio {oth[0].mta}/{reference}", "", "", "",
                         f"{rate:.2f}x", f"{rate:.2f}x", f"{cpu:.2f}x", ""])
    return format_table(headers, rows)


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    den = statistics.median(b)
    return statistics.median(a) / den if den else float("nan")


# --- one run ---------------------------------------------------------------------------------


def measure(mta: str, workload: str, *, root_pid: Callable[[], int], sinks: Sinks,
            send: Callable[[], tuple[bool, str]], messages: int, size: int,
            timeout_s: float) -> RelayResult:
    """Send with `send()`, wait for `messages` at the sinks; figures from start to last arrival.

    `send` returns (ok, error text). After the N-th arrival the count is read again a
    little later, so a duplicate delivery shows as received > sent.
    """
    sinks.reset()
    watch = ArrivalWatch(sinks.received, messages)
    cpu_before = tree_cpu_seconds(root_pid())
    started = time.perf_counter()
    ok, errors = send()
    if not ok:
        say(f"{mta}: the client reported errors:\n{errors[-2000:]}")
    remaining = max(1.0, timeout_s - (time.perf_counter() - started))
    reached = watch.wait(remaining)
    cpu = tree_cpu_seconds(root_pid()) - cpu_before
    note = ""
    if reached is None:
        say(f"{mta}: only {watch.last:,} of {messages:,} messages reached the receiver "
            f"in {timeout_s:.0f}s")
        note = "timed out"
        reached = time.perf_counter()
    time.sleep(1.0)  # anything more (a duplicate) arrives now or not at all
    received = sinks.received()
    return RelayResult(workload, mta, messages, received, reached - started, cpu, size,
                       client_ok=ok, note=note)


def smtp_source_sender(port: int, args: argparse.Namespace,
                       recipient: str) -> Callable[[], tuple[bool, str]]:
    def send() -> tuple[bool, str]:
        run = run_smtp_source(HOST, port, messages=args.messages, sessions=args.sessions,
                              size=args.size, recipient=recipient, timeout_s=args.timeout)
        return run.ok, run.stderr
    return send


def bench_trimta(args: argparse.Namespace, workload: str, directory: Path) -> RelayResult:
    dns = DnsZone([f"--mx-host={DOMAIN},mx.{DOMAIN},10",
                   f"--host-record=mx.{DOMAIN},{SINK_ADDRESS}"], directory)
    sinks = Sinks([SINK_ADDRESS], directory)
    daemon: TrimtaRelay | None = None
    try:
        dns.start()
        sinks.start()
        daemon = TrimtaRelay(nameserver=dns.nameserver, smtp_port=sinks.port,
                             connections=args.connections, keep=args.keep,
                             tree=args.trimta_tree, workers=args.workers)
        say(f"trimta: {workload}: starting in {daemon.directory} (port {daemon.port}), "
            f"sink {SINK_ADDRESS}:{sinks.port}")
        daemon.start()
        profiler = Profiler(daemon.pid, daemon.directory / "profile.raw") if args.profile else None
        result = measure("trimta", workload, root_pid=lambda: daemon.pid, sinks=sinks,
                         send=smtp_source_sender(daemon.port, args, f"r@{DOMAIN}"),
                         messages=args.messages, size=args.size, timeout_s=args.timeout)
        if profiler is not None:
            profiler.stop()
            say("\ntrimta profile (py-spy; the figures of a profiled run are not comparable):")
            say(summarise_profile(profiler.out, top=args.profile_top))
            if args.keep:
                say(f"raw profile: {profiler.out}")
        return finish_trimta(daemon, result)
    finally:
        if daemon is not None:
            daemon.cleanup()
        sinks.stop()
        dns.stop()


def finish_trimta(daemon: TrimtaRelay, result: RelayResult) -> RelayResult:
    """Stop the daemon; a run whose daemon did not exit cleanly does not count."""
    status = daemon.stop()
    if status == 0:
        return result
    say(f"trimta: the daemon exited with status {status}\n{daemon.stderr_tail()}")
    return dataclasses.replace(result, client_ok=False, note=f"daemon exit {status}")


def bench_postfix(args: argparse.Namespace, workload: str, directory: Path) -> RelayResult:
    sinks = Sinks([SINK_ADDRESS], directory)
    try:
        sinks.start()
        instance = PostfixInstance(
            mode="relay", relay_to=f"{SINK_ADDRESS}:{sinks.port}", keep=args.keep,
            settings={"default_destination_concurrency_limit": str(args.connections)})
        say(f"postfix: {workload}: starting in {instance.directory} (port {instance.port}), "
            f"relayhost [{SINK_ADDRESS}]:{sinks.port}")
        with instance:
            result = measure("postfix", workload, root_pid=lambda: instance.master_pid,
                             sinks=sinks, send=smtp_source_sender(instance.port, args,
                                                                  f"r@{DOMAIN}"),
                             messages=args.messages, size=args.size, timeout_s=args.timeout)
            if not instance.wait_until_empty(timeout_s=10):
                say(f"postfix: queue not empty after the run: {instance.queue_counts()}")
        return result
    finally:
        sinks.stop()


def workload_name(size: int) -> str:
    return f"relay-{size // 1024}k" if size % 1024 == 0 else f"relay-{size}B"


def run(args: argparse.Namespace) -> list[RelayResult]:
    """Every round of both MTAs (or `--only` one); BenchError of a run is reported, not raised."""
    workload = workload_name(args.size)
    results = []
    for _ in range(args.rounds):
        for mta, bench in (("trimta", bench_trimta), ("postfix", bench_postfix)):
            if args.only not in (None, mta):
                continue
            directory = Path(tempfile.mkdtemp(prefix=f"bench-{workload}-"))
            try:
                results.append(bench(args, workload, directory))
            except BenchError as exc:
                say(f"{mta}: {workload}: could not run: {exc}")
                results.append(RelayResult(workload, mta, args.messages, 0, 0.0, 0.0,
                                           args.size, client_ok=False, note="did not run"))
            finally:
                if args.keep:
                    say(f"kept {directory}")
                else:
                    shutil.rmtree(directory, ignore_errors=True)
    return results


def add_common_arguments(parser: argparse.ArgumentParser, *, messages: int) -> None:
    parser.add_argument("--messages", type=int, default=messages,
                        help=f"messages per MTA ({messages})")
    parser.add_argument("--sessions", type=int, default=20, help="parallel client sessions (20)")
    parser.add_argument("--connections", type=int, default=20,
                        help="trimta's connection_limit = Postfix's destination concurrency (20)")
    parser.add_argument("--only", choices=("trimta", "postfix"), help="run one MTA only")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the MTAs this many times")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the last message at the receiver (600)")
    parser.add_argument("--trimta-tree", type=Path, default=ROOT, metavar="DIR",
                        help="run trimta's code from this checkout (default: this one)")
    parser.add_argument("--workers", type=int, metavar="N", help="trimta's listener workers")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, messages=20_000)
    parser.add_argument("--size", type=int, default=2048,
                        help="payload bytes per message (2048; 102400 for relay-100k)")
    parser.add_argument("--profile", action="store_true",
                        help="attach py-spy to trimta during the run and print where its time went")
    parser.add_argument("--profile-top", type=int, default=30, metavar="N",
                        help="lines per section of the profile summary (30)")


def print_header(name: str, args: argparse.Namespace, detail: str) -> None:
    print()
    print(f"{name}, {datetime.date.today().isoformat()}, {machine_summary()}, "
          f"trimta {trimta_version(args.trimta_tree)}")
    print(detail)
    print(f"load average (1 min) before the runs: {args.load_before:.2f}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.trimta_tree = args.trimta_tree.resolve()
    args.load_before = os.getloadavg()[0]
    results = run(args)
    print_header(workload_name(args.size), args,
                 f"smtp-source -s {args.sessions} -m {args.messages} -l {args.size}, "
                 f"{args.connections} connections to the receiver")
    print(relay_table(results))
    lost = [r for r in results if r.lost]
    for r in lost:
        print(f"\n{r.mta}: the run does not count: {r.received:,} of {r.messages:,} received"
              + ("" if r.client_ok else ", errors (see above)"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
