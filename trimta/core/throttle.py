"""Rate limiting with GCRA (the generic cell rate algorithm), time as an argument.

A `Gcra` keeps one number, the theoretical arrival time (TAT). An event at `now`
conforms if ``now >= TAT - burst_tolerance``; then TAT moves on by one emission
interval. The limiter never reads a clock, so it runs the same under trio's MockClock
and in production.
"""

from __future__ import annotations

from dataclasses import dataclass

from trimta.core.units import Rate


@dataclass(slots=True)
class Gcra:
    """`limit` events per `period_s`, allowing bursts of `burst` events."""

    interval_s: float
    burst: int = 1
    tat: float = float("-inf")

    @classmethod
    def from_rate(cls, rate: Rate) -> Gcra:
        burst = rate.max_burst if rate.max_burst else 1
        return cls(interval_s=rate.period_s / rate.limit, burst=max(1, burst))

    def wait_s(self, now: float) -> float:
        """How long until one event would conform (0 if it does now)."""
        tolerance = self.interval_s * (self.burst - 1)
        tat = max(self.tat, now)
        return max(0.0, tat - tolerance - now)

    def try_acquire(self, now: float) -> float:
        """Take one event if it conforms and return 0; else return the wait, taking nothing."""
        wait = self.wait_s(now)
        if wait > 0:
            return wait
        self.tat = max(self.tat, now) + self.interval_s
        return 0.0
