"""The default `hostname` is the machine's own name as `hostname -f` reports it, and poor names are warned of.

`socket.getfqdn()` answers "localhost" on machines whose hosts file maps the name to
127.0.0.1; that name then went out in EHLO to the world's MX hosts. These tests put a
`hostname` program first on PATH that answers what a machine would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trimta.adapters.config import hostname_problem


def run_with_machine_name(tmp_path: Path, answer: str, *argv: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "hostname"
    fake.write_text(f'#!/bin/sh\n[ "$1" = "-f" ] && echo {answer} && exit 0\necho {answer.split(".")[0]}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "trimta", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_default_hostname_is_what_hostname_f_says(tmp_path):
    done = run_with_machine_name(tmp_path, "mta7.example.net", "check-config")
    assert done.returncode == 0, done.stderr
    assert "  hostname mta7.example.net (EHLO name of deliveries)" in done.stdout.splitlines()
    assert "warning:" not in done.stdout


def test_a_machine_named_localhost_gets_a_warning_from_check_config(tmp_path):
    done = run_with_machine_name(tmp_path, "localhost", "check-config")
    assert done.returncode == 0
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: <embedded default>: hostname: 'localhost' (the machine's name: `hostname -f`) is a local "
        "name; receivers that check EHLO names will distrust it; set hostname = \"mta.example.com\" to the "
        "name the sending address's PTR record gives"
    ]


def test_a_configured_short_name_gets_a_warning(tmp_path):
    (tmp_path / "trimta.toml").write_text('hostname = "mailer"\n')
    done = run_with_machine_name(tmp_path, "mta7.example.net", "check-config")
    assert done.returncode == 0
    assert "warning: trimta.toml: hostname: 'mailer' is not fully qualified" in done.stdout


def test_serve_warns_too(tmp_path):
    """`serve` logs the warning at start; a listen address already taken makes it stop right after."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "trimta.toml").write_text(f'[[listener]]\nlisten = "127.0.0.1:{port}"\n[http]\nenabled = false\n')
        done = run_with_machine_name(tmp_path, "localhost", "serve")
    assert done.returncode == 1
    assert "WARNING trimta: trimta.toml: hostname: 'localhost' (the machine's name: `hostname -f`) is a local name" \
        in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name, fine", [
    ("mta1.example.com", True), ("localhost", False), ("localhost.localdomain", False),
    ("vm", False), ("192.0.2.1", False), ("box.localhost", False),
])
def test_which_names_are_poor(name, fine):
    assert (hostname_problem(name) is None) == fine
