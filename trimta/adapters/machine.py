"""What identifies this machine and process, and what the process holds in memory.

The facts KumoMTA's ``/api/machine-info`` reports (hostname, MAC address, CPUs, OS,
memory, a fingerprint) are read here, from the kernel's files (``/proc``, ``/sys``,
``/etc/os-release``, ``/etc/machine-id``) and Python's `platform`; a fact that cannot
be read is reported as unknown rather than failing the request. Linux is what trimta
runs on; elsewhere the `platform` values stand in.
"""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class MachineFacts:
    """What does not change while the process runs: read once (`read_machine_facts`)."""

    hostname: str
    mac_address: str
    num_cores: int
    platform: str
    distribution: str
    os_version: str
    kernel_version: str | None
    total_memory_bytes: int
    cpu_brand: str
    fingerprint: str
    container_runtime: str | None


def read_machine_facts() -> MachineFacts:
    release = _os_release()
    name = release.get("PRETTY_NAME") or " ".join(filter(None, (release.get("NAME"), release.get("VERSION_ID"))))
    return MachineFacts(
        hostname=socket.gethostname(),
        mac_address=_mac_address(),
        num_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        platform=f"{sys.platform}/{platform.machine()}",
        distribution=release.get("ID", platform.system().lower()),
        os_version=f"{platform.system()} ({name})" if name else platform.system(),
        kernel_version=platform.release() or None,
        total_memory_bytes=_total_memory_bytes(),
        cpu_brand=_cpu_brand(),
        fingerprint=_fingerprint(),
        container_runtime=_container_runtime(),
    )


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _os_release() -> dict[str, str]:
    text = _read("/etc/os-release") or _read("/usr/lib/os-release") or ""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def _mac_address() -> str:
    """The address of the first network interface that is not loopback (sorted by name)."""
    try:
        names = sorted(os.listdir("/sys/class/net"))
    except OSError:
        names = []
    for name in names:
        address = (_read(f"/sys/class/net/{name}/address") or "").strip()
        if name != "lo" and address and address != "00:00:00:00:00:00":
            return address
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def _total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _cpu_brand() -> str:
    brands: list[str] = []
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip() not in brands:
            brands.append(value.strip())
    return ", ".join(brands) or platform.processor() or platform.machine()


def _fingerprint() -> str:
    """``machine_uid=...``: a hash of /etc/machine-id (the id itself is not given away)."""
    machine_id = (_read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or "").strip()
    if not machine_id:
        return ""
    return "machine_uid=" + hashlib.sha256(machine_id.encode()).hexdigest()[:32]


def _container_runtime() -> str | None:
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    environ = (_read("/proc/1/environ") or "").split("\0")
    for entry in environ:
        if entry.startswith("container="):
            return entry.partition("=")[2] or None
    return None


def memory_report() -> list[tuple[str, str]]:
    """The process's memory as the kernel counts it (``/proc/self/status``) and the garbage
    collector's state, as (name, value) lines for people to read."""
    lines = []
    for line in (_read("/proc/self/status") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("VmRSS", "VmHWM", "VmSize", "VmPeak", "VmData", "RssAnon", "RssFile", "Threads"):
            lines.append((key, " ".join(value.split())))
    counts = gc.get_count()
    lines.append(("gc.generation_counts", " ".join(str(c) for c in counts)))
    lines.append(("gc.frozen_objects", str(gc.get_freeze_count())))
    lines.append(("gc.collections", " ".join(str(s.get("collections", 0)) for s in gc.get_stats())))
    return lines
