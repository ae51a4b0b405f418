"""MX records, connection order, and what resolving a destination domain yields.

This is the pure half of destination lookup: the DNS adapter
(`trimta.adapters.dns`) asks the questions, and the functions here decide what
the answers mean for delivery, following RFC 5321 section 5.1 and RFC 7505:

- MX records are grouped by preference, best (lowest) first; within a
  preference the order is random, so load spreads over equal hosts.
- No MX records but address records: the domain itself is the only host
  ("implicit MX").
- A null MX (``MX 0 .``) means the domain accepts no mail: a permanent failure.
- NXDOMAIN is permanent; SERVFAIL, timeouts and MX hosts without addresses are
  transient, and the message is retried.

`MxResolution` carries the outcome as a value: the hosts in connection order with
their addresses and the site, or a failure kind with its `Reply` and bounce
classification. `Resolver` is the interface delivery code depends on; the real
resolver and the fake one in `trimta.testing.resolver` both implement it.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from trimta.core.mta_sts import StsApplied
from trimta.core.sites import normalize_host, own_site, site_name
from trimta.protocol.replies import Reply, reply


@dataclass(frozen=True, slots=True, order=True)
class MxRecord:
    """One MX record: a preference (lower is better) and a normalised host name.

    ``host == "."`` is the RFC 7505 null MX target.
    """

    preference: int
    host: str

    @classmethod
    def parse(cls, preference: int, host: str) -> MxRecord:
        """A record from DNS text, ``host`` lowercased and without trailing dot.

        The root name stays ``"."``; any other name that is not a host name raises
        ValueError (the record is unusable for routing).
        """
        if host.strip() in (".", ""):
            return cls(preference, ".")
        return cls(preference, normalize_host(host))

    @property
    def is_null(self) -> bool:
        return self.host == "."


class IpLookupStrategy(enum.Enum):
    """Which address records an MX host is resolved to (KumoMTA's ``ip_strategy`` names).

    The two ``then`` strategies fall back: ask for the first family, and only if
    the host has none of those addresses ask for the other. ``Ipv4AndIpv6`` asks
    for both and lists IPv4 addresses first.
    """

    IPV4_AND_IPV6 = "Ipv4AndIpv6"
    IPV4_ONLY = "Ipv4Only"
    IPV6_ONLY = "Ipv6Only"
    IPV4_THEN_IPV6 = "Ipv4thenIpv6"
    IPV6_THEN_IPV4 = "Ipv6thenIpv4"

    @classmethod
    def parse(cls, text: str) -> IpLookupStrategy:
        """A strategy from its name, case-insensitively; ValueError lists the names."""
        for member in cls:
            if member.value.lower() == text.strip().lower():
                return member
        names = ", ".join(f'"{m.value}"' for m in cls)
        raise ValueError(f"unknown ip lookup strategy {text!r}; expected one of {names}")


class MxFailure(enum.Enum):
    """Why a domain has no addresses to deliver to."""

    NULL_MX = "null_mx"  # RFC 7505: the domain accepts no mail
    NXDOMAIN = "nxdomain"  # the domain does not exist
    NO_RECORDS = "no_records"  # the domain exists but has neither MX nor A/AAAA
    INVALID_DOMAIN = "invalid_domain"  # not a domain name, or an unusable literal
    DNS_ERROR = "dns_error"  # SERVFAIL, REFUSED, network error: try again later
    TIMEOUT = "timeout"  # no answer in time: try again later
    NO_ADDRESSES = "no_addresses"  # MX hosts exist, none resolves to an address
    MTA_STS = "mta_sts"  # an enforced MTA-STS policy lists none of the MX hosts: try again later


_PERMANENT = frozenset({MxFailure.NULL_MX, MxFailure.NXDOMAIN, MxFailure.NO_RECORDS, MxFailure.INVALID_DOMAIN})


def failure_reply(failure: MxFailure, domain: str, detail: str = "") -> Reply:
    """The reply a message to `domain` fails with (RFC 3463 codes, RFC 7505 for null MX)."""
    extra = f" ({detail})" if detail else ""
    match failure:
        case MxFailure.NULL_MX:
            return reply(556, "5.1.10", f"Recipient domain {domain} has null MX and accepts no mail")
        case MxFailure.NXDOMAIN:
            return reply(550, "5.1.2", f"Recipient domain {domain} does not exist (NXDOMAIN)")
        case MxFailure.NO_RECORDS:
            return reply(550, "5.1.2", f"Recipient domain {domain} has no MX or address records")
        case MxFailure.INVALID_DOMAIN:
            return reply(550, "5.1.2", f"Recipient domain {domain} is not a valid destination{extra}")
        case MxFailure.DNS_ERROR:
            return reply(451, "4.4.3", f"DNS lookup for {domain} failed{extra}, will retry")
        case MxFailure.TIMEOUT:
            return reply(451, "4.4.3", f"DNS lookup for {domain} timed out, will retry")
        case MxFailure.NO_ADDRESSES:
            return reply(451, "4.4.4", f"No address found for any MX host of {domain}{extra}, will retry")
        case MxFailure.MTA_STS:
            return reply(451, "4.7.5", f"No MX host of {domain} may be used{extra}, will retry")
    raise AssertionError(failure)


def bounce_classification(failure: MxFailure) -> str:
    """The KumoMTA bounce class of a failure: ``BadDomain`` or ``DNSFailure``."""
    return "BadDomain" if failure in _PERMANENT else "DNSFailure"


def site_order(records: Iterable[MxRecord]) -> list[MxRecord]:
    """Records in the order site names use: by preference, then by host name."""
    return sorted(set(records))


def connection_order(records: Iterable[MxRecord], rng: random.Random) -> list[MxRecord]:
    """Records in the order to try them: best preference first, ties shuffled.

    RFC 5321 5.1: hosts of equal preference are tried in random order so that
    senders spread their load over them. `rng` is injected so tests can pin it.
    """
    groups: dict[int, list[MxRecord]] = {}
    for record in site_order(records):
        groups.setdefault(record.preference, []).append(record)
    ordered: list[MxRecord] = []
    for preference in sorted(groups):
        group = groups[preference]
        rng.shuffle(group)
        ordered.extend(group)
    return ordered


def mx_site(records: Iterable[MxRecord]) -> str:
    """The site of an MX set: `site_name` over the hosts in `site_order`."""
    return site_name(r.host for r in site_order(records) if not r.is_null)


def parse_domain_literal(domain: str) -> str | None:
    """The address of a domain literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``), else None.

    RFC 5321 4.1.3. Raises ValueError for a bracketed text that is not an IPv4
    address or an ``IPv6:``-tagged IPv6 address. The address comes back in its
    canonical text (IPv6 compressed, lowercase).
    """
    text = domain.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise ValueError(f"not a usable address literal: {domain!r}") from None


@dataclass(frozen=True, slots=True)
class MxHost:
    """One host to deliver to: its name, MX preference and addresses in the order to try.

    `error` says why a host has no addresses (``"nxdomain"``, ``"timeout"``, ...).
    """

    name: str
    preference: int
    addresses: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MxResolution:
    """What resolving a destination domain yields: where to connect, under which site.

    On success `hosts` are in connection order and `site` names the ready queue.
    On failure `failure` says why, and `reply` / `bounce_classification` say what a
    message to the domain fails with. A domain whose MX hosts have no addresses
    still has its site (the MX set is known), so operators can see where it would go.
    """

    domain: str
    hosts: tuple[MxHost, ...] = ()
    site: str = ""
    failure: MxFailure | None = None
    detail: str = ""
    implicit_mx: bool = False
    literal: bool = False
    # The MTA-STS policy applied to the MX set (enforce: `hosts` are those it lists).
    mta_sts: StsApplied | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def null_mx(self) -> bool:
        return self.failure is MxFailure.NULL_MX

    @property
    def is_permanent(self) -> bool:
        return self.failure in _PERMANENT

    @property
    def is_transient(self) -> bool:
        return self.failure is not None and not self.is_permanent

    @property
    def reply(self) -> Reply | None:
        """The failure as an SMTP reply, e.g. ``556 5.1.10 ...`` for a null MX."""
        if self.failure is None:
            return None
        return failure_reply(self.failure, self.domain, self.detail)

    @property
    def bounce_classification(self) -> str | None:
        return None if self.failure is None else bounce_classification(self.failure)

    @property
    def targets(self) -> tuple[tuple[str, str], ...]:
        """(host, address) pairs in the order to try them, each address once."""
        seen: set[str] = set()
        out: list[tuple[str, str]] = []
        for host in self.hosts:
            for address in host.addresses:
                if address not in seen:
                    seen.add(address)
                    out.append((host.name, address))
        return tuple(out)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Addresses in the order to try them, each once."""
        return tuple(address for _, address in self.targets)

    def with_rollup(self, rollup: bool) -> MxResolution:
        """This resolution under ``mx_rollup = rollup``: not rolled up, the site is the domain's own.

        See `sites.site_for`; an empty site (null MX, failed lookup) stays empty.
        """
        if rollup or not self.site:
            return self
        return replace(self, site=own_site(self.domain))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``resolve-site --json`` and the admin API; hosts by preference."""
        by_preference = sorted(self.hosts, key=lambda h: (h.preference, h.name))
        out: dict[str, Any] = {
            "domain": self.domain,
            "site": self.site,
            "null_mx": self.null_mx,
            "implicit_mx": self.implicit_mx,
            "literal": self.literal,
            "hosts": [
                {"name": h.name, "preference": h.preference, "addresses": list(h.addresses), "error": h.error}
                for h in by_preference
            ],
            "error": None if self.failure is None else self.failure.value,
            "detail": self.detail or None,
        }
        if self.mta_sts is not None:
            applied = self.mta_sts
            out["mta_sts"] = {"mode": applied.mode.value, "mx": list(applied.policy.mx),
                              "max_age": applied.policy.max_age_s, "id": applied.policy_id,
                              "excluded": list(applied.excluded), "how": applied.how}
        if self.failure is not None:
            out["reply"] = str(self.reply)
            out["permanent"] = self.is_permanent
            out["bounce_classification"] = self.bounce_classification
        return out

    # --- Constructors: each says which case of RFC 5321 5.1 / RFC 7505 it is. ----

    @classmethod
    def failed(cls, domain: str, failure: MxFailure, detail: str = "", *, site: str = "") -> MxResolution:
        return cls(domain=domain, site=site, failure=failure, detail=detail)

    @classmethod
    def for_literal(cls, domain: str, address: str) -> MxResolution:
        """A domain literal: its only host is the address, and so is its site."""
        return cls(domain=domain, hosts=(MxHost(domain, 0, (address,)),), site=address, literal=True)

    @classmethod
    def for_hosts(
        cls, domain: str, records: Sequence[MxRecord], hosts: Sequence[MxHost], *, implicit_mx: bool = False
    ) -> MxResolution:
        """The outcome once every MX host was resolved.

        `records` are the MX set (it decides the site), `hosts` the same hosts in
        connection order with their addresses. If no host has an address, the
        result is a transient `MxFailure.NO_ADDRESSES` that keeps the site.
        """
        site = mx_site(records)
        if any(h.addresses for h in hosts):
            return cls(domain, tuple(hosts), site, implicit_mx=implicit_mx)
        detail = "; ".join(f"{h.name}: {h.error or 'no address'}" for h in hosts)
        return cls(domain, tuple(hosts), site, MxFailure.NO_ADDRESSES, detail, implicit_mx=implicit_mx)


class Resolver(Protocol):
    """What delivery asks DNS: for domain D, which site, and which addresses in which order.

    Implementations never raise for DNS trouble: failures are `MxResolution`
    values. `resolve_addresses` answers for a single host (a smart host, say)
    under the configured `IpLookupStrategy`, and returns an empty list when the
    host has no usable address.
    """

    async def resolve_mx(self, domain: str, *, mx_rollup: bool = True) -> MxResolution: ...

    async def resolve_addresses(self, host: str) -> list[str]: ...
