"""The fenced blocks of a Markdown file and the doc-test marker that precedes each.

A marker is an HTML comment on the line just before the opening fence (Markdown
renderers show nothing for it)::

    <!-- doc-test: run -->
    ```sh
    trimta check-config
    ```

The verbs are listed in `VERBS` and explained in docs/contributing.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^<!--\s*doc-test:\s*(?P<verb>[a-z-]+)\s*(?P<args>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")

VERBS = {
    "skip": "not run; the rest of the marker says why",
    "run": "a shell script, run with bash -e; its output is kept for an `output` block",
    "output": "the output of the `run` block before it",
    "transcript": "`$ command` lines, each followed by its output",
    "file": "written to the file named, in the session's directory",
    "toml": "parsed as TOML (a fragment)",
    "config": "loaded as a whole trimta.toml",
    "shaping": "loaded as a shaping file",
    "workload": "loaded as a simulate workload",
    "json": "parsed as JSON",
    "request": "METHOD PATH: sent to the daemon with this block as the JSON body",
    "response": "[STATUS]: the JSON answer to the `request` before it",
    "python": "run with the project's Python",
}


@dataclass(frozen=True, slots=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    verb: str | None  # None: no marker
    args: str

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m.group("fence")
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        out.append(Block(
            path=path, line=i + 1, lang=m.group("lang"), text="\n".join(lines[i + 1:j]) + "\n",
            verb=marker.group("verb") if marker else None, args=marker.group("args") if marker else "",
        ))
        i = j + 1
    return out
