"""Rate limiting with GCRA (the generic cell rate algorithm), time as an argument.

The limiter never reads a clock, so it runs the same under trio's MockClock and in
production.

The guarantee
-------------

For a rate of N events per period P with a burst of B (``"N/P,max_burst=B"``, B = 1
when not given): **in every window of P seconds, at most N + B - 1 events conform**
(N with the default burst; ⌈N⌉ + B - 1 for a fractional N such as ``"2.5/s"``).

Under that cap a steady backlog goes through at the rate, less the time its waiters
wake up late: a waiter that sleeps for `wait_s` and wakes d late costs at most d per
period (trio's timers fire about 1 ms late, so ``"300/s"`` gives about 299.7/s), not
d per event, and nothing once d is within the burst tolerance below.

Why this needs more than one number
-----------------------------------

A plain GCRA keeps only the theoretical arrival time (TAT), when the next event is due
if events come exactly one emission interval T = P/N apart, and moves it to
``max(TAT, now) + T``. A waiter woken late loses its lateness for good, and the loss
adds up: 1 ms late in every 3.3 ms turned 300/s into 237/s. Moving TAT on from where
it was instead (``TAT + T`` for a late event) loses nothing, but breaks the cap: an
event late by d followed by N on time puts N + 1 events within P of the late one. No
limiter avoids both: if every window of P holds at most N events, event k + N comes
at least P after event k, so a late event k delays event k + N. The least that can
be lost is that: d per period, not d per interval.

So a `Gcra` keeps two things:

- the pace: TAT, moved on by T per event from where it was if the event is at most
  δ (`lateness_s`, 50 ms) behind it, else (after an idle spell, or a stall longer
  than δ) from `now`. An event conforms when ``now >= TAT - τ``, τ = (B - 1)·T. This
  spaces events T apart, lets the events after a late one catch up on its lateness
  (at most δ/T of them at once), and gives no burst beyond B after an idle spell;
- the cap: the times of the last M = ⌈N⌉ + B - 1 events (`window_events`). An event
  conforms only if the oldest of them is at least P ago.

`wait_s` names the later of the two times, so a waiter sleeps once per event.

Proof of the cap. Suppose a window [s, s + P) held M + 1 events, t_a ≤ ... ≤ t_(a+M).
When event a + M came, events a to a + M - 1 were the last M and none was P old
(t_a > t_(a+M) - P), so it did not conform. So every window holds at most M events.

Proof of the rate. Take a backlog whose waiters each wake at most d ≤ δ after the
time `wait_s` named (a waiter asks right after the previous event, so both times are
known then), B = 1, a first event at t_0 and G_k = t_0 + k·T. By induction, event k
comes by G_k + ⌈k/N⌉·d: the cap names t_(k-N) + P ≤ G_(k-N) + (⌈k/N⌉ - 1)·d + N·T =
G_k + (⌈k/N⌉ - 1)·d, the pace names G_k (while ⌈k/N⌉·d ≤ δ no event is more than δ
behind it, so it moves by exactly T), and the waiter adds d. So by any time x at
least N·(x - t_0 - d)/(P + d) events have gone. Once ⌈k/N⌉·d passes δ, the pace
starts again from `now` at such an event; that puts it more than δ past G, and the
same argument runs on from there with at most one d more, once in δ/d periods.

With a burst, a waiter wakes at TAT - τ, so lateness up to τ costs nothing at all.

Limits so large that the log would hold more than 10,000 times (``"20000/min"``,
``"1000000/d"``) keep no log: the interval is lengthened to T = (P + δ')/N, with
δ' = min(δ, P/1000), and the pace alone keeps the cap. Right after event a,
TAT ≥ t_a - δ' + T (TAT moved on from at most δ' before t_a, or from t_a), and each
later event adds at least T, so ``t_(a+m) >= TAT - τ >= t_a - δ' + (m - B + 1)·T``,
which is t_a + P for m = N + B - 1. The price is δ'/P of the rate: at most 0.1%.

Reserved turns
--------------

A connection being opened reserves its first message's turn (`try_reserve`) and sends
it a little later, once connected. The pace moves on at the reservation, so the turns
after it are not held up meanwhile; the event enters the cap only when it happens
(`redeem`), after `redeem_wait_s` found room for it. So every logged time is the time
an event happened, each checked against the log then, and the proof of the cap above
holds as it stands, whenever reserved events come. Only the cap can hold a reserved
event up, and only once the events after its turn have filled the window.

Without a log, the pace alone keeps the cap, so a reserved event also waits for a
turn of the pace when it happens and takes it: then every event conforms to TAT - τ
when it happens and moves TAT on by T, and the reservation's own turn only moves TAT
on further, so the proof above holds. The price is one interval per reservation, at
most P/10,000.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from trimta.core.units import Rate

# δ: how far behind its turn an event may come and still be charged for its turn, so the
# ones after it catch up (at most δ/T at once). Longer than the event loop's worst
# stalls measured under load (a few tens of ms); short enough that a catch-up is small.
LATENESS_TOLERANCE_S = 0.05

# Above this many events per period, the cap is kept by a longer interval, not a log.
MAX_LOGGED_EVENTS = 10_000


@dataclass(slots=True)
class Gcra:
    """At most `window_events` events in any `period_s` window, spaced `interval_s` apart."""

    interval_s: float
    burst: int = 1
    tat: float = float("-inf")
    # δ: lateness forgiven by the pace (see the module).
    lateness_s: float = 0.0
    # The cap by log: at most `window_events` in any `period_s` (0: no log; then a
    # non-zero δ needs interval_s >= (period + δ) / limit, as `from_rate` sets it).
    period_s: float = 0.0
    window_events: int = 0
    _recent: deque[float] = field(default_factory=deque, init=False, repr=False, compare=False)

    @classmethod
    def from_rate(cls, rate: Rate, *, lateness_s: float = LATENESS_TOLERANCE_S) -> Gcra:
        """The limiter for `rate`: a log for the cap, else (a huge limit) a longer interval."""
        burst = max(1, rate.max_burst or 1)
        events = math.ceil(rate.limit) + burst - 1
        if events <= MAX_LOGGED_EVENTS:
            return cls(interval_s=rate.period_s / rate.limit, burst=burst, lateness_s=lateness_s,
                       period_s=rate.period_s, window_events=events)
        lateness = min(lateness_s, rate.period_s / 1000)
        # 10 µs more keeps float rounding of TAT off the proof's equality case.
        return cls(interval_s=(rate.period_s + lateness + 1e-5) / rate.limit, burst=burst,
                   lateness_s=lateness)

    def wait_s(self, now: float) -> float:
        """How long until one event would conform (0 if it does now)."""
        return max(0.0, max(self.tat - self.interval_s * (self.burst - 1), self._cap_due()) - now)

    def try_acquire(self, now: float) -> float:
        """Take one event if it conforms and return 0; else return the wait, taking nothing."""
        wait = self.wait_s(now)
        if wait > 0:
            return wait
        self._take_turn(now)
        if self.window_events:
            self._log(now)
        return 0.0

    def try_reserve(self, now: float) -> float:
        """Take the turn for an event that will happen a little later (`redeem`) and
        return 0; else return the wait, taking nothing.

        The turn comes out of the pace now, so the events after it are not held up while
        it waits to be used; the event is counted in the cap only when it happens.
        """
        wait = self.wait_s(now)
        if wait > 0:
            return wait
        self._take_turn(now)
        return 0.0

    def redeem_wait_s(self, now: float) -> float:
        """How long until an event whose turn was reserved may happen (0 if it may now).

        With a log, only the cap can hold it up: when the events after its turn filled
        the window it would land in. Without one, it waits for a turn of the pace.
        """
        if self.window_events:
            return max(0.0, self._cap_due() - now)
        return self.wait_s(now)

    def redeem(self, now: float) -> None:
        """The event whose turn was reserved happens now (after `redeem_wait_s` said it may)."""
        if self.window_events:
            self._log(now)
        else:
            # No log: the pace alone keeps the cap, so the event takes a turn of its own.
            self._take_turn(now)

    def _cap_due(self) -> float:
        """When one more event fits in the cap (-inf: no log, or room now)."""
        if self.window_events and len(self._recent) == self.window_events:
            return self._recent[0] + self.period_s
        return -math.inf

    def _take_turn(self, now: float) -> None:
        # At most δ behind its turn: charged for its turn. Later (after an idle spell or
        # a long stall): the pace starts again from now, so idle time earns no burst.
        start = self.tat if now <= self.tat + self.lateness_s else now
        self.tat = start + self.interval_s

    def _log(self, now: float) -> None:
        recent = self._recent
        recent.append(now)
        # Only the last `window_events` within the period matter; an idle limiter keeps
        # none.
        while len(recent) > self.window_events or recent[0] <= now - self.period_s:
            recent.popleft()
