"""Provider tables of shaping files: which sites a ``[provider."NAME"]`` covers.

A provider recognises its destinations by their MX host names or by the domain
(KumoMTA's ``match`` forms), so one table covers every domain a mailbox
provider hosts, its business customers' vanity domains included, without
listing them.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trimta.core.domains import canonical_domain
from trimta.core.shaping_automation import InvalidValue, suggest
from trimta.core.sites import OWN_SITE_PREFIX


class MatchKind(enum.Enum):
    """How a provider recognises its sites (KumoMTA's ``match`` forms)."""

    MX_SUFFIX = "MXSuffix"  # every MX host name ends with this
    HOST_NAME = "HostName"  # an MX host is exactly this name
    DOMAIN_SUFFIX = "DomainSuffix"  # the destination domain ends with this


@dataclass(frozen=True, slots=True)
class ProviderMatch:
    kind: MatchKind
    value: str


def parse_matches(value: Any) -> tuple[ProviderMatch, ...]:
    """``match = [{ MXSuffix = ".google.com" }, { DomainSuffix = "gmail.com" }]``."""
    example = 'expected a list like [{ MXSuffix = ".google.com" }, { DomainSuffix = ".example" }]'
    if not isinstance(value, list):
        raise InvalidValue((), f"{example}, got {value!r}")
    kinds = {k.value: k for k in MatchKind}
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or len(item) != 1:
            raise InvalidValue((i,), f"{example}, got {item!r}")
        (name, text), = item.items()
        if name not in kinds:
            raise InvalidValue((i, name), f"unknown match form {name!r}; {suggest(str(name), kinds)}")
        if not isinstance(text, str) or not text.strip():
            raise InvalidValue((i, name), f"expected a host or domain name suffix like \".google.com\", got {text!r}")
        out.append(ProviderMatch(kinds[name], text.strip().lower().removesuffix(".")
                                 if kinds[name] is MatchKind.HOST_NAME else text.strip().lower()))
    return tuple(out)


def provider_matches(matches: Sequence[ProviderMatch], domain: str, mx_hosts: Sequence[str] | None) -> bool:
    """Whether a provider with these rules covers mail to `domain` whose MX hosts are `mx_hosts`.

    KumoMTA's rule: a ``DomainSuffix`` that the domain ends with is enough; else,
    if there are ``MXSuffix``/``HostName`` rules, *every* MX host must satisfy one
    of them, so a vanity domain that mixes two providers' hosts belongs to
    neither. Suffixes are plain string suffixes: ``".google.com"`` does not match
    ``google.com`` itself. With no hosts known, only ``DomainSuffix`` can match.
    """
    domain = canonical_domain(domain)
    host_rules = []
    for m in matches:
        if m.kind is MatchKind.DOMAIN_SUFFIX:
            if domain.endswith(m.value):
                return True
        else:
            host_rules.append(m)
    if not host_rules or not mx_hosts:
        return False
    for host in mx_hosts:
        host = host.lower().removesuffix(".")
        if not any(host.endswith(m.value) if m.kind is MatchKind.MX_SUFFIX else host == m.value
                   for m in host_rules):
            return False
    return True


_ALTERNATIVES = re.compile(r"\((?P<labels>[^()]*)\)(?P<optional>\??)|(?P<label>[^()?]*)(?P<opt>\??)")
MAX_EXPANDED_HOSTS = 1024


def site_hosts(site: str) -> tuple[str, ...] | None:
    """The host names a site name stands for, or None if it cannot say.

    Site names factor MX host lists position by position (`trimta.core.sites`),
    so expanding every position's alternatives gives back the hosts, plus
    combinations that were not in the list when two hosts differ in more than
    one position. For suffix matching that makes no difference: every position a
    suffix covers has the same label (or labels ending the same way) in all
    hosts. A domain's own site (``domain=...``), a literal address, an empty
    site or an oversized expansion give None.
    """
    if not site or site.startswith(OWN_SITE_PREFIX) or site.startswith("[") or "::" in site:
        return None
    positions: list[list[str]] = []
    for part in site.split("."):
        m = _ALTERNATIVES.fullmatch(part)
        if m is None:
            return None
        if m.group("labels") is not None:
            labels = m.group("labels").split("|")
            optional = bool(m.group("optional"))
        else:
            labels = [m.group("label")]
            optional = bool(m.group("opt"))
        labels = [label.split(":", 1)[0] for label in labels]  # a ":port" glued to the last label
        if any(not label for label in labels):
            return None
        positions.append(labels + ([""] if optional else []))
    count = 1
    for labels in positions:
        count *= len(labels)
        if count > MAX_EXPANDED_HOSTS:
            return None
    hosts = {".".join(label for label in combo if label) for combo in itertools.product(*positions)}
    return tuple(sorted(h for h in hosts if h))


