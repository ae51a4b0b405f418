"""``trimta resolve-site DOMAIN...``: where mail to these domains would go, and under which site.

For each domain it prints the MX hosts with their preferences and addresses, the
site name (the ready queue's destination part), failures as such (null MX,
NXDOMAIN, DNS errors), and which of the other domains asked about share the
site. It also shows the MTA-STS policy that applies to each domain (RFC 8461) and why:
the policy as the daemon's cache (``<spool>/mta-sts.sqlite``, read only) or a fresh
fetch gives it, or why there is none; under ``enforce`` the hosts and the site are
those the policy leaves. For each MX host it shows what DANE (RFC 7672) would do on a
path with ``enable_dane``: the host's TLSA records and whether they and its addresses
are DNSSEC-secure (``--no-dane`` leaves that out). ``--json`` prints the same as a JSON array for scripts. It resolves
through the ``[dns]`` table of the configuration (``--config FILE``, else
``./trimta.toml``, else the embedded default: ``/etc/resolv.conf``), as the daemon would.

Exit status: 0 if every domain has somewhere to deliver, 1 if any has not, 2 for
a configuration error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import trio

from trimta.adapters.config import ConfigError
from trimta.adapters.dns import DnsResolver
from trimta.adapters.dns_config import ResolverConfig
from trimta.adapters.mta_sts_fetch import PolicyFetcher
from trimta.adapters.mta_sts_store import FILE_NAME, PolicyStore
from trimta.commands._config import add_config_option
from trimta.core.dane import DaneDecision, TlsaLookup, decide, policy_label, presentation
from trimta.core.mta_sts import StsLookup
from trimta.core.mta_sts_delivery import apply_policy
from trimta.core.mx import MxResolution
from trimta.services.mta_sts import MtaStsService


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resolve-site",
        help="show the MX hosts, addresses and site name of domains",
        description=(
            "Resolve each DOMAIN as delivery would: MX hosts by preference, their addresses, "
            "and the site name they factor into. Exit status 1 if a domain cannot be delivered to."
        ),
    )
    parser.add_argument("domains", nargs="+", metavar="DOMAIN")
    add_config_option(parser, "resolve through the [dns] settings of this configuration "
                      "(default: ./trimta.toml if present, else /etc/resolv.conf)")
    parser.add_argument("--json", action="store_true", help="print a JSON array, one object per domain")
    parser.add_argument("--no-mta-sts", action="store_true", help="do not look up MTA-STS policies")
    parser.add_argument("--no-dane", action="store_true", help="do not look up the MX hosts' TLSA records")
    parser.add_argument("--smtp-port", type=int, default=25, metavar="PORT",
                        help="the port whose TLSA records (_PORT._tcp.HOST) DANE uses (default 25)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config, spool = load_resolver_and_spool(args.config)
        domains = list(dict.fromkeys(d.strip().lower().removesuffix(".") for d in args.domains if d.strip()))
        results = trio.run(resolve_all, config, domains)
        lookups: dict[str, StsLookup] = {}
        if not args.no_mta_sts:
            results, lookups = trio.run(apply_mta_sts, config, results, spool)
        dane: dict[str, TlsaLookup] = {}
        if not args.no_dane:
            dane = trio.run(lookup_dane, config, results, args.smtp_port)
    except ConfigError as exc:
        print(f"trimta resolve-site: {exc}", file=sys.stderr)
        return 2
    shared = shared_sites(results)
    if args.json:
        rows = [dict(r.to_dict(), shared_with=shared[r.domain]) for r in results]
        for row in rows:
            lookup = lookups.get(row["domain"])
            if lookup is not None and "mta_sts" not in row:
                row["mta_sts"] = {"mode": lookup.policy.mode.value if lookup.policy else None,
                                  "how": lookup.how, "error": lookup.error or None}
            if lookup is not None:
                row["mta_sts"]["expires"] = int(lookup.expires_at_s) if lookup.expires_at_s is not None else None
            for host in row.get("hosts") or ():
                if host.get("name") in dane:
                    host["dane"] = dane_dict(dane[host["name"]])
        print(json.dumps(rows, indent=2))
    else:
        print("\n\n".join(render(r, shared[r.domain], lookups.get(r.domain), dane) for r in results))
    return 0 if all(r.ok for r in results) else 1


def load_resolver_config(path: str | None) -> ResolverConfig:
    """The resolver settings of the configuration (the one rule: --config, ./trimta.toml,
    the embedded default, whose [dns] is /etc/resolv.conf)."""
    from trimta.adapters.config import load_config  # noqa: PLC0415 (every section's parser)

    return load_config(path).dns


def load_resolver_and_spool(path: str | None) -> tuple[ResolverConfig, Path]:
    """The resolver settings and the spool directory (where the daemon caches MTA-STS policies)."""
    from trimta.adapters.config import load_config  # noqa: PLC0415 (every section's parser)

    config = load_config(path)
    return config.dns, config.spool.path


async def apply_mta_sts(config: ResolverConfig, results: list[MxResolution],
                        spool: Path | None) -> tuple[list[MxResolution], dict[str, StsLookup]]:
    """Each domain's MTA-STS policy, looked up as the daemon would, and applied to its resolution.

    The daemon's cache is read (never written): a policy it keeps while the policy host
    is unreachable shows as such.
    """
    resolver = DnsResolver.from_config(config)
    sts = MtaStsService(lookup=resolver.lookup, fetcher=PolicyFetcher(resolver.resolve_addresses))
    if spool is not None and (spool / FILE_NAME).exists():
        store = PolicyStore(spool / FILE_NAME)
        try:
            for entry in store.load():
                sts.remember(entry)
        finally:
            store.close()
    lookups: dict[str, StsLookup] = {}
    out = list(results)

    async def one(i: int, r: MxResolution) -> None:
        if not r.ok or r.literal:
            return
        lookups[r.domain] = lookup = await sts.policy_for(r.domain)
        out[i] = apply_policy(r, lookup)

    async with trio.open_nursery() as nursery:
        for i, r in enumerate(results):
            nursery.start_soon(one, i, r)
    return out, lookups


async def lookup_dane(config: ResolverConfig, results: list[MxResolution], port: int) -> dict[str, TlsaLookup]:
    """Each MX host's TLSA lookup (addresses and records, DNSSEC status), as delivery makes it."""
    resolver = DnsResolver.from_config(config)
    hosts = {h.name for r in results if r.ok and not r.literal for h in r.hosts}
    found: dict[str, TlsaLookup] = {}

    async def one(host: str) -> None:
        found[host] = await resolver.lookup_tlsa(host, port)

    async with trio.open_nursery() as nursery:
        for host in sorted(hosts):
            nursery.start_soon(one, host)
    return found


_DANE_MEANS = {
    DaneDecision.NOT_APPLICABLE: "not applicable",
    DaneDecision.AUTHENTICATE: "TLS required, the certificate must match",
    DaneDecision.UNAUTHENTICATED: "TLS required, without authentication (no usable record)",
    DaneDecision.DEFER: "host skipped, mail deferred",
}


def dane_dict(lookup: TlsaLookup) -> dict[str, object]:
    return {"state": lookup.state.value, "decision": decide(lookup).value,
            "records": [presentation(r) for r in lookup.records], "detail": lookup.detail or None}


def _render_dane(r: MxResolution, dane: dict[str, TlsaLookup]) -> list[str]:
    lines = []
    for host in sorted(r.hosts, key=lambda h: (h.preference, h.name)):
        lookup = dane.get(host.name)
        if lookup is None:
            continue
        decision = decide(lookup)
        what = _DANE_MEANS[decision]
        if decision is DaneDecision.AUTHENTICATE:
            what += f" ({policy_label(lookup.records)}: {', '.join(presentation(x) for x in lookup.records)})"
        elif lookup.detail:
            what += f" ({lookup.detail})"
        lines.append(f"  dane: {host.name}: {what}")
    return lines


async def resolve_all(config: ResolverConfig, domains: list[str]) -> list[MxResolution]:
    """Every domain resolved at once, results in the order asked."""
    resolver = DnsResolver.from_config(config)
    results: list[MxResolution | None] = [None] * len(domains)

    async def resolve(i: int, domain: str) -> None:
        results[i] = await resolver.resolve_mx(domain)

    async with trio.open_nursery() as nursery:
        for i, domain in enumerate(domains):
            nursery.start_soon(resolve, i, domain)
    return [r for r in results if r is not None]


def shared_sites(results: list[MxResolution]) -> dict[str, list[str]]:
    """For each domain, the other domains asked about that have the same (non-empty) site."""
    by_site: dict[str, list[str]] = {}
    for r in results:
        if r.site:
            by_site.setdefault(r.site, []).append(r.domain)
    return {r.domain: [d for d in by_site.get(r.site, []) if d != r.domain] for r in results}


def render(r: MxResolution, shared_with: list[str], lookup: StsLookup | None = None,
           dane: dict[str, TlsaLookup] | None = None) -> str:
    """The human form: one block per domain."""
    lines = [r.domain]
    if r.null_mx:
        lines.append("  null MX: accepts no mail")
    if r.site:
        lines.append(f"  site: {r.site}")
    for host in sorted(r.hosts, key=lambda h: (h.preference, h.name)):
        kind = "literal" if r.literal else "implicit" if r.implicit_mx else f"mx {host.preference}"
        where = " ".join(host.addresses) or f"no address ({host.error or 'none'})"
        lines.append(f"  {kind:<8} {host.name}  {where}")
    if r.failure is not None:
        lines.append(f"  error: {r.failure.value}: {r.reply}")
    lines += _render_mta_sts(lookup, r)
    lines += _render_dane(r, dane or {})
    if shared_with:
        lines.append(f"  same site as: {', '.join(shared_with)}")
    return "\n".join(lines)


def _render_mta_sts(lookup: StsLookup | None, r: MxResolution) -> list[str]:
    if lookup is None:
        return []
    policy = lookup.policy
    if policy is None:
        return [f"  mta-sts: no policy ({lookup.how})"]
    expires = ""
    if lookup.expires_at_s is not None:
        when = datetime.datetime.fromtimestamp(lookup.expires_at_s, datetime.timezone.utc)
        expires = f", expires {when:%Y-%m-%d %H:%M} UTC"
    lines = [f"  mta-sts: {policy.mode.value} (id {lookup.policy_id}, mx {', '.join(policy.mx) or '-'}, "
             f"max_age {policy.max_age_s}s; {lookup.how}{expires})"]
    if policy.mode.value == "enforce":
        lines.append("  mta-sts: TLS with a certificate valid for the MX name is required")
    applied = r.mta_sts
    if applied is not None and applied.excluded:
        verb = "not used" if applied.enforced else "would not be used under enforce"
        lines.append(f"  mta-sts: {verb}, not in the policy: {', '.join(applied.excluded)}")
    return lines
