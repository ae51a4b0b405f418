"""Progress on a terminal for long-running commands (trimta/commands/_progress.py), nothing elsewhere."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys

from trimta.commands._progress import Progress

WORKLOAD = """\
[[traffic]]
tenant = "acme"
domain = "example.test"
messages = 600
rate = "100/min"

[[receiver]]
domains = ["example.test"]
mx = "mx.example.test"
"""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal_and_clears_it():
    stream = Terminal()
    with Progress("working", 200, stream=stream) as progress:
        progress.update(50, "50 of 200", force=True)
        progress.update(200, "done", force=True)
    out = stream.getvalue()
    assert "\rworking [" + "#" * 7 + "." * 23 + "]  25%  50 of 200" in out
    assert "\rworking [" + "#" * 30 + "] 100%  done" in out
    assert out.endswith("\r")  # the line is wiped: what follows starts on a clean line


def test_progress_writes_nothing_when_not_a_terminal():
    stream = io.StringIO()
    with Progress("working", 200, stream=stream) as progress:
        progress.update(100, force=True)
    assert stream.getvalue() == ""


def simulate(tmp_path, *, stderr):
    workload = tmp_path / "workload.toml"
    workload.write_text(WORKLOAD)
    return subprocess.Popen([sys.executable, "-m", "trimta", "simulate", "--workload", str(workload)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr)


def test_simulate_shows_progress_on_a_terminal(tmp_path):
    controller, terminal = pty.openpty()
    proc = simulate(tmp_path, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        assert ready, seen
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the command closed its end
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(controller)
    assert proc.returncode == 0
    assert b"\rsimulating [" in seen and b"/600 messages, " in seen and b" simulated" in seen
    assert b"simulating" not in out  # the report on stdout is untouched
    assert b"mx.example.test" in out


def test_simulate_shows_no_progress_when_not_a_terminal(tmp_path):
    proc = simulate(tmp_path, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == b""
    assert b"mx.example.test" in out and b"\r" not in out
