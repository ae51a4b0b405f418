"""Postfix's smtp-source into the real daemon: 10,000 messages over 20 sessions."""

import subprocess
from collections import Counter

from .conftest import restored_spool, tool


def test_ten_thousand_messages_from_twenty_sessions_are_spooled_exactly_once(daemon):
    result = subprocess.run(
        [tool("smtp-source"), "-s", "20", "-m", "10000", "-l", "2048", "-f", "sender@example.com",
         "-t", "rcpt@example.net", f"{daemon.host}:{daemon.port}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    assert daemon.stop() == 0
    restored = restored_spool(daemon.spool_path)
    assert restored.damaged == []
    assert len(restored.messages) == 10_000
    assert len({m.id for m in restored.messages}) == 10_000
    assert Counter(m.recipient for m in restored.messages) == {"rcpt@example.net": 10_000}
    assert len(daemon.records("Reception")) == 10_000
