"""What marks a test `interop`, so that ``make test-fast`` (``-m "not interop"``) leaves it out.

A ``pytestmark`` in a conftest.py is ignored by pytest, so the mark is given here, by
path, when the tests are collected:

- everything under tests/interop (the real daemon against swaks, smtp-source,
  smtplib, openssl, aiosmtpd, dnsmasq) and tests/faults (the real daemon under faults
  and abuse);
- every test that uses a fixture in `REAL_PEER_FIXTURES`: a real DNS server
  (tests/dnsmasq.py, tests/unbound_dnssec.py) or the real daemon (tests/interop/conftest.py), wherever it is;
- the modules in `REAL_PEER_MODULES`, which start processes of their own.

tests/test_collection.py checks that ``-m "not interop"`` deselects all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INTEROP_DIR = TESTS / "interop"
INTEROP_DIRS = (INTEROP_DIR, TESTS / "faults")

# Fixtures that start a real peer (or the real daemon) for the test that asks for them.
REAL_PEER_FIXTURES = frozenset({"dnsmasq", "unbound", "make_daemon", "daemon"})

# Test modules outside tests/interop that start real processes, and which ones.
REAL_PEER_MODULES = {
    TESTS / "services" / "test_reception_workers.py": "reception worker processes",
    TESTS / "services" / "test_webhooks_durable.py": "a webhook sender process killed with SIGKILL",
}


def is_interop(path: Path, fixturenames: list[str] | tuple[str, ...]) -> bool:
    """Whether the test at `path`, asking for `fixturenames`, runs against real peers."""
    path = path.resolve()
    return (
        any(directory in path.parents for directory in INTEROP_DIRS)
        or path in REAL_PEER_MODULES
        or not REAL_PEER_FIXTURES.isdisjoint(fixturenames)
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = item.fixturenames if isinstance(item, pytest.Function) else ()
        if is_interop(Path(item.path), fixtures):
            item.add_marker(pytest.mark.interop)
