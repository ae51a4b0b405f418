"""A progress line on a terminal for long-running commands, and nothing anywhere else.

`Progress` writes ``label [#####.....]  45%  detail`` to standard error, redrawn in
place with a carriage return, at most ten times a second of real time; `close()`
ends the line. When the stream is not a terminal (a pipe, a file, a CI log) it
writes nothing at all, so scripts and logs see only the command's real output.
It is a dozen lines of its own rather than a dependency (neither rich nor tqdm is
among trimta's requirements).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
MIN_INTERVAL_S = 0.1


class Progress:
    """Progress of `total` units of work; `update(done)` as it goes, `close()` at the end."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = -MIN_INTERVAL_S
        self._drawn = False
        self._width = 0

    def update(self, done: int, detail: str = "", *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < MIN_INTERVAL_S:
            return
        self._last_draw = now
        fraction = min(max(done / self.total, 0.0), 1.0)
        filled = int(fraction * WIDTH)
        line = f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {fraction:4.0%}  {detail}".rstrip()
        # Pad over what a longer previous line left behind.
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)
        self._drawn = True

    def close(self) -> None:
        """End the progress line (a terminal's next output starts on a line of its own)."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
