"""A large queue held on one machine: the `backlog` workload of issue 7.

trimta receives N messages (`--messages`, 100,000 for a quick run; the issue's size is
1,000,000) of 2 KB with `smtp-source -s 20` while delivery is held (as in
`bench/reception.py`: the scheduled queues may release one message a day, and DNS goes
to a loopback port where nothing answers). Then:

- **memory**: the resident set (VmRSS) of trimta's processes with N messages queued,
  less the same figure right after start with an empty spool (the fixed base): bytes
  per queued message. Taken after reception (sessions closed, a few seconds to settle)
  and again after the restart (only the restored queues, no reception buffers);
- **spool on disk**: bytes allocated under the spool directory (`du`-style, blocks),
  and the apparent size, per message;
- **restart**: SIGTERM, wait for the exit, start again; the time from starting the
  process to its SMTP port accepting connections. trimta opens its listeners only after
  `engine.restore` has put every restored message back in its queue, so this is "every
  message back in its queue", Python's start-up included. The daemon's own log line
  `restored N messages ... in X s` gives N (it must equal the messages sent) and the
  time the spool read alone took.

Postfix is not run: its queue is files that its queue manager scans lazily, so it has
no per-message memory and no restore step to compare; its on-disk queue size per
message can be read from `bench/reception.py --keep` (the hold queue).

    .venv/bin/python bench/backlog.py                        # 100,000 messages
    .venv/bin/python bench/backlog.py --messages 1000000     # the issue's size (~15 min)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import (  # noqa: E402
    ROOT,
    BenchError,
    format_table,
    process_tree,
    run_smtp_source,
    tree_cpu_seconds,
    wait_for_port,
)
from reception import HOST, TrimtaDaemon  # noqa: E402
from relay import print_header, say  # noqa: E402

_RESTORED = re.compile(r"restored (\d+) messages from .* in ([\d.]+)s")


@dataclass(frozen=True)
class BacklogResult:
    messages: int
    restored: int
    accept_seconds: float
    cpu_seconds: float  # during reception
    base_rss: int  # bytes, empty spool
    rss_after_reception: int
    rss_after_restart: int
    spool_allocated: int
    spool_apparent: int
    restart_seconds: float  # process start to SMTP port accepting
    restore_seconds: float  # the daemon's own figure for reading the spool
    ok: bool

    @property
    def lost(self) -> bool:
        return self.restored != self.messages or not self.ok


def rss_bytes(root_pid: int) -> int:
    """VmRSS of a process tree (trimta's reception workers included), in bytes."""
    total = 0
    for pid in process_tree(root_pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated, apparent bytes) of every file under `path`."""
    allocated = apparent = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def settle_rss(pid: int, seconds: float = 3.0) -> int:
    """RSS once it stops moving (or after `seconds`): the post-reception steady state."""
    last = rss_bytes(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_bytes(pid)
        if abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


def restored_line(daemon: TrimtaDaemon, since: int) -> tuple[int, float]:
    """The count and seconds of the daemon's `restored N messages` line after offset `since`."""
    text = daemon.stderr_path.read_bytes()[since:].decode(errors="replace")
    found = _RESTORED.findall(text)
    if not found:
        raise BenchError(f"no 'restored' line in the daemon's log\n{daemon.stderr_tail()}")
    count, seconds = found[-1]
    return int(count), float(seconds)


class BacklogDaemon(TrimtaDaemon):
    """reception.py's daemon, with a start that may wait long: a restart restores N messages.

    (TrimtaDaemon.start waits 30 s for the port; 1,000,000 messages take longer.)
    """

    def start(self, timeout_s: float = 30.0) -> BacklogDaemon:
        env = dict(os.environ, PYTHONPATH=str(self.tree))
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trimta", "serve", "--config", str(self.config_path)],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, env=env,
            )
        try:
            wait_for_port(HOST, self.port, alive=lambda: self.proc.poll() is None,
                          timeout_s=timeout_s)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{self.stderr_tail()}") from None
        return self


def bench(args: argparse.Namespace) -> BacklogResult:
    # Its config has an API port of its own (reception.TrimtaDaemon): not the default 8000,
    # which another daemon on this machine may hold.
    daemon = BacklogDaemon(keep=args.keep, workers=args.workers, tree=args.trimta_tree)
    try:
        say(f"trimta: backlog: starting in {daemon.directory} (port {daemon.port})")
        daemon.start()
        base = settle_rss(daemon.pid)
        cpu_before = tree_cpu_seconds(daemon.pid)
        say(f"trimta: smtp-source -s {args.sessions} -m {args.messages} -l {args.size}")
        source = run_smtp_source(HOST, daemon.port, messages=args.messages,
                                 sessions=args.sessions, size=args.size, timeout_s=args.timeout)
        cpu = tree_cpu_seconds(daemon.pid) - cpu_before
        if not source.ok:
            say(f"trimta: smtp-source reported errors:\n{source.stderr[-2000:]}")
        after_reception = settle_rss(daemon.pid, 10.0)
        say(f"trimta: {args.messages:,} messages in {source.seconds:.1f}s; RSS "
            f"{base / 1e6:.0f} MB empty, {after_reception / 1e6:.0f} MB queued")
        status = daemon.stop()
        if status != 0:
            say(f"trimta: the daemon exited with status {status}\n{daemon.stderr_tail()}")
        allocated, apparent = disk_usage(daemon.spool_path)

        say("trimta: restarting")
        offset = daemon.stderr_path.stat().st_size
        started = time.perf_counter()
        daemon.start(timeout_s=args.timeout)
        restart = time.perf_counter() - started
        restored, restore_seconds = restored_line(daemon, offset)
        say(f"trimta: restart took {restart:.1f}s, restored {restored:,} "
            f"(spool read {restore_seconds:.1f}s); spool {allocated / 1e6:,.0f} MB")
        after_restart = settle_rss(daemon.pid)
        status2 = daemon.stop()
        return BacklogResult(args.messages, restored, source.seconds, cpu, base, after_reception,
                             after_restart, allocated, apparent, restart, restore_seconds,
                             ok=source.ok and status == 0 and status2 == 0)
    finally:
        daemon.cleanup()
        if args.keep:
            say(f"trimta: kept {daemon.directory}")


def backlog_table(results: list[BacklogResult]) -> str:
    headers = ["MTA", "messages", "restored", "accept s", "RSS base MB",
               "RSS queued MB", "bytes/msg over base", "RSS after restart MB",
               "bytes/msg after restart", "spool MB on disk", "spool bytes/msg",
               "restart s", "spool read s", "CPU s per 1k msgs (reception)"]
    rows = []
    for r in results:
        n = max(1, r.messages)
        rows.append(["trimta", f"{r.messages:,}", f"{r.restored:,}", f"{r.accept_seconds:.1f}",
                     f"{r.base_rss / 1e6:.0f}", f"{r.rss_after_reception / 1e6:.0f}",
                     f"{(r.rss_after_reception - r.base_rss) / n:,.0f}",
                     f"{r.rss_after_restart / 1e6:.0f}",
                     f"{(r.rss_after_restart - r.base_rss) / n:,.0f}",
                     f"{r.spool_allocated / 1e6:,.0f}", f"{r.spool_allocated / n:,.0f}",
                     f"{r.restart_seconds:.1f}", f"{r.restore_seconds:.1f}",
                     f"{r.cpu_seconds * 1000 / n:.2f}"])
    return format_table(headers, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=100_000,
                        help="messages to queue (100000; the issue's size is 1000000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (20)")
    parser.add_argument("--size", type=int, default=2048, help="payload bytes per message (2048)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds the client may take (3600)")
    parser.add_argument("--trimta-tree", type=Path, default=ROOT, metavar="DIR",
                        help="run trimta's code from this checkout (default: this one)")
    parser.add_argument("--workers", type=int, metavar="N", help="trimta's listener workers")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")


def run(args: argparse.Namespace) -> list[BacklogResult]:
    try:
        return [bench(args)]
    except (BenchError, subprocess.SubprocessError) as exc:
        say(f"trimta: backlog: could not run: {exc}")
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.trimta_tree = args.trimta_tree.resolve()
    args.load_before = os.getloadavg()[0]
    results = run(args)
    print_header("backlog", args, f"smtp-source -s {args.sessions} -m {args.messages} "
                 f"-l {args.size} with delivery held, then a restart")
    if results:
        print(backlog_table(results))
    lost = not results or any(r.lost for r in results)
    if results and results[0].lost:
        r = results[0]
        print(f"\ntrimta: the run does not count: {r.restored:,} of {r.messages:,} restored")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
