"""Egress path options as operators write them, parsed into `EgressPathConfig` overrides.

This module is the one place that knows the option names (KumoMTA's, so a
KumoMTA user's settings carry over) and their value forms: durations like
``"60s"``, rates like ``"100/s"`` or ``"20/min,max_burst=5"``, CIDR lists,
``enable_tls = "Opportunistic"``. Both the ``[egress]`` tables of ``trimta.toml``
and the shaping files use it, so the two cannot drift apart.

`parse_path_options` turns one table into a dict of `EgressPathConfig` field
overrides (only the keys present), `apply_options` lays such a dict over a base
config, and `StaticPathProvider` answers ``path_config(source, site, domain)`` from
a default and three override tables.

Options KumoMTA has that trimta does not act on (`IGNORED_KUMOMTA_OPTIONS`) are
accepted, so existing files load, and collected under ``extra`` where callers can
warn about them. Anything else unknown is an `OptionError` naming the closest
valid option.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from trimta.core.domains import canonical_domain
from trimta.core.egress import OPENSSL_OPTION_NAMES, EgressPathConfig, KeySource, Network, TlsPolicy
from trimta.core.mx import IpLookupStrategy, MxResolution, Resolver
from trimta.core.units import Limit, parse_count, parse_duration, parse_limit, parse_rate


class OptionError(ValueError):
    """A bad egress path option: which key, what is wrong, what would be accepted."""

    def __init__(self, key: str, message: str, *, where: str = "") -> None:
        self.key = key
        self.message = message
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{key}: {message}")


# --- Value forms ----------------------------------------------------------------


def _positive_int(value: Any) -> int:
    return parse_count(value)


def _named(parse: Callable[[Any], Any], example: str) -> Callable[[Any], tuple[tuple[str, Any], ...]]:
    """KumoMTA's maps from a limit's name to its spec (``{ "global-limit" = 100 }``)."""
    def parse_map(value: Any) -> tuple[tuple[str, Any], ...]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table of named limits like {example}, got {value!r}")
        out = []
        for name, spec in value.items():
            try:
                out.append((str(name), parse(spec)))
            except ValueError as exc:
                raise ValueError(f"{name!r}: {exc}") from None
        return tuple(out)
    return parse_map


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _key_source(value: Any) -> KeySource:
    """KumoMTA's keysource: ``{ key_data = "..." }`` inline, or a string naming a file."""
    if isinstance(value, str) and value:
        return KeySource(path=value)
    if isinstance(value, Mapping) and set(value) == {"key_data"} and isinstance(value["key_data"], str):
        return KeySource(data=value["key_data"])
    if isinstance(value, Mapping) and any(str(k).startswith(("vault_", "event_")) for k in value):
        raise ValueError("HashiCorp Vault and event keysources are not supported; "
                         'use { key_data = "..." } or the name of a file holding the secret')
    raise ValueError(f'expected {{ key_data = "..." }} or the name of a file holding the secret, got {value!r}')


def _cipher_list(value: Any) -> str:
    """OpenSSL's cipher string (``ECDHE+AESGCM:!aNULL``); OpenSSL itself judges the names."""
    text = _text(value)
    if not re.fullmatch(r"[A-Za-z0-9_+\-!@=:, .]+", text):
        raise ValueError(f"expected an OpenSSL cipher list like \"ECDHE+AESGCM:!aNULL\", got {value!r}")
    return text


def _openssl_options(value: Any) -> tuple[str, ...]:
    """``"NO_TLSV1|NO_TLSV1_1"``: OpenSSL option names joined by ``|``."""
    names = tuple(name.strip() for name in _text(value).split("|"))
    unknown = [name for name in names if name not in OPENSSL_OPTION_NAMES]
    if unknown:
        raise ValueError(f"unknown OpenSSL option {unknown[0]!r}; known: {', '.join(OPENSSL_OPTION_NAMES)}")
    return names


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise ValueError(f'expected a host name like "mta1.example.com", got {value!r}')
    return value.strip()


def _networks(value: Any) -> tuple[Network, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'expected a list of addresses or CIDRs like ["127.0.0.0/8", "::1"], got {value!r}')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError(f'not an address or CIDR: {item!r} (expected e.g. "10.0.0.0/8" or "::1")') from None
    return tuple(networks)


def _tls(value: Any) -> TlsPolicy:
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "Opportunistic", got {value!r}')
    return TlsPolicy.parse(value)


def _ip_strategy(value: Any) -> IpLookupStrategy:
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "Ipv4AndIpv6", got {value!r}')
    return IpLookupStrategy.parse(value)


# option name -> (EgressPathConfig field, parser). A `Limit` goes into two fields: its
# count into the field, its ``local:`` into FIELD_local. The names are KumoMTA's, except
# `delay_after_connection_failures`, trimta's knob for the pause that
# `consecutive_connection_failures_before_delay` triggers.
OPTIONS: dict[str, tuple[str, Callable[[Any], object]]] = {
    "connection_limit": ("connection_limit", parse_limit),
    "max_connection_rate": ("max_connection_rate", parse_rate),
    "max_message_rate": ("max_message_rate", parse_rate),
    "max_deliveries_per_connection": ("max_deliveries_per_connection", _positive_int),
    "max_ready": ("max_ready", _positive_int),
    "idle_timeout": ("idle_timeout_s", parse_duration),
    "enable_tls": ("enable_tls", _tls),
    "enable_mta_sts": ("enable_mta_sts", _boolean),
    "smtp_port": ("smtp_port", _port),
    "prohibited_hosts": ("prohibited_hosts", _networks),
    "skip_hosts": ("skip_hosts", _networks),
    "enable_dane": ("enable_dane", _boolean),
    "ip_lookup_strategy": ("ip_lookup_strategy", _ip_strategy),
    "consecutive_connection_failures_before_delay": (
        "consecutive_connection_failures_before_delay", _positive_int),
    "delay_after_connection_failures": ("delay_after_connection_failures_s", parse_duration),
    "connect_timeout": ("connect_timeout_s", parse_duration),
    "banner_timeout": ("banner_timeout_s", parse_duration),
    "ehlo_timeout": ("ehlo_timeout_s", parse_duration),
    "mail_from_timeout": ("mail_from_timeout_s", parse_duration),
    "rcpt_to_timeout": ("rcpt_to_timeout_s", parse_duration),
    "data_timeout": ("data_timeout_s", parse_duration),
    "data_dot_timeout": ("data_dot_timeout_s", parse_duration),
    "starttls_timeout": ("starttls_timeout_s", parse_duration),
    "rset_timeout": ("rset_timeout_s", parse_duration),
    "auth_timeout": ("auth_timeout_s", parse_duration),
    "enable_pipelining": ("enable_pipelining", _boolean),
    "enable_rset": ("enable_rset", _boolean),
    "max_recipients_per_batch": ("max_recipients_per_batch", _positive_int),
    "try_next_host_on_transport_error": ("try_next_host_on_transport_error", _boolean),
    "remember_broken_tls": ("remember_broken_tls_s", parse_duration),
    "opportunistic_tls_reconnect_on_failed_handshake": (
        "opportunistic_tls_reconnect_on_failed_handshake", _boolean),
    "smtp_auth_plain_username": ("smtp_auth_plain_username", _text),
    "smtp_auth_plain_password": ("smtp_auth_plain_password", _key_source),
    "tls_certificate": ("tls_certificate", _key_source),
    "tls_private_key": ("tls_private_key", _key_source),
    "openssl_cipher_list": ("openssl_cipher_list", _cipher_list),
    "openssl_options": ("openssl_options", _openssl_options),
    "use_lmtp": ("use_lmtp", _boolean),
    "allow_smtp_auth_plain_without_tls": ("allow_smtp_auth_plain_without_tls", _boolean),
    "allow_smtp_auth_plain_without_valid_certificate": (
        "allow_smtp_auth_plain_without_valid_certificate", _boolean),
    "ehlo_domain": ("ehlo_domain", _host_name),
    "provider_name": ("provider", _text),
    "provider_connection_limit": ("provider_connection_limit", parse_limit),
    "provider_max_message_rate": ("provider_max_message_rate", parse_rate),
    "provider_source_selection_rate": ("provider_source_selection_rate", parse_rate),
    "additional_connection_limits": (
        "additional_connection_limits", _named(parse_limit, '{ "global-connection-limit" = 100 }')),
    "additional_message_rate_throttles": (
        "additional_message_rate_throttles", _named(parse_rate, '{ "global-message-rate" = "4000/s" }')),
    "source_selection_rate": ("source_selection_rate", parse_rate),
    "additional_source_selection_rates": (
        "additional_source_selection_rates", _named(parse_rate, '{ "warm-up-ip-1" = "500/d,max_burst=1" }')),
}

# KumoMTA egress path options trimta accepts without acting on them (reported once
# per set of files, docs/kumomta.md says why for each).
IGNORED_KUMOMTA_OPTIONS: frozenset[str] = frozenset({
    "aggressive_connection_opening", "dispatcher_progress_watchdog_timeout",
    "dispatcher_wakeup_strategy", "ignore_8bit_checks",
    "low_memory_reduction_policy", "maintainer_wakeup_strategy", "no_memory_reduction_policy",
    "openssl_cipher_suites", "readyq_pool_name",
    "reconnect_strategy", "refresh_interval", "refresh_strategy", "rustls_cipher_suites",
    "suspended", "system_shutdown_timeout", "tls_prefer_openssl",
})

# Options whose value is a table (a map of named limits, a keysource).
TABLE_OPTIONS: frozenset[str] = frozenset({
    "additional_connection_limits", "additional_message_rate_throttles",
    "additional_source_selection_rates", "smtp_auth_plain_password", "tls_certificate", "tls_private_key",
})

# Options checked and parsed into their fields, which delivery does not act on yet: they
# are also kept under ``extra``, so they are reported as not acted on.
NOT_YET_ACTED_ON: frozenset[str] = frozenset()

OPTION_NAMES: tuple[str, ...] = tuple(OPTIONS)
_LIMIT_FIELDS = ("connection_limit", "provider_connection_limit")


def parse_path_options(table: Mapping[str, Any], *, where: str) -> dict[str, object]:
    """`EgressPathConfig` field overrides from one table of raw option values.

    Only the options present appear in the result, keyed by field name
    (``idle_timeout = "30s"`` gives ``{"idle_timeout_s": 30.0}``). Ignored KumoMTA
    options are gathered under ``"extra"``. `where` names the table in errors
    (``"trimta.toml: egress.domains.example.com"``).
    """
    if not isinstance(table, Mapping):
        raise OptionError("", f"expected a table of egress path options, got {table!r}", where=where)
    overrides: dict[str, object] = {}
    extra: dict[str, object] = {}
    for key, value in table.items():
        key = str(key)
        if key in OPTIONS:
            field_name, parse = OPTIONS[key]
            try:
                parsed = parse(value)
            except (ValueError, TypeError) as exc:
                raise OptionError(key, str(exc), where=where) from None
            if isinstance(parsed, Limit):
                overrides[field_name] = parsed.limit
                if parsed.local:
                    overrides[f"{field_name}_local"] = True
            else:
                overrides[field_name] = parsed
            if key in NOT_YET_ACTED_ON:
                extra[key] = "<secret>" if key == "smtp_auth_plain_password" else value
        elif key in IGNORED_KUMOMTA_OPTIONS:
            extra[key] = value
        else:
            raise OptionError(key, unknown_option_message(key), where=where)
    if extra:
        overrides["extra"] = extra
    return overrides


def unknown_option_message(key: str) -> str:
    """"unknown egress path option" with the closest valid name, for any caller."""
    hint = difflib.get_close_matches(key, OPTION_NAMES + tuple(sorted(IGNORED_KUMOMTA_OPTIONS)), n=1)
    if hint:
        return f"unknown egress path option; did you mean {hint[0]!r}?"
    return f"unknown egress path option; known options: {', '.join(OPTION_NAMES)}"


def apply_options(base: EgressPathConfig, overrides: Mapping[str, object]) -> EgressPathConfig:
    """`base` with `overrides` (from `parse_path_options`) laid over it.

    ``extra`` is merged rather than replaced, so ignored options from every layer
    stay visible.
    """
    if not overrides:
        return base
    changes: dict[str, Any] = dict(overrides)
    for name in _LIMIT_FIELDS:  # a limit set without "local:" is shared again
        if name in changes:
            changes.setdefault(f"{name}_local", False)
    if "extra" in changes:
        changes["extra"] = {**base.extra, **extra_options(overrides)}
    return dataclasses.replace(base, **changes)


def extra_options(overrides: Mapping[str, object]) -> Mapping[str, object]:
    """The options of `overrides` kept unparsed under ``extra`` (KumoMTA's we ignore)."""
    extra = overrides.get("extra")
    return extra if isinstance(extra, Mapping) else {}


class StaticPathProvider:
    """An `EgressPathProvider` from a default config and plain override tables.

    The path of ``(source, site, domain)`` is built in this order, each layer
    overriding the ones before it:

    1. `default`;
    2. `by_site[site]`: the rules for a destination site (e.g. every Google-hosted
       domain's ``(alt1|...)?.gmail-smtp-in.l.google.com``);
    3. `by_domain[domain]`: the rules written for the domain whose message opened
       the path, more specific than its site's;
    4. `by_source[source]`: what the egress source insists on (its EHLO name, its
       own limits), which holds on every path it is used for.

    Domain keys are matched case-insensitively. Results are cached per effective
    combination of layers, so the cache stays as small as the tables.
    """

    def __init__(
        self,
        default: EgressPathConfig | None = None,
        by_domain: Mapping[str, Mapping[str, object]] | None = None,
        by_site: Mapping[str, Mapping[str, object]] | None = None,
        by_source: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        self.default = default if default is not None else EgressPathConfig()
        self.by_domain = {canonical_domain(k): dict(v) for k, v in (by_domain or {}).items()}
        self.by_site = {k: dict(v) for k, v in (by_site or {}).items()}
        self.by_source = {k: dict(v) for k, v in (by_source or {}).items()}
        self._cache: dict[tuple[str | None, str | None, str | None], EgressPathConfig] = {}

    def path_config(self, source: str, site: str, domain: str) -> EgressPathConfig:
        domain = canonical_domain(domain)
        key = (
            site if site in self.by_site else None,
            domain if domain in self.by_domain else None,
            source if source in self.by_source else None,
        )
        config = self._cache.get(key)
        if config is None:
            config = self.default
            site_key, domain_key, source_key = key
            if site_key is not None:
                config = apply_options(config, self.by_site[site_key])
            if domain_key is not None:
                config = apply_options(config, self.by_domain[domain_key])
            if source_key is not None:
                config = apply_options(config, self.by_source[source_key])
            self._cache[key] = config
        return config

    def rollup(self, domain: str) -> bool:
        """Every domain joins its site's ready queue: these tables have no ``mx_rollup``."""
        return True

    def observe(self, resolution: MxResolution) -> None:
        """Nothing to learn: these tables name sites and domains, not providers."""

    def automation_for(self, source: str, site: str, domain: str) -> tuple[()]:
        return ()

    async def resolve_sites(self, resolver: Resolver) -> dict[str, MxResolution]:
        """Nothing to resolve: by-site tables name their sites already."""
        return {}
