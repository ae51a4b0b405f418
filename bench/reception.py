"""How many 2 KB messages per second trimta accepts durably, next to Postfix on this machine.

Issue 2's reception benchmark (issue 7's `accept-2k`). In one invocation, one after the
other, with the same client and the same inputs:

  trimta   `python -m trimta serve` with a config in a temp dir (listener on a free
           loopback port, spool and logs in the temp dir, delivery held: see
           `TrimtaDaemon`)
  postfix  a private Postfix instance (`bench/postfix.py`) whose smtpd puts every
           message in the hold queue, so it only accepts; its queue durable as shipped

each receives `smtp-source -s 20 -m N -l 2048 -f s@example.com -t r@example.net`.
Measured: wall time from smtp-source's start to its exit, messages/s, and the CPU
seconds the MTA's processes used meanwhile, per 1,000 messages. Then the queue is
counted: for trimta, the restored spool after the daemon stopped
(`Spool(SqliteStorage(path)).restore()`); for Postfix, the files of its hold queue. A run counts
only if the queue holds exactly N messages and smtp-source reported no error; otherwise
the script exits 1.

    make bench-reception                              # N = 20,000, a few minutes
    .venv/bin/python bench/reception.py --messages 2000
    .venv/bin/python bench/reception.py --only trimta --profile   # py-spy summary
    .venv/bin/python bench/reception.py --trimta-tree /tmp/wt     # a worktree of a commit

Postfix needs root (its master drops privileges per daemon) and the Debian package's
`postfix` user and `postdrop` group. Nothing outside the temp dirs is changed: in
particular /etc/postfix/main.cf is neither read nor edited (see `bench/postfix.py`).
Every daemon started here is stopped and its temp dir removed at the end, on errors too.

This is a benchmark, not a test: it prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import (  # noqa: E402
    ROOT,
    BenchError,
    Result,
    find_tool,
    free_port,
    machine_summary,
    results_table,
    run_smtp_source,
    tree_cpu_seconds,
    wait_for_port,
)
from postfix import PostfixInstance  # noqa: E402

HOST = "127.0.0.1"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- trimta ----------------------------------------------------------------------------


class TrimtaDaemon:
    """`python -m trimta serve` on a free loopback port, everything in a temp dir."""

    def __init__(self, *, keep: bool, workers: int | None = None, tree: Path = ROOT) -> None:
        self.keep = keep
        self.tree = tree
        self.directory = Path(tempfile.mkdtemp(prefix="trimta-bench-"))
        self.port = free_port(HOST)
        self.config_path = self.directory / "trimta.toml"
        self.spool_path = self.directory / "spool"
        self.stderr_path = self.directory / "daemon.stderr"
        self.proc: subprocess.Popen | None = None
        # Reception only: the first message of the day may leave the scheduled queue
        # (its delivery then waits on a DNS server that does not answer); every other
        # stays in memory in its scheduled queue and on disk in the spool, the nearest
        # trimta has to Postfix's hold queue until an operator's suspension exists.
        self.http_port = free_port()
        self.config_path.write_text(
            'hostname = "trimta.bench.test"\n'
            '\n[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = "1s"\n'
            '\n[queues]\nmax_message_rate = "1/d"\n'
            "\n[[listener]]\n"
            f'listen = "{HOST}:{self.port}"\n'
            + (f"workers = {workers}\n" if workers is not None else "")
            + f'\n[spool]\npath = "{self.spool_path}"\n'
            + f'\n[logs]\npath = "{self.directory / "logs"}"\n'
            # Its own API port, so a daemon already on 8000 does not stop the bench.
            + f'\n[http]\nlisten = "{HOST}:{self.http_port}"\n'
        )

    def start(self) -> TrimtaDaemon:
        # PYTHONPATH comes before the venv's editable install of this checkout, so the
        # daemon runs the code of `tree` (e.g. a worktree of a given commit).
        env = dict(os.environ, PYTHONPATH=str(self.tree))
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trimta", "serve", "--config", str(self.config_path)],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, env=env,
            )
        try:
            wait_for_port(HOST, self.port, alive=lambda: self.proc.poll() is None)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{self.stderr_tail()}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spool_commits(self) -> tuple[int, int] | None:
        """(commits, operations) of the spool so far, from /metrics; None if unreadable."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return None
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("trimta_spool_commits_total", "trimta_spool_operations_total"):
                values[name] = int(float(value))
        if len(values) != 2:
            return None
        return values["trimta_spool_commits_total"], values["trimta_spool_operations_total"]

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL after 60 s; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def count_spooled(self, expected_recipient: str) -> tuple[int, str]:
        """How many messages a restart would restore, and what is wrong with them if anything."""
        from trimta.adapters.spool import Spool
        from trimta.adapters.spool_sqlite import SqliteStorage

        spool = Spool(SqliteStorage(self.spool_path))
        try:
            restored = spool.restore()
        finally:
            spool.close()
        problems = []
        if restored.damaged:
            problems.append(f"{len(restored.damaged)} damaged entries")
        ids = collections.Counter(m.id for m in restored.messages)
        if len(ids) != len(restored.messages):
            problems.append("duplicate ids")
        others = sum(1 for m in restored.messages if m.recipient != expected_recipient)
        if others:
            problems.append(f"{others} messages for another recipient")
        return len(restored.messages), ", ".join(problems)

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            tail = self.stderr_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "daemon stderr:\n" + "\n".join(tail) if tail else ""

    def cleanup(self) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)


class Profiler:
    """py-spy attached to the daemon (and its workers) for the duration of the client run (optional)."""

    def __init__(self, pid: int, out: Path, *, workers: bool = False) -> None:
        self.out = out
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.access(py_spy, os.X_OK):
            raise BenchError("--profile needs py-spy (pip install py-spy into the venv)")
        self.proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw",
             "--output", str(out), "--threads", "--gil"] + (["--subprocesses"] if workers else []),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it attach before the clock starts

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summarise_profile(path: Path, top: int = 40) -> str:
    """Where trimta's samples were: self time by file and by function; trimta's frames inclusive.

    py-spy runs with --gil, so a sample is taken only while some thread holds the GIL:
    the shares are of the Python work, the event loop's and the spool thread's alike,
    not of the time spent in system calls with the GIL released (fsync, send).
    """
    by_file: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no profile written)"
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")
                  if f and not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        by_file[frames[-1].partition(" (")[2].rstrip(")")] += n
        for frame in set(frames):
            if "(trimta/" in frame:
                inclusive[frame] += n
    if not total:
        return "(no samples)"

    def lines(counter: collections.Counter[str]) -> list[str]:
        return [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]

    return "\n".join([
        f"{total} samples while a thread held the GIL", "",
        "self time by file:", *lines(by_file), "",
        "self time by function:", *lines(own), "",
        "trimta's functions, inclusive (on the stack):", *lines(inclusive),
    ])


def _short(frame: str) -> str:
    # py-spy raw frames read "function (path/to/file.py:line)": drop the line and the
    # site-packages prefix so samples of one function add up.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if str(ROOT) in where:
        where = where.split(str(ROOT) + "/", 1)[1]
    return f"{name} ({where})"


def bench_trimta(args: argparse.Namespace) -> Result:
    daemon = TrimtaDaemon(keep=args.keep, workers=args.workers, tree=args.trimta_tree)
    try:
        say(f"trimta: starting in {daemon.directory} (port {daemon.port})")
        daemon.start()
        profiler = (Profiler(daemon.pid, daemon.directory / "profile.raw", workers=args.profile_workers)
                    if args.profile or args.profile_workers else None)
        cpu_before = tree_cpu_seconds(daemon.pid)
        say(f"trimta: smtp-source -s {args.sessions} -m {args.messages} -l {args.size}")
        source = run_smtp_source(HOST, daemon.port, messages=args.messages,
                                 sessions=args.sessions, size=args.size)
        cpu = tree_cpu_seconds(daemon.pid) - cpu_before
        commits = daemon.spool_commits()
        if commits is not None and commits[0]:
            say(f"trimta: {commits[0]:,} spool commits, {commits[1] / commits[0]:.1f} operations each")
        if profiler is not None:
            profiler.stop()
            say("\ntrimta profile (py-spy; the figures of a profiled run are not comparable):")
            say(summarise_profile(profiler.out))
            if args.keep:
                say(f"raw profile: {profiler.out}")
        if not source.ok:
            say(f"trimta: smtp-source reported errors (exit {source.returncode}):\n"
                f"{source.stderr[-2000:]}")
        status = daemon.stop()
        if status != 0:
            say(f"trimta: the daemon exited with status {status}\n{daemon.stderr_tail()}")
        counted, problems = daemon.count_spooled("r@example.net")
        if problems:
            say(f"trimta: spool: {problems}")
        return Result("trimta", args.messages, counted, source.seconds, cpu,
                      client_ok=source.ok and status == 0 and not problems,
                      client_cpu_seconds=source.cpu_seconds)
    finally:
        daemon.cleanup()
        if args.keep:
            say(f"trimta: kept {daemon.directory}")


# --- Postfix ---------------------------------------------------------------------------


def bench_postfix(args: argparse.Namespace) -> Result:
    settings = dict(s.split("=", 1) for s in args.postfix_setting)
    instance = PostfixInstance(mode=args.postfix_mode, settings=settings, keep=args.keep)
    say(f"postfix: starting in {instance.directory} "
        f"(port {instance.port}, {args.postfix_mode} mode)")
    with instance:
        cpu_before = tree_cpu_seconds(instance.master_pid)
        say(f"postfix: smtp-source -s {args.sessions} -m {args.messages} -l {args.size}")
        source = run_smtp_source(HOST, instance.port, messages=args.messages,
                                 sessions=args.sessions, size=args.size)
        cpu = tree_cpu_seconds(instance.master_pid) - cpu_before
        if not source.ok:
            say(f"postfix: smtp-source reported errors (exit {source.returncode}):\n"
                f"{source.stderr[-2000:]}")
        if args.postfix_mode == "hold":
            counted = instance.held()
        else:
            # The queue manager is still moving the last messages to the deferred queue.
            if not instance.wait_until_settled(timeout_s=300):
                say("postfix: the queue did not settle in 300 s")
            counted = instance.queue_counts()["deferred"]
        queues = instance.queue_counts()
        if queues["corrupt"]:
            say(f"postfix: {queues['corrupt']} corrupt queue files")
    if args.keep:
        say(f"postfix: kept {instance.directory}")
    return Result("postfix", args.messages, counted, source.seconds, cpu, client_ok=source.ok,
                  client_cpu_seconds=source.cpu_seconds)


def trimta_version(tree: Path) -> str:
    """The commit a trimta tree is at, and whether its code has changes on top."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "trimta"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(not a git checkout)"
    if not head:
        return "(not a git checkout)"
    return f"at {head}" + (" with uncommitted changes" if dirty else "")


# --- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per MTA (20000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (20)")
    parser.add_argument("--size", type=int, default=2048, help="payload bytes per message (2048)")
    parser.add_argument("--only", choices=("trimta", "postfix"), help="run one MTA only")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each MTA this many times, alternating; the ratio uses medians")
    parser.add_argument("--trimta-tree", type=Path, default=ROOT, metavar="DIR",
                        help="run trimta's code from this checkout, e.g. a `git worktree` of a "
                             "commit (default: this one)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="trimta's listener `workers` setting (default: the daemon's own)")
    parser.add_argument("--postfix-mode", choices=("hold", "defer"), default="hold",
                        help="hold: accept into the hold queue (default); defer: queue and defer")
    parser.add_argument("--postfix-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra main.cf setting for Postfix (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help="attach py-spy to trimta's daemon and print where its time goes")
    parser.add_argument("--profile-workers", action="store_true",
                        help="--profile over the daemon and its reception workers together")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs for inspection")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be at least 1")
    args.trimta_tree = args.trimta_tree.resolve()
    if not (args.trimta_tree / "trimta" / "__main__.py").is_file():
        parser.error(f"--trimta-tree: no trimta package in {args.trimta_tree}")
    if any("=" not in s for s in args.postfix_setting):
        parser.error("--postfix-setting takes KEY=VALUE")

    try:
        find_tool("smtp-source")
    except BenchError as exc:
        say(f"reception: {exc}")
        return 2

    # Other work on the machine skews messages/s far more than CPU seconds: say how busy
    # it was, so a reader can tell a quiet run from a noisy one.
    load_before = os.getloadavg()
    results: list[Result] = []
    failed: list[str] = []
    for _ in range(args.rounds):
        for mta, run in (("trimta", bench_trimta), ("postfix", bench_postfix)):
            if args.only not in (None, mta):
                continue
            try:
                results.append(run(args))
            except BenchError as exc:
                say(f"{mta}: could not run: {exc}")
                failed.append(mta)

    print()
    print(f"reception, {datetime.date.today().isoformat()}, {machine_summary()}, "
          f"trimta {trimta_version(args.trimta_tree)}")
    print(f"smtp-source -s {args.sessions} -m {args.messages} -l {args.size}"
          + (f", Postfix in {args.postfix_mode} mode" if args.only != "trimta" else "")
          + (" (trimta profiled)" if args.profile else ""))
    # (Only before: during a run the benchmark's own 20 sessions and daemons raise it.)
    print(f"load average (1 min) before the runs: {load_before[0]:.2f}")
    print()
    if results:
        print(results_table(results))
        print()
        for mta in dict.fromkeys(r.mta for r in results):
            mine = [r for r in results if r.mta == mta]
            per_1k = sum(r.client_cpu_seconds for r in mine) * 1000 / sum(r.messages for r in mine)
            print(f"smtp-source's own CPU against {mta}: {per_1k:.2f} s per 1k messages")
    lost = [r.mta for r in results if r.lost]
    for mta in lost:
        print(f"\n{mta}: the run does not count: messages were lost or the client saw errors")
    for mta in failed:
        print(f"\n{mta}: did not run (see above)")
    return 1 if lost or failed else 0


if __name__ == "__main__":
    sys.exit(main())
