"""Line numbers of the keys of a TOML text, for error messages that say where.

tomlkit keeps a document's layout but not the line each item came from, and
tomllib keeps neither. `TomlLines` scans the text once (it is assumed to be valid
TOML: a parser has accepted it already) and remembers the line of every table
header, key, inline-table key and array element, by the path a parser gives the
value: ``("gmail.com", "sources", "ip-1", "connection_limit")``, with array and
array-of-tables indexes as ints (``("provider", "yahoo", "automation", 0)``).

`line_of(path)` answers for the deepest known prefix of `path`, so an error about
a value nested where the scan did not go still points at its key or table.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Sequence

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_WS = " \t"


class TomlLines:
    """Where each key of one TOML text is (1-based line numbers)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: dict[tuple[str | int, ...], int] = {}
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]
        try:
            self._scan()
        except (IndexError, ValueError, tomllib.TOMLDecodeError):
            pass  # keep what was found: an approximate line beats none

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of `path`, else of its longest prefix that has one, else None."""
        key = tuple(path)
        while key:
            line = self.lines.get(key)
            if line is not None:
                return line
            key = key[:-1]
        return None

    # --- scanning ---

    def _line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _note(self, path: tuple[str | int, ...], pos: int) -> None:
        self.lines.setdefault(path, self._line(pos))

    def _scan(self) -> None:
        text = self.text
        pos = 0
        table: tuple[str | int, ...] = ()
        aot_index: dict[tuple[str, ...], int] = {}  # header keys of each array of tables -> current index
        while pos < len(text):
            c = text[pos]
            if c in _WS or c in "\r\n":
                pos += 1
            elif c == "#":
                pos = self._end_of_line(pos)
            elif c == "[":
                start = pos
                aot = text.startswith("[[", pos)
                keys, pos = self._key(pos + (2 if aot else 1))
                pos += 2 if aot else 1  # "]]" or "]"
                path: list[str | int] = []
                for i, key in enumerate(keys):
                    path.append(key)
                    prefix = tuple(keys[: i + 1])
                    if prefix in aot_index and (i < len(keys) - 1 or not aot):
                        path.append(aot_index[prefix])
                if aot:
                    index = aot_index.get(tuple(keys), -1) + 1
                    aot_index[tuple(keys)] = index
                    # Deeper arrays of tables restart under a new element.
                    for other in [k for k in aot_index if len(k) > len(keys) and k[: len(keys)] == tuple(keys)]:
                        del aot_index[other]
                    path.append(index)
                table = tuple(path)
                for i in range(1, len(table) + 1):
                    self._note(table[:i], start)
                pos = self._end_of_line(pos)
            else:
                start = pos
                keys, pos = self._key(pos)
                full = table + tuple(keys)
                for i in range(len(table) + 1, len(full) + 1):
                    self._note(full[:i], start)
                pos = self._skip_ws(pos)
                pos += 1  # "="
                pos = self._value(self._skip_ws(pos), full)
                pos = self._end_of_line(pos)

    def _key(self, pos: int) -> tuple[list[str], int]:
        """A dotted key starting at `pos`: its parts, decoded, and where it ends."""
        text = self.text
        keys: list[str] = []
        while True:
            pos = self._skip_ws(pos)
            c = text[pos]
            if c == '"':
                end = pos + 1
                while text[end] != '"':
                    end += 2 if text[end] == "\\" else 1
                keys.append(tomllib.loads(f"k = {text[pos:end + 1]}")["k"])
                pos = end + 1
            elif c == "'":
                end = text.index("'", pos + 1)
                keys.append(text[pos + 1:end])
                pos = end + 1
            else:
                m = _BARE_KEY.match(text, pos)
                if m is None:
                    raise ValueError(f"no key at {pos}")
                keys.append(m.group())
                pos = m.end()
            pos = self._skip_ws(pos)
            if pos < len(text) and text[pos] == ".":
                pos += 1
                continue
            return keys, pos

    def _value(self, pos: int, path: tuple[str | int, ...]) -> int:
        """Skip the value at `pos`, noting the keys and elements inside it; return its end."""
        text = self.text
        if text.startswith('"""', pos) or text.startswith("'''", pos):
            quote = text[pos:pos + 3]
            end = pos + 3
            while True:
                end = text.index(quote, end)
                if quote == '"""' and _escaped(text, end):
                    end += 1
                    continue
                # A closing delimiter may be followed by up to two more quotes of the content.
                while text.startswith(quote[0], end + 3):
                    end += 1
                return end + 3
        c = text[pos]
        if c == '"':
            end = pos + 1
            while text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            return end + 1
        if c == "'":
            return text.index("'", pos + 1) + 1
        if c == "[":
            pos += 1
            index = 0
            while True:
                pos = self._skip_blank(pos)
                if text[pos] == "]":
                    return pos + 1
                self._note((*path, index), pos)
                pos = self._value(pos, (*path, index))
                pos = self._skip_blank(pos)
                if text[pos] == ",":
                    pos += 1
                    index += 1
        if c == "{":
            pos += 1
            while True:
                pos = self._skip_ws(pos)
                if text[pos] == "}":
                    return pos + 1
                start = pos
                keys, pos = self._key(pos)
                full = (*path, *keys)
                for i in range(len(path) + 1, len(full) + 1):
                    self._note(full[:i], start)
                pos = self._skip_ws(pos) + 1  # "="
                pos = self._value(self._skip_ws(pos), full)
                pos = self._skip_ws(pos)
                if text[pos] == ",":
                    pos += 1
        # A number, boolean or date: up to the next delimiter.
        end = pos
        while end < len(text) and text[end] not in ",]}#\r\n":
            end += 1
        return end

    def _skip_ws(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in _WS:
            pos += 1
        return pos

    def _skip_blank(self, pos: int) -> int:
        """Whitespace, newlines and comments, as allowed between array elements."""
        text = self.text
        while pos < len(text):
            if text[pos] in " \t\r\n":
                pos += 1
            elif text[pos] == "#":
                pos = self._end_of_line(pos)
            else:
                break
        return pos

    def _end_of_line(self, pos: int) -> int:
        end = self.text.find("\n", pos)
        return len(self.text) if end < 0 else end + 1


def _escaped(text: str, pos: int) -> bool:
    """Whether the character at `pos` follows an odd number of backslashes."""
    count = 0
    while pos - count - 1 >= 0 and text[pos - count - 1] == "\\":
        count += 1
    return count % 2 == 1
