"""The ``Received:`` trace header an MTA prepends to every message (RFC 5321 4.4).

The protocol keyword follows RFC 3848: SMTP, ESMTP, ESMTPS (TLS), ESMTPA (AUTH),
ESMTPSA (both).
"""

from __future__ import annotations

from email.utils import formatdate


def with_protocol(esmtp: bool, tls: bool, authenticated: bool) -> str:
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def _clean(text: str) -> str:
    # A HELO argument is client-controlled: keep it from breaking the header's syntax.
    return "".join(c for c in text if c.isprintable() and c not in "()\\\r\n")[:255] or "unknown"


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
    tail = f"; {formatdate(now, usegmt=True)}"
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>{tail}")
    else:
        lines[-1] += tail
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")
