"""JSON-lines log segments on disk, rotated by size or age, plain or zstd-compressed.

Segments are named after the time they were opened (``20261122-063015.jsonl``, like
KumoMTA's segment names) so ``ls`` sorts them in time order. A segment being written
is complete line by line: a reader tailing it never sees half a record once a write
returns.

With ``compression = "zstd"`` (KumoMTA's format) a segment is ``STAMP.jsonl.zst``, a
sequence of zstd frames, one per batch of whole lines, which ``zstdcat`` reads as one
stream. Each frame goes to the file in one ``write``, so a reader (or a crash) sees
only whole frames; a frame cut short anyway (the disk filled, the machine lost power)
is cut off by the next writer on the directory, which also finishes what a killed
writer left open. A segment that is complete is made read-only, the mark KumoMTA's
log tailer waits for before it moves on to the next segment.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import zstandard

log = logging.getLogger(__name__)

COMPRESSIONS = ("none", "zstd")
ZSTD_SUFFIX = ".jsonl.zst"


class JsonLinesWriter:
    """Appends encoded lines to the current segment; opens a new one when due.

    `max_file_size_bytes` counts the bytes of the lines (before compression, as in
    KumoMTA), so a segment holds about as many records either way.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_file_size_bytes: int,
        max_segment_duration_s: float,
        clock: Callable[[], float] = time.time,
        compression: str = "none",
        compression_level: int = 3,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_file_size_bytes = max_file_size_bytes
        self.max_segment_duration_s = max_segment_duration_s
        self.clock = clock
        self.compression = compression
        self._compressor = zstandard.ZstdCompressor(level=compression_level) if compression == "zstd" else None
        self._suffix = ZSTD_SUFFIX if compression == "zstd" else ".jsonl"
        self._file: BinaryIO | None = None
        self._opened_at = 0.0
        self._size = 0
        self.current_path: Path | None = None
        self.repaired = finish_zstd_segments(self.directory)

    def _open_segment(self, now: float) -> None:
        self.close()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        path = self.directory / f"{stamp}{self._suffix}"
        n = 1
        while path.exists():
            path = self.directory / f"{stamp}_{n:03d}{self._suffix}"
            n += 1
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 (lifetime spans many calls)
        self._opened_at = now
        self._size = 0
        self.current_path = path

    def write(self, payload: bytes) -> None:
        """Append whole lines (``payload`` ends with a newline), with zstd as one frame: all
        of them, or none (OSError, e.g. the disk is full)."""
        now = self.clock()
        if (
            self._file is None
            or self._size >= self.max_file_size_bytes
            or now - self._opened_at >= self.max_segment_duration_s
        ):
            self._open_segment(now)
        assert self._file is not None
        data = self._compressor.compress(payload) if self._compressor is not None else payload
        # An unbuffered write may take only part of the data (a disk filling up takes
        # what fits and refuses the rest on the next call). Loop until all is written;
        # on an error, cut the segment back to where this write began, so the file
        # stays whole lines (whole frames) and the caller may write the payload again.
        start = self._file.tell()
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += self._file.write(view[done:]) or 0
        except OSError:
            if done:
                try:
                    os.ftruncate(self._file.fileno(), start)
                except OSError:
                    pass
            raise
        self._size += len(payload)

    def flush_to_disk(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.compression == "zstd" and self.current_path is not None:
                mark_done(self.current_path)


def mark_done(path: Path) -> None:
    """Make a finished segment read-only: KumoMTA's sign that nothing more will be written to it."""
    mode = path.stat().st_mode
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def is_done(path: Path) -> bool:
    return not path.stat().st_mode & stat.S_IWUSR


def whole_frames_length(data: bytes) -> int:
    """How many leading bytes of `data` are complete zstd frames."""
    dctx = zstandard.ZstdDecompressor()
    offset = 0
    while offset < len(data):
        obj = dctx.decompressobj()
        try:
            obj.decompress(data[offset:])
        except zstandard.ZstdError:
            return offset
        if not obj.eof:
            return offset
        offset = len(data) - len(obj.unused_data)
    return offset


def finish_zstd_segments(directory: Path) -> list[Path]:
    """Finish what an earlier writer left open: cut a torn last frame, mark the segment done.

    Returns the segments that had a torn frame. Run before a writer opens its first
    segment, so at most the one segment each earlier process had open needs it.
    """
    repaired = []
    for path in sorted(directory.glob(f"*{ZSTD_SUFFIX}")):
        if is_done(path):
            continue
        data = path.read_bytes()
        whole = whole_frames_length(data)
        if whole < len(data):
            log.warning("log segment %s ended in a torn zstd frame; %d bytes cut off", path, len(data) - whole)
            with open(path, "r+b") as f:
                f.truncate(whole)
                os.fsync(f.fileno())
            repaired.append(path)
        mark_done(path)
    return repaired
