"""``[[logs.webhook]]`` tables: where log records are POSTed, which ones, how batched.

```toml
[[logs.webhook]]
url = "https://hooks.example.com/trimta"
record_types = ["Delivery", "Bounce", "TransientFailure"]   # default: every type
batch_size = 100                  # records per POST, at most
max_batch_latency = "1s"          # a record waits at most this long for its batch to fill
headers = { Authorization = "Bearer s3cret" }
timeout = "30s"                   # per POST
```

Values are parsed once, here, into a `WebhookConfig` whose fields carry their units;
mistakes are `ConfigError`\\ s naming the file and the key (``logs.webhook[0].url``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trimta.adapters.config_base import ConfigError, Table
from trimta.adapters.http_client import Origin, split_url
from trimta.core import records, units

# KumoMTA's record types, and trimta's own `Automation`; a name outside this list is
# most likely a typo.
RECORD_TYPES = (
    records.RECEPTION, records.DELIVERY, records.TRANSIENT_FAILURE, records.BOUNCE,
    records.EXPIRATION, records.ADMIN_BOUNCE, records.REJECTION,
    "OOB", "Feedback", "AdminRebind", "Delayed", "Any", records.AUTOMATION,
)

_KEYS = (
    "url", "record_types", "batch_size", "max_batch_latency", "headers", "timeout",
    "name", "min_retry_interval", "max_retry_interval",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
# Set by the client for every request; a configured value would contradict it.
_RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "connection")


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One webhook: an endpoint and how records are batched and retried for it.

    `name` identifies the webhook's durable journal; it defaults to one derived from
    the URL, so changing the URL starts a new journal (set `name` to keep the old one).
    `record_types` None means every type.
    """

    url: str
    name: str = ""
    record_types: frozenset[str] | None = None
    batch_size: int = 100
    max_batch_latency_s: float = 1.0
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 30.0
    min_retry_interval_s: float = 1.0
    max_retry_interval_s: float = 300.0
    origin: Origin = field(init=False, repr=False, compare=False)
    target: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        origin, target, _ = split_url(self.url)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "target", target)
        if not self.name:
            object.__setattr__(self, "name", default_name(self.url))

    def wants(self, record: Mapping[str, Any]) -> bool:
        """Whether a record of this type is sent to this webhook."""
        return self.record_types is None or record.get("type") in self.record_types


def default_name(url: str) -> str:
    """``hooks.example.com-1a2b3c4d5e``: readable, and different for different URLs."""
    origin, _, _ = split_url(url)
    host = re.sub(r"[^A-Za-z0-9.-]", "_", origin.host)[:40]
    return f"{host}-{hashlib.sha256(url.encode('utf-8')).hexdigest()[:10]}"


def parse_webhooks(raw: Mapping[str, Any], source: str) -> tuple[WebhookConfig, ...]:
    """Every ``[[logs.webhook]]`` of a parsed config document (``Config.raw``)."""
    logs = raw.get("logs", {})
    if not isinstance(logs, Mapping):
        raise ConfigError("expected a table", file=source, key="logs")
    tables = logs.get("webhook", [])
    if isinstance(tables, Mapping):
        tables = [tables]
    if not isinstance(tables, list):
        raise ConfigError("expected one or more [[logs.webhook]] tables", file=source, key="logs.webhook")
    webhooks = tuple(_parse_one(t, source, f"logs.webhook[{i}]") for i, t in enumerate(tables))
    seen: dict[str, int] = {}
    for i, w in enumerate(webhooks):
        if w.name in seen:
            raise ConfigError(
                f"same name as logs.webhook[{seen[w.name]}] ({w.name!r}); two webhooks cannot share a journal: "
                "give each its own name",
                file=source, key=f"logs.webhook[{i}].name",
            )
        seen[w.name] = i
    return webhooks


def _parse_one(data: Any, source: str, prefix: str) -> WebhookConfig:
    t = Table(data, source, prefix, _KEYS)
    if "url" not in t.data:
        raise ConfigError('a webhook needs a url, e.g. url = "https://hooks.example.com/trimta"', file=source, key=prefix)
    url = t.get("url", None, _url)
    min_retry = t.get("min_retry_interval", 1.0, units.parse_positive_duration)
    max_retry = t.get("max_retry_interval", 300.0, units.parse_positive_duration)
    if max_retry < min_retry:
        raise t.error("max_retry_interval", "must not be shorter than min_retry_interval")
    return WebhookConfig(
        url=url,
        name=t.get("name", "", _name),
        record_types=t.get("record_types", None, _record_types),
        batch_size=t.positive_int("batch_size", 100),
        max_batch_latency_s=t.get("max_batch_latency", 1.0, units.parse_duration),
        headers=t.get("headers", (), _headers),
        timeout_s=t.get("timeout", 30.0, units.parse_positive_duration),
        min_retry_interval_s=min_retry,
        max_retry_interval_s=max_retry,
    )


def _url(value: Any) -> str:
    _, _, userinfo = split_url(value)
    if userinfo is not None:
        raise ValueError(
            'put credentials in headers, e.g. headers = { Authorization = "Bearer ..." }, not in the URL'
        )
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"expected letters, digits, '.', '_' or '-' (at most 64), got {value!r}")
    return value



def _record_types(value: Any) -> frozenset[str] | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of record types like ["Delivery", "Bounce"], got {value!r}')
    unknown = [v for v in value if v not in RECORD_TYPES]
    if unknown:
        raise ValueError(f"unknown record type {unknown[0]!r}; known types: {', '.join(RECORD_TYPES)}")
    return None if "Any" in value else frozenset(value)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f'expected a table like {{ Authorization = "Bearer s3cret" }}, got {value!r}')
    headers = []
    for name, text in value.items():
        if not _TOKEN.fullmatch(str(name)):
            raise ValueError(f"not a valid header name: {name!r}")
        if str(name).lower() in _RESERVED_HEADERS:
            raise ValueError(f"{name} is set by trimta for each request and cannot be configured")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise ValueError(f"header {name}: expected a string on one line, got {text!r}")
        headers.append((str(name), text))
    return tuple(headers)
