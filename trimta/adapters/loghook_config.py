"""``[[logs.amqp]]`` and ``[[logs.redis_stream]]`` tables: log hooks to message brokers.

```toml
[[logs.amqp]]
url = "amqp://trimta@rabbit.internal:5672/mail"   # amqps:// for TLS; vhost in the path
credentials_file = "/etc/trimta/amqp.credentials" # "user:password" (or the password alone)
exchange = "mail-events"                          # default: the default exchange ("")
routing_key = "{type}.{tenant}"                   # a template over record fields
record_types = ["Delivery", "Bounce"]             # default: every type
batch_size = 100
max_batch_latency = "1s"
persistent = true                                 # delivery mode 2
headers = { tenant = "{tenant}", source = "trimta" }

[[logs.redis_stream]]
url = "redis://127.0.0.1:6379/0"
stream = "trimta:{type}"
maxlen = 1000000                                  # MAXLEN ~ (approximate trimming)
```

Parsed once, here, into frozen configs whose fields carry their units; mistakes are
`ConfigError`\\ s naming the file and the key (``logs.amqp[0].routing_key``).
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimta.adapters.config_base import ConfigError, Table
from trimta.adapters.webhook_config import _name, _record_types
from trimta.core import units
from trimta.core.record_template import RecordTemplate

DEFAULT_MAX_JOURNAL_RECORDS = 1_000_000
AMQP_MAX_SHORT_STRING = 255  # routing keys and exchange names (AMQP 0-9-1 shortstr)

_COMMON_KEYS = (
    "url", "name", "record_types", "batch_size", "max_batch_latency", "timeout",
    "min_retry_interval", "max_retry_interval", "max_journal_records", "credentials_file",
)
_AMQP_KEYS = (*_COMMON_KEYS, "exchange", "routing_key", "persistent", "headers")
_REDIS_KEYS = (*_COMMON_KEYS, "stream", "maxlen")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class HookDelivery:
    """What every log hook has: which records, how batched and retried, its journal's cap."""

    name: str
    record_types: frozenset[str] | None = None
    batch_size: int = 100
    max_batch_latency_s: float = 1.0
    timeout_s: float = 30.0
    min_retry_interval_s: float = 1.0
    max_retry_interval_s: float = 30.0
    max_journal_records: int = DEFAULT_MAX_JOURNAL_RECORDS

    def wants(self, record: Mapping[str, Any]) -> bool:
        return self.record_types is None or record.get("type") in self.record_types


@dataclass(frozen=True, slots=True)
class AmqpHookConfig:
    """One ``[[logs.amqp]]``: every record it wants becomes one AMQP message."""

    url: str  # as connected to: credentials from the file filled in
    display_url: str  # without the password, for logs and metrics
    delivery: HookDelivery
    exchange: str = ""
    routing_key: RecordTemplate = RecordTemplate.parse("{type}")
    persistent: bool = True
    headers: tuple[tuple[str, RecordTemplate], ...] = ()

    @property
    def name(self) -> str:
        return self.delivery.name


@dataclass(frozen=True, slots=True)
class RedisStreamHookConfig:
    """One ``[[logs.redis_stream]]``: every record it wants becomes one stream entry."""

    url: str
    display_url: str
    delivery: HookDelivery
    stream: RecordTemplate = RecordTemplate.parse("trimta:logs")
    maxlen: int | None = None

    @property
    def name(self) -> str:
        return self.delivery.name


LogHookConfig = AmqpHookConfig | RedisStreamHookConfig


def parse_log_hooks(raw: Mapping[str, Any], source: str, base_dir: Path) -> tuple[LogHookConfig, ...]:
    """Every ``[[logs.amqp]]`` and ``[[logs.redis_stream]]`` of a parsed config document."""
    logs = raw.get("logs", {})
    if not isinstance(logs, Mapping):
        raise ConfigError("expected a table", file=source, key="logs")
    hooks: list[tuple[str, LogHookConfig]] = []
    for kind, parse in (("amqp", _parse_amqp), ("redis_stream", _parse_redis)):
        tables = logs.get(kind, [])
        if isinstance(tables, Mapping):
            tables = [tables]
        if not isinstance(tables, list):
            raise ConfigError(f"expected one or more [[logs.{kind}]] tables", file=source, key=f"logs.{kind}")
        for i, table in enumerate(tables):
            prefix = f"logs.{kind}[{i}]"
            hooks.append((prefix, parse(Table(table, source, prefix, _AMQP_KEYS if kind == "amqp" else _REDIS_KEYS),
                                        base_dir)))
    seen: dict[str, str] = {}
    for prefix, hook in hooks:
        if hook.name in seen:
            raise ConfigError(
                f"same name as {seen[hook.name]} ({hook.name!r}); two log hooks cannot share a journal: "
                "give each its own name",
                file=source, key=f"{prefix}.name",
            )
        seen[hook.name] = prefix
    return tuple(hook for _, hook in hooks)


def _parse_amqp(t: Table, base_dir: Path) -> AmqpHookConfig:
    url, display = _broker_url(t, base_dir, ("amqp", "amqps"), 'url = "amqp://guest@127.0.0.1:5672/"')
    exchange = t.get("exchange", "", _short_string("an exchange name"))
    delivery = _delivery(t, default_name(display, exchange))
    return AmqpHookConfig(
        url=url, display_url=display, delivery=delivery, exchange=exchange,
        routing_key=t.get("routing_key", RecordTemplate.parse("{type}"), RecordTemplate.parse),
        persistent=t.boolean("persistent", True),
        headers=t.get("headers", (), _amqp_headers),
    )


def _parse_redis(t: Table, base_dir: Path) -> RedisStreamHookConfig:
    url, display = _broker_url(t, base_dir, ("redis", "rediss"), 'url = "redis://127.0.0.1:6379/0"')
    stream = t.get("stream", RecordTemplate.parse("trimta:logs"), _stream)
    delivery = _delivery(t, default_name(display, stream.text))
    return RedisStreamHookConfig(
        url=url, display_url=display, delivery=delivery, stream=stream,
        maxlen=t.get("maxlen", None, _positive_int),
    )


def _delivery(t: Table, default: str) -> HookDelivery:
    min_retry = t.get("min_retry_interval", 1.0, units.parse_positive_duration)
    max_retry = t.get("max_retry_interval", 30.0, units.parse_positive_duration)
    if max_retry < min_retry:
        raise t.error("max_retry_interval", "must not be shorter than min_retry_interval")
    return HookDelivery(
        name=t.get("name", default, _name),
        record_types=t.get("record_types", None, _record_types),
        batch_size=t.positive_int("batch_size", 100),
        max_batch_latency_s=t.get("max_batch_latency", 1.0, units.parse_duration),
        timeout_s=t.get("timeout", 30.0, units.parse_positive_duration),
        min_retry_interval_s=min_retry,
        max_retry_interval_s=max_retry,
        max_journal_records=t.positive_int("max_journal_records", DEFAULT_MAX_JOURNAL_RECORDS),
    )


def _broker_url(t: Table, base_dir: Path, schemes: tuple[str, ...], example: str) -> tuple[str, str]:
    """(URL to connect to, URL to show): credentials from the URL or `credentials_file`."""
    if "url" not in t.data:
        raise ConfigError(f"a log hook needs a url, e.g. {example}", file=t.file, key=t.prefix)
    url = t.string("url", "")
    parts = urllib.parse.urlsplit(url)
    try:
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise t.error("url", f"bad port in {url!r}") from None
    if parts.scheme not in schemes or not host or any(c.isspace() for c in url):
        raise t.error("url", f"expected a {' or '.join(s + '://' for s in schemes)} URL, e.g. {example}, got {url!r}")
    user, password = parts.username, parts.password
    if "credentials_file" in t.data:
        if password is not None:
            raise t.error("credentials_file", "the url has a password already; keep it in one place")
        path = base_dir / t.string("credentials_file", "")
        try:
            line = path.read_text(encoding="utf-8").strip().splitlines()[0].strip() if path.stat().st_size else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise t.error("credentials_file", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not line:
            raise t.error("credentials_file", f"{path} is empty; expected user:password (or the password alone)")
        file_user, sep, file_password = line.partition(":")
        if sep:
            user, password = (file_user or user), file_password
        else:
            password = line
    hostport = parts.netloc.rpartition("@")[2]
    display = urllib.parse.urlunsplit(
        (parts.scheme, (f"{user}@" if user else "") + hostport, parts.path, parts.query, ""))
    if user is None and password is None:
        return url, display
    userinfo = urllib.parse.quote(urllib.parse.unquote(user or ""), safe="")
    if password is not None:
        userinfo += ":" + urllib.parse.quote(urllib.parse.unquote(password), safe="")
    return urllib.parse.urlunsplit((parts.scheme, f"{userinfo}@{hostport}", parts.path, parts.query, "")), display


def default_name(display_url: str, target: str) -> str:
    """``rabbit.internal-1a2b3c4d5e``: readable, different for different brokers and targets."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", urllib.parse.urlsplit(display_url).hostname or "hook")[:40]
    digest = hashlib.sha256(f"{display_url}\n{target}".encode()).hexdigest()[:10]
    return f"{host}-{digest}"


def _short_string(what: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or len(value.encode("utf-8")) > AMQP_MAX_SHORT_STRING:
            raise ValueError(f"expected {what} (a string of at most {AMQP_MAX_SHORT_STRING} bytes), got {value!r}")
        return value

    return convert


def _stream(value: Any) -> RecordTemplate:
    template = RecordTemplate.parse(value)
    if not template.text:
        raise ValueError('expected a stream name like "trimta:logs" or "trimta:{tenant}"')
    return template


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _amqp_headers(value: Any) -> tuple[tuple[str, RecordTemplate], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f'expected a table like {{ tenant = "{{tenant}}", source = "trimta" }}, got {value!r}')
    headers = []
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(str(name)):
            raise ValueError(f"not a valid header name: {name!r} (letters, digits, '.', '_', '-')")
        try:
            headers.append((str(name), RecordTemplate.parse(text)))
        except ValueError as exc:
            raise ValueError(f"header {name}: {exc}") from None
    return tuple(headers)
