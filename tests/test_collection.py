"""`make test-fast` (``-m "not interop"``) really leaves out every test that needs real peers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import INTEROP_DIRS, REAL_PEER_MODULES

ROOT = Path(__file__).resolve().parents[1]


def collected(*options: str) -> set[str]:
    """The node ids pytest collects from tests/ with `options` (in a process of its own)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options, "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {line for line in result.stdout.splitlines() if "::" in line}


def test_not_interop_deselects_every_real_peer_test():
    everything = collected()
    fast = collected("-m", "not interop")
    left_out = everything - fast
    modules = {p.relative_to(ROOT).as_posix() for p in REAL_PEER_MODULES}

    for directory in INTEROP_DIRS:
        prefix = directory.relative_to(ROOT).as_posix() + "/"
        assert any(t.startswith(prefix) for t in everything), prefix  # the tests exist
        assert not any(t.startswith(prefix) for t in fast), prefix
    for module in modules:
        assert any(t.startswith(module + "::") for t in everything), module
        assert not any(t.startswith(module + "::") for t in fast), module
    # The tests on a real dnsmasq outside tests/interop are out too.
    assert not any("test_dns_dnsmasq.py" in t or "test_shaping_cli_dnsmasq.py" in t for t in fast)
    assert any("test_dns_resolve_site.py" in t for t in left_out)
    # And the unit tests stay in.
    assert "tests/protocol/test_server_session.py" in {t.split("::")[0] for t in fast}
