"""Xfer jobs on disk: ``xfers.json`` beside the spool, replaced atomically.

A job in progress must outlive the daemon: after a ``kill -9`` the node starts, finds
the job, and moves the rest of its messages (see `trimta.core.xfer`). The file is
small (a few jobs at a time), so every change rewrites it the way the operator rules
file is written: a temporary file, fsynced, renamed over the old one, the directory
fsynced (`trimta.adapters.rules_store`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import trio

from trimta.adapters.rules_store import _replace
from trimta.core.xfer import XferJob, job_from_dict, job_to_dict

log = logging.getLogger(__name__)

FILE_NAME = "xfers.json"
FORMAT_VERSION = 1


class XferStoreError(Exception):
    """The jobs file could not be written (the request is refused) or read."""


class FileXferStore:
    """The xfer jobs of one daemon, in ``DIR/xfers.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILE_NAME
        self._lock = trio.Lock()

    def load(self) -> list[XferJob]:
        """The jobs written last; a damaged file is moved aside (and logged), giving none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise XferStoreError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
                raise ValueError(f"expected version {FORMAT_VERSION}")
            return [job_from_dict(item) for item in document.get("jobs", [])]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            aside = self.path.with_suffix(".json.damaged")
            os.replace(self.path, aside)
            log.error("xfer jobs file %s is damaged (%s): moved aside to %s; no xfer resumed", self.path, exc, aside)
            return []

    async def save(self, jobs: Sequence[XferJob]) -> None:
        """Replace the file with `jobs`, durably; raises `XferStoreError`."""
        document = {"version": FORMAT_VERSION, "jobs": [job_to_dict(j) for j in jobs]}
        data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
        async with self._lock:
            try:
                await trio.to_thread.run_sync(_replace, self.path, data)
            except OSError as exc:
                raise XferStoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

