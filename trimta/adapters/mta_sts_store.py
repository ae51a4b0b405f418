"""The MTA-STS policy cache on disk: one SQLite file next to the spool.

One row per policy domain: the TXT ``id`` the policy was fetched under, the policy
file as fetched, and the (wall clock) fetch time. Loading parses every policy again
with the same strict parser, so a row that no longer parses is dropped, never trusted.
The cache survives restarts, which is what makes a policy keep protecting a domain
while its policy host is unreachable (RFC 8461 section 5.1).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from trimta.core.mta_sts import MtaStsPolicy, parse_policy
from trimta.core.mta_sts_cache import CachedPolicy

log = logging.getLogger(__name__)

FILE_NAME = "mta-sts.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policies (
    domain TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    fetched_at REAL NOT NULL
)
"""


class PolicyStore:
    """Load, save and forget cached policies. Calls are short, synchronous SQLite statements."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    @classmethod
    def in_spool(cls, spool_path: Path | str) -> PolicyStore:
        return cls(Path(spool_path) / FILE_NAME)

    def load(self) -> list[CachedPolicy]:
        out = []
        for domain, policy_id, text, fetched_at in self._db.execute(
                "SELECT domain, policy_id, policy, fetched_at FROM policies ORDER BY domain"):
            policy = parse_policy(text)
            if not isinstance(policy, MtaStsPolicy):
                log.warning("cached MTA-STS policy of %s no longer parses (%s); dropped", domain, policy.reason)
                self.forget(domain)
                continue
            out.append(CachedPolicy(domain=domain, policy_id=policy_id, policy=policy, fetched_at_s=fetched_at))
        return out

    def save(self, entry: CachedPolicy) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO policies (domain, policy_id, policy, fetched_at) VALUES (?, ?, ?, ?)",
            (entry.domain, entry.policy_id, entry.policy.render(), entry.fetched_at_s),
        )

    def forget(self, domain: str) -> None:
        self._db.execute("DELETE FROM policies WHERE domain = ?", (domain,))

    def close(self) -> None:
        self._db.close()
