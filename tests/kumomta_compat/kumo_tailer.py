"""A small log consumer that reads a log directory the way KumoMTA's ``kumo.jsonl`` tailer does.

Written for the tests from KumoMTA's documented behaviour, not from its code: the
segments of a directory are taken in name order; each is a zstd stream of JSON lines,
decompressed as it grows; a read-only segment is finished, so once its end is reached
the consumer moves on to the next; a writable one may still grow, so the consumer waits
for more (or for it to become read-only). Only whole lines are handed out.

`KumoStyleTailer.batches` is ``kumo.jsonl.new_tailer``'s consumer loop as its docs
describe it (docs/reference/kumo.jsonl/new_tailer.md, LogBatch.md): batches of at most
``max_batch_size`` records, an optional filter, and a checkpoint kept as the hidden file
``.<checkpoint_name>`` in the log directory, ``{"file": ..., "line": ...}``, advanced
only by `LogBatch.commit`, so a consumer restarted after a crash reads again what it
had not committed, and nothing it had.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard


def _done(path: Path) -> bool:
    return not path.stat().st_mode & stat.S_IWUSR


class KumoStyleTailer:
    """Yields the records of `directory`'s ``*.zst`` segments, following the last one."""

    def __init__(self, directory: Path, *, pattern: str = "*.zst", poll_s: float = 0.05,
                 checkpoint_name: str | None = None, max_batch_size: int = 100,
                 record_filter: Callable[[dict], bool] | None = None) -> None:
        self.directory = Path(directory)
        self.pattern = pattern
        self.poll_s = poll_s
        self.checkpoint_name = checkpoint_name
        self.max_batch_size = max_batch_size
        self.record_filter = record_filter

    def records(self, *, until: float) -> Iterator[dict]:
        """Every record, in order, until `until` (time.monotonic()) passes with nothing new."""
        for _path, _line, record in self._positioned(until, None):
            yield record

    def _positioned(self, until: float, start: tuple[str, int] | None) -> Iterator[tuple[Path, int, dict]]:
        """(segment, line number from 1, record), from just after `start` (a checkpoint)."""
        seen: set[Path] = set()
        while time.monotonic() < until:
            pending = [p for p in sorted(self.directory.glob(self.pattern))
                       if p not in seen and (start is None or p.name >= start[0])]
            if not pending:
                time.sleep(self.poll_s)
                continue
            path = pending[0]
            skip = start[1] if start is not None and path.name == start[0] else 0
            for line, record in enumerate(self._follow(path, until), 1):
                if line > skip:
                    yield path, line, record
            seen.add(path)

    # --- kumo.jsonl.new_tailer's batches and checkpoint --------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return self.directory / f".{self.checkpoint_name}" if self.checkpoint_name else None

    def checkpoint(self) -> tuple[str, int] | None:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return None
        data = json.loads(path.read_text())
        return Path(data["file"]).name, int(data["line"])

    def batches(self, *, until: float) -> Iterator[LogBatch]:
        """Batches of records after the checkpoint, until `until` passes with nothing new."""
        batch = LogBatch(self)
        for path, line, record in self._positioned(until, self.checkpoint()):
            batch.end = (path, line)
            if self.record_filter is None or self.record_filter(record):
                batch.records.append(record)
            if len(batch.records) >= self.max_batch_size:
                yield batch
                batch = LogBatch(self)
        if batch.end is not None:
            yield batch

    def save_checkpoint(self, path: Path, line: int) -> None:
        target = self.checkpoint_path
        if target is None:
            return
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps({"file": str(path), "line": line}))
        os.replace(temporary, target)  # atomically, as KumoMTA's save_atomic

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


@dataclass
class LogBatch:
    """Records read together, and where they end; `commit` moves the checkpoint past them."""

    tailer: KumoStyleTailer
    records: list[dict] = field(default_factory=list)
    end: tuple[Path, int] | None = None
    committed: bool = False

    def commit(self) -> None:
        if self.committed:
            raise RuntimeError("batch committed twice")
        self.committed = True
        if self.end is not None:
            self.tailer.save_checkpoint(*self.end)
