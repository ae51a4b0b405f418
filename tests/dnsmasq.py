"""A real DNS server for tests: dnsmasq on a free loopback port, serving names under ``.test``.

`Dnsmasq` starts ``dnsmasq -k`` with a zone given as dnsmasq options
(``--mx-host``, ``--host-record``, ...), waits until it answers, and reads its
query log so a test can count what was asked (the proof that a cache worked is a
query the server never saw). ``--local=/test/`` makes unknown names NXDOMAIN and
names without the asked type NODATA, as a real zone would.

Two upstreams that really fail sit beside it on loopback: ``slow.test`` is
forwarded to a UDP socket that never answers (a timeout), ``servfail.test`` to
one that answers every question with SERVFAIL (dnsmasq passes it on).

Tests skip, saying why, when dnsmasq is not installed (``make test`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest


def dnsmasq_path() -> str:
    """The dnsmasq binary, or skip the test."""
    path = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip("dnsmasq is not installed (make test installs the dnsmasq-base package)")
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ServfailUpstream:
    """A UDP server on loopback that answers every query with SERVFAIL."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="servfail-upstream", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                response = dns.message.make_response(dns.message.from_wire(data))
            except Exception:  # noqa: BLE001 (not a DNS query: dropped, as a server would)
                continue
            response.set_rcode(dns.rcode.SERVFAIL)
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class _PortTaken(RuntimeError):
    """dnsmasq could not bind its port (a free UDP port whose TCP twin is in use)."""


class Dnsmasq:
    """One dnsmasq process serving `zone` (dnsmasq options) on 127.0.0.1:`port`."""

    def __init__(self, directory: Path, zone: Sequence[str], *, local_ttl_s: int = 60) -> None:
        self.directory = directory
        self.zone = list(zone)
        self.local_ttl_s = local_ttl_s
        self.port = free_udp_port()
        self.log_path = directory / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None
        self._silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # reads nothing, answers nothing
        self._silent.bind(("127.0.0.1", 0))
        self._servfail = _ServfailUpstream()

    @property
    def nameserver(self) -> str:
        """The ``host:port`` form the ``[dns] nameservers`` setting takes."""
        return f"127.0.0.1:{self.port}"

    def start(self, attempts: int = 5) -> None:
        """Start dnsmasq; a port taken meanwhile (it binds TCP too) means another try on another."""
        for attempt in range(attempts):
            try:
                self._start()
                return
            except _PortTaken:
                if attempt == attempts - 1:
                    raise
                self.port = free_udp_port()

    def _start(self) -> None:
        args = [
            dnsmasq_path(), "-k", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--cache-size=0",
            "--local=/test/", f"--local-ttl={self.local_ttl_s}",
            f"--server=/slow.test/127.0.0.1#{self._silent.getsockname()[1]}",
            f"--server=/servfail.test/127.0.0.1#{self._servfail.port}",
            "--log-queries", f"--log-facility={self.log_path}",
            *self.zone,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")  # dropping to "nobody" would lose the log file in tmp_path
        stderr_path = self.directory / "dnsmasq.stderr"
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        self._wait_until_answering(stderr_path)

    def _wait_until_answering(self, stderr_path: Path, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        probe = dns.message.make_query("probe.invalid-startup.test", "A")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                error = stderr_path.read_text()
                if "Address already in use" in error:
                    raise _PortTaken(error)
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}: {error}")
            try:
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.02)
        raise TimeoutError(f"dnsmasq did not answer on 127.0.0.1:{self.port}")

    def kill(self) -> None:
        """Stop the dnsmasq process only (a resolver that went away); `restart` brings it
        back on the same port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self._start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._servfail.close()
        self._silent.close()

    def queries(self, name: str, rdtype: str | None = None) -> int:
        """How many times `name` (of type `rdtype`, if given) was asked, from the query log."""
        kind = re.escape(rdtype) if rdtype else r"[A-Z]+"
        pattern = re.compile(rf"query\[{kind}\] {re.escape(name)} from ")
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return len(pattern.findall(text))


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory, request) -> Iterator[Dnsmasq]:
    """dnsmasq serving the module's ``DNSMASQ_ZONE`` (a list of dnsmasq options)."""
    zone = getattr(request.module, "DNSMASQ_ZONE", [])
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), zone)
    try:
        server.start()
        yield server
    finally:
        server.stop()
