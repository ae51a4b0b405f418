"""trimta's configuration and DNS answers in the shapes of KumoMTA's API.

KumoMTA's inspect-ready-q and resolve-egress-path endpoints report an egress path's
configuration (``path_config``, with KumoMTA's option names and value forms), the
scheduled queue's (``queue_config``), the throughput ceilings they imply
(``EffectiveConstraints``: each ceiling tagged with the term that set it) and the MX
resolution (``MxResolution``). This module makes those objects from trimta's parsed
values; it does no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import Any

from trimta.core.egress import EgressPathConfig, KeySource
from trimta.core.mx import MxResolution
from trimta.core.retry import QueueConfig
from trimta.core.units import Limit, Rate, format_rate

PRIMARY = {"kind": "primary"}


def format_seconds(seconds: float) -> str:
    """A duration as KumoMTA's files write it: ``"1h30m"``, ``"45s"``, ``"0.5s"``."""
    if seconds != int(seconds) or seconds < 1:
        return f"{seconds:g}s"
    total = int(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def _value(value: Any) -> Any:
    if isinstance(value, Rate):
        return format_rate(value)
    if isinstance(value, Limit):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, KeySource):
        return "(secret)" if value.data is not None else {"key_file": value.path}
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, tuple):
        return [_value(v) for v in value]
    return value


def path_config_json(path: EgressPathConfig) -> dict[str, Any]:
    """Every option of an egress path under KumoMTA's name, in the form its files take.

    Durations drop trimta's ``_s`` suffix and read ``"60s"``; ``local:`` limits read
    ``"local:5"``; secrets are never shown (an inline password is ``"(secret)"``).
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(path):
        name, value = f.name, getattr(path, f.name)
        if name in ("extra", "connection_limit_local", "provider_connection_limit_local"):
            continue
        local = {"connection_limit": path.connection_limit_local,
                 "provider_connection_limit": path.provider_connection_limit_local}
        if local.get(name) and value is not None:
            value = f"local:{value}"
        elif name.endswith("_s"):
            name = name[:-2]
            value = None if value is None else format_seconds(value)
        elif name == "provider":
            name = "provider_name"
        elif name.startswith("additional_"):
            out[name] = {key: _value(v) for key, v in value}  # KumoMTA's maps from a limit's name
            continue
        out[name] = _value(value)
    return out


def queue_config_json(config: QueueConfig) -> dict[str, Any]:
    """A scheduled queue's settings under KumoMTA's ``make_queue_config`` names."""
    return {
        "retry_interval": format_seconds(config.retry_interval_s),
        "max_retry_interval": None if config.max_retry_interval_s is None else format_seconds(config.max_retry_interval_s),
        "max_age": format_seconds(config.max_age_s),
        "egress_pool": config.egress_pool or "unspecified",
        "max_message_rate": None if config.max_message_rate is None else format_rate(config.max_message_rate),
        "protocol": "smtp",
    }


def _ceiling(value: float, source: dict[str, str], display: str) -> dict[str, Any]:
    return {"value": value, "source": source, "display": display}


def _lowest(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(candidates, key=lambda c: c["value"]) if candidates else None


def constraints_json(path: EgressPathConfig, queue: QueueConfig | None = None) -> dict[str, Any]:
    """KumoMTA's ``EffectiveConstraints``: the steady-state ceilings of a path.

    Connections: ``connection_limit``, a smaller provider or named limit winning. The
    message rate: the smallest of ``max_message_rate``, the named throttles, the
    provider's rate, the scheduled queue's rate, and ``max_deliveries_per_connection``
    times ``max_connection_rate`` (a connection delivers at most that many before the
    next must be opened, at most that often).
    """
    connections = [_ceiling(float(path.connection_limit), PRIMARY, str(path.connection_limit))]
    if path.provider_connection_limit is not None:
        connections.append(_ceiling(float(path.provider_connection_limit),
                                    {"kind": "other", "name": f"provider {path.provider} connection limit"},
                                    str(path.provider_connection_limit)))
    for name, limit in path.additional_connection_limits:
        connections.append(_ceiling(float(limit.limit), {"kind": "additional", "name": name}, str(limit.limit)))

    connection_rate = None
    if path.max_connection_rate is not None:
        connection_rate = _ceiling(path.max_connection_rate.per_second, PRIMARY, format_rate(path.max_connection_rate))

    messages = []
    if path.max_message_rate is not None:
        messages.append(_ceiling(path.max_message_rate.per_second, PRIMARY, format_rate(path.max_message_rate)))
    for name, rate in path.additional_message_rate_throttles:
        messages.append(_ceiling(rate.per_second, {"kind": "additional", "name": name}, format_rate(rate)))
    if path.provider_max_message_rate is not None:
        messages.append(_ceiling(path.provider_max_message_rate.per_second,
                                 {"kind": "other", "name": f"provider {path.provider} max_message_rate"},
                                 format_rate(path.provider_max_message_rate)))
    if queue is not None and queue.max_message_rate is not None:
        messages.append(_ceiling(queue.max_message_rate.per_second,
                                 {"kind": "other", "name": "scheduled queue max_message_rate"},
                                 format_rate(queue.max_message_rate)))
    if path.max_connection_rate is not None:
        messages.append(_ceiling(path.max_connection_rate.per_second * path.max_deliveries_per_connection,
                                 {"kind": "reconnect_cycling"},
                                 f"{path.max_deliveries_per_connection} \u00d7 {format_rate(path.max_connection_rate)}"))
    message_rate = _lowest(messages)
    declared = None
    if path.max_message_rate is not None and message_rate is not None and message_rate["source"] != PRIMARY:
        declared = format_rate(path.max_message_rate)

    selection = []
    if path.source_selection_rate is not None:
        selection.append(_ceiling(path.source_selection_rate.per_second, PRIMARY, format_rate(path.source_selection_rate)))
    for name, rate in path.additional_source_selection_rates:
        selection.append(_ceiling(rate.per_second, {"kind": "additional", "name": name}, format_rate(rate)))

    return {
        "max_concurrent_dispatchers": _lowest(connections),
        "max_connection_rate": connection_rate,
        "max_message_rate": message_rate,
        "max_message_rate_declared": declared,
        "max_source_selection_rate": _lowest(selection),
    }


def mx_json(resolution: MxResolution | None) -> dict[str, Any] | None:
    """KumoMTA's ``MxResolution``, or None when the domain did not resolve."""
    if resolution is None or not resolution.ok:
        return None
    by_preference: dict[str, list[str]] = {}
    if not resolution.implicit_mx and not resolution.literal:
        for host in sorted(resolution.hosts, key=lambda h: (h.preference, h.name)):
            by_preference.setdefault(str(host.preference), []).append(host.name)
    return {
        "site_name": resolution.site,
        "by_preference": by_preference,
        "is_mx": not resolution.implicit_mx and not resolution.literal,
        "is_domain_literal": resolution.literal,
        "is_secure": False,  # trimta's resolver does not report DNSSEC validation here
    }
