"""The ``[dns]`` table of trimta.toml: the resolver's settings, parsed and checked.

Kept apart from the resolver (`trimta.adapters.dns`) so that reading a configuration
does not import dnspython; the resolver is built from the `ResolverConfig` this
returns (`DnsResolver.from_config`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trimta.adapters.config_base import ConfigError
from trimta.core.mx import IpLookupStrategy
from trimta.core.units import DURATION_FORMS, parse_duration


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """Resolver settings, units in the names. No nameservers means the system's resolv.conf."""

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout_s: float = 5.0
    cache_size: int = 10_000
    ttl_floor_s: float = 30.0
    ttl_ceiling_s: float = 3600.0
    negative_ttl_s: float = 300.0
    failure_ttl_s: float = 5.0
    max_concurrency: int = 100
    ip_lookup_strategy: IpLookupStrategy = IpLookupStrategy.IPV4_AND_IPV6


_DURATION_KEYS = {
    "timeout": "timeout_s",
    "ttl_floor": "ttl_floor_s",
    "ttl_ceiling": "ttl_ceiling_s",
    "negative_ttl": "negative_ttl_s",
    "failure_ttl": "failure_ttl_s",
}
_COUNT_KEYS = {"cache_size": 0, "max_concurrency": 1}  # key -> smallest accepted value
_KNOWN_KEYS = ("nameservers", *_DURATION_KEYS, *_COUNT_KEYS, "ip_lookup_strategy")
_NAMESERVER_FORMS = 'an IP address, optionally with a port: "192.0.2.53", "127.0.0.1:5353", "::1", "[::1]:5353"'


def parse_nameserver(text: str) -> tuple[str, int]:
    """``(address, port)`` from ``"host"``, ``"host:port"`` or ``"[v6]:port"``; ValueError otherwise."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected {_NAMESERVER_FORMS}, got {text!r}")
        host, port = inner, rest[1:] or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"expected {_NAMESERVER_FORMS}, got {text!r}") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535 in {text!r}")
    return address, int(port)


def parse_dns_table(table: Mapping, file: str | None = None) -> ResolverConfig:
    """A `ResolverConfig` from the ``[dns]`` table; `ConfigError` names the bad key.

    Keys: ``nameservers`` (list of addresses), ``timeout``, ``ttl_floor``,
    ``ttl_ceiling``, ``negative_ttl``, ``failure_ttl`` (durations),
    ``cache_size``, ``max_concurrency`` (integers), ``ip_lookup_strategy``.
    """
    if not isinstance(table, Mapping):
        raise ConfigError("expected a table: [dns]", file=file, key="dns")
    values: dict = {}
    for key, value in table.items():
        where = f"dns.{key}"
        if key not in _KNOWN_KEYS:
            known = ", ".join(_KNOWN_KEYS)
            raise ConfigError(f"unknown key {key!r}; known keys are {known}", file=file, key=where)
        if key == "nameservers":
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ConfigError(f"expected a list of {_NAMESERVER_FORMS}", file=file, key=where)
            try:
                values["nameservers"] = tuple(parse_nameserver(str(v)) for v in value)
            except ValueError as exc:
                raise ConfigError(str(exc), file=file, key=where) from None
        elif key in _DURATION_KEYS:
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise ConfigError(str(exc), file=file, key=where) from None
            if key == "timeout" and seconds <= 0:
                raise ConfigError(f"must be more than zero; expected {DURATION_FORMS}", file=file, key=where)
            values[_DURATION_KEYS[key]] = seconds
        elif key in _COUNT_KEYS:
            least = _COUNT_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"expected an integer of at least {least}, got {value!r}", file=file, key=where)
            values[key] = int(value)
        else:
            try:
                values["ip_lookup_strategy"] = IpLookupStrategy.parse(str(value))
            except ValueError as exc:
                raise ConfigError(str(exc), file=file, key=where) from None
    config = ResolverConfig(**values)
    if config.ttl_floor_s > config.ttl_ceiling_s:
        raise ConfigError(
            f"ttl_floor ({config.ttl_floor_s:g}s) is above ttl_ceiling ({config.ttl_ceiling_s:g}s)",
            file=file,
            key="dns.ttl_floor",
        )
    return config
