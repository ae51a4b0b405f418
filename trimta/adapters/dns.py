"""DNS for delivery: MX and address lookups through dnspython on trio, behind a cache.

Three layers, each replaceable on its own:

- `DnspythonLookup` asks real nameservers one question (MX, A or AAAA) with
  ``dns.asyncresolver`` on its trio backend, and translates every dnspython
  outcome into an `Answer` value: records, NODATA, NXDOMAIN, SERVFAIL or TIMEOUT.
  No dnspython exception leaves this module.
- `CachingLookup` sits in front of any lookup. It keeps answers for their TTL
  (clamped to a configured floor and ceiling), negative answers for
  `negative_ttl_s`, failures briefly (RFC 9520 asks resolvers to remember them
  for at least a second); it lets one question per name be in flight, the other
  askers waiting for its answer; it evicts least recently used entries beyond
  `cache_size`; and a `trio.CapacityLimiter` bounds how many questions are out at
  once, so resolving 10,000 domains never opens 10,000 sockets. Each question
  gets `timeout_s` in a trio cancel scope, counted from when it is sent (time
  spent waiting for the limiter does not count).
- `DnsResolver` turns answers into an `MxResolution` (RFC 5321 5.1, RFC 7505):
  MX set, connection order, addresses per `IpLookupStrategy`, site name. It
  implements `trimta.core.mx.Resolver`; the fake resolver in
  `trimta.testing.resolver` is the same class over a table of answers. For DANE
  (RFC 7672) it also says whether an MX host's addresses and TLSA records are
  DNSSEC-secure (`lookup_tlsa`).

DNSSEC: every question is sent with the AD bit set (RFC 6840 section 5.7), and an
answer counts as `secure` when the resolver's reply has AD set. trimta validates no
signatures itself: it trusts the AD bit of its configured resolver, which must be a
validating resolver on this machine (or one reached over a path nobody can tamper
with). A bogus answer is SERVFAIL from such a resolver.

Configuration is the ``[dns]`` table of trimta.toml, parsed into a `ResolverConfig` by
`trimta.adapters.dns_config`.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import trio

from trimta.adapters.config_base import ConfigError
from trimta.adapters.dns_config import ResolverConfig
from trimta.core.dane import DnssecState, TlsaLookup, TlsaRecord
from trimta.core.domains import ascii_domain
from trimta.core.mx import (
    IpLookupStrategy,
    MxFailure,
    MxHost,
    MxRecord,
    MxResolution,
    connection_order,
    parse_domain_literal,
)
from trimta.core.sites import normalize_host

# --- Answers: the seam every lookup implements ------------------------------------


class Status(enum.Enum):
    """How one question was answered."""

    ANSWER = "answer"
    NODATA = "nodata"  # the name exists, without records of that type
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"  # also REFUSED, other error codes and network errors
    TIMEOUT = "timeout"

    @property
    def is_failure(self) -> bool:
        return self in (Status.SERVFAIL, Status.TIMEOUT)


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one question: `MxRecord` values for MX, address strings for A/AAAA,
    texts for TXT, `TlsaRecord` values for TLSA. `secure`: the resolver set AD.
    `canonical`: where CNAMEs led, when they did (empty: the name asked)."""

    status: Status
    records: tuple = ()
    ttl_s: float = 0.0
    detail: str = ""
    secure: bool = False
    canonical: str = ""


class RecordLookup(Protocol):
    """Asks one question. Never raises for DNS trouble: it is an `Answer` status."""

    async def lookup(self, name: str, rdtype: str) -> Answer: ...


# --- The real thing: dnspython on trio -------------------------------------------


class DnspythonLookup:
    """Questions to real nameservers through ``dns.asyncresolver`` on the trio backend.

    dnspython's own cache is off (`CachingLookup` is the cache) and its deadline
    is set past `timeout_s`, so the trio cancel scope in `CachingLookup` is what
    ends a slow lookup. Each nameserver gets a share of the timeout, so a dead
    first server leaves time to ask the next.
    """

    def __init__(self, config: ResolverConfig) -> None:
        if config.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in config.nameservers]
        else:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                raise ConfigError(
                    f"no nameservers configured and the system has none ({exc}); set [dns] nameservers",
                    key="dns.nameservers",
                ) from None
        resolver.cache = None
        # AD in the question asks the resolver to say whether it validated the answer.
        resolver.flags = dns.flags.RD | dns.flags.AD
        resolver.timeout = config.timeout_s / max(2, len(resolver.nameservers))
        resolver.lifetime = config.timeout_s + 1.0
        self._resolver = resolver
        # Explicitly trio: dnspython's sniffed default is remembered process-wide.
        self._backend = dns.asyncbackend.get_backend("trio")

    @property
    def nameservers(self) -> list[str]:
        return [str(ns) for ns in self._resolver.nameservers]

    async def lookup(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name)
            answer = await self._resolver.resolve(
                qname, rdtype, raise_on_no_answer=False, search=False, backend=self._backend
            )
        except dns.resolver.NXDOMAIN:
            return Answer(Status.NXDOMAIN)
        except dns.resolver.NoNameservers as exc:
            return Answer(Status.SERVFAIL, detail=_server_errors(exc))
        except dns.resolver.LifetimeTimeout:
            return Answer(Status.TIMEOUT)
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return Answer(Status.SERVFAIL, detail=f"{type(exc).__name__}: {exc}")
        secure = bool(answer.response.flags & dns.flags.AD)
        if answer.rrset is None:
            return Answer(Status.NODATA, secure=secure)
        ttl_s = float(answer.chaining_result.minimum_ttl)
        if rdtype in ("A", "AAAA"):
            canonical = answer.canonical_name.to_text().lower().removesuffix(".")
            return Answer(Status.ANSWER, tuple(rdata.address for rdata in answer.rrset), ttl_s, secure=secure,
                          canonical=canonical if canonical != qname.to_text().lower().removesuffix(".") else "")
        if rdtype == "MX":
            records = []
            for rdata in answer.rrset:
                try:
                    records.append(MxRecord.parse(rdata.preference, rdata.exchange.to_text()))
                except ValueError:
                    continue  # a target that is no host name cannot be connected to
            return Answer(Status.ANSWER, tuple(records), ttl_s, secure=secure)
        if rdtype == "TLSA":
            tlsa = tuple(TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer.rrset)
            return Answer(Status.ANSWER, tlsa, ttl_s, secure=secure)
        if rdtype == "TXT":  # each record's strings joined (RFC 6376 3.6.2.2), e.g. DKIM keys
            texts = tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset)
            return Answer(Status.ANSWER, texts, ttl_s, secure=secure)
        return Answer(Status.ANSWER, tuple(rdata.to_text() for rdata in answer.rrset), ttl_s, secure=secure)


def _server_errors(exc: dns.resolver.NoNameservers) -> str:
    """``"REFUSED"``, ``"SERVFAIL"``: what the servers said, for operators."""
    said = []
    for error in exc.kwargs.get("errors", []):
        what = error[3]
        text = what if isinstance(what, str) else type(what).__name__
        if text not in said:
            said.append(text)
    return ", ".join(said) or "all nameservers failed"


# --- The cache in front ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LookupStatistics:
    """A snapshot for the admin API and metrics."""

    queries_sent: int
    cache_hits: int
    coalesced: int
    in_flight: int
    cached_entries: int
    max_concurrency: int


class _Flight:
    """One question in flight; askers of the same question wait on `done`."""

    __slots__ = ("done", "answer")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: Answer | None = None


class CachingLookup:
    """A cache, one flight per question, a concurrency bound and a deadline around any lookup.

    Time is `trio.current_time()`, so tests run it under `MockClock`. If the
    task asking a question is cancelled, the askers waiting for it do not hang:
    they wake up and one of them asks again.
    """

    def __init__(self, inner: RecordLookup, config: ResolverConfig = ResolverConfig()) -> None:
        self._inner = inner
        self._config = config
        self._entries: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._limiter = trio.CapacityLimiter(config.max_concurrency)
        self._queries_sent = 0
        self._cache_hits = 0
        self._coalesced = 0

    def statistics(self) -> LookupStatistics:
        return LookupStatistics(
            queries_sent=self._queries_sent,
            cache_hits=self._cache_hits,
            coalesced=self._coalesced,
            in_flight=self._limiter.borrowed_tokens,
            cached_entries=len(self._entries),
            max_concurrency=self._config.max_concurrency,
        )

    async def lookup(self, name: str, rdtype: str) -> Answer:
        key = (name.lower().removesuffix("."), rdtype)
        while True:
            cached = self._cached(key)
            if cached is not None:
                self._cache_hits += 1
                return cached
            flight = self._flights.get(key)
            if flight is None:
                break
            self._coalesced += 1
            await flight.done.wait()
            if flight.answer is not None:
                return flight.answer
            # The asker was cancelled before an answer came: loop, maybe ask ourselves.
        flight = self._flights[key] = _Flight()
        try:
            answer = await self._ask(*key)
            flight.answer = answer
            self._store(key, answer)
            return answer
        finally:
            del self._flights[key]
            flight.done.set()

    def cached(self, questions: Sequence[tuple[str, str]]) -> list[Answer] | None:
        """The answers to (name, rdtype) questions if the cache holds them all now (each
        a cache hit), else None (no hit counted); never waits."""
        answers = []
        for name, rdtype in questions:
            answer = self._cached((name.lower().removesuffix("."), rdtype))
            if answer is None:
                return None
            answers.append(answer)
        self._cache_hits += len(answers)
        return answers

    async def _ask(self, name: str, rdtype: str) -> Answer:
        async with self._limiter:
            self._queries_sent += 1
            with trio.move_on_after(self._config.timeout_s):
                return await self._inner.lookup(name, rdtype)
            return Answer(Status.TIMEOUT)

    def _cached(self, key: tuple[str, str]) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if trio.current_time() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def _store(self, key: tuple[str, str], answer: Answer) -> None:
        ttl_s = self._ttl_s(answer)
        if ttl_s <= 0 or self._config.cache_size <= 0:
            return
        self._entries[key] = (trio.current_time() + ttl_s, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self._config.cache_size:
            self._entries.popitem(last=False)

    def _ttl_s(self, answer: Answer) -> float:
        config = self._config
        if answer.status is Status.ANSWER:
            return min(max(answer.ttl_s, config.ttl_floor_s), config.ttl_ceiling_s)
        if answer.status.is_failure:
            return config.failure_ttl_s
        return config.negative_ttl_s


# --- From answers to an MxResolution ---------------------------------------------

_WORST_FIRST = (Status.TIMEOUT, Status.SERVFAIL, Status.NXDOMAIN, Status.NODATA)


# Record types asked in turn, stopping at the first that has addresses.
_ASK_ORDER = {
    IpLookupStrategy.IPV4_ONLY: ("A",),
    IpLookupStrategy.IPV6_ONLY: ("AAAA",),
    IpLookupStrategy.IPV4_THEN_IPV6: ("A", "AAAA"),
    IpLookupStrategy.IPV6_THEN_IPV4: ("AAAA", "A"),
}


def _worst(*answers: Answer) -> Status:
    """The status that best explains why answers hold no records."""
    statuses = {a.status for a in answers}
    return next((s for s in _WORST_FIRST if s in statuses), Status.NODATA)


class DnsResolver:
    """Resolves destination domains to an `MxResolution`: hosts, addresses, site.

    Implements `trimta.core.mx.Resolver`. The MX hosts of a domain are resolved
    concurrently; each question goes through `lookup` (in production a
    `CachingLookup`, so repeated and concurrent questions are cheap). `rng`
    shuffles MX hosts of equal preference; pass a seeded one for repeatable order.
    """

    def __init__(
        self,
        lookup: RecordLookup,
        *,
        ip_lookup_strategy: IpLookupStrategy = IpLookupStrategy.IPV4_AND_IPV6,
        rng: random.Random | None = None,
    ) -> None:
        self.lookup = lookup
        self.ip_lookup_strategy = ip_lookup_strategy
        self._rng = rng or random.Random()

    @classmethod
    def from_config(cls, config: ResolverConfig, *, rng: random.Random | None = None) -> DnsResolver:
        """The production stack: dnspython, behind a `CachingLookup`, as `config` says."""
        lookup = CachingLookup(DnspythonLookup(config), config)
        return cls(lookup, ip_lookup_strategy=config.ip_lookup_strategy, rng=rng)

    def statistics(self) -> LookupStatistics | None:
        """The cache's counters, when the lookup is a `CachingLookup`."""
        return self.lookup.statistics() if isinstance(self.lookup, CachingLookup) else None

    async def resolve_mx(self, domain: str, *, mx_rollup: bool = True) -> MxResolution:
        """For `domain`: hosts in connection order, their addresses and the site, or a failure."""
        resolution = await self._resolve_mx(domain.strip().lower().removesuffix("."))
        return resolution.with_rollup(mx_rollup)

    async def resolve_addresses(self, host: str) -> list[str]:
        """A single host's addresses under the strategy; IP addresses and literals as themselves."""
        text = host.strip().lower().removesuffix(".")
        try:
            literal = parse_domain_literal(text)
            if literal is not None:
                return [literal]
            return [str(ipaddress.ip_address(text))]
        except ValueError:
            pass
        try:
            name = _ascii_domain(text)
        except ValueError:
            return []
        addresses, _ = await self._host_addresses(name)
        return list(addresses)

    async def lookup_tlsa(self, host: str, port: int = 25) -> TlsaLookup:
        """Whether DANE applies to MX `host` (RFC 7672 section 2.2): its addresses and TLSA records.

        The TLSA records (``_PORT._tcp.HOST``) count only when the host's address
        records are DNSSEC-secure too (section 2.2.2), so they are looked at first
        (cached: delivery asked for them moments ago). A failed or bogus TLSA lookup
        is `DnssecState.FAILED`: the host must not be used without knowing. Domain
        literals and IP addresses have no TLSA records.
        """
        text = host.strip().lower().removesuffix(".")
        if text.startswith("[") or _is_address(text):
            return TlsaLookup(host, DnssecState.INSECURE, detail="an address, not a host name")
        try:
            name = _ascii_domain(text)
        except ValueError:
            return TlsaLookup(host, DnssecState.INSECURE, detail="not a host name")
        answers = [await self.lookup.lookup(name, rdtype) for rdtype in _address_types(self.ip_lookup_strategy)]
        with_addresses = [a for a in answers if a.records]
        if not with_addresses:
            return TlsaLookup(host, DnssecState.INSECURE, detail="no address records")
        if not all(a.secure for a in with_addresses):
            return TlsaLookup(host, DnssecState.INSECURE, detail=f"the address records of {name} are not DNSSEC-signed")
        # RFC 7672 section 2.2.2: behind a (secure) CNAME, the TLSA records of the name it
        # leads to come first, then those of the MX host name.
        expanded = next((a.canonical for a in with_addresses if a.canonical), "")
        if expanded:
            base = await self._tlsa_at(host, expanded, port)
            if base.state is not DnssecState.INSECURE:
                return dataclasses.replace(base, base_domain=expanded)
        return await self._tlsa_at(host, name, port)

    async def _tlsa_at(self, host: str, name: str, port: int) -> TlsaLookup:
        qname = f"_{port}._tcp.{name}"
        tlsa = await self.lookup.lookup(qname, "TLSA")
        if tlsa.status.is_failure:
            why = tlsa.detail or tlsa.status.value.upper()
            return TlsaLookup(host, DnssecState.FAILED, detail=f"TLSA lookup for {qname} failed ({why}; bogus DNSSEC "
                                                               "gives SERVFAIL)")
        if tlsa.status is not Status.ANSWER:
            return TlsaLookup(host, DnssecState.INSECURE, detail=f"no TLSA records at {qname}", chain_secure=True)
        if not tlsa.secure:
            return TlsaLookup(host, DnssecState.INSECURE, detail=f"the TLSA records at {qname} are not DNSSEC-signed",
                              chain_secure=True)
        return TlsaLookup(host, DnssecState.SECURE, tuple(tlsa.records))

    async def sets_ad_bit(self) -> bool:
        """Whether the resolver validates DNSSEC: it sets AD on the root zone's SOA (signed since 2010)."""
        return (await self.lookup.lookup(".", "SOA")).secure

    async def _resolve_mx(self, domain: str) -> MxResolution:
        try:
            address = parse_domain_literal(domain)
        except ValueError as exc:
            return MxResolution.failed(domain, MxFailure.INVALID_DOMAIN, str(exc))
        if address is not None:
            return MxResolution.for_literal(domain, address)
        try:
            name = _ascii_domain(domain)
        except ValueError as exc:
            return MxResolution.failed(domain, MxFailure.INVALID_DOMAIN, str(exc))

        mx = await self.lookup.lookup(name, "MX")
        if mx.status is Status.NXDOMAIN:
            return MxResolution.failed(domain, MxFailure.NXDOMAIN)
        if mx.status.is_failure:
            return _transient(domain, mx.status, mx.detail)
        if mx.status is Status.NODATA:
            return await self._implicit_mx(domain, name)
        usable = [r for r in mx.records if not r.is_null]
        if not usable:
            if any(r.is_null for r in mx.records):
                return MxResolution.failed(domain, MxFailure.NULL_MX)
            return MxResolution.failed(domain, MxFailure.NO_ADDRESSES, "no MX record names a usable host")
        # A "." beside real hosts breaks RFC 7505 section 3; the real hosts win.
        ordered = connection_order(usable, self._rng)
        # Hosts whose addresses the cache holds are done at once; only the others cost
        # a task each (a busy relay resolves the same few MX hosts all day).
        known = [self._cached_host_addresses(r.host) for r in ordered]
        found: list[tuple[tuple[str, ...], str | None]] = [k or ((), None) for k in known]
        if None in known:

            async def resolve_one(i: int, record: MxRecord) -> None:
                found[i] = await self._host_addresses(record.host)

            async with trio.open_nursery() as nursery:
                for i, record in enumerate(ordered):
                    if known[i] is None:
                        nursery.start_soon(resolve_one, i, record)
        else:
            await trio.lowlevel.checkpoint()
        hosts = [MxHost(r.host, r.preference, a, e) for r, (a, e) in zip(ordered, found, strict=True)]
        return MxResolution.for_hosts(domain, usable, hosts)

    def _cached_host_addresses(self, host: str) -> tuple[tuple[str, ...], str | None] | None:
        """`_host_addresses` from the cache alone, or None if it lacks an answer needed."""
        if not isinstance(self.lookup, CachingLookup):
            return None
        if self.ip_lookup_strategy is IpLookupStrategy.IPV4_AND_IPV6:
            answers = self.lookup.cached([(host, "A"), (host, "AAAA")])
        else:
            # Asked in turn, up to the first that has addresses, as `_host_addresses` does.
            answers = []
            for rdtype in _ASK_ORDER[self.ip_lookup_strategy]:
                peeked = self.lookup.cached([(host, rdtype)])
                if peeked is None:
                    return None
                answers += peeked
                if peeked[0].records:
                    break
        if answers is None:
            return None
        addresses = tuple(a for answer in answers for a in answer.records)
        return addresses, (None if addresses else _worst(*answers).value)

    async def _implicit_mx(self, domain: str, name: str) -> MxResolution:
        """RFC 5321 5.1: no MX records, so the domain itself is the host, if it has addresses."""
        v4, v6 = await self._both(name)
        if not v4.records and not v6.records:
            worst = _worst(v4, v6)
            if worst.is_failure:
                return _transient(domain, worst, v4.detail or v6.detail)
            if worst is Status.NXDOMAIN:
                return MxResolution.failed(domain, MxFailure.NXDOMAIN)
            return MxResolution.failed(domain, MxFailure.NO_RECORDS)
        addresses = self._choose(v4, v6)
        error = None if addresses else f"no address allowed by {self.ip_lookup_strategy.value}"
        record = MxRecord(0, name)
        return MxResolution.for_hosts(domain, [record], [MxHost(name, 0, addresses, error)], implicit_mx=True)

    async def _host_addresses(self, host: str) -> tuple[tuple[str, ...], str | None]:
        """A host's addresses under the strategy, or none and the worst status as the reason."""
        if self.ip_lookup_strategy is IpLookupStrategy.IPV4_AND_IPV6:
            answers: tuple[Answer, ...] = await self._both(host)
        else:
            answers = ()
            for rdtype in _ASK_ORDER[self.ip_lookup_strategy]:
                answers += (await self.lookup.lookup(host, rdtype),)
                if answers[-1].records:
                    break
        addresses = tuple(a for answer in answers for a in answer.records)
        return addresses, (None if addresses else _worst(*answers).value)

    async def _both(self, name: str) -> tuple[Answer, Answer]:
        """A and AAAA for `name`, asked at the same time."""
        results: dict[str, Answer] = {}

        async def ask(rdtype: str) -> None:
            results[rdtype] = await self.lookup.lookup(name, rdtype)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "A")
            nursery.start_soon(ask, "AAAA")
        return results["A"], results["AAAA"]

    def _choose(self, v4: Answer, v6: Answer) -> tuple[str, ...]:
        match self.ip_lookup_strategy:
            case IpLookupStrategy.IPV4_ONLY:
                return v4.records
            case IpLookupStrategy.IPV6_ONLY:
                return v6.records
            case IpLookupStrategy.IPV4_THEN_IPV6:
                return v4.records or v6.records
            case IpLookupStrategy.IPV6_THEN_IPV4:
                return v6.records or v4.records
        return v4.records + v6.records


def _address_types(strategy: IpLookupStrategy) -> tuple[str, ...]:
    return _ASK_ORDER.get(strategy, ("A", "AAAA"))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _transient(domain: str, status: Status, detail: str) -> MxResolution:
    failure = MxFailure.TIMEOUT if status is Status.TIMEOUT else MxFailure.DNS_ERROR
    return MxResolution.failed(domain, failure, detail or status.value.upper())


def _ascii_domain(domain: str) -> str:
    """The domain as DNS asks for it: IDNA 2008 A-labels for non-ASCII names
    (`domains.ascii_domain`: ``faß.de`` is ``xn--fa-hia.de``, never IDNA 2003's
    ``fass.de``); ValueError if invalid."""
    try:
        text = ascii_domain(domain)
    except ValueError:
        raise ValueError(f"not a domain name: {domain!r}") from None
    if ":" in text:
        raise ValueError(f"not a domain name: {domain!r}")
    return normalize_host(text)


__all__ = [
    "Answer",
    "CachingLookup",
    "DnsResolver",
    "DnspythonLookup",
    "LookupStatistics",
    "RecordLookup",
    "ResolverConfig",
    "Status",
]
