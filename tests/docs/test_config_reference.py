"""docs/configuration.md documents every key the configuration parsers accept, and nothing else.

The keys are not listed here: they are found by asking the parsers. Each table is
probed with an unknown key (`PROBE`); a parser refuses it naming the key and listing
the keys it knows ("known keys: ..."), which is the error a user sees too. A known key
that refuses a probe inside it (as a table, an array of tables, or a table of named
tables) is a section of its own, found the same way. So a key or a whole table added to
a parser (say a ``[dkim]`` section, or ``[[logs.amqp]]``) fails this test until the
reference has a line for it, and removing a line from the reference fails it too.

In the reference, a section is a ``###`` heading naming it in backticks (``[logs]``,
``[[listener]]``, ``[tenants.NAME]``; several may share one heading) followed by a
table whose rows start with the key in backticks. A table inside a section that is
given as an inline value (``auth = [{ username = ..., ... }]``) may be documented in
its parent's row instead, which must then name each of its keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.docs.session import ROOT
from trimta.adapters.config import ConfigError, parse_config

PROBE = "zz_probe"
REFERENCE = ROOT / "docs" / "configuration.md"
_KNOWN = re.compile(r"known (?:keys|options)(?::| are) ([A-Za-z0-9_, -]+)")


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # "table", "array" (of tables) or "named" (a table of tables named by the user)


def build(path: tuple[Step, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    value: Any = leaf
    for step in reversed(path):
        if step.kind == "array":
            value = {step.name: [value]}
        elif step.kind == "named":
            value = {step.name: {"probe-name": value}}
        else:
            value = {step.name: value}
    return value


def refusal(raw: dict[str, Any], tmp: Path) -> ConfigError | None:
    try:
        parse_config(raw, source="<probe>", base_dir=tmp)
    except ConfigError as exc:
        return exc
    return None


def known_keys(path: tuple[Step, ...], tmp: Path) -> list[str] | None:
    """The keys the parser lists when `path`'s table holds an unknown key, or None if it
    does not refuse one there (so `path` is not a table the parser reads)."""
    exc = refusal(build(path, {PROBE: 1}), tmp)
    if exc is None or not (exc.key or "").endswith(PROBE):
        return None
    m = _KNOWN.search(exc.message)
    if m is None:  # e.g. "expected a table": the probe went one level too shallow
        return None
    return [k.strip() for k in m.group(1).split(",") if k.strip()]


def section_name(path: tuple[Step, ...]) -> str:
    return ".".join(f"{s.name}.*" if s.kind == "named" else s.name for s in path)


def discover(tmp: Path) -> dict[str, list[str]]:
    """Every section the parsers read ("" is the top level) and the keys each accepts."""
    sections: dict[str, list[str]] = {}
    pending: list[tuple[Step, ...]] = [()]
    while pending:
        path = pending.pop()
        keys = known_keys(path, tmp)
        assert keys is not None, f"{section_name(path) or 'top level'}: accepts an unknown key"
        sections[section_name(path)] = keys
        for key in keys:
            for kind in ("table", "array", "named"):
                sub = (*path, Step(key, kind))
                if known_keys(sub, tmp) is not None:
                    pending.append(sub)
                    break
    return sections


def normalise(name: str) -> str:
    """``[[logs.webhook]]`` -> ``logs.webhook``; ``[tenants.NAME]``, ``[egress.domains."DOMAIN"]`` -> ``tenants.*``."""
    parts = [p.strip('"') for p in name.strip("[]").split(".")]
    return ".".join("*" if p.isupper() else p for p in parts)


def documented(text: str) -> dict[str, list[tuple[list[str], str]]]:
    """section -> its rows, each (the keys of its first cell, the whole row)."""
    out: dict[str, list[tuple[list[str], str]]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            current = []
        elif line.startswith("### "):
            heading = line[4:]
            current = ["" if "Top level" in heading else normalise(n) for n in re.findall(r"`(\[[^`]+\])`", heading)]
            if "Top level" in heading:
                current = [""]
            for name in current:
                out.setdefault(name, [])
        elif line.startswith("| `") and current:
            first = line.split("|")[1]
            keys = re.findall(r"`([^`]+)`", first)
            for name in current:
                out[name].append((keys, line))
    return out


def test_the_reference_documents_every_key_the_parsers_accept_and_no_other(tmp_path):
    parsed = discover(tmp_path)
    assert {"", "listener", "logs", "http", "logs.webhook", "tenants.*"} <= set(parsed)  # the probe found them
    doc = documented(REFERENCE.read_text())
    problems = []
    for section, keys in sorted(parsed.items()):
        label = f"[{section}]" if section else "the top level"
        parent, _, own = section.rpartition(".")
        if own == "*":
            parent, _, own = parent.rpartition(".")
        def has_section(key: str, section: str = section) -> bool:
            return any(f"{section}.{key}{tail}".lstrip(".") in doc for tail in ("", ".*"))

        if section not in doc and all(has_section(k) for k in keys):
            continue  # a table of tables only ([egress]): its tables are the sections
        if section not in doc:
            # An inline table may be explained in its parent's row instead.
            row = next((r for ks, r in doc.get(parent, []) if own in ks), None)
            if row is None:
                problems.append(f"{label}: no section in {REFERENCE.name} (a `### [{section}]` heading and a table)")
                continue
            missing = [k for k in keys if not re.search(rf"\b{re.escape(k)}\b", row)]
            if missing:
                problems.append(f"{label}: its row in [{parent}] does not name {', '.join(missing)}")
            continue
        rows = {k for ks, _ in doc[section] for k in ks}
        for key in keys:
            if key not in rows and not has_section(key) and not (
                    f"{section}.{key}".lstrip(".") in parsed and all(has_section(f"{key}.{k}") for k in
                                                                     parsed[f"{section}.{key}".lstrip(".")])):
                problems.append(f"{label}: `{key}` is accepted but not documented")
        for key in sorted(rows - set(keys)):
            problems.append(f"{label}: `{key}` is documented but the parser does not accept it")
    for section in sorted(set(doc) - set(parsed)):
        problems.append(f"[{section}]: documented, but no parser reads such a section")
    assert problems == [], "\n".join(problems)
