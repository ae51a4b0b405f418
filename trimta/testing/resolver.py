"""A fake resolver: DNS answers from a table, for tests that must not touch the network.

`FakeResolver` is the real `trimta.adapters.dns.DnsResolver` (same MX ordering,
implicit MX, null MX, address strategy, site names) asking a `TableLookup`
instead of nameservers, so a test of delivery sees exactly what production would
make of the same records. Its shuffle is seeded, so connection order repeats.

The table maps a name to its records by type, or to one status for every type::

    resolver = FakeResolver({
        "example.com": {"MX": [(10, "mx1.example.com"), (20, "mx2.example.com")]},
        "mx1.example.com": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
        "mx2.example.com": {"A": ["127.0.0.3"]},
        "nomail.test": {"MX": NULL_MX},
        "gone.test": NXDOMAIN,
        "broken.test": {"MX": SERVFAIL},
    })
    resolution = await resolver.resolve_mx("example.com")

A name not in the table is NXDOMAIN; a type a name lacks is NODATA. Statuses
answer at once (`TIMEOUT` too: it stands for "the deadline passed"); set
`latency_s` to make every answer take that long, in virtual time under
``autojump_clock``. `queries` records every question asked, in order.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from typing import Union

import trio

from trimta.adapters.dns import Answer, DnsResolver, Status
from trimta.core.mx import IpLookupStrategy, MxRecord

NXDOMAIN = Status.NXDOMAIN
NODATA = Status.NODATA
SERVFAIL = Status.SERVFAIL
TIMEOUT = Status.TIMEOUT
NULL_MX: list[tuple[int, str]] = [(0, ".")]
"""The MX records of a domain that accepts no mail (RFC 7505)."""

Records = Union[Status, Sequence]
Entry = Union[Status, Mapping[str, Records]]


class TableLookup:
    """A `trimta.adapters.dns.RecordLookup` answering from a table instead of the network.

    Put it under a `CachingLookup` to test the cache without DNS.
    """

    def __init__(self, table: Mapping[str, Entry] | None = None, *, ttl_s: float = 300.0, latency_s: float = 0.0) -> None:
        self.table: dict[str, Entry] = {}
        self.ttl_s = ttl_s
        self.latency_s = latency_s
        self.queries: list[tuple[str, str]] = []
        for name, entry in (table or {}).items():
            self.table[_key(name)] = entry

    def set(self, name: str, rdtype: str, records: Records) -> None:
        """Give `name` these records (or this status) for `rdtype`, keeping its other types."""
        entry = self.table.get(_key(name))
        types = dict(entry) if isinstance(entry, Mapping) else {}
        types[rdtype.upper()] = records
        self.table[_key(name)] = types

    async def lookup(self, name: str, rdtype: str) -> Answer:
        self.queries.append((_key(name), rdtype))
        if self.latency_s:
            await trio.sleep(self.latency_s)
        entry = self.table.get(_key(name), Status.NXDOMAIN)
        if isinstance(entry, Status):
            return Answer(entry)
        records = entry.get(rdtype, Status.NODATA)
        if isinstance(records, Status):
            return Answer(records)
        if not records:
            return Answer(Status.NODATA)
        if rdtype == "MX":
            return Answer(Status.ANSWER, tuple(MxRecord.parse(p, h) for p, h in records), self.ttl_s)
        return Answer(Status.ANSWER, tuple(str(a) for a in records), self.ttl_s)


class FakeResolver(DnsResolver):
    """`DnsResolver` over a `TableLookup`: the resolver for deterministic tests."""

    def __init__(
        self,
        table: Mapping[str, Entry] | None = None,
        *,
        ip_lookup_strategy: IpLookupStrategy = IpLookupStrategy.IPV4_AND_IPV6,
        rng: random.Random | None = None,
        ttl_s: float = 300.0,
        latency_s: float = 0.0,
    ) -> None:
        self.table_lookup = TableLookup(table, ttl_s=ttl_s, latency_s=latency_s)
        super().__init__(self.table_lookup, ip_lookup_strategy=ip_lookup_strategy, rng=rng or random.Random(0))

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every question asked, as ``(name, type)``, in order."""
        return self.table_lookup.queries

    def set(self, name: str, rdtype: str, records: Records) -> None:
        """Change one answer, e.g. ``set("example.com", "MX", SERVFAIL)``."""
        self.table_lookup.set(name, rdtype, records)

    def add_mx(self, domain: str, *hosts: str | tuple[int, str]) -> None:
        """MX records for `domain`: host names (preference 10) or ``(preference, host)``."""
        self.set(domain, "MX", [h if isinstance(h, tuple) else (10, h) for h in hosts])

    def add_host(self, name: str, *addresses: str) -> None:
        """A and AAAA records for `name`, split by address family."""
        v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
        if v4:
            self.set(name, "A", v4)
        if v6:
            self.set(name, "AAAA", v6)

    def add_domain(self, domain: str, *addresses: str, mx: str | None = None) -> None:
        """The common case in one line: `domain` has one MX host with these addresses.

        The host is `mx` or ``mx.<domain>``; e.g. ``add_domain("example.com", "127.0.0.2")``.
        """
        host = mx or f"mx.{_key(domain)}"
        self.add_mx(domain, host)
        self.add_host(host, *addresses)

    def clear_queries(self) -> None:
        self.table_lookup.queries.clear()

    def asked(self, rdtype: str | None = None) -> list[str]:
        """Names asked about (of one type, if given), in order."""
        return [n for n, t in self.queries if rdtype is None or t == rdtype]


def _key(name: str) -> str:
    return name.strip().lower().removesuffix(".")


__all__ = [
    "FakeResolver",
    "NODATA",
    "NULL_MX",
    "NXDOMAIN",
    "SERVFAIL",
    "TIMEOUT",
    "TableLookup",
]
