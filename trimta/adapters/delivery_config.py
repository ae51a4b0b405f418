"""The delivery tables of ``trimta.toml``: queues, tenants, sources, pools, egress.

All of them are optional; with none, mail is retried every 20 minutes doubling,
expires after 7 days, and leaves through the built-in "unspecified" source with
KumoMTA's default egress path options. The tables, validated here once:

- ``[queues]``: defaults for every scheduled queue; ``[queues.domains."D"]``:
  overrides for messages to domain D; ``[tenants.T]``: overrides for tenant T's
  messages (same keys). A queue's config is resolved defaults -> domain -> tenant:
  the tenant's word is last because a tenant's contract (its pool, how long its
  mail may wait) holds whatever the destination.
- ``[sources.NAME]``: ``source_address``, ``ehlo_domain``.
- ``[pools.NAME]``: ``entries = [{ name = "ip-1", weight = 2 }, ...]``.
- ``[egress.default]``, ``[egress.sites."S"]``, ``[egress.domains."D"]``,
  ``[egress.sources."NAME"]``: egress path options with KumoMTA's names
  (`trimta.core.egress_options`), layered in that order.

Every mistake is a `ConfigError` naming the file and the key, with the closest
valid name for a misspelt key or a reference to something not defined.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from trimta.adapters.config_base import ConfigError, Table
from trimta.core import units
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import (
    OptionError,
    StaticPathProvider,
    apply_options,
    extra_options,
    parse_path_options,
)
from trimta.core.pools import DEFAULT_POOL, DEFAULT_SOURCE, UNSPECIFIED, EgressPool, EgressSource
from trimta.core.retry import QueueConfig

QUEUE_KEYS = ("retry_interval", "max_retry_interval", "max_age", "egress_pool", "max_message_rate")
SOURCE_KEYS = ("source_address", "ehlo_domain")
POOL_KEYS = ("entries",)
POOL_ENTRY_KEYS = ("name", "weight")
EGRESS_KEYS = ("default", "domains", "sites", "sources")

_Overrides = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """Everything delivery needs from the config file, parsed and cross-checked."""

    queue_defaults: QueueConfig = QueueConfig()
    # QueueConfig field overrides, by destination domain (lowercase) and by tenant.
    domain_overrides: Mapping[str, _Overrides] = field(default_factory=dict)
    tenant_overrides: Mapping[str, _Overrides] = field(default_factory=dict)
    sources: Mapping[str, EgressSource] = field(default_factory=lambda: {UNSPECIFIED: DEFAULT_SOURCE})
    pools: Mapping[str, EgressPool] = field(default_factory=lambda: {UNSPECIFIED: DEFAULT_POOL})
    path_provider: StaticPathProvider = field(default_factory=StaticPathProvider)
    # KumoMTA options that were accepted but are not acted on, as "file: key" lines.
    warnings: tuple[str, ...] = ()
    _cache: dict[tuple[str | None, str | None], QueueConfig] = field(
        default_factory=dict, compare=False, repr=False
    )

    def queue_config(self, tenant: str | None, campaign: str | None, domain: str) -> QueueConfig:
        """The config of scheduled queue ``campaign:tenant@domain``: defaults -> domain -> tenant.

        `campaign` is accepted for the day campaigns get their own overrides; it
        changes nothing yet.
        """
        domain = domain.lower().rstrip(".")
        key = (
            tenant if tenant is not None and tenant in self.tenant_overrides else None,
            domain if domain in self.domain_overrides else None,
        )
        config = self._cache.get(key)
        if config is None:
            config = _resolve(self.queue_defaults, self.domain_overrides.get(key[1] or ""),
                              self.tenant_overrides.get(key[0] or ""))
            self._cache[key] = config
        return config

    def pool(self, name: str | None) -> EgressPool:
        """The pool called `name`; None means the built-in "unspecified" pool."""
        return self.pools[name if name is not None else UNSPECIFIED]

    def pool_for(self, tenant: str | None, domain: str | None = None) -> EgressPool:
        """The pool a tenant's mail (to `domain`, when given) leaves through."""
        return self.pool(self.queue_config(tenant, None, domain or "").egress_pool)

    def source(self, name: str) -> EgressSource:
        return self.sources[name]


def _resolve(base: QueueConfig, *layers: _Overrides | None) -> QueueConfig:
    changes: dict[str, Any] = {}
    for layer in layers:
        if layer:
            changes.update(layer)
    return dataclasses.replace(base, **changes) if changes else base


# --- Parsing --------------------------------------------------------------------


def parse_delivery_config(
    raw: Mapping[str, Any], file: str, *, other_tenant_keys: Collection[str] = ()
) -> DeliveryConfig:
    """Read the delivery tables of a parsed ``trimta.toml`` document.

    `other_tenant_keys` are ``[tenants.NAME]`` keys other parts of the daemon own;
    they are left alone here instead of being reported as unknown.
    """
    sources = _parse_sources(raw.get("sources", {}), file)
    pools = _parse_pools(raw.get("pools", {}), file, sources)

    queues = Table(raw.get("queues", {}), file, "queues", (*QUEUE_KEYS, "domains"))
    defaults = _queue_overrides(queues, pools)
    domains: dict[str, _Overrides] = {}
    for name, table in _tables(queues.data.get("domains", {}), file, "queues.domains").items():
        prefix = f"queues.domains.{_part(name)}"
        domains[str(name).lower().rstrip(".")] = _queue_overrides(Table(table, file, prefix, QUEUE_KEYS), pools)

    tenant_keys = (*QUEUE_KEYS, *other_tenant_keys)
    tenants: dict[str, _Overrides] = {}
    for name, table in _tables(raw.get("tenants", {}), file, "tenants").items():
        t = Table(table, file, f"tenants.{_part(name)}", tenant_keys)
        tenants[str(name)] = _queue_overrides(t, pools)

    queue_defaults = _checked_queue_config(QueueConfig(), defaults, file, "queues")
    for name, overrides in domains.items():
        _checked_queue_config(queue_defaults, overrides, file, f"queues.domains.{_part(name)}")
    # Only retry_interval and max_retry_interval constrain each other, so a tenant is
    # checked against just the domains that set one of them (not tenants x domains).
    retry_keys = {"retry_interval_s", "max_retry_interval_s"}
    retry_domains = tuple(d for d, o in domains.items() if retry_keys & o.keys())
    for tenant, overrides in tenants.items():
        for domain in (None, *(retry_domains if retry_keys & overrides.keys() else ())):
            layered = {**(domains[domain] if domain else {}), **overrides}
            _checked_queue_config(queue_defaults, layered, file, f"tenants.{_part(tenant)}",
                                  context=f" (for mail to {domain})" if domain else "")

    provider, warnings = _parse_egress(raw.get("egress", {}), file, sources)
    return DeliveryConfig(
        queue_defaults=queue_defaults,
        domain_overrides=domains,
        tenant_overrides=tenants,
        sources=sources,
        pools=pools,
        path_provider=provider,
        warnings=warnings,
    )


def _tables(data: Any, file: str, key: str) -> Mapping[str, Any]:
    """A table of named tables (``[pools.NAME]``): any names, each checked by the caller."""
    if not isinstance(data, Mapping):
        raise ConfigError("expected a table", file=file, key=key)
    return data


def _part(name: object) -> str:
    """A key as TOML would write it in a dotted path: bare if it can be, else quoted."""
    text = str(name)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else f'"{text}"'



def _queue_overrides(t: Table, pools: Mapping[str, EgressPool]) -> dict[str, object]:
    """QueueConfig field overrides for the keys present in one queue-settings table."""
    out: dict[str, object] = {}
    if "retry_interval" in t.data:
        out["retry_interval_s"] = t.get("retry_interval", None, units.parse_positive_duration)
    if "max_retry_interval" in t.data:
        out["max_retry_interval_s"] = t.get("max_retry_interval", None, units.parse_positive_duration)
    if "max_age" in t.data:
        out["max_age_s"] = t.get("max_age", None, units.parse_positive_duration)
    if "max_message_rate" in t.data:
        out["max_message_rate"] = t.get("max_message_rate", None, units.parse_rate)
    if "egress_pool" in t.data:
        name = t.string("egress_pool", None)
        if name not in pools:
            raise t.error("egress_pool", f"no pool named {name!r}{_suggest(name, pools, 'pools')}")
        out["egress_pool"] = name
    return out


def _checked_queue_config(
    base: QueueConfig, overrides: _Overrides, file: str, key: str, context: str = ""
) -> QueueConfig:
    try:
        return _resolve(base, overrides)
    except ValueError as exc:
        raise ConfigError(f"{exc}{context}", file=file, key=key) from None


def _suggest(name: str, known: Collection[str], what: str) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1)
    if hint:
        return f"; did you mean {hint[0]!r}?"
    return f"; {what} defined: {', '.join(sorted(known))}"


def _parse_sources(data: Any, file: str) -> dict[str, EgressSource]:
    sources = {UNSPECIFIED: DEFAULT_SOURCE}
    for name, table in _tables(data, file, "sources").items():
        t = Table(table, file, f"sources.{_part(name)}", SOURCE_KEYS)
        address = t.get("source_address", None, _bind_address)
        ehlo = t.get("ehlo_domain", None, _host_name)
        sources[str(name)] = EgressSource(str(name), address, ehlo)
    return sources


def _bind_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected an IP address of this host, like "192.0.2.10" or "2001:db8::10", got {value!r}')
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(
            f'expected an IP address of this host, like "192.0.2.10" or "2001:db8::10", got {value!r}'
        ) from None


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise ValueError(f'expected a host name like "mta1.example.com", got {value!r}')
    return value.strip()


def _parse_pools(data: Any, file: str, sources: Mapping[str, EgressSource]) -> dict[str, EgressPool]:
    pools = {UNSPECIFIED: DEFAULT_POOL}
    for name, table in _tables(data, file, "pools").items():
        prefix = f"pools.{_part(name)}"
        t = Table(table, file, prefix, POOL_KEYS)
        entries = t.data.get("entries")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(
                'expected a non-empty list like [{ name = "ip-1", weight = 2 }, { name = "ip-2" }]',
                file=file, key=t.key("entries"),
            )
        parsed: list[tuple[str, int]] = []
        for i, entry in enumerate(entries):
            e = Table(entry, file, f"{prefix}.entries[{i}]", POOL_ENTRY_KEYS)
            source = e.string("name", None)
            if source is None:
                raise e.error("name", "each entry needs the name of a source")
            if source not in sources:
                raise e.error("name", f"no source named {source!r}{_suggest(source, sources, 'sources')}")
            if any(source == s for s, _ in parsed):
                raise e.error("name", f"source {source!r} is listed twice in this pool")
            weight = e.get("weight", 1, _weight)
            parsed.append((source, weight))
        try:
            pools[str(name)] = EgressPool(str(name), tuple(parsed))
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, key=t.key("entries")) from None
    return pools


def _weight(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0 (0 takes the source out of rotation), got {value!r}")
    return value


def _parse_egress(
    data: Any, file: str, sources: Mapping[str, EgressSource]
) -> tuple[StaticPathProvider, tuple[str, ...]]:
    egress = Table(data, file, "egress", EGRESS_KEYS)
    warnings: list[str] = []

    def options(table: Any, prefix: str) -> dict[str, object]:
        try:
            overrides = parse_path_options(_tables(table, file, prefix), where=file)
        except OptionError as exc:
            raise ConfigError(exc.message, file=file, key=f"{prefix}.{exc.key}") from None
        for name in extra_options(overrides):
            warnings.append(f"{file}: {prefix}.{name}: a KumoMTA option trimta does not act on; ignored")
        return overrides

    def named(section: str) -> dict[str, dict[str, object]]:
        tables = _tables(egress.data.get(section, {}), file, f"egress.{section}")
        return {str(name): options(table, f"egress.{section}.{_part(name)}") for name, table in tables.items()}

    default = apply_options(EgressPathConfig(), options(egress.data.get("default", {}), "egress.default"))
    by_site = named("sites")
    by_domain = named("domains")
    by_source = named("sources")
    for name in by_source:
        if name not in sources:
            raise ConfigError(
                f"no source named {name!r}{_suggest(name, sources, 'sources')}",
                file=file, key=f"egress.sources.{_part(name)}",
            )
    # A source's own ehlo_domain is its path option too, unless [egress.sources] says otherwise.
    for name, source in sources.items():
        if source.ehlo_domain is not None:
            by_source[name] = {"ehlo_domain": source.ehlo_domain, **by_source.get(name, {})}
    provider = StaticPathProvider(default, by_domain=by_domain, by_site=by_site, by_source=by_source)
    return provider, tuple(warnings)
