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


# --- The results table (docs/reliability.md) --------------------------------------------
#
# Each fault test adds one row of what it observed. With TRIMTA_FAULTS_REPORT=FILE set,
# the rows of the run are written to FILE as a Markdown table at the end of the session
# (`make faults-report` does that); docs/reliability.md holds the last one.

_ROWS: list[dict] = []


def record_fault(fault: str, outcome: str, *, acknowledged: int | str = "", delivered: int | str = "",
                 lost: int | str | None = None, duplicated: int | str = "", sessions: int | str = "",
                 tracebacks: int | str = "", peak_rss_kib: int | None = None, note: str = "") -> None:
    """One row of the results table: a fault, what trimta did, and the counts."""
    if lost is None:
        lost = (acknowledged - delivered) if isinstance(acknowledged, int) and isinstance(delivered, int) else ""
    _ROWS.append({
        "fault": fault, "outcome": outcome, "acknowledged": acknowledged, "delivered": delivered,
        "lost": lost, "duplicated": duplicated, "sessions": sessions, "tracebacks": tracebacks,
        "peak_rss": f"{peak_rss_kib / 1024:.0f} MiB" if peak_rss_kib else "", "note": note,
    })


COLUMNS = ("fault", "outcome", "acknowledged", "delivered", "lost", "duplicated", "sessions",
           "tracebacks", "peak_rss", "note")


def results_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows)


def pytest_sessionfinish(session, exitstatus):
    import os

    target = os.environ.get("TRIMTA_FAULTS_REPORT")
    if target and _ROWS:
        with open(target, "w") as f:
            f.write(results_table(_ROWS))
