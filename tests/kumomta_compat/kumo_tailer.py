"""A small log consumer that reads a log directory the way KumoMTA's ``kumo.jsonl`` tailer does.

Written for the tests from KumoMTA's documented behaviour, not from its code: the
segments of a directory are taken in name order; each is a zstd stream of JSON lines,
decompressed as it grows; a read-only segment is finished, so once its end is reached
the consumer moves on to the next; a writable one may still grow, so the consumer waits
for more (or for it to become read-only). Only whole lines are handed out.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import zstandard


def _done(path: Path) -> bool:
    return not path.stat().st_mode & stat.S_IWUSR


class KumoStyleTailer:
    """Yields the records of `directory`'s ``*.zst`` segments, following the last one."""

    def __init__(self, directory: Path, *, pattern: str = "*.zst", poll_s: float = 0.05) -> None:
        self.directory = Path(directory)
        self.pattern = pattern
        self.poll_s = poll_s

    def records(self, *, until: float) -> Iterator[dict]:
        """Every record, in order, until `until` (time.monotonic()) passes with nothing new."""
        seen: set[Path] = set()
        while time.monotonic() < until:
            pending = [p for p in sorted(self.directory.glob(self.pattern)) if p not in seen]
            if not pending:
                time.sleep(self.poll_s)
                continue
            path = pending[0]
            yield from self._follow(path, until)
            seen.add(path)

    def _follow(self, path: Path, until: float) -> Iterator[dict]:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        buffered = b""
        with open(path, "rb") as f:
            while True:
                finished = _done(path)  # read before the data: a finished file then holds everything
                chunk = f.read(65536)
                if chunk:
                    data = decompressor.decompress(chunk)
                    while decompressor.eof:  # a frame ended: the next one starts in unused_data
                        rest = decompressor.unused_data
                        decompressor = zstandard.ZstdDecompressor().decompressobj()
                        data += decompressor.decompress(rest) if rest else b""
                    buffered += data
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        if line:
                            yield json.loads(line)
                    continue
                if finished:
                    assert buffered == b"", f"{path} ended in the middle of a line"
                    return
                if time.monotonic() >= until:
                    return
                time.sleep(self.poll_s)
                os.stat(path)
