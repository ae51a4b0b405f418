"""Domain names in one canonical form: IDNA 2008 A-labels with UTS #46 mapping.

An internationalised domain reaches trimta in either form: as U-labels
(``bücher.example``, in an SMTPUTF8 address, a shaping table, an API call) or as the
A-labels DNS knows (``xn--bcher-kva.example``). Both are one destination, so every
place that files or looks up mail by domain (scheduled queues, shaping tables, DNS)
uses the A-label form, lowercased, without a trailing dot.

The conversion is IDNA 2008 (RFC 5890-5893) with the UTS #46 mapping in its
non-transitional form, through the `idna` package, as browsers and current mail
software do. Python's built-in ``"idna"`` codec implements IDNA 2003, which maps
``faß.de`` to ``fass.de``: a different domain, someone else's mail server. IDNA 2008
keeps the ß (``xn--fa-hia.de``); likewise the final sigma and the zero-width joiners.

(`idna` is a pure function library, like the stdlib codec it replaces: core stays free
of I/O.)
"""

from __future__ import annotations

import idna


def ascii_domain(domain: str) -> str:
    """The A-label form of `domain`, lowercased, no trailing dot; ValueError if it is not
    a valid IDNA 2008 name. ASCII names are only lowercased (an A-label is not decoded:
    DNS will say whether it exists)."""
    text = domain.strip().removesuffix(".")
    if text.isascii():
        return text.lower()
    try:
        return idna.encode(text, uts46=True, transitional=False).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise ValueError(f"not a valid internationalised domain name: {domain!r} ({exc})") from None


def canonical_domain(domain: str) -> str:
    """`ascii_domain` where it is valid, else the name lowercased as it is.

    For filing and lookup: a name IDNA refuses is still one queue and one shaping key
    (its delivery fails at DNS with the reason), never an exception in the middle of
    accepting a message.
    """
    try:
        return ascii_domain(domain)
    except ValueError:
        return domain.strip().lower().removesuffix(".")


__all__ = ["ascii_domain", "canonical_domain"]
