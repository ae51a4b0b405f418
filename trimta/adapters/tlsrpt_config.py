"""The ``[tls_reporting]`` table of ``trimta.toml``: sending RFC 8460 TLS reports.

```toml
[tls_reporting]
enabled = true                              # default false: nothing counted, nothing sent
organization_name = "Example Mail"          # the report's organization-name
from = "tlsrpt@example.com"                 # the reports' sender (From: and envelope)
contact_info = "postmaster@example.com"     # default: the from address
submitter = "mta1.example.com"              # default: hostname
tenant = "reports"                          # the tenant the report messages are queued under
send_hour = 1                               # the daily send window opens this hour (UTC)...
send_window = "4h"                          # ...and lasts this long; the moment is random in it
flush_interval = "30s"                      # counts are written to disk this often
retry_interval = "10m"                      # a failed send is retried after this, doubling
max_attempts = 8                            # then given up (and logged)
timeout = "60s"                             # for one https POST
```

Mistakes are `ConfigError`s naming the file and key (the loader adds the line).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trimta.adapters.config_base import ConfigError, Table
from trimta.core import units

KEYS = ("enabled", "organization_name", "from", "contact_info", "submitter", "tenant", "send_hour", "send_window",
        "flush_interval", "retry_interval", "max_attempts", "timeout")
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class TlsReportingConfig:
    """What `TlsReporter` needs; with `enabled` false the daemon has no reporter."""

    enabled: bool = False
    organization_name: str = ""
    from_address: str = ""
    contact_info: str = ""
    submitter: str = ""
    tenant: str | None = None
    send_hour: int = 1
    send_window_s: float = 4 * 3600.0
    flush_interval_s: float = 30.0
    retry_interval_s: float = 600.0
    max_attempts: int = 8
    timeout_s: float = 60.0


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ValueError(f'expected an address like "tlsrpt@example.com", got {value!r}')
    return value


def _hour(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 23:
        raise ValueError(f"expected an hour of the UTC day, 0 to 23, got {value!r}")
    return value


def _window(value: Any) -> float:
    seconds = units.parse_duration(value)
    if not 0 < seconds <= 86400:
        raise ValueError(f'expected a duration from more than 0 to "24h", got {value!r}')
    return seconds


def _non_empty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def parse_tls_reporting(raw: Mapping[str, Any], file: str, hostname: str) -> TlsReportingConfig:
    """The ``[tls_reporting]`` table; without one, reporting is off."""
    if "tls_reporting" not in raw:
        return TlsReportingConfig()
    t = Table(raw["tls_reporting"], file, "tls_reporting", KEYS)
    enabled = t.boolean("enabled", False)
    organization_name = t.get("organization_name", "", _non_empty)
    from_address = t.get("from", "", _address)
    if enabled and not from_address:
        raise ConfigError('required with enabled = true: the address reports are sent from, '
                          'e.g. from = "tlsrpt@example.com"', file=file, key=t.key("from"))
    if enabled and not organization_name:
        raise ConfigError('required with enabled = true: who sends the reports, '
                          'e.g. organization_name = "Example Mail"', file=file, key=t.key("organization_name"))
    return TlsReportingConfig(
        enabled=enabled,
        organization_name=organization_name,
        from_address=from_address,
        contact_info=t.get("contact_info", from_address, _non_empty),
        submitter=t.get("submitter", hostname, _non_empty),
        tenant=t.get("tenant", None, _non_empty),
        send_hour=t.get("send_hour", 1, _hour),
        send_window_s=t.get("send_window", 4 * 3600.0, _window),
        flush_interval_s=t.get("flush_interval", 30.0, units.parse_positive_duration),
        retry_interval_s=t.get("retry_interval", 600.0, units.parse_positive_duration),
        max_attempts=t.positive_int("max_attempts", 8),
        timeout_s=t.get("timeout", 60.0, units.parse_positive_duration),
    )
