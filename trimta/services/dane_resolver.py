"""DANE at start and in use: is `enable_dane` on anywhere, does the resolver validate
DNSSEC, and how did each host's TLSA lookup come out (KumoMTA's ``dane_result_count``)?

DANE (RFC 7672) trusts the AD bit of trimta's configured resolver. A resolver that
never sets it (dnsmasq, most forwarding resolvers, or a validating one without a
root trust anchor) makes every MX host look DNSSEC-insecure, so DANE silently never
applies. `warn_unless_validating` says so once, at start, when some path asks for
DANE. It does not stop the daemon: mail still goes out as the other policies say.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from trimta.core.dane import TlsaLookup, result_name
from trimta.core.egress_options import StaticPathProvider
from trimta.core.shaping import Shaping
from trimta.services.smtp_client import TlsaLookups

log = logging.getLogger(__name__)


class AdProbe(Protocol):
    async def sets_ad_bit(self) -> bool: ...


def dane_enabled(static: StaticPathProvider, shaping: Shaping | None) -> bool:
    """Whether any ``[egress]`` table or shaping table (a source's too) sets ``enable_dane = true``."""
    tables: list[Mapping[str, object]] = [*static.by_domain.values(), *static.by_site.values(),
                                          *static.by_source.values()]
    if static.default.enable_dane:
        return True
    if shaping is not None:
        for document in shaping.documents:
            for block in (*document.default, *document.providers, *document.domains):
                tables += [block.overrides, *block.sources.values()]
    return any(table.get("enable_dane") is True for table in tables)


async def warn_unless_validating(resolver: AdProbe, nameservers: Iterable[str]) -> bool:
    """Ask the resolver for the root zone's SOA; warn once if the answer lacks AD. True if it has AD."""
    if await resolver.sets_ad_bit():
        return True
    log.warning(
        "enable_dane is on, but the resolver (%s) did not set the AD bit on the root zone's SOA: it does "
        "not validate DNSSEC (or lacks the root trust anchor), so every MX host looks DNSSEC-insecure and "
        "DANE never applies. Point [dns] nameservers at a local validating resolver (docs/tls.md).",
        ", ".join(nameservers) or "the system's",
    )
    return False


class CountedTlsaLookups:
    """TLSA lookups that tally their outcomes by KumoMTA's ``dane_result_count`` labels.

    Each lookup is one DANE decision for one MX host (delivery asks only for paths with
    ``enable_dane``), so the counts are the decisions: ``ok``, ``unusable``,
    ``not_applicable``, ``insecure_chain``, ``tempfail`` (`trimta.core.dane.result_name`).
    """

    def __init__(self, lookups: TlsaLookups) -> None:
        self._lookups = lookups
        self._results: Counter[str] = Counter()

    async def lookup_tlsa(self, host: str, port: int = 25) -> TlsaLookup:
        lookup = await self._lookups.lookup_tlsa(host, port)
        self._results[result_name(lookup)] += 1
        return lookup

    def statistics(self) -> dict[str, int]:
        """Decisions since start, by result."""
        return dict(self._results)
