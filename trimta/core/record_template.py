"""Templates over log record fields: ``"{type}.{tenant}"`` for routing keys, stream names, headers.

A template is literal text with ``{field}`` placeholders naming top-level fields of a
log record (``type``, ``tenant``, ``campaign``, ``domain``, ``queue``, ``site``,
``egress_pool``, ``egress_source``, ...); ``{{`` and ``}}`` stand for braces. A field
the record lacks, or holds as null, renders as the empty string, so ``"{type}.{tenant}"``
gives ``"Delivery."`` for mail without a tenant. Parsed once, at the configuration's
edge; rendering is a join.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class RecordTemplate:
    """A parsed template: literal parts and field names, alternating (literal first)."""

    text: str
    parts: tuple[str, ...]  # literal, field, literal, field, ..., literal

    @classmethod
    def parse(cls, text: object) -> RecordTemplate:
        """Raises ValueError saying what is wrong and what would be accepted."""
        if not isinstance(text, str):
            raise ValueError(f'expected a string like "{{type}}.{{tenant}}", got {text!r}')
        parts: list[str] = []
        literal = ""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"{exc} in {text!r} (write {{{{ and }}}} for literal braces)") from None
        for before, field, spec, conversion in parsed:
            literal += before
            if field is None:
                continue
            if not _FIELD.fullmatch(field) or spec or conversion:
                raise ValueError(
                    f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} in {text!r}: "
                    "a placeholder names one record field, like {type}, {tenant} or {domain}"
                )
            parts += [literal, field]
            literal = ""
        parts.append(literal)
        return cls(text, tuple(parts))

    @property
    def fields(self) -> tuple[str, ...]:
        return self.parts[1::2]

    @property
    def is_constant(self) -> bool:
        return len(self.parts) == 1

    def render(self, record: Mapping[str, Any]) -> str:
        if len(self.parts) == 1:
            return self.parts[0]
        out = []
        for i, part in enumerate(self.parts):
            if i % 2 == 0:
                out.append(part)
            else:
                value = record.get(part)
                out.append("" if value is None else str(value))
        return "".join(out)
