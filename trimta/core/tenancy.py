"""Finding a message's tenant and campaign in its header section.

The header names are configurable (``X-Tenant`` and ``X-Campaign`` by default); the
headers are removed before the message is stored unless configured otherwise. Only
the header section is looked at, and a message without the headers is returned as the
same bytes object (no copy on the common path).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tenancy:
    tenant: str | None
    campaign: str | None
    data: bytes


def header_section_end(data: bytes) -> int:
    """Offset just past the blank line ending the header section (or len(data))."""
    if data.startswith(b"\r\n"):
        return 2
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 4


def _field_span(headers_lower: bytes, name_lower: bytes) -> tuple[int, int] | None:
    """Start and end (after CRLF, folded lines included) of the first field `name`."""
    needle = b"\n" + name_lower + b":"
    pos = (b"\n" + headers_lower).find(needle)
    if pos < 0:
        return None
    start = pos  # in headers_lower coordinates (the prepended LF shifts by one)
    end = start
    while True:
        nl = headers_lower.find(b"\r\n", end)
        if nl < 0:
            return start, len(headers_lower)
        end = nl + 2
        if end >= len(headers_lower) or headers_lower[end : end + 1] not in (b" ", b"\t"):
            return start, end


def _field_value(raw: bytes) -> str | None:
    colon = raw.index(b":")
    value = b" ".join(raw[colon + 1 :].split())
    text = value.decode("utf-8", "replace").strip()
    return text or None


def extract_tenancy(data: bytes, tenant_header: str, campaign_header: str, remove: bool,
                    remove_campaign: bool | None = None) -> Tenancy:
    """Read (and optionally strip) the tenant and campaign headers of a message.

    `remove` strips the tenant header, and the campaign header too unless
    `remove_campaign` says otherwise (KumoMTA's queue helper has a flag for each).
    """
    end = header_section_end(data)
    headers = data[:end]
    lower = headers.lower()
    spans = []
    values: list[str | None] = []
    strip = (remove, remove if remove_campaign is None else remove_campaign)
    for name, stripped in zip((tenant_header, campaign_header), strip):
        span = _field_span(lower, name.lower().encode("ascii"))
        values.append(_field_value(headers[span[0] : span[1]]) if span else None)
        if span and stripped:
            spans.append(span)
    if not spans:
        return Tenancy(values[0], values[1], data)
    pieces = []
    cursor = 0
    for s, e in sorted(spans):
        pieces.append(headers[cursor:s])
        cursor = e
    pieces.append(data[cursor:])
    return Tenancy(values[0], values[1], b"".join(pieces))
