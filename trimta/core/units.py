"""Durations, sizes and rates as operators write them, parsed once into numbers.

Forms follow KumoMTA's: durations like ``"60s"``, ``"5 minutes"``, ``"1h30m"``;
sizes like ``"20MB"`` (decimal) or ``"20MiB"`` (binary); rates like ``"100/s"``
with an optional ``",max_burst=B"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION_UNITS = {
    "ms": 0.001, "msec": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")

_RATE_PERIODS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}
# The limit may group digits KumoMTA's way ("10,000/h", "10_000/h"); its "local:"
# prefix (keep the throttle on this node) is accepted and means nothing here.
_RATE = re.compile(
    r"\s*(?:local:)?(\d(?:[\d_,]*\d)?(?:\.\d+)?)\s*/\s*([a-zA-Z]+)\s*(?:,\s*max_burst\s*=\s*(\d+)\s*)?")

DURATION_FORMS = 'a number of seconds or a string like "30s", "5m", "2h", "7d", "1h30m"'
SIZE_FORMS = 'a number of bytes or a string like "512KB", "20MB", "1GiB"'
RATE_FORMS = 'a string like "100/s", "20/min", "500/h", "1000/d", optionally ",max_burst=N"'


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_FORMS}, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {DURATION_FORMS}, got {value!r}")
    total = 0.0
    pos = 0
    text = value.strip()
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"expected {DURATION_FORMS}, got {value!r}")
        unit = m.group(2).lower() or "s"
        if unit not in _DURATION_UNITS:
            raise ValueError(f"unknown duration unit {m.group(2)!r} in {value!r}; expected {DURATION_FORMS}")
        total += float(m.group(1)) * _DURATION_UNITS[unit]
        pos = m.end()
    return total


def parse_positive_duration(value: object) -> float:
    """Like `parse_duration`, refusing zero: for timeouts and intervals."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration longer than zero, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a number or a size string; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_FORMS}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {SIZE_FORMS}, got {value!r}")
    m = _SIZE.fullmatch(value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected {SIZE_FORMS}, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate: `limit` events per `period_s` seconds, with an optional burst."""

    limit: float
    period_s: float
    max_burst: int | None = None

    @property
    def per_second(self) -> float:
        return self.limit / self.period_s


def parse_rate(value: object) -> Rate:
    """A `Rate` from ``"N/unit"`` with an optional ``",max_burst=B"``."""
    if not isinstance(value, str):
        raise ValueError(f"expected {RATE_FORMS}, got {value!r}")
    m = _RATE.fullmatch(value)
    if not m or m.group(2).lower() not in _RATE_PERIODS:
        raise ValueError(f"expected {RATE_FORMS}, got {value!r}")
    limit = float(m.group(1).replace(",", "").replace("_", ""))
    if limit <= 0:
        raise ValueError(f"rate must be positive, got {value!r}")
    burst = int(m.group(3)) if m.group(3) else None
    return Rate(limit, _RATE_PERIODS[m.group(2).lower()], burst)
