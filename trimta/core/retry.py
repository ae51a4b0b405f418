"""When a scheduled message is tried again, and when it gives up: backoff and expiry.

A message that failed transiently waits in its scheduled queue for

    retry_interval * 2**n        (n = how many attempts had failed before this one)

capped by ``max_retry_interval``, minus a random jitter of up to `JITTER` (10%).
The jitter only ever shortens the wait, so a retry never comes later than the
schedule an operator reads in the docs and never exceeds ``max_retry_interval``;
what it buys is that messages which failed together (a destination down for an
hour) do not all come back in the same second.

A message whose next attempt would fall past ``created + max_age`` is not kept
around for it: it expires now, with an `Expiration` record carrying
`expiration_reply`. Time enters only as arguments (`now`, `created`, epoch
seconds), and randomness only through the `random.Random` the caller passes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from trimta.core.units import Rate
from trimta.protocol.replies import Reply, reply

DEFAULT_RETRY_INTERVAL_S = 20 * 60.0
DEFAULT_MAX_AGE_S = 7 * 86400.0
# The largest fraction a retry delay is shortened by.
JITTER = 0.10
# Messages that had been tried before a restart come back spread over at most this
# long (see `due_after_restart`).
RESTART_SPREAD_S = 300.0
# 2**n beyond this is longer than any max_age; capping n keeps the arithmetic finite.
_MAX_EXPONENT = 40


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The settings of one scheduled queue (``campaign:tenant@domain``), parsed."""

    retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S
    max_retry_interval_s: float | None = None
    max_age_s: float = DEFAULT_MAX_AGE_S
    # None: the built-in pool ("unspecified"), whose one source lets the kernel pick.
    egress_pool: str | None = None
    # Throttles how fast messages move from this scheduled queue to ready queues.
    max_message_rate: Rate | None = None
    # Deliver through this domain's MX hosts (or this domain literal's address) instead of
    # the recipient domain's: KumoMTA's routing_domain (a smarthost). None: direct.
    routing_domain: str | None = None

    def __post_init__(self) -> None:
        if self.retry_interval_s <= 0:
            raise ValueError(f"retry_interval must be positive, got {self.retry_interval_s!r}")
        if self.max_retry_interval_s is not None and self.max_retry_interval_s < self.retry_interval_s:
            raise ValueError(
                f"max_retry_interval ({self.max_retry_interval_s:g}s) must not be shorter "
                f"than retry_interval ({self.retry_interval_s:g}s)"
            )
        if self.max_age_s <= 0:
            raise ValueError(f"max_age must be positive, got {self.max_age_s!r}")


def nominal_delay(config: QueueConfig, attempts: int) -> float:
    """The delay `next_attempt_delay` shortens by jitter: the schedule without chance."""
    if attempts < 0:
        raise ValueError(f"attempts must not be negative, got {attempts}")
    delay = config.retry_interval_s * 2.0 ** min(attempts, _MAX_EXPONENT)
    if config.max_retry_interval_s is not None:
        delay = min(delay, config.max_retry_interval_s)
    return delay


def next_attempt_delay(config: QueueConfig, attempts: int, rng: random.Random) -> float:
    """Seconds to wait after a transient failure before the next attempt.

    `attempts` is n, the number of attempts that had been made *before* the one
    that just failed: 0 after the first attempt, so the first retry waits about
    ``retry_interval``, the second about twice that, and so on, capped by
    ``max_retry_interval``. The result lies in ``[(1 - JITTER) * d, d]`` where d
    is `nominal_delay`.
    """
    delay = nominal_delay(config, attempts)
    return delay * (1.0 - JITTER * rng.random())


def expiry_time(config: QueueConfig, created: float) -> float:
    """The moment a message created at `created` has waited ``max_age``."""
    return created + config.max_age_s


def expires_before(config: QueueConfig, created: float, next_due: float) -> bool:
    """True if a message must expire rather than wait until `next_due`.

    A next attempt exactly at ``created + max_age`` is still made; one later is not,
    so the message expires as soon as that is known instead of sitting in the
    queue for nothing. Callers also pass ``now`` as `next_due` to ask whether a
    message waiting anywhere (a ready queue, a suspended queue) is past its age.
    """
    return next_due > expiry_time(config, created)


def due_after_restart(
    config: QueueConfig,
    created: float,
    attempts: int,
    now: float,
    rng: random.Random,
    *,
    recorded_due: float | None = None,
) -> float:
    """When a message restored from the spool at start-up is next tried.

    A restart is not a delivery attempt, so it neither counts toward the backoff
    nor costs a message its place:

    - never tried (``attempts == 0``): due `now`, as when it was accepted;
    - tried before, with its due time recorded and still ahead: that time, so
      the backoff schedule survives the restart;
    - tried before, and due while the daemon was down (or the due time was not
      recorded): ``now`` plus a random part of ``min(RESTART_SPREAD_S, the
      interval it was waiting out)``, so the backlog of retries that piled up
      during the downtime does not hit its destinations in the same second.

    The result is never past the message's expiry (the message keeps its last
    attempt) unless `now` already is, in which case it is `now`, and
    ``expires_before(config, created, result)`` is True: expire it.
    """
    if attempts <= 0:
        due = now
    elif recorded_due is not None and recorded_due > now:
        due = recorded_due
    else:
        spread = min(RESTART_SPREAD_S, nominal_delay(config, attempts - 1))
        due = now + spread * rng.random()
    return max(now, min(due, expiry_time(config, created)))


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What a transient failure leads to: the next attempt at `due`, or expiry now.

    Exactly one of `due` and `expiration` is set; `attempts` is the count with the
    failed attempt included (what the records and the spool carry from now on).
    """

    attempts: int
    due: float | None = None
    expiration: Reply | None = None

    @property
    def expires(self) -> bool:
        return self.expiration is not None


def after_transient_failure(
    config: QueueConfig, created: float, attempts: int, now: float, rng: random.Random
) -> RetryDecision:
    """The one decision for a message whose attempt just failed transiently.

    `attempts` counts the attempts made before this one. The next attempt comes
    after the backoff (`next_attempt_delay`); if that falls past the message's
    ``max_age``, it expires now instead, with `expiration_reply`.
    """
    due = now + next_attempt_delay(config, attempts, rng)
    if expires_before(config, created, due):
        return RetryDecision(attempts + 1, expiration=expiration_reply(attempts + 1))
    return RetryDecision(attempts + 1, due=due)


def expiration_reply(attempts: int) -> Reply:
    """The response an `Expiration` record carries (RFC 3463 5.4.7: delivery time expired)."""
    noun = "attempt" if attempts == 1 else "attempts"
    return reply(551, "5.4.7", f"Message expired after {attempts} delivery {noun}")
