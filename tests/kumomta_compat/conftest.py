"""KumoMTA's own files, loaded unchanged, driving the real delivery engine in virtual time."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

from trimta.adapters.delivery_config import parse_delivery_config
from trimta.adapters.shaping_files import LoadedShaping, ShapingProvider, load_shaping_files
from trimta.testing.harness import DeliveryHarness

DATA = Path(__file__).resolve().parent / "data"
SHIPPED = ("policy-extras-shaping.toml", "community-shaping.toml")

# Loopback receivers: the built-in default prohibits them. Quick retries, so a test
# sees several attempts within its virtual hours.
BASE = """
[egress.default]
prohibited_hosts = []
[queues]
retry_interval = "1m"
"""


def kumomta_harness(*files: str, extra: str = "") -> tuple[DeliveryHarness, LoadedShaping]:
    """A harness shaped by KumoMTA files from data/, layered in the given order, as the daemon does."""
    loaded = load_shaping_files([DATA / f for f in files])
    delivery = parse_delivery_config(tomllib.loads(BASE + extra), "<harness>")
    h = DeliveryHarness(config=delivery, paths=ShapingProvider(loaded, overrides=delivery.path_provider))
    return h, loaded


def sliding_max(times: list[float], window: float) -> int:
    """Most events in any window of `window` seconds (a microsecond's slack for float sums)."""
    times = sorted(times)
    if not times:
        return 0
    return max(sum(1 for u in times[i:] if u < t + window - 1e-6) for i, t in enumerate(times))


def per_window(times: list[float], start: float, window: float) -> list[int]:
    n = math.ceil((max(times) - start + 1e-9) / window)
    return [sum(1 for t in times if start + k * window <= t < start + (k + 1) * window) for k in range(n)]


def peak_open(connections) -> int:
    """The most of `connections` open at one moment (from their open and close times)."""
    events = []
    for c in connections:
        events.append((c.opened_at, 1))
        events.append((c.closed_at if c.closed_at is not None else math.inf, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    peak = now = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak
