"""JSON-lines log segments on disk, rotated by size or age.

Segments are named after the time they were opened (``20261122-063015.jsonl``, like
KumoMTA's segment names) so ``ls`` sorts them in time order. A segment being written
is complete line by line: a reader tailing it never sees half a record once a write
returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class JsonLinesWriter:
    """Appends encoded lines to the current segment; opens a new one when due."""

    def __init__(
        self,
        directory: Path,
        *,
        max_file_size_bytes: int,
        max_segment_duration_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_file_size_bytes = max_file_size_bytes
        self.max_segment_duration_s = max_segment_duration_s
        self.clock = clock
        self._file: BinaryIO | None = None
        self._opened_at = 0.0
        self._size = 0
        self.current_path: Path | None = None

    def _open_segment(self, now: float) -> None:
        self.close()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        path = self.directory / f"{stamp}.jsonl"
        n = 1
        while path.exists():
            path = self.directory / f"{stamp}_{n:03d}.jsonl"
            n += 1
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 (lifetime spans many calls)
        self._opened_at = now
        self._size = 0
        self.current_path = path

    def write(self, payload: bytes) -> None:
        """Append whole lines (``payload`` ends with a newline)."""
        now = self.clock()
        if (
            self._file is None
            or self._size >= self.max_file_size_bytes
            or now - self._opened_at >= self.max_segment_duration_s
        ):
            self._open_segment(now)
        assert self._file is not None
        self._file.write(payload)
        self._size += len(payload)

    def flush_to_disk(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
