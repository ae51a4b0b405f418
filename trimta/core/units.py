"""Durations, sizes and rates as operators write them, parsed once into numbers.

Forms follow KumoMTA's: durations in humantime's forms (``"60s"``, ``"5 minutes"``,
``"1h30m"``, ``"3 days"``, ``"1month"``, ``"2y"``); sizes like ``"20MB"`` (decimal) or
``"20MiB"`` (binary); rates in KumoMTA's throttle form ``[local:]N/[K]unit[,max_burst=B]``
(``"100/s"``, ``"3/5m"``, ``"local:1,000/h,max_burst=1_000"``); limits as integers or
strings ``[local:]N`` with digits grouped by ``,`` or ``_`` (``"local:5"``, ``"1,000"``).

``local:`` marks a rate or limit that stays on this node when limits are shared
between nodes (`Rate.local`, `Limit.local`); on a single node it changes nothing.
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
    # humantime's: a month is 30.44 days, a year 365.25 days.
    "month": 2_630_016.0, "months": 2_630_016.0,
    "y": 31_557_600.0, "year": 31_557_600.0, "years": 31_557_600.0,
    "ns": 1e-9, "nsec": 1e-9, "us": 1e-6, "usec": 1e-6,
}
# Case matters for one unit, as in humantime: "M" is a month, "m" a minute.
_DURATION_CASED = {"M": 2_630_016.0}
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
_NUMBER = r"\d(?:[\d_,]*\d)?"
# KumoMTA's throttle: "local:" (keep it on this node), a limit whose digits may be grouped
# ("10,000/h", "10_000/h"), a period of an optional multiplier and a unit ("3/5m": three
# per five minutes), and an optional burst, also grouped ("max_burst=1,000").
_RATE = re.compile(
    rf"\s*(local:)?({_NUMBER}(?:\.\d+)?)\s*/\s*(\d+)?\s*([a-zA-Z]+)\s*(?:,\s*max_burst\s*=\s*({_NUMBER})\s*)?")
_LIMIT = re.compile(rf"\s*(local:)?({_NUMBER})\s*")

DURATION_FORMS = 'a number of seconds or a string like "30s", "5m", "2h", "7d", "1h30m"'
SIZE_FORMS = 'a number of bytes or a string like "512KB", "20MB", "1GiB"'
RATE_FORMS = ('a string like "100/s", "20/min", "3/5m", "1,000/h", "1000/d", optionally prefixed "local:" '
              'and followed by ",max_burst=N"')
LIMIT_FORMS = 'a string like "1,000", "1_000" or "local:5" works too'


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
        written = m.group(2)
        unit = written.lower() or "s"
        scale = _DURATION_CASED.get(written) or _DURATION_UNITS.get(unit)
        if scale is None:
            raise ValueError(f"unknown duration unit {written!r} in {value!r}; expected {DURATION_FORMS}")
        total += float(m.group(1)) * scale
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
    """A rate: `limit` events per `period_s` seconds, with an optional burst.

    `local` is KumoMTA's ``local:`` prefix: the throttle stays on this node even
    when throttles are shared between nodes.
    """

    limit: float
    period_s: float
    max_burst: int | None = None
    local: bool = False

    @property
    def per_second(self) -> float:
        return self.limit / self.period_s


def _ungroup(digits: str) -> str:
    return digits.replace(",", "").replace("_", "")


def parse_rate(value: object) -> Rate:
    """A `Rate` from KumoMTA's ``[local:]N/[K]unit[,max_burst=B]``."""
    if not isinstance(value, str):
        raise ValueError(f"expected {RATE_FORMS}, got {value!r}")
    m = _RATE.fullmatch(value)
    if not m or m.group(4).lower() not in _RATE_PERIODS:
        raise ValueError(f"expected {RATE_FORMS}, got {value!r}")
    limit = float(_ungroup(m.group(2)))
    if limit <= 0:
        raise ValueError(f"rate must be positive, got {value!r}")
    multiplier = int(m.group(3)) if m.group(3) else 1
    if multiplier <= 0:
        raise ValueError(f"the period must be longer than zero, got {value!r}")
    burst = int(_ungroup(m.group(5))) if m.group(5) else None
    if burst is not None and burst <= 0:
        raise ValueError(f"max_burst must be positive, got {value!r}")
    return Rate(limit, multiplier * _RATE_PERIODS[m.group(4).lower()], burst, local=m.group(1) is not None)


def format_rate(rate: Rate) -> str:
    """A `Rate` written back in KumoMTA's form (``"local:3/5m,max_burst=2"``)."""
    units = ((86400.0, "d"), (3600.0, "h"), (60.0, "m"), (1.0, "s"))
    period = f"{rate.period_s:g}s"
    for seconds, unit in units:
        if rate.period_s == seconds:
            period = unit
            break
        if rate.period_s % seconds == 0:
            period = f"{rate.period_s / seconds:g}{unit}"
            break
    text = f"{'local:' if rate.local else ''}{rate.limit:g}/{period}"
    return text + (f",max_burst={rate.max_burst}" if rate.max_burst is not None else "")


@dataclass(frozen=True, slots=True)
class Limit:
    """A count limit (``connection_limit``): `limit`, and whether it stays on this node (``local:``)."""

    limit: int
    local: bool = False

    def __str__(self) -> str:
        return f"{'local:' if self.local else ''}{self.limit}"


def parse_limit(value: object) -> Limit:
    """A `Limit` from a positive integer or KumoMTA's ``[local:]N`` string (``"1,000"``, ``"1_000"``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a positive integer, got {value!r} ({LIMIT_FORMS})")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected a positive integer, got {value!r} ({LIMIT_FORMS})")
        return Limit(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a positive integer, got {value!r} ({LIMIT_FORMS})")
    m = _LIMIT.fullmatch(value)
    if not m or int(_ungroup(m.group(2))) <= 0:
        raise ValueError(f"expected a positive integer, got {value!r} ({LIMIT_FORMS})")
    return Limit(int(_ungroup(m.group(2))), local=m.group(1) is not None)


def parse_count(value: object) -> int:
    """A positive integer, written as a number or a string with grouped digits (``"1,000"``)."""
    if isinstance(value, str) and not value.strip().startswith("local:"):
        m = _LIMIT.fullmatch(value)
        if m:
            value = int(_ungroup(m.group(2)))
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value
