"""Fixtures of the fault and abuse suite: the real daemon (from the interop fixtures),
and helpers to watch it (its memory, its stderr)."""

from __future__ import annotations

from tests.interop.conftest import (  # noqa: F401 (fixtures used by the tests here)
    Daemon,
    free_port,
    make_daemon,
    restored_spool,
    tool,
    tls_files,
    wait_for_port,
)

# Every test here is marked `interop` by tests/conftest.py (pytest ignores a pytestmark
# in a conftest.py).


def rss_kib(pid: int) -> int:
    """The resident set size of process `pid`, in KiB (VmRSS in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size of process `pid`, in KiB (VmHWM in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def open_fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))
