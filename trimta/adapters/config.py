"""The daemon's configuration file (``trimta.toml``): loading and validation.

Values are parsed once, here, into dataclasses whose field names carry their units
(`max_message_size_bytes`, `client_timeout_s`). Every error a user can make is
reported as a `ConfigError` naming the file, the key and what would be accepted.

Relative paths in a file are taken relative to the file's directory; the embedded
default (no file) keeps its data under the current working directory.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import socket
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trimta.adapters.cluster_config import ClusterConfig, parse_cluster_config
from trimta.adapters.config_base import (
    LOOPBACK_NETWORKS,
    ConfigError,
    Network,
    Table,
    parse_host_port,
    parse_networks,
    toml_key_path,
)
from trimta.adapters.delivery_config import DeliveryConfig, parse_delivery_config
from trimta.adapters.dkim_config import DkimConfig, parse_dkim_config
from trimta.adapters.dns_config import ResolverConfig, parse_dns_table
from trimta.adapters.http_config import HttpConfig, http_config_from
from trimta.adapters.kumomta_files import HelperFile, parse_kumomta_table, parse_listener_domains
from trimta.adapters.loghook_config import LogHookConfig, parse_log_hooks
from trimta.adapters.shaping_files import LoadedShaping, ShapingConfig, load_shaping_files, parse_shaping_table
from trimta.adapters.tls import TlsFileError, check_server_files
from trimta.adapters.tlsrpt_config import TlsReportingConfig, parse_tls_reporting
from trimta.adapters.toml_lines import TomlLines
from trimta.adapters.webhook_config import WebhookConfig, parse_webhooks
from trimta.core import units
from trimta.core.listener_domains import ListenerDomains

if TYPE_CHECKING:
    from trimta.adapters.dkim import DkimSigner

DEFAULT_CONFIG_NAME = "trimta.toml"


@dataclass(frozen=True, slots=True)
class AuthUser:
    """A SMTP AUTH identity, optionally mapped to the tenant its mail belongs to."""

    username: str
    password: str
    tenant: str | None = None
    campaign: str | None = None
    # Identities this user may act as (AUTH PLAIN's authorization identity, RFC 4616);
    # "*" for any. Without, an authorization identity other than the username is refused.
    authorize_as: tuple[str, ...] = ()


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
    # Connections from one client address at once (0: no limit); over every process.
    max_connections_per_client: int = 50
    client_timeout_s: float = 60.0
    # RFC 5321 4.5.3.2: a command line must be complete this long after the server is
    # ready for it; a line of message content this long after the previous line.
    command_timeout_s: float = 300.0
    data_timeout_s: float = 300.0
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    auth: tuple[AuthUser, ...] = ()
    # Processes serving this listener (the daemon and workers - 1 reception workers);
    # a config file without the key gets one per usable CPU ("auto").
    workers: int = 1
    # KumoMTA's listener domains (relay_to, relay_from), from [kumomta] listener_domains.
    listener_domains: ListenerDomains = field(default_factory=ListenerDomains)
    # Let other processes (another trimta on purpose) bind the same address with
    # SO_REUSEPORT and take a share of its connections; by default a held port is refused.
    shared_port: bool = False

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
    # None: as remove_headers. KumoMTA's queues.toml has a flag for each header.
    remove_campaign_header: bool | None = None
    # The tenant of a message that names none (queues.toml's default_tenant).
    default_tenant: str | None = None


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
    compression: str = "none"  # or "zstd": segments as KumoMTA writes them
    compression_level: int = 3
    # KumoMTA's headers and meta options: what every record of a message carries.
    headers: tuple[str, ...] = ()
    meta: tuple[str, ...] = ()


# --- The machine's name -------------------------------------------------------------

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6", "ip6-localhost")


@functools.lru_cache(maxsize=1)
def machine_hostname() -> str:
    """The machine's own fully qualified name, as ``hostname -f`` reports it.

    `socket.getfqdn()` is not trusted alone: on machines whose hosts file maps the
    host name to a loopback address (a common Debian default) it answers
    ``localhost``, and that name would then go out in EHLO to the world's MX hosts.
    It is used only when it adds a domain to the bare name and is not a local name.
    """
    name = ""
    try:
        done = subprocess.run(["hostname", "-f"], capture_output=True, text=True, timeout=5, check=False)
        if done.returncode == 0:
            name = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    name = name or socket.gethostname()
    if "." not in name:
        fqdn = socket.getfqdn(name)
        if "." in fqdn and not is_local_name(fqdn):
            name = fqdn
    return name.lower().rstrip(".") or "localhost"


def is_local_name(name: str) -> bool:
    return name.lower().rstrip(".") in _LOCAL_NAMES or name.lower().endswith(".localhost")


def hostname_problem(name: str) -> str | None:
    """Why `name` is a poor EHLO/banner name for mail to the internet, or None."""
    if is_local_name(name):
        return "is a local name; receivers that check EHLO names will distrust it"
    try:
        ipaddress.ip_address(name)
        return "is an address, not a name"
    except ValueError:
        pass
    if "." not in name:
        return "is not fully qualified (no domain); receivers that check EHLO names will distrust it"
    return None


def hostname_warnings(config: Config) -> list[str]:
    """Warnings about the names the daemon would give itself (EHLO, banners)."""
    out = []
    names = {config.hostname: "hostname"}
    for i, lc in enumerate(config.listeners):
        names.setdefault(lc.hostname, f"listener[{i}].hostname")
    for name, key in names.items():
        problem = hostname_problem(name)
        if problem is not None:
            origin = "" if key in config.raw or (key != "hostname") else " (the machine's name: `hostname -f`)"
            out.append(f"{config.source}: {key}: {name!r}{origin} {problem}; set hostname = \"mta.example.com\" "
                       "to the name the sending address's PTR record gives")
    return out


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'expected a host name like "mta1.example.com", got {value!r}')
    return value.strip()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration."""

    source: str = "<embedded default>"
    hostname: str = field(default_factory=machine_hostname)
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    tenancy: TenancyConfig = TenancyConfig()
    spool: SpoolConfig = SpoolConfig()
    logs: LogsConfig = LogsConfig()
    dns: ResolverConfig = ResolverConfig()
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    shaping_loaded: LoadedShaping | None = None  # the shaping files, read and checked
    webhooks: tuple[WebhookConfig, ...] = ()  # one per [[logs.webhook]]
    dkim: DkimConfig = field(default_factory=DkimConfig)
    dkim_signer: DkimSigner | None = None  # keys read; None without [dkim] files
    log_hooks: tuple[LogHookConfig, ...] = ()  # one per [[logs.amqp]] and [[logs.redis_stream]]
    cluster: ClusterConfig | None = None  # [cluster]; None: this node keeps its limits to itself
    tls_reporting: TlsReportingConfig = TlsReportingConfig()  # [tls_reporting]: RFC 8460 reports
    raw: Mapping[str, Any] = field(default_factory=dict)


# What a reload (SIGHUP, `trimta shaping reload`) does not apply, by Config field: a
# change to any of these waits for a restart. The shaping files, [egress], the queue and
# tenant settings, sources, pools and DKIM are applied at once.
RESTART_ONLY = {
    "hostname": "hostname",
    "listeners": "[[listener]] (and [kumomta] listener_domains)",
    "tenancy": "[tenancy] (and the queues file's tenant headers)",
    "spool": "[spool]",
    "logs": "[logs]",
    "dns": "[dns]",
    "http": "[http]",
    "webhooks": "[[logs.webhook]]",
    "log_hooks": "[[logs.amqp]], [[logs.redis_stream]]",
    "cluster": "[cluster]",
    "tls_reporting": "[tls_reporting]",
}


def restart_needed(running: Config, fresh: Config) -> list[str]:
    """The tables whose settings differ between the running configuration and `fresh`,
    the file as it is now, that only a restart applies (`RESTART_ONLY`)."""
    return [table for name, table in RESTART_ONLY.items() if getattr(running, name) != getattr(fresh, name)]


# --- Loading ----------------------------------------------------------------------


def find_config(path: str | os.PathLike | None) -> Path | None:
    """The file to load: the one given, else ``./trimta.toml`` if present, else None."""
    if path is not None:
        return Path(path)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def load_config(path: str | os.PathLike | None = None, *, dkim_previous: DkimSigner | None = None) -> Config:
    """Load and validate a config file; with None, ``./trimta.toml`` or the embedded default.

    DKIM keys are read too; `dkim_previous` (the running signer, on a reload) lends its
    cached keys to key files that have disappeared since.
    """
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
    try:
        return parse_config(raw, source=str(found), base_dir=found.resolve().parent, dkim_previous=dkim_previous)
    except ConfigError as exc:
        if exc.line is not None or exc.file != str(found) or not exc.key:
            raise
        raise exc.at_line(TomlLines(text).line_of(toml_key_path(exc.key))) from None


_LISTENER_KEYS = (
    "listen", "hostname", "banner", "relay_hosts", "max_message_size",
    "max_recipients_per_message", "max_messages_per_connection", "max_errors",
    "max_connections", "max_connections_per_client", "client_timeout", "command_timeout",
    "data_timeout", "tls_certificate",
    "tls_private_key", "auth", "workers", "shared_port",
)


def _parse_auth(value: Any, file: str, prefix: str) -> tuple[AuthUser, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            'expected a list like [{ username = "app", password = "secret", tenant = "acme" }]',
            file=file, key=prefix,
        )
    users = []
    for i, entry in enumerate(value):
        t = Table(entry, file, f"{prefix}[{i}]", ("username", "password", "tenant", "campaign", "authorize_as"))
        username = t.string("username", None)
        password = t.string("password", None)
        if not username or password is None:
            raise ConfigError("each auth entry needs username and password", file=file, key=f"{prefix}[{i}]")
        users.append(AuthUser(username, password, t.string("tenant", None), t.string("campaign", None),
                              t.get("authorize_as", (), _identities)))
    return tuple(users)


def _parse_listener(data: Any, file: str, index: int, hostname: str, base_dir: Path) -> ListenerConfig:
    t = Table(data, file, f"listener[{index}]", _LISTENER_KEYS)
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
    if cert_path is not None and key_path is not None:
        try:
            check_server_files(cert_path, key_path)
        except TlsFileError as exc:
            raise t.error(exc.key, str(exc)) from None
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
        max_connections_per_client=t.get("max_connections_per_client", 50, _count),
        client_timeout_s=t.get("client_timeout", 60.0, units.parse_duration),
        command_timeout_s=t.get("command_timeout", 300.0, units.parse_positive_duration),
        data_timeout_s=t.get("data_timeout", 300.0, units.parse_positive_duration),
        tls_certificate=cert_path,
        tls_private_key=key_path,
        auth=_parse_auth(t.data["auth"], file, t.key("auth")) if "auth" in t.data else (),
        workers=t.get("workers", None, _workers) or usable_cpus(),
        shared_port=t.boolean("shared_port", False),
    )


def _compression(value: Any) -> str:
    if value not in ("none", "zstd"):
        raise ValueError(f'expected "none" or "zstd", got {value!r}')
    return str(value)


def _field_names(kind: str) -> Callable[[Any], tuple[str, ...]]:
    """A list of header or meta names to log; a name may end in ``*`` (any with that prefix)."""
    def convert(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"expected a list of {kind} names, e.g. [\"Subject\", \"X-*\"], got {value!r}")
        for name in value:
            bare = name[:-1] if name.endswith("*") else name
            if "*" in bare or any(c.isspace() or c == ":" or not c.isprintable() for c in bare):
                raise ValueError(f"not a {kind} name: {name!r} (only a last '*' is a wildcard)")
        return tuple(dict.fromkeys(value))
    return convert


def _zstd_level(value: Any) -> int:
    # zstd's levels: 1 (fast) to 22 (small); negative ones trade size for more speed.
    if isinstance(value, bool) or not isinstance(value, int) or not -7 <= value <= 22 or value == 0:
        raise ValueError(f"expected a zstd level from 1 to 22 (or -7 to -1 for faster), got {value!r}")
    return value


def _identities(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('expected a list of usernames, e.g. authorize_as = ["shop-eu"], or ["*"] for any')
    return tuple(value)


def _count(value: Any) -> int:
    """A number of connections; 0 for no limit."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number, 0 for no limit, got {value!r}")
    return value


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


_TOP_KEYS = ("hostname", "listener", "tenancy", "spool", "logs", "dns", "dkim", "kumomta", "cluster", "tls_reporting",
             # Sections read by later parts of the daemon, validated there.
             "queues", "tenants", "sources", "pools", "shaping", "http", "egress")


def _kumomta_tenancy(tenancy: TenancyConfig, ten: Table, helper: HelperFile) -> TenancyConfig:
    """queues.toml's header keys (KumoMTA's queue helper), over ``[tenancy]``; both setting one is an error.

    As in KumoMTA, a header is removed only if its ``remove_*_header`` says so.
    """
    data = helper.data
    pairs = {"tenant_header": "tenant_header", "campaign_header": "campaign_header",
             "default_tenant": "default_tenant", "remove_tenant_header": "remove_headers",
             "remove_campaign_header": "remove_headers"}
    for theirs, ours in pairs.items():
        if theirs in data and ours in ten.data:
            raise ConfigError(f"set twice: here and in {ten.file} (tenancy.{ours}); keep one",
                              file=helper.file, key=theirs)
    h = Table({k: v for k, v in data.items() if k in pairs}, helper.file, "", tuple(pairs))
    return dataclasses.replace(
        tenancy,
        tenant_header=h.string("tenant_header", tenancy.tenant_header),
        campaign_header=h.string("campaign_header", tenancy.campaign_header),
        default_tenant=h.string("default_tenant", tenancy.default_tenant),
        remove_headers=h.boolean("remove_tenant_header", False) if "remove_headers" not in ten.data
        else tenancy.remove_headers,
        remove_campaign_header=h.boolean("remove_campaign_header", False) if "remove_headers" not in ten.data
        else None,
    )


def parse_config(
    raw: Mapping[str, Any], *, source: str, base_dir: Path, dkim_previous: DkimSigner | None = None
) -> Config:
    """Validate a parsed TOML document into a `Config`."""
    top = Table(raw, source, "", _TOP_KEYS)
    hostname = top.get("hostname", None, _hostname) or machine_hostname()

    listener_tables = raw.get("listener", [{}])
    if isinstance(listener_tables, Mapping):
        listener_tables = [listener_tables]
    if not isinstance(listener_tables, list) or not listener_tables:
        raise ConfigError("expected one or more [[listener]] tables", file=source, key="listener")
    listeners = tuple(
        _parse_listener(t, source, i, hostname, base_dir) for i, t in enumerate(listener_tables)
    )

    ten = Table(raw.get("tenancy", {}), source, "tenancy",
                ("tenant_header", "campaign_header", "remove_headers", "default_tenant"))
    tenancy = TenancyConfig(
        tenant_header=ten.string("tenant_header", "X-Tenant"),
        campaign_header=ten.string("campaign_header", "X-Campaign"),
        remove_headers=ten.boolean("remove_headers", True),
        default_tenant=ten.string("default_tenant", None),
    )
    kumomta = parse_kumomta_table(raw.get("kumomta", {}), source, base_dir)
    if kumomta.queues is not None:
        tenancy = _kumomta_tenancy(tenancy, ten, kumomta.queues)

    sp = Table(raw.get("spool", {}), source, "spool", ("path", "max_size"))
    spool = SpoolConfig(
        path=base_dir / sp.string("path", "trimta-data/spool"),
        max_size_bytes=sp.get("max_size", None, units.parse_size),
    )

    lg = Table(raw.get("logs", {}), source, "logs",
                ("path", "max_file_size", "max_segment_duration", "flush_interval", "webhook", "compression",
                 "compression_level", "amqp", "redis_stream", "headers", "meta"))
    logs = LogsConfig(
        path=base_dir / lg.string("path", "trimta-data/logs"),
        max_file_size_bytes=lg.get("max_file_size", 100_000_000, units.parse_size),
        max_segment_duration_s=lg.get("max_segment_duration", 3600.0, units.parse_duration),
        flush_interval_s=lg.get("flush_interval", 0.2, units.parse_duration),
        compression=lg.get("compression", "none", _compression),
        compression_level=lg.get("compression_level", 3, _zstd_level),
        headers=lg.get("headers", (), _field_names("header")),
        meta=lg.get("meta", (), _field_names("meta")),
    )

    dns = parse_dns_table(raw.get("dns", {}), source)

    delivery = parse_delivery_config(raw, source, other_tenant_keys=("dkim",), kumomta=kumomta)
    if kumomta.listener_domains is not None:
        domains, domain_warnings = parse_listener_domains(kumomta.listener_domains)
        listeners = tuple(dataclasses.replace(listener, listener_domains=domains) for listener in listeners)
        delivery = dataclasses.replace(delivery, warnings=(*delivery.warnings, *domain_warnings))

    dkim = parse_dkim_config(raw, source, base_dir)
    dkim_signer = None
    if dkim.enabled:
        from trimta.adapters.dkim import DkimSigner  # noqa: PLC0415 (cryptography only when signing)

        dkim_signer = DkimSigner.from_config(dkim, dkim_previous)

    shaping = parse_shaping_table(raw.get("shaping", {}), source, base_dir)
    return Config(
        source=source, hostname=hostname, listeners=listeners, tenancy=tenancy,
        spool=spool, logs=logs, dns=dns, delivery=delivery, raw=raw,
        http=http_config_from(raw, source), webhooks=parse_webhooks(raw, source),
        log_hooks=parse_log_hooks(raw, source, base_dir),
        shaping=shaping, shaping_loaded=load_shaping_files(shaping.paths),
        dkim=dkim, dkim_signer=dkim_signer, cluster=parse_cluster_config(raw, source, base_dir),
        tls_reporting=parse_tls_reporting(raw, source, hostname),
    )
