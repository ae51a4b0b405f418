"""The ``[http]`` table of ``trimta.toml``: the HTTP listener for injection, admin and metrics.

```toml
[http]
listen = "127.0.0.1:8000"
trusted_hosts = ["127.0.0.0/8", "::1"]    # no credentials needed from these
tokens = ["s3cret-token"]                 # Authorization: Bearer s3cret-token
users = [{ username = "ops", password = "pw" }]   # Authorization: Basic ...
max_body_size = "2MiB"
header_timeout = "10s"
body_timeout = "60s"
idle_timeout = "60s"
max_connections = 256
allowed_hosts = ["mta-admin.example.net"]  # Host names besides IPs, localhost, hostname
```

Every key is optional; with no ``[http]`` table the API listens on
``127.0.0.1:8000`` (where the command line looks by default) and trusts loopback
only. ``enabled = false`` turns it off. Values are parsed once, here, into fields with
their units in their names; mistakes are `ConfigError`s naming the file and key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trimta.adapters.config_base import LOOPBACK_NETWORKS, ConfigError, Network, Table, parse_host_port, parse_networks
from trimta.core import units

KEYS = (
    "enabled", "listen", "trusted_hosts", "tokens", "users", "max_body_size",
    "header_timeout", "body_timeout", "idle_timeout", "max_connections", "known_tenants_only",
    "allowed_hosts",
)
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_SIZE = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpUser:
    """Credentials for HTTP Basic authentication."""

    username: str
    password: str = ""

    def __repr__(self) -> str:  # never print a password into a log
        return f"HttpUser(username={self.username!r}, password=***)"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP listener: where it listens, whom it trusts, how much it takes."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    trusted_hosts: tuple[Network, ...] = LOOPBACK_NETWORKS
    tokens: tuple[str, ...] = ()
    users: tuple[HttpUser, ...] = ()
    max_body_size_bytes: int = DEFAULT_MAX_BODY_SIZE
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_connections: int = 256
    # Refuse (400 "unknown tenant") API requests naming a tenant without a [tenants.NAME] table.
    known_tenants_only: bool = False
    # Names (besides IP addresses, localhost and the daemon's hostname) a client trusted
    # by address may call this server by in Host: a guard against DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return (f"HttpConfig(enabled={self.enabled}, listen={self.name!r}, "
                f"trusted_hosts={[str(n) for n in self.trusted_hosts]}, tokens={len(self.tokens)}, "
                f"users={[u.username for u in self.users]})")


def parse_http_table(data: Any, file: str) -> HttpConfig:
    """Validate the ``[http]`` table (``{}`` when absent) into an `HttpConfig`."""
    t = Table(data if data is not None else {}, file, "http", KEYS)
    host, port = t.get("listen", ("127.0.0.1", DEFAULT_PORT), lambda v: parse_host_port(v, DEFAULT_PORT))
    return HttpConfig(
        enabled=t.boolean("enabled", True),
        host=host,
        port=port,
        trusted_hosts=t.get("trusted_hosts", LOOPBACK_NETWORKS, parse_networks),
        tokens=t.get("tokens", (), _parse_tokens),
        users=_parse_users(t.data["users"], file) if "users" in t.data else (),
        max_body_size_bytes=t.get("max_body_size", DEFAULT_MAX_BODY_SIZE, _positive_size),
        header_timeout_s=t.get("header_timeout", 10.0, units.parse_positive_duration),
        body_timeout_s=t.get("body_timeout", 60.0, units.parse_positive_duration),
        idle_timeout_s=t.get("idle_timeout", 60.0, units.parse_positive_duration),
        max_connections=t.positive_int("max_connections", 256),
        known_tenants_only=t.boolean("known_tenants_only", False),
        allowed_hosts=t.get("allowed_hosts", (), _parse_names),
    )


def _parse_tokens(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('expected a list of strings, e.g. tokens = ["a-long-random-token"]')
    for v in value:
        if not v or any(c.isspace() for c in v):
            raise ValueError("a token must be a non-empty string without spaces")
    return tuple(value)


def _parse_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError('expected a list of host names, e.g. allowed_hosts = ["mta.example.net"]')
    return tuple(v.strip().lower() for v in value)


def _parse_users(value: Any, file: str) -> tuple[HttpUser, ...]:
    if not isinstance(value, list):
        raise ConfigError('expected a list like [{ username = "ops", password = "secret" }]', file=file, key="http.users")
    users = []
    for i, entry in enumerate(value):
        t = Table(entry, file, f"http.users[{i}]", ("username", "password"))
        username = t.string("username", None)
        password = t.string("password", None)
        if not username or password is None:
            raise ConfigError("each user needs a username and a password", file=file, key=f"http.users[{i}]")
        if ":" in username:
            raise t.error("username", "a Basic username cannot contain ':'")
        users.append(HttpUser(username, password))
    return tuple(users)


def _positive_size(value: Any) -> int:
    size = units.parse_size(value)
    if size <= 0:
        raise ValueError(f"expected a size above zero, got {value!r}")
    return size



def http_config_from(raw: Mapping[str, Any], file: str) -> HttpConfig:
    """The `HttpConfig` of a whole parsed ``trimta.toml`` document."""
    return parse_http_table(raw.get("http", {}), file)
