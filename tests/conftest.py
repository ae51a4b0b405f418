"""What marks a test `interop`, so that ``make test-fast`` (``-m "not interop"``) leaves it out.

A ``pytestmark`` in a conftest.py is ignored by pytest, so the mark is given here, by
path, when the tests are collected:

- everything under tests/interop (the real daemon against swaks, smtp-source,
  smtplib, openssl, aiosmtpd, dnsmasq);
- every test that uses the `dnsmasq` fixture (a real DNS server, tests/dnsmasq.py);
- the modules in `REAL_PEER_MODULES`, which start processes of their own.

tests/test_collection.py checks that ``-m "not interop"`` deselects all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INTEROP_DIR = TESTS / "interop"

# Test modules outside tests/interop that start real processes, and which ones.
REAL_PEER_MODULES = {
    TESTS / "services" / "test_reception_workers.py": "reception worker processes",
    TESTS / "services" / "test_webhooks_durable.py": "a webhook sender process killed with SIGKILL",
}


def is_interop(path: Path, fixturenames: list[str] | tuple[str, ...]) -> bool:
    """Whether the test at `path`, asking for `fixturenames`, runs against real peers."""
    path = path.resolve()
    return INTEROP_DIR in path.parents or path in REAL_PEER_MODULES or "dnsmasq" in fixturenames


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = item.fixturenames if isinstance(item, pytest.Function) else ()
        if is_interop(Path(item.path), fixtures):
            item.add_marker(pytest.mark.interop)
