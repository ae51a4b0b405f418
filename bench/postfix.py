"""A private, throwaway Postfix instance for side-by-side benchmarks.

`PostfixInstance` builds a complete Postfix configuration and queue in a temporary
directory, starts Postfix's master on it with smtpd on one loopback port, and removes
everything on `stop()` (also when the benchmark fails half-way: use it as a context
manager). It never reads or changes the machine's own Postfix (`/etc/postfix/main.cf`
stays as it is, and may be absent): `postfix -c DIR` run as root accepts a non-default
configuration directory without it being listed in `alternate_config_directories`; that
list only gates the set-gid commands (`postqueue`, `postdrop`), which this module does
not use: it counts queue files itself.

What it needs: the Debian `postfix` package (its `postfix` user and `postdrop` group,
`/etc/postfix/postfix-files`, the daemons under `postconf -d daemon_directory`), and
root, since master binds, chowns the queue and drops privileges per daemon.

Modes, for the workloads of `bench/`:

  hold    every message goes straight into the hold queue (`check_client_access
          static:HOLD`): smtpd and cleanup accept it durably and nothing schedules it.
          Reception-only benchmarks use this.
  defer   messages are queued normally, and the queue manager defers every delivery
          (`defer_transports`): reception plus one pass of the scheduler.
  relay   messages are relayed to `relay_to` ("host:port", no DNS) or, without it, to
          the MX hosts of their domains, as the system resolver finds them.

The queue is durable as Postfix ships it (cleanup fsyncs each queue file before smtpd
answers 250). Other settings (e.g. `default_destination_concurrency_limit`,
`smtp_bind_address`) go in `settings`, which override the ones made here.

Postfix's command-line tools write errors to syslog, and to stderr only when it is a
terminal; this machine has no syslog, so commands run on a pseudo-terminal here and
their output is part of the error raised when they fail. The daemons log to
`maillog` in the instance's directory (`maillog()` reads it).
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from common import BenchError, find_tool, free_port, process_tree, wait_for_port

MODES = ("hold", "defer", "relay")

# The services a relay needs, none chrooted (a chroot would need copies of /etc files in
# the queue directory). Fields: service type private unpriv chroot wakeup maxproc command.
_MASTER_SERVICES = """\
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


class PostfixInstance:
    """One Postfix master with smtpd on `host:port`, its config and queue in a temp dir.

    `start()` returns once smtpd accepts connections; `stop()` stops master, waits for
    every process of the instance to exit, and deletes the directory unless `keep`.
    """

    def __init__(
        self,
        *,
        mode: str = "hold",
        host: str = "127.0.0.1",
        port: int | None = None,
        relay_to: str | None = None,
        settings: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        keep: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if relay_to is not None and mode != "relay":
            raise ValueError("relay_to is only meaningful in relay mode")
        if not host.startswith("127."):
            raise ValueError("benchmarks listen on loopback only (127.0.0.0/8)")
        self.mode = mode
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.relay_to = relay_to
        self.settings = dict(settings or {})
        self.keep = keep
        self.directory = Path(tempfile.mkdtemp(prefix="postfix-bench-", dir=base_dir))
        self.config_dir = self.directory / "conf"
        self.queue_dir = self.directory / "queue"
        self.data_dir = self.directory / "data"
        self.maillog_path = self.directory / "maillog"
        self._master_pid: int | None = None

    # --- configuration ------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings of this instance, in the order they are written."""
        cf = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-bench",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.directory),
            "myhostname": "postfix.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            # Nothing is local: every recipient is relayed, as with trimta.
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtp_bind_address": self.host,
            "biff": "no",
        }
        if self.mode == "hold":
            cf["smtpd_client_restrictions"] = "check_client_access static:HOLD"
        elif self.mode == "defer":
            cf["defer_transports"] = "smtp, relay"
        elif self.relay_to is not None:
            host, _, port = self.relay_to.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"relay_to must be host:port, not {self.relay_to!r}")
            cf["relayhost"] = f"[{host}]:{port}"
        cf.update(self.settings)
        return cf

    def _write_config(self) -> None:
        self.config_dir.mkdir()
        self.queue_dir.mkdir()
        self.data_dir.mkdir()
        # The daemons run as the postfix user: they must reach the instance's directory
        # (mkdtemp makes it 0700), and master and postlogd write into data_directory.
        self.directory.chmod(0o755)
        shutil.chown(self.data_dir, user="postfix")
        (self.config_dir / "main.cf").write_text(
            "# Written by bench/postfix.py for a throwaway benchmark instance.\n"
            + "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        )
        (self.config_dir / "master.cf").write_text(
            f"{self.host}:{self.port} inet n - n - - smtpd\n" + _MASTER_SERVICES
        )

    # --- life cycle -----------------------------------------------------------------------

    def _postfix(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run `postfix -c DIR ARGS` on a pseudo-terminal; its output, or BenchError."""
        argv = [find_tool("postfix"), "-c", str(self.config_dir), *args]
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal,
                                    stderr=terminal, start_new_session=True)
            os.close(terminal)
            terminal = -1
            output = bytearray()
            deadline = time.monotonic() + timeout_s
            while True:
                ready, _, _ = select.select([controller], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(controller, 4096)
                    except OSError:  # EIO: every writer of the terminal is gone
                        chunk = b""
                    output += chunk
                    if chunk:
                        continue
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise BenchError(f"{' '.join(argv)} did not finish in {timeout_s:.0f}s")
        finally:
            if terminal >= 0:
                os.close(terminal)
            os.close(controller)
        text = output.decode(errors="replace").replace("\r\n", "\n")
        if proc.returncode != 0:
            raise BenchError(
                f"{' '.join(argv)} failed ({proc.returncode}):\n{text}{self._log_tail()}")
        return text

    def start(self) -> PostfixInstance:
        """Write the configuration, create the queue, start master; wait for smtpd."""
        if os.geteuid() != 0:
            raise BenchError("the Postfix benchmark instance must be started as root")
        self._write_config()
        self._postfix("start")  # also runs `postfix check`, which creates the queue
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while self._master_pid is None:
            try:
                self._master_pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"Postfix master wrote no pid file{self._log_tail()}") from None
                time.sleep(0.05)
        wait_for_port(self.host, self.port, alive=self._master_alive)
        return self

    def _master_alive(self) -> bool:
        if self._master_pid is None:
            return False
        try:
            os.kill(self._master_pid, 0)
        except ProcessLookupError:
            return False
        return True

    @property
    def master_pid(self) -> int:
        """The pid of master: the root of every Postfix process of this instance."""
        if self._master_pid is None:
            raise BenchError("Postfix is not running")
        return self._master_pid

    def stop(self) -> None:
        """Stop master and its children, then remove the directory (unless `keep`).

        Safe to call twice and after a failed start. If master does not go on
        `postfix stop`, the processes of this instance (and only those: found from
        master's pid) are killed.
        """
        try:
            if self._master_alive():
                pids = process_tree(self.master_pid)
                try:
                    self._postfix("stop", timeout_s=30)
                except BenchError:
                    pass
                deadline = time.monotonic() + 20
                while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                    time.sleep(0.05)
                for pid in pids:
                    if _alive(pid):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            self._master_pid = None
        finally:
            if not self.keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- what is in the queue -------------------------------------------------------------

    def queue_counts(self) -> dict[str, int]:
        """How many queue files each queue holds (hashed subdirectories included)."""
        counts = {}
        for name in QUEUES:
            n = 0
            for _, _, files in os.walk(self.queue_dir / name):
                n += len(files)
            counts[name] = n
        return counts

    def held(self) -> int:
        """Messages in the hold queue: the accepted ones, in hold mode."""
        return self.queue_counts()["hold"]

    def wait_until_settled(self, *, timeout_s: float) -> bool:
        """Wait until nothing is in flight between queues (maildrop, incoming, active empty).

        The queue manager moves files between directories while `queue_counts` walks
        them, so a file can be seen twice or not at all; count only once settled. Returns
        False on timeout.
        """
        return self._wait_until(("maildrop", "incoming", "active"), timeout_s)

    def wait_until_empty(self, *, timeout_s: float) -> bool:
        """Wait until incoming, active and deferred are empty (relay mode: all delivered).

        Returns False on timeout. Deferred mail is only retried on Postfix's own schedule,
        so a relay benchmark should count at its receiver and use this as a backstop.
        """
        return self._wait_until(("maildrop", "incoming", "active", "deferred"), timeout_s)

    def _wait_until(self, empty: tuple[str, ...], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = self.queue_counts()
            if not any(counts[q] for q in empty):
                return True
            time.sleep(0.1)
        return False

    def maillog(self) -> str:
        """What Postfix's daemons logged so far."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 15) -> str:
        tail = self.maillog().splitlines()[-lines:]
        return ("\nlast lines of maillog:\n" + "\n".join(tail)) if tail else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
