"""Operator rules on disk: one JSON file beside the spool, replaced atomically.

Suspensions, admin bounces, ready-queue suspensions and option overrides in force
must outlive the daemon: a tenant suspended for an incident stays suspended through
a restart or a ``kill -9``. The whole set is small (operators make rules by hand,
automation a few per incident), so every change rewrites the file: written to a
temporary file, fsynced, renamed over the old one, and the directory fsynced, so a
crash leaves either the old set or the new one, never a torn file. The write runs
in a worker thread; the caller (the HTTP API) answers only once it is done.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import trio

from trimta.core.admin import AnyRule, rule_from_dict, rule_to_dict

log = logging.getLogger(__name__)

FILE_NAME = "operator-rules.json"
FORMAT_VERSION = 1


class RulesStoreError(Exception):
    """The rules file could not be written (the change is refused) or read."""


class FileRuleStore:
    """The rules of one daemon, in ``DIR/operator-rules.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILE_NAME
        self._lock = trio.Lock()

    def load(self) -> list[AnyRule]:
        """The rules written last; a damaged file is moved aside (and logged), giving none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RulesStoreError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
                raise ValueError(f"expected version {FORMAT_VERSION}")
            return [rule_from_dict(item) for item in document.get("rules", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            aside = self.path.with_suffix(".json.damaged")
            os.replace(self.path, aside)
            log.error("operator rules file %s is damaged (%s): moved aside to %s; no rules restored",
                      self.path, exc, aside)
            return []

    async def save(self, rules: Sequence[AnyRule]) -> None:
        """Replace the file with `rules`, durably; raises `RulesStoreError`."""
        document = {"version": FORMAT_VERSION, "rules": [rule_to_dict(r) for r in rules]}
        data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
        async with self._lock:
            try:
                await trio.to_thread.run_sync(write_atomically, self.path, data)
            except OSError as exc:
                raise RulesStoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_replace = write_atomically  # the older name (trimta/adapters/xfer_store.py uses it)
