"""The ``Received:`` trace header an MTA prepends to every message (RFC 5321 4.4).

The protocol keyword follows RFC 3848: SMTP, ESMTP, ESMTPS (TLS), ESMTPA (AUTH),
ESMTPSA (both).
"""

from __future__ import annotations

import re
from email.utils import formatdate

# Characters a HELO argument may not bring into the header: they would end the comment
# or the field.
_UNSAFE = re.compile(r"[()\\\r\n]")


def with_protocol(esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool = False) -> str:
    """The Received header's "with" keyword (RFC 3848; RFC 6531 3.7.3 for SMTPUTF8)."""
    if not esmtp:
        return "SMTP"
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if tls else "") + ("A" if authenticated else "")


def _clean(text: str) -> str:
    # A HELO argument is client-controlled: keep it from breaking the header's syntax.
    if not text.isprintable():
        text = "".join(c for c in text if c.isprintable())
    return _UNSAFE.sub("", text)[:255] or "unknown"


_last_date: tuple[int, str] = (-1, "")


def _date(now: float) -> str:
    """RFC 5322 date-time of `now`, remembered for the second it names.

    Every message gets one, and formatting a date costs more than the rest of the
    header; a busy listener accepts hundreds of messages within the same second.
    """
    global _last_date
    second = int(now)
    if _last_date[0] != second:
        _last_date = (second, formatdate(second, usegmt=True))
    return _last_date[1]


def received_header(
    *,
    helo: str,
    peer_address: str,
    by_host: str,
    protocol: str,
    message_id: str,
    recipients: list[str],
    now: float,
    tls_version: str | None = None,
) -> bytes:
    """The header, folded, CRLF-terminated. ``for`` is given only for one recipient."""
    literal = f"IPv6:{peer_address}" if ":" in peer_address else peer_address
    lines = [f"Received: from {_clean(helo)} ([{literal}])"]
    by = f"\tby {by_host} (trimta) with {protocol}"
    if tls_version:
        by += f" ({_clean(tls_version)})"
    lines.append(f"{by} id {message_id}")
    tail = f"; {_date(now)}"
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>{tail}")
    else:
        lines[-1] += tail
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")
