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
from trimta.adapters.kumomta_files import HelperFile, KumoMtaFiles, tables_of
from trimta.core import units
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import (
    OptionError,
    StaticPathProvider,
    apply_options,
    extra_options,
    parse_path_options,
)
from trimta.core.mx import parse_domain_literal
from trimta.core.pools import DEFAULT_POOL, DEFAULT_SOURCE, UNSPECIFIED, EgressPool, EgressSource, parse_health_rule
from trimta.core.retry import QueueConfig

QUEUE_KEYS = ("retry_interval", "max_retry_interval", "max_age", "egress_pool", "max_message_rate", "routing_domain")
SOURCE_KEYS = ("source_address", "ehlo_domain", "remote_port", "suspend_when_unplumbed", "ha_proxy_server",
               "ha_proxy_source_address", "suspend_when_proxy_unhealthy")
# KumoMTA's other make_egress_source options: accepted in sources.toml, not acted on.
KUMOMTA_SOURCE_OPTIONS = ("socks5_proxy_server", "socks5_proxy_source_address", "socks5_proxy_username",
                          "socks5_proxy_password", "ttl", "name")
# KumoMTA's other make_queue_config options and queue.lua keys: accepted in queues.toml, not acted on.
KUMOMTA_QUEUE_OPTIONS = ("protocol", "reap_interval", "refresh_interval", "refresh_strategy", "strategy",
                         "timerwheel_tick_interval", "shrink_policy", "provider_name", "overall_max_message_rate")
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
    # queues.toml's [queue.'DOMAIN'.'TENANT'] and [queue.'DOMAIN'.'TENANT'.'CAMPAIGN'].
    domain_tenant_overrides: Mapping[tuple[str, str], _Overrides] = field(default_factory=dict)
    campaign_overrides: Mapping[tuple[str, str, str], _Overrides] = field(default_factory=dict)
    sources: Mapping[str, EgressSource] = field(default_factory=lambda: {UNSPECIFIED: DEFAULT_SOURCE})
    pools: Mapping[str, EgressPool] = field(default_factory=lambda: {UNSPECIFIED: DEFAULT_POOL})
    path_provider: StaticPathProvider = field(default_factory=StaticPathProvider)
    # KumoMTA options that were accepted but are not acted on, as "file: key" lines.
    warnings: tuple[str, ...] = ()
    _cache: dict[tuple[str | None, str | None, tuple[str, ...] | None, tuple[str, ...] | None], QueueConfig] = \
        field(default_factory=dict, compare=False, repr=False)

    def queue_config(self, tenant: str | None, campaign: str | None, domain: str) -> QueueConfig:
        """The config of scheduled queue ``campaign:tenant@domain``, in KumoMTA's order:
        defaults -> domain -> tenant -> domain and tenant -> domain, tenant and campaign."""
        domain = domain.lower().rstrip(".")
        pair = (domain, tenant or "")
        triple = (domain, tenant or "", campaign or "")
        key = (
            tenant if tenant is not None and tenant in self.tenant_overrides else None,
            domain if domain in self.domain_overrides else None,
            pair if pair in self.domain_tenant_overrides else None,
            triple if triple in self.campaign_overrides else None,
        )
        config = self._cache.get(key)
        if config is None:
            config = _resolve(self.queue_defaults, self.domain_overrides.get(key[1] or ""),
                              self.tenant_overrides.get(key[0] or ""),
                              self.domain_tenant_overrides.get(pair) if key[2] else None,
                              self.campaign_overrides.get(triple) if key[3] else None)
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
    raw: Mapping[str, Any], file: str, *, other_tenant_keys: Collection[str] = (),
    kumomta: KumoMtaFiles | None = None,
) -> DeliveryConfig:
    """Read the delivery tables of a parsed ``trimta.toml`` document.

    `other_tenant_keys` are ``[tenants.NAME]`` keys other parts of the daemon own;
    they are left alone here instead of being reported as unknown. `kumomta`'s
    ``sources`` and ``queues`` files add to these tables; a setting made both there
    and in ``trimta.toml`` is an error naming both places.
    """
    kumomta = kumomta or KumoMtaFiles()
    warnings: list[str] = []
    sources = _parse_sources(raw.get("sources", {}), file)
    if kumomta.sources is not None:
        _add_kumomta_sources(sources, kumomta.sources, file, warnings)
    pools = _parse_pools(raw.get("pools", {}), file, sources)
    if kumomta.sources is not None:
        _add_kumomta_pools(pools, kumomta.sources, file, sources)

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

    domain_tenants: dict[tuple[str, str], _Overrides] = {}
    campaigns: dict[tuple[str, str, str], _Overrides] = {}
    if kumomta.queues is not None:
        defaults = dict(defaults)
        own_domains = {d: dict(o) for d, o in domains.items()}
        own_tenants = {t: dict(o) for t, o in tenants.items()}
        _add_kumomta_queues(kumomta.queues, file, pools, defaults, own_domains, own_tenants, domain_tenants,
                            campaigns, warnings)
        domains, tenants = dict(own_domains), dict(own_tenants)

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

    for key, overrides in (*domain_tenants.items(), *campaigns.items()):
        _checked_queue_config(queue_defaults, {**domains.get(key[0], {}), **tenants.get(key[1], {}), **overrides},
                              kumomta.queues.file if kumomta.queues else file,
                              "queue." + ".".join(f"'{k}'" for k in key))

    provider, egress_warnings = _parse_egress(raw.get("egress", {}), file, sources)
    return DeliveryConfig(
        queue_defaults=queue_defaults,
        domain_overrides=domains,
        tenant_overrides=tenants,
        domain_tenant_overrides=domain_tenants,
        campaign_overrides=campaigns,
        sources=sources,
        pools=pools,
        path_provider=provider,
        warnings=(*warnings, *egress_warnings),
    )


# --- KumoMTA's helper files (sources.toml, queues.toml) -------------------------------


def _add_kumomta_sources(sources: dict[str, EgressSource], helper: HelperFile, file: str,
                         warnings: list[str]) -> None:
    """sources.toml's ``[source.NAME]`` tables, as `[sources.NAME]` are read."""
    Table(helper.data, helper.file, "", ("source", "pool"))
    for name, table in tables_of(helper.data.get("source", {}), helper.file, "source").items():
        key = f"source.{_part(name)}"
        if str(name) in sources and str(name) != UNSPECIFIED:
            raise ConfigError(f"source {name!r} is defined twice: here and in {file} (sources.{_part(name)}); "
                              f"keep one", file=helper.file, key=key)
        t = Table(table, helper.file, key, (*SOURCE_KEYS, *KUMOMTA_SOURCE_OPTIONS))
        for option in t.data:
            if option in KUMOMTA_SOURCE_OPTIONS and option != "name":
                also = (": this source's mail goes out directly, not through a SOCKS5 proxy"
                        if option.startswith("socks5") else "")
                warnings.append(f"{helper.file}: {key}.{option}: a KumoMTA option trimta does not act on; "
                                f"ignored{also}")
        sources[str(name)] = _source(str(name), t)


def _add_kumomta_pools(pools: dict[str, EgressPool], helper: HelperFile, file: str,
                       sources: Mapping[str, EgressSource]) -> None:
    """sources.toml's ``[pool.NAME.SOURCE]`` tables (``weight``, default 1), as `[pools.NAME]` are read."""
    for name, members in tables_of(helper.data.get("pool", {}), helper.file, "pool").items():
        key = f"pool.{_part(name)}"
        if str(name) in pools and str(name) != UNSPECIFIED:
            raise ConfigError(f"pool {name!r} is defined twice: here and in {file} (pools.{_part(name)}); keep one",
                              file=helper.file, key=key)
        entries: list[tuple[str, int]] = []
        for source, entry in tables_of(members, helper.file, key).items():
            e = Table(entry, helper.file, f"{key}.{_part(source)}", ("weight",))
            if source not in sources:
                raise ConfigError(f"no source named {source!r}{_suggest(str(source), sources, 'sources')}",
                                  file=helper.file, key=f"{key}.{_part(source)}")
            weight = e.get("weight", 1, _weight_number)
            entries.append((str(source), weight))
        try:
            pools[str(name)] = EgressPool(str(name), tuple(entries))
        except ValueError as exc:
            raise ConfigError(str(exc), file=helper.file, key=key) from None


def _weight_number(value: Any) -> int:
    # sources.lua takes any number; a whole one is what a weight can be.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _weight(value)


QUEUES_TOP_KEYS = ("scheduling_header", "tenant_header", "remove_tenant_header", "campaign_header",
                   "remove_campaign_header", "default_tenant", "tenant", "queue")


def _add_kumomta_queues(helper: HelperFile, file: str, pools: Mapping[str, EgressPool],
                        defaults: dict[str, object], domains: dict[str, dict[str, object]],
                        tenants: dict[str, dict[str, object]], domain_tenants: dict[tuple[str, str], _Overrides],
                        campaigns: dict[tuple[str, str, str], _Overrides], warnings: list[str]) -> None:
    """queues.toml's ``[tenant.NAME]`` and ``[queue.default]``, ``[queue.'DOMAIN']``,
    ``[queue.'DOMAIN'.'TENANT']``, ``[queue.'DOMAIN'.'TENANT'.'CAMPAIGN']`` tables.

    The header keys at its top are read by `trimta.adapters.config` (they are
    ``[tenancy]``'s); here they are only let through.
    """
    hf = helper.file
    Table(helper.data, hf, "", QUEUES_TOP_KEYS)
    unacted: dict[str, str] = {}

    def read(table: Any, key: str, *, extra: tuple[str, ...] = ()) -> dict[str, object]:
        options = {k: v for k, v in tables_of(table, hf, key).items() if not isinstance(v, Mapping) or k in extra}
        t = Table(options, hf, key, (*QUEUE_KEYS, *KUMOMTA_QUEUE_OPTIONS, *extra))
        for option in t.data:
            if option in KUMOMTA_QUEUE_OPTIONS or option in extra:
                unacted.setdefault(option, t.key(option))
        return _queue_overrides(Table({k: v for k, v in t.data.items() if k in QUEUE_KEYS}, hf, key, QUEUE_KEYS),
                                pools)

    def into(target: dict[str, object], more: Mapping[str, object], there: str, here: str) -> None:
        for option, value in more.items():
            if option in target:
                raise ConfigError(f"{_option_name(option)} is set twice: here and in {file} ({there}); keep one",
                                  file=hf, key=f"{here}.{_option_name(option)}")
            target[option] = value

    for name, table in tables_of(helper.data.get("tenant", {}), hf, "tenant").items():
        key = f"tenant.{_part(name)}"
        into(tenants.setdefault(str(name), {}), read(table, key, extra=("require_authz", "campaigns")),
             f"tenants.{_part(name)}", key)
    for name, table in tables_of(helper.data.get("queue", {}), hf, "queue").items():
        key = f"queue.{_part(name)}"
        if str(name) == "default":
            into(defaults, read(table, key), "queues", key)
            continue
        domain = str(name).lower().rstrip(".")
        into(domains.setdefault(domain, {}), read(table, key), f"queues.domains.{_part(name)}", key)
        for tenant, tenant_table in table.items():
            if not isinstance(tenant_table, Mapping):
                continue
            tkey = f"{key}.{_part(tenant)}"
            domain_tenants[(domain, str(tenant))] = read(tenant_table, tkey)
            for campaign, campaign_table in tenant_table.items():
                if isinstance(campaign_table, Mapping):
                    campaigns[(domain, str(tenant), str(campaign))] = read(campaign_table, f"{tkey}.{_part(campaign)}")
    if "scheduling_header" in helper.data:
        unacted.setdefault("scheduling_header", "scheduling_header")
    for where in unacted.values():
        warnings.append(f"{hf}: {where}: a KumoMTA option trimta does not act on; ignored")


def _option_name(field_name: str) -> str:
    return field_name.removesuffix("_s")


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
    if "routing_domain" in t.data:
        out["routing_domain"] = t.get("routing_domain", None, _routing_domain) or None
    return out


def _routing_domain(value: Any) -> str:
    """A domain name or a domain literal (``"[10.0.0.1]"``, ``"[IPv6:::1]"``); "" for none."""
    if not isinstance(value, str):
        raise ValueError(f'expected a domain like "smarthost.example.com" or "[10.0.0.1]", got {value!r}')
    text = value.strip().rstrip(".")
    if not text:
        return ""
    if text.startswith("[") or text[0].isdigit() and parse_domain_literal(f"[{text}]") is not None:
        if parse_domain_literal(text) is None:
            raise ValueError(f"{value!r} is not a domain literal: an address in brackets, like \"[10.0.0.1]\"")
        return text
    if any(c.isspace() or c in "@[]!/" for c in text) or ".." in text:
        raise ValueError(f'expected a domain like "smarthost.example.com" or "[10.0.0.1]", got {value!r}')
    return text.lower()


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
        sources[str(name)] = _source(str(name), Table(table, file, f"sources.{_part(name)}", SOURCE_KEYS))
    return sources


def _source(name: str, t: Table) -> EgressSource:
    server = t.get("ha_proxy_server", None, _proxy_server)
    proxy_source = t.get("ha_proxy_source_address", None, _proxy_address)
    if (server is None) != (proxy_source is None):
        missing, given = ("ha_proxy_source_address", "ha_proxy_server") if server else \
            ("ha_proxy_server", "ha_proxy_source_address")
        raise t.error(given, f"{given} needs {missing} too: connections go through the proxy only with both "
                             f"(the proxy's address:port, and the address it connects from)")
    unhealthy = t.get("suspend_when_proxy_unhealthy", None, parse_health_rule)
    if unhealthy is not None and server is None:
        raise t.error("suspend_when_proxy_unhealthy", "this source has no ha_proxy_server to be unhealthy")
    return EgressSource(name, t.get("source_address", None, _bind_address), t.get("ehlo_domain", None, _host_name),
                        t.get("remote_port", None, _port), t.get("suspend_when_unplumbed", None, parse_health_rule),
                        server, proxy_source, unhealthy)


def _proxy_server(value: Any) -> tuple[str, int]:
    """``"10.0.0.1:5000"`` or ``"[2001:db8::1]:5000"``: the proxy's IP address and port."""
    form = 'expected the proxy\'s IP address and port, like "10.0.0.1:5000" or "[2001:db8::1]:5000"'
    if not isinstance(value, str):
        raise ValueError(f"{form}, got {value!r}")
    host, colon, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{form}, got {value!r} (a host name is not taken: give the address)") from None
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{form}, got {value!r}")
    return str(address), int(port)


def _proxy_address(value: Any) -> str:
    """The address the proxy connects from (an address of the proxy's host, not this one's)."""
    if not isinstance(value, str):
        raise ValueError(f'expected an IP address, like "192.0.2.10", got {value!r}')
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f'expected an IP address, like "192.0.2.10", got {value!r}') from None


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {value!r}")
    return value


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
