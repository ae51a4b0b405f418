"""Editing a shaping file in place, the way a person would: ``trimta shaping set``.

tomlkit keeps a document's comments, order, blank lines and quoting through a
parse and a write, so one option changes and nothing else does.
"""

from __future__ import annotations

from typing import Any

import tomlkit
import tomlkit.items


def set_option(text: str, table: str, key: str, value: object, *, source: str | None = None) -> str:
    """`text` with ``key = value`` set in the table of `table` (a domain or ``default``).

    Edits through tomlkit, so comments, order and layout stay as they were: an
    existing key keeps its place and trailing comment, a new key goes at the
    end of its table, a new table at the end of the file. With `source` the key
    goes into ``["table".sources."source"]``. The table is found whatever the
    case and trailing dot it was written with.
    """
    doc = tomlkit.parse(text)
    item = tomlkit.item(value)
    wanted = table.strip().lower().removesuffix(".")
    name = next((k for k in doc if str(k).strip().lower().removesuffix(".") == wanted), None)
    if name is None:
        name = wanted
        if source is None:
            doc.add(_quoted(name), _new_table(key, item))
            return _keep_tail(text, doc.as_string())
        doc.add(_quoted(name), tomlkit.table(is_super_table=True))
    target = doc[name]
    if not isinstance(target, tomlkit.items.Table):
        raise ValueError(f"{table!r} is not a table in this file")
    if source is not None:
        if "sources" not in target:
            target.add("sources", tomlkit.table(is_super_table=True))
        sources = target["sources"]
        if source not in sources:
            sources.add(_quoted(source), _new_table(key, item))
            return _keep_tail(text, doc.as_string())
        target = sources[source]
        if not isinstance(target, (tomlkit.items.Table, tomlkit.items.InlineTable)):
            raise ValueError(f"sources.{source!r} of {table!r} is not a table in this file")
    if key in target:
        target[key] = item
    else:
        target.add(key, item)
    return _keep_tail(text, doc.as_string())


def _new_table(key: str, item: Any) -> Any:
    """A table holding one key, and a blank line to keep it apart from what follows."""
    table = tomlkit.table()
    table.add(key, item)
    table.add(tomlkit.nl())
    return table


def _keep_tail(before: str, after: str) -> str:
    """`after` ending in as many newlines as `before` did (at least one): a new table's
    blank line is not wanted at the very end of the file."""
    tail = max(len(before) - len(before.rstrip("\n")), 1)
    return after.rstrip("\n") + "\n" * tail


def _quoted(name: str) -> Any:
    """A key that renders quoted (``["gmail.com"]``), as KumoMTA's files write table names."""
    return tomlkit.items.SingleKey(name, tomlkit.items.KeyType.Basic)
