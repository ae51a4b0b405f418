"""The daemon's configuration file (``trimta.toml``): loading and validation.

Values are parsed once, here, into dataclasses whose field names carry their units
(`max_message_size_bytes`, `client_timeout_s`). Every error a user can make is
reported as a `ConfigError` naming the file, the key and what would be accepted.

Relative paths in a file are taken relative to the file's directory; the embedded
default (no file) keeps its data under the current working directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trimta.core import units

DEFAULT_CONFIG_NAME = "trimta.toml"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class ConfigError(Exception):
    """A configuration mistake, with where it is and what would be accepted."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True, slots=True)
class AuthUser:
    """A SMTP AUTH identity, optionally mapped to the tenant its mail belongs to."""

    username: str
    password: str
    tenant: str | None = None
    campaign: str | None = None


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ESMTP listener (a ``[[listener]]`` table)."""

    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = "localhost"
    banner: str = "ESMTP trimta"
    relay_hosts: tuple[Network, ...] = LOOPBACK_NETWORKS
    max_message_size_bytes: int = 20_000_000
    max_recipients_per_message: int = 1024
    max_messages_per_connection: int = 10_000
    max_errors: int = 10
    max_connections: int = 1024
    client_timeout_s: float = 60.0
    data_timeout_s: float = 300.0
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    auth: tuple[AuthUser, ...] = ()
    # Processes serving this listener (the daemon and workers - 1 reception workers);
    # a config file without the key gets one per usable CPU ("auto").
    workers: int = 1

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TenancyConfig:
    """How a message's tenant and campaign are found."""

    tenant_header: str = "X-Tenant"
    campaign_header: str = "X-Campaign"
    remove_headers: bool = True


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path = Path("trimta-data/spool")
    max_size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class LogsConfig:
    path: Path = Path("trimta-data/logs")
    max_file_size_bytes: int = 100_000_000
    max_segment_duration_s: float = 3600.0
    flush_interval_s: float = 0.2


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration."""

    source: str = "<embedded default>"
    hostname: str = field(default_factory=socket.getfqdn)
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    tenancy: TenancyConfig = TenancyConfig()
    spool: SpoolConfig = SpoolConfig()
    logs: LogsConfig = LogsConfig()
    dns: Any = None  # trimta.adapters.dns.ResolverConfig
    delivery: Any = None  # trimta.adapters.delivery_config.DeliveryConfig
    http: Any = None  # trimta.adapters.http_config.HttpConfig
    shaping: Any = None  # trimta.adapters.shaping_files.ShapingConfig
    shaping_loaded: Any = None  # trimta.adapters.shaping_files.LoadedShaping (the files, read and checked)
    webhooks: tuple = ()  # trimta.adapters.webhook_config.WebhookConfig, one per [[logs.webhook]]
    raw: Mapping[str, Any] = field(default_factory=dict)


# --- Loading ----------------------------------------------------------------------


def find_config(path: str | os.PathLike | None) -> Path | None:
    """The file to load: the one given, else ``./trimta.toml`` if present, else None."""
    if path is not None:
        return Path(path)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a config file; with None, ``./trimta.toml`` or the embedded default."""
    found = find_config(path)
    if found is None:
        return parse_config({}, source="<embedded default>", base_dir=Path.cwd())
    try:
        text = found.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(found)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(found)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(found)) from None
    return parse_config(raw, source=str(found), base_dir=found.resolve().parent)


class _Table:
    """Reads one TOML table, checking types and rejecting unknown keys."""

    def __init__(self, data: Any, file: str, prefix: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError("expected a table", file=file, key=prefix or None)
        self.data = data
        self.file = file
        self.prefix = prefix
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
                raise ConfigError(f"unknown key{suggestion}", file=file, key=self.key(key))

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=self.key(name))

    def get(self, name: str, default: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        if name not in self.data:
            return default
        value = self.data[name]
        if convert is None:
            return value
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise self.error(name, str(exc)) from None

    def string(self, name: str, default: Any) -> Any:
        return self.get(name, default, _expect(str, "a string"))

    def boolean(self, name: str, default: bool) -> bool:
        return self.get(name, default, _expect(bool, "true or false"))

    def positive_int(self, name: str, default: int) -> int:
        def convert(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"expected a positive integer, got {v!r}")
            return v

        return self.get(name, default, convert)


def _expect(kind: type, description: str) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        if not isinstance(v, kind):
            raise ValueError(f"expected {description}, got {v!r}")
        return v

    return convert


def parse_host_port(value: Any, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:25"``, ``"[::1]:25"`` or (with a default port) a bare host."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'expected "host:port", e.g. "127.0.0.1:2525" or "[::1]:2525", got {value!r}')
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f'expected "host:port", e.g. "127.0.0.1:2525", got {value!r}')
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r} in {value!r}")
    return host, int(port_text)


def parse_networks(value: Any) -> tuple[Network, ...]:
    """A list of CIDRs or addresses, e.g. ``["127.0.0.0/8", "::1", "10.1.2.3"]``."""
    if not isinstance(value, list):
        raise ValueError(f'expected a list of CIDRs like ["127.0.0.0/8", "::1"], got {value!r}')
    nets = []
    for item in value:
        try:
            nets.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {item!r}") from None
    return tuple(nets)


_LISTENER_KEYS = (
    "listen", "hostname", "banner", "relay_hosts", "max_message_size",
    "max_recipients_per_message", "max_messages_per_connection", "max_errors",
    "max_connections", "client_timeout", "data_timeout", "tls_certificate",
    "tls_private_key", "auth", "workers",
)


def _parse_auth(value: Any, file: str, prefix: str) -> tuple[AuthUser, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            'expected a list like [{ username = "app", password = "secret", tenant = "acme" }]',
            file=file, key=prefix,
        )
    users = []
    for i, entry in enumerate(value):
        t = _Table(entry, file, f"{prefix}[{i}]", ("username", "password", "tenant", "campaign"))
        username = t.string("username", None)
        password = t.string("password", None)
        if not username or password is None:
            raise ConfigError("each auth entry needs username and password", file=file, key=f"{prefix}[{i}]")
        users.append(AuthUser(username, password, t.string("tenant", None), t.string("campaign", None)))
    return tuple(users)


def _parse_listener(data: Any, file: str, index: int, hostname: str, base_dir: Path) -> ListenerConfig:
    t = _Table(data, file, f"listener[{index}]", _LISTENER_KEYS)
    host, port = t.get("listen", ("127.0.0.1", 2525), lambda v: parse_host_port(v))
    cert = t.string("tls_certificate", None)
    key = t.string("tls_private_key", None)
    if bool(cert) != bool(key):
        raise t.error("tls_certificate", "tls_certificate and tls_private_key must be given together")
    cert_path = (base_dir / cert) if cert else None
    key_path = (base_dir / key) if key else None
    for name, p in (("tls_certificate", cert_path), ("tls_private_key", key_path)):
        if p is not None and not p.is_file():
            raise t.error(name, f"no such file: {p}")
    return ListenerConfig(
        host=host,
        port=port,
        hostname=t.string("hostname", hostname),
        banner=t.string("banner", "ESMTP trimta"),
        relay_hosts=t.get("relay_hosts", LOOPBACK_NETWORKS, parse_networks),
        max_message_size_bytes=t.get("max_message_size", 20_000_000, units.parse_size),
        max_recipients_per_message=t.positive_int("max_recipients_per_message", 1024),
        max_messages_per_connection=t.positive_int("max_messages_per_connection", 10_000),
        max_errors=t.positive_int("max_errors", 10),
        max_connections=t.positive_int("max_connections", 1024),
        client_timeout_s=t.get("client_timeout", 60.0, units.parse_duration),
        data_timeout_s=t.get("data_timeout", 300.0, units.parse_duration),
        tls_certificate=cert_path,
        tls_private_key=key_path,
        auth=_parse_auth(t.data["auth"], file, t.key("auth")) if "auth" in t.data else (),
        workers=t.get("workers", None, _workers) or usable_cpus(),
    )


def _workers(value: Any) -> int:
    """A positive number of processes, or "auto": one per CPU this daemon may use."""
    if value == "auto":
        return usable_cpus()
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'expected a positive integer or "auto", got {value!r}')
    return value


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_TOP_KEYS = ("hostname", "listener", "tenancy", "spool", "logs", "dns",
             # Sections read by later parts of the daemon, validated there.
             "queues", "tenants", "sources", "pools", "shaping", "http", "egress")


def parse_config(raw: Mapping[str, Any], *, source: str, base_dir: Path) -> Config:
    """Validate a parsed TOML document into a `Config`."""
    top = _Table(raw, source, "", _TOP_KEYS)
    hostname = top.string("hostname", socket.getfqdn())

    listener_tables = raw.get("listener", [{}])
    if isinstance(listener_tables, Mapping):
        listener_tables = [listener_tables]
    if not isinstance(listener_tables, list) or not listener_tables:
        raise ConfigError("expected one or more [[listener]] tables", file=source, key="listener")
    listeners = tuple(
        _parse_listener(t, source, i, hostname, base_dir) for i, t in enumerate(listener_tables)
    )

    ten = _Table(raw.get("tenancy", {}), source, "tenancy", ("tenant_header", "campaign_header", "remove_headers"))
    tenancy = TenancyConfig(
        tenant_header=ten.string("tenant_header", "X-Tenant"),
        campaign_header=ten.string("campaign_header", "X-Campaign"),
        remove_headers=ten.boolean("remove_headers", True),
    )

    sp = _Table(raw.get("spool", {}), source, "spool", ("path", "max_size"))
    spool = SpoolConfig(
        path=base_dir / sp.string("path", "trimta-data/spool"),
        max_size_bytes=sp.get("max_size", None, units.parse_size),
    )

    lg = _Table(raw.get("logs", {}), source, "logs",
                ("path", "max_file_size", "max_segment_duration", "flush_interval", "webhook"))
    logs = LogsConfig(
        path=base_dir / lg.string("path", "trimta-data/logs"),
        max_file_size_bytes=lg.get("max_file_size", 100_000_000, units.parse_size),
        max_segment_duration_s=lg.get("max_segment_duration", 3600.0, units.parse_duration),
        flush_interval_s=lg.get("flush_interval", 0.2, units.parse_duration),
    )

    from trimta.adapters.dns import parse_dns_table  # noqa: PLC0415 (keeps dnspython off the import path of tools that don't need it)

    dns = parse_dns_table(raw.get("dns", {}), source)

    from trimta.adapters.delivery_config import parse_delivery_config  # noqa: PLC0415 (it imports this module)

    delivery = parse_delivery_config(raw, source)

    from trimta.adapters.http_config import http_config_from  # noqa: PLC0415
    from trimta.adapters.shaping_files import load_shaping_files, parse_shaping_table  # noqa: PLC0415
    from trimta.adapters.webhook_config import parse_webhooks  # noqa: PLC0415

    shaping = parse_shaping_table(raw.get("shaping", {}), source, base_dir)
    return Config(
        source=source, hostname=hostname, listeners=listeners, tenancy=tenancy,
        spool=spool, logs=logs, dns=dns, delivery=delivery, raw=raw,
        http=http_config_from(raw, source), webhooks=parse_webhooks(raw, source),
        shaping=shaping, shaping_loaded=load_shaping_files(shaping.paths),
    )
