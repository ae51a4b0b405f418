"""Site names: one regex-like name for the set of MX hosts serving a domain.

Ready queues and traffic shaping are keyed by site, not by domain, so that every
domain hosted by the same mail servers shares one queue and one set of limits
(gmail.com, googlemail.com and every Google-hosted domain become
``(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com``). The factoring follows
KumoMTA's rules so that site names match what its users already know:

1. Hosts come in preference order (within a preference, sorted by name),
   lowercased, without trailing dot; an optional ``:port`` stays glued to the
   last label.
2. The names are aligned from the right. For each label position, the distinct
   labels are collected in first-seen order; a position some name lacks is
   optional.
3. One label renders as itself, several as ``(a|b|c)``, and ``?`` follows an
   optional position. Positions are joined left to right with ``.``.

A site name is only a name: nothing ever matches it as a regular expression.
The factoring loses information on purpose (``a.x, b.y`` and ``a.y, b.x`` give
the same site); two host lists that differ in a label nobody else has at that
position always give different sites.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from trimta.core.domains import canonical_domain

# What a host name may contain once normalised (RFC 5321 4.1.2 "Domain": letters,
# digits, hyphens; underscores are tolerated because real MX targets have them).
# Keeping everything else out guarantees that "(", "|", "?", "=" never come from a
# host, so the site syntax and the own-site prefix below cannot be forged by DNS.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")

OWN_SITE_PREFIX = "domain="
"""Prefix of the site of a domain whose shaping says ``mx_rollup = false``.

``domain=example.com`` cannot collide with a shared site, because ``=`` never
occurs in a host name (see `normalize_host`).
"""


def normalize_host(host: str) -> str:
    """A host name as site names use it: lowercased, no trailing dot, ``:port`` kept.

    Raises ValueError for anything that is not a dotted host name (an empty name,
    the null MX target ``.``, a label with characters outside letters, digits,
    ``-`` and ``_``, a port that is not a number from 1 to 65535).
    """
    text = host.strip().lower()
    port = ""
    if ":" in text:
        text, _, port = text.rpartition(":")
        if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise ValueError(f"bad port in host {host!r}")
        port = f":{int(port)}"
    text = text.removesuffix(".")
    if not text:
        raise ValueError(f"not a host name: {host!r}")
    for label in text.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"not a host name: {host!r} (bad label {label!r})")
    return text + port


def site_name(hosts: Iterable[str]) -> str:
    """The site for hosts already in site order (see `mx.site_order`).

    Hosts are normalised with `normalize_host`; an empty list gives ``""``, the site
    of a destination that accepts no mail.
    """
    reversed_names = [normalize_host(h).split(".")[::-1] for h in hosts]
    if not reversed_names:
        return ""
    depth = max(len(labels) for labels in reversed_names)
    positions: list[str] = []
    for i in range(depth):
        seen: dict[str, None] = {}  # an ordered set: first-seen order matters
        optional = False
        for labels in reversed_names:
            if i < len(labels):
                seen.setdefault(labels[i], None)
            else:
                optional = True
        distinct = list(seen)
        text = distinct[0] if len(distinct) == 1 else "(" + "|".join(distinct) + ")"
        positions.append(text + "?" if optional else text)
    return ".".join(reversed(positions))


def own_site(domain: str) -> str:
    """The site of a domain that is not rolled up: ``domain=<domain>``."""
    return OWN_SITE_PREFIX + canonical_domain(domain)


def site_for(domain: str, hosts: Sequence[str], *, rollup: bool = True) -> str:
    """The site a domain's mail is queued under.

    With ``rollup`` (the default, and ``mx_rollup = true`` in shaping) the site is
    the factored host list, shared by every domain with the same MX hosts. Without
    it the domain gets a site of its own, `own_site(domain)`, so that a shaping
    override written for that domain governs a ready queue only it feeds. A
    destination with no hosts (null MX) has the empty site either way: nothing is
    ever delivered there.
    """
    if not hosts:
        return ""
    return site_name(hosts) if rollup else own_site(domain)
