"""Fixtures that run the real daemon (`python -m trimta serve`) on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Every test here is marked `interop` by tests/conftest.py (pytest ignores a pytestmark
# in a conftest.py).

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def metric(daemon, line_start: str) -> float | None:
    """The value of the daemon's /metrics line starting with `line_start` (name and labels); None if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
    return None


def tool(name: str) -> str:
    """The path of a Debian tool, or skip the test if it is not installed."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    return path


def wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            # A whole polite session, so the probe is gone from the server's
            # connection count when this returns.
            with socket.create_connection((host, port), timeout=5) as probe:
                probe.recv(1024)
                probe.sendall(b"QUIT\r\n")
                while probe.recv(1024):
                    pass
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, made with openssl."""
    openssl = tool("openssl")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@dataclass
class Daemon:
    """A `trimta serve` process with its own config, spool and logs in a temp dir."""

    directory: Path
    port: int
    host: str = "127.0.0.1"
    extra_listener: str = ""
    extra_config: str = ""
    # Tests never ask a DNS server off this machine: by default nothing answers on this
    # loopback port, so delivery waits (transient DNS failure) and the spool keeps mail.
    dns: str = 'nameservers = ["127.0.0.1:9"]\ntimeout = "1s"'
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "trimta.toml"
        self.stderr_path = self.directory / "daemon.stderr"
        # One process unless a test asks for more: records and statistics of workers
        # reach the daemon a moment later, which most tests need not wait for.
        workers = "" if "workers" in self.extra_listener else "workers = 1\n"
        self.config_path.write_text(
            f'hostname = "mx.trimta.test"\n'
            f"{self.extra_config}\n"
            f"[dns]\n{self.dns}\n"
            f"[[listener]]\n"
            f'listen = "{self.host}:{self.port}"\n'
            f"{self.extra_listener}\n"
            f"{workers}"
            f'[spool]\npath = "spool"\n'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n'
            f'[logs]\npath = "logs"\nflush_interval = "50ms"\n'
        )

    def start(self) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trimta", "serve", "--config", str(self.config_path)],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderr_path, "ab"),  # noqa: SIM115
        )
        wait_for_port(self.host, self.port, self.proc)
        return self

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    @property
    def spool_path(self) -> Path:
        return self.directory / "spool"

    def records(self, kind: str | None = None) -> list[dict]:
        import json

        out = []
        logs = self.directory / "logs"
        if logs.is_dir():
            for f in sorted(logs.iterdir()):
                for line in f.read_text().splitlines():
                    record = json.loads(line)
                    if kind is None or record["type"] == kind:
                        out.append(record)
        return out

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


@pytest.fixture
def make_daemon(tmp_path):
    daemons: list[Daemon] = []

    def make(**kwargs) -> Daemon:
        kwargs.setdefault("directory", tmp_path / f"d{len(daemons)}")
        d = Daemon(port=free_port(), **kwargs)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.stop()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon().start()


def restored_spool(path: Path):
    """The spool as a restarted daemon would see it."""
    from trimta.adapters.spool import Spool
    from trimta.adapters.spool_sqlite import SqliteStorage

    spool = Spool(SqliteStorage(path))
    try:
        return spool.restore()
    finally:
        spool.close()
