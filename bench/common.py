"""What the side-by-side benchmarks share: finding tools, ports, smtp-source, CPU time, tables.

The benchmarks under `bench/` compare trimta with Postfix on the same machine in the same
run. They drive both MTAs with the same client (Postfix's `smtp-source`, so neither side
is measured with a client written by us), time the client from start to exit, and charge
each MTA the CPU seconds of its whole process tree. CPU seconds per 1,000 messages do not
depend on how fast this particular machine is, so they are the figure to compare across
machines; messages per second are the figure a user feels.

CPU time is read from /proc (no psutil): for every process of the tree its own user and
system time, plus the time of the children it has already reaped (`cutime`, `cstime`).
Postfix's master forks short-lived smtpd and cleanup processes, and the time of those
that exit during a run reaches the tree only through their parent's reaped-children
counters; counting both the living and the reaped once each is exact as long as every
process of the tree is reaped by a parent inside the tree, which holds for Postfix's
master and for trimta.
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark could not run (a tool is missing, a daemon did not start): no figures."""


def find_tool(name: str) -> str:
    """The path of a Debian tool such as smtp-source or postfix (often in /usr/sbin)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise BenchError(f"{name} is not installed (`make system-deps` installs it)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (loopback only)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, *, alive: Callable[[], bool] = lambda: True, timeout_s: float = 30.0) -> None:
    """Return once something accepts connections on host:port.

    `alive` is asked between attempts so that a daemon that died at start-up is reported at
    once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"the daemon meant to listen on {host}:{port} exited")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listening on {host}:{port} after {timeout_s:.0f}s")


# --- CPU seconds of a process tree ------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:  # gone between listing and reading
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    # What follows starts at field 3 (state), so field n is at index n - 3.
    return text.rsplit(")", 1)[1].split()


def process_tree(root_pid: int) -> list[int]:
    """`root_pid` and all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds used so far by a process tree, reaped children included.

    Take it before and after a run and subtract. Threads are included (the kernel sums a
    process's threads in /proc/PID/stat).
    """
    ticks = 0
    for pid in process_tree(root_pid):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14 to 17.
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / _CLOCK_TICKS


# --- The client -------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRun:
    """One run of smtp-source: how long it took and how it ended."""

    messages: int
    seconds: float
    returncode: int
    stderr: str
    cpu_seconds: float  # the client's own user + system time

    @property
    def ok(self) -> bool:
        # smtp-source exits 0 even after some server errors it only reports; any line on
        # stderr means something other than 250 was seen.
        return self.returncode == 0 and not self.stderr.strip()


def run_smtp_source(
    host: str,
    port: int,
    *,
    messages: int,
    sessions: int = 20,
    size: int = 2048,
    sender: str = "s@example.com",
    recipient: str = "r@example.net",
    timeout_s: float = 1800.0,
) -> SourceRun:
    """Send `messages` messages of `size` payload bytes over `sessions` parallel sessions.

    Wall time runs from just before smtp-source starts to its exit, so it covers connection
    set-up and the last message's durable acknowledgement.
    """
    argv = [
        find_tool("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size),
        "-f", sender, "-t", recipient, f"{host}:{port}",
    ]
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errors)
        deadline = started + timeout_s
        # wait4 rather than wait: it also says how much CPU the client itself used.
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                raise BenchError(f"smtp-source did not finish in {timeout_s:.0f}s")
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    return SourceRun(messages, seconds, proc.returncode, stderr,
                     usage.ru_utime + usage.ru_stime)


# --- Results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One MTA's figures for one workload."""

    mta: str
    messages: int  # sent
    counted: int  # found in the MTA's queue afterwards
    seconds: float
    cpu_seconds: float
    client_ok: bool
    client_cpu_seconds: float = 0.0  # smtp-source's own, not charged to the MTA

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_s_per_1k(self) -> float:
        return self.cpu_seconds * 1000 / self.messages if self.messages else 0.0

    @property
    def lost(self) -> bool:
        return self.counted != self.messages or not self.client_ok


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                                 enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def results_table(results: Sequence[Result], *, reference: str = "postfix") -> str:
    """The comparison table: one row per run, and a ratio row (other MTA / reference).

    With several runs per MTA the ratio compares medians. The ratio of messages/s is
    higher-is-better for the other MTA; the ratio of CPU per 1k messages lower-is-better.
    """
    headers = ["MTA", "messages", "queued after", "seconds", "messages/s", "CPU s per 1k msgs"]
    runs = collections.Counter(r.mta for r in results)
    seen: collections.Counter[str] = collections.Counter()
    rows = []
    for r in results:
        seen[r.mta] += 1
        label = f"{r.mta} ({seen[r.mta]})" if runs[r.mta] > 1 else r.mta
        rows.append([label, f"{r.messages:,}", f"{r.counted:,}", f"{r.seconds:.1f}",
                     f"{r.messages_per_s:,.0f}", f"{r.cpu_s_per_1k:.2f}"])
    others = [m for m in runs if m != reference]
    if reference in runs and others:
        ref = [r for r in results if r.mta == reference]
        oth = [r for r in results if r.mta == others[0]]
        rate = statistics.median(r.messages_per_s for r in oth) / statistics.median(
            r.messages_per_s for r in ref)
        cpu_ref = statistics.median(r.cpu_s_per_1k for r in ref)
        cpu = statistics.median(r.cpu_s_per_1k for r in oth) / cpu_ref if cpu_ref else float("nan")
        median = " (medians)" if len(ref) > 1 or len(oth) > 1 else ""
        rows.append([f"ratio {others[0]}/{reference}{median}", "", "", "", f"{rate:.2f}x",
                     f"{cpu:.2f}x"])
    return format_table(headers, rows)


def machine_summary() -> str:
    """Cores and memory of this machine, for the record next to the figures."""
    cores = os.cpu_count() or 0
    mem_gb = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gb = int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return (f"{cores} cores, {mem_gb:.0f} GB RAM" + (f", {model}" if model else "")
            + f", Python speed {python_speed_us():.1f} µs")


def python_speed_us() -> float:
    """How fast this machine runs Python: `timeit sum(range(1000))` in µs, best of 5.

    trimta's cost per message follows it, Postfix's (C, mostly in the kernel) does not:
    the same code measured 2.0x Postfix on an AMD EPYC VM, where Python ran about twice
    as fast as on the Intel Xeon VM where it measured 1.1x to 1.25x (this read 13 to 18
    µs there, varying with the neighbours' load). Read ratios of machines with it.
    """
    timer = timeit.Timer("sum(range(1000))")
    loops = 2000
    return min(timer.repeat(repeat=5, number=loops)) / loops * 1e6
