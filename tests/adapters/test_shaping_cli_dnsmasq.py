"""`trimta shaping check` as a real process, resolving the files' domains through a real DNS server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dnsmasq import dnsmasq  # noqa: F401  (the fixture)

pytestmark = pytest.mark.interop

DNSMASQ_ZONE = [
    "--mx-host=one.test,mx.shared.test,10",
    "--mx-host=two.test,mx.shared.test,10",
    "--host-record=mx.shared.test,127.0.0.10",
    "--mx-host=null.test,.,0",
]

SHAPING = """\
["one.test"]
connection_limit = 5

["two.test"]
connection_limit = 3

["null.test"]
connection_limit = 1

["missing.test"]
connection_limit = 1
"""


def test_check_resolves_through_the_configured_nameserver_and_warns(dnsmasq, tmp_path):
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(SHAPING, encoding="utf-8")
    config = tmp_path / "trimta.toml"
    config.write_text(f'[dns]\nnameservers = ["{dnsmasq.nameserver}"]\ntimeout = "2s"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "trimta", "shaping", "check", "--config", str(config), str(shaping)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK: {shaping}: 4 domain tables, 0 providers, 3 warnings")
    warnings = done.stderr.splitlines()
    assert warnings == [
        f'warning: {shaping}:7: "null.test": null MX: the domain accepts no mail, so its rules shape nothing',
        f'warning: {shaping}:10: "missing.test": does not resolve: nxdomain; its rules shape nothing until it does',
        f'warning: {shaping}:4: "two.test" and "one.test" ({shaping}:1) both shape the site mx.shared.test and '
        'set connection_limit differently: 3 here, 5 there; "two.test" wins, being later',
    ]
    assert dnsmasq.queries("one.test", "MX") == 1
