"""What every part of the configuration is read with: `ConfigError` and the table reader.

The daemon's file (`trimta.adapters.config`) is parsed in parts, each by its own module
(`delivery_config`, `dns_config`, `http_config`, `webhook_config`, `shaping_files`,
the simulator's scenarios). They all report mistakes as `ConfigError` naming the file
and the key, and read TOML tables through `Table`, which checks types and rejects
unknown keys with a suggestion. Those shared pieces live here, below every parser, so
that `config` can import the parsers without any of them importing back.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class ConfigError(Exception):
    """A configuration mistake, with where it is and what would be accepted.

    Shown as ``file:line: key: message``, the form compilers and the shaping-file
    checks use; the line is added by `config.load_config`, which has the text (the
    section parsers see only parsed values).
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        place = f"{file}:{line}" if file and line else file
        where = ": ".join(p for p in (place, key) if p)
        super().__init__(f"{where}: {message}" if where else message)

    def at_line(self, line: int | None) -> ConfigError:
        return ConfigError(self.message, file=self.file, key=self.key, line=line)


_KEY_PART = re.compile(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)|\[(\d+)\]')


def toml_key_path(key: str) -> tuple[str | int, ...]:
    """A key as errors name it (``listener[0].tls_private_key``, ``egress.domains."gmail.com".x``)
    as the path `toml_lines.TomlLines` knows it by."""
    path: list[str | int] = []
    for m in _KEY_PART.finditer(key):
        double, single, bare, index = m.groups()
        if index is not None:
            path.append(int(index))
        else:
            path.append(double if double is not None else single if single is not None else bare)
    return tuple(path)


class Table:
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
