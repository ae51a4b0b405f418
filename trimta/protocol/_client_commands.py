"""How the client spells its commands, and what it reads from EHLO (RFC 5321 4.1).

Everything the client puts on the wire from caller-supplied text passes through
here, so this is where a CR, LF or angle bracket hidden in an address or a parameter
is stopped before it could become a second command. Also here: which MAIL parameters
a message gets (RFC 1870 SIZE, RFC 6152 BODY=8BITMIME, RFC 6531 SMTPUTF8), and
whether the server can take the message at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from trimta.protocol.client_errors import ClientUsageError
from trimta.protocol.replies import Reply, reply

CRLF = b"\r\n"

# ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"), RFC 5321 4.1.1.1
_EHLO_KEYWORD = re.compile(r"[A-Z0-9][A-Z0-9-]*")
# esmtp-keyword, RFC 5321 4.1.2
_PARAM_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# Control characters: each could end the command line and start another.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

NEEDS_SMTPUTF8 = reply(550, "5.6.7", "The message needs SMTPUTF8 and the server does not offer it")


def check_ehlo_domain(domain: str) -> bytes:
    """The EHLO/HELO argument as bytes; ValueError if it could break the command."""
    if not domain or not domain.isascii() or " " in domain or _UNSAFE.search(domain):
        raise ValueError(f"not a usable EHLO domain: {domain!r}")
    return domain.encode("ascii")


def check_addresses(addresses: Sequence[str], smtputf8: bool) -> None:
    """Refuse addresses that would not survive inside ``<...>`` on one command line."""
    for address in addresses:
        if _UNSAFE.search(address) or "<" in address or ">" in address:
            raise ClientUsageError(f"address not sendable: {address!r}")
        if not smtputf8 and not address.isascii():
            raise ClientUsageError(f"non-ASCII address without SMTPUTF8: {address!r}")


def mail_from(sender: str, params: Mapping[str, str | None]) -> bytes:
    """``MAIL FROM:<sender> KEY=value KEY`` with CRLF; `sender` "" is the null path."""
    spelled = "".join(f" {k}" if v is None else f" {k}={v}" for k, v in params.items())
    return f"MAIL FROM:<{sender}>{spelled}".encode() + CRLF


def rcpt_to(recipient: str) -> bytes:
    return f"RCPT TO:<{recipient}>".encode() + CRLF


def bdat_last(chunk: bytes) -> bytes:
    """The whole message as one last chunk (RFC 3030): no dot-stuffing, no terminator."""
    return b"BDAT %d LAST\r\n" % len(chunk) + chunk


def mail_parameters(
    extensions: Mapping[str, str],
    prepared: bytes,
    smtputf8: bool,
    extra: Mapping[str, str | None],
) -> dict[str, str | None]:
    """The MAIL parameters for `prepared` (CRLF-normalised) given what the server offers.

    SIZE is the message size as RFC 1870 counts it; BODY=8BITMIME only when the
    message has 8-bit bytes and the server offers it (without it we still send, as
    most MTAs do); `extra` (``ENVID``, ``RET``, ...) adds or overrides.
    """
    params: dict[str, str | None] = {}
    if "SIZE" in extensions:
        params["SIZE"] = str(len(prepared))
    if "8BITMIME" in extensions and not prepared.isascii():
        params["BODY"] = "8BITMIME"
    if smtputf8:
        params["SMTPUTF8"] = None
    for key, value in extra.items():
        if not _PARAM_KEYWORD.fullmatch(key) or (
            value is not None and (not value or " " in value or _UNSAFE.search(value))
        ):
            raise ClientUsageError(f"MAIL parameter not sendable: {key}={value!r}")
        params[key.upper()] = value
    return params


def size_limit(extensions: Mapping[str, str]) -> int | None:
    """The server's SIZE limit in bytes (RFC 1870), None when it states none."""
    value = extensions.get("SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def refusal(extensions: Mapping[str, str], size: int, smtputf8: bool) -> Reply | None:
    """Why this server cannot take the message at all, or None if it can."""
    if smtputf8 and "SMTPUTF8" not in extensions:
        return NEEDS_SMTPUTF8
    limit = size_limit(extensions)
    if limit is not None and size > limit:
        return reply(552, "5.3.4", f"Message of {size} bytes exceeds the server's SIZE {limit}")
    return None


def parse_extensions(lines: Iterable[str]) -> dict[str, str]:
    """The EHLO extensions (RFC 5321 4.1.1.1): upper-cased keyword -> parameters.

    Lines whose keyword is not ``ehlo-keyword`` grammar (``AUTH=LOGIN``, the old
    pre-standard form, or junk) are skipped; the first of duplicate keywords wins.
    """
    extensions: dict[str, str] = {}
    for line in lines:
        keyword, _, params = line.strip().partition(" ")
        keyword = keyword.upper()
        if _EHLO_KEYWORD.fullmatch(keyword):
            extensions.setdefault(keyword, params.strip())
    return extensions
