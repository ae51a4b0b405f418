"""Retry schedule, expiry and restart due times of scheduled messages."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimta.core.retry import (
    JITTER,
    RESTART_SPREAD_S,
    QueueConfig,
    due_after_restart,
    expiration_reply,
    expires_before,
    next_attempt_delay,
    nominal_delay,
)

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


def test_defaults_are_twenty_minutes_no_cap_seven_days():
    config = QueueConfig()
    assert config.retry_interval_s == 20 * MINUTE
    assert config.max_retry_interval_s is None
    assert config.max_age_s == 7 * DAY
    assert config.egress_pool is None
    assert config.max_message_rate is None


def test_delay_doubles_after_each_failed_attempt():
    config = QueueConfig(retry_interval_s=20 * MINUTE)
    assert [nominal_delay(config, n) / MINUTE for n in range(5)] == [20, 40, 80, 160, 320]


def test_delay_is_capped_by_max_retry_interval():
    config = QueueConfig(retry_interval_s=20 * MINUTE, max_retry_interval_s=2 * HOUR)
    assert [nominal_delay(config, n) / MINUTE for n in range(6)] == [20, 40, 80, 120, 120, 120]


def test_jitter_only_shortens_and_by_at_most_ten_percent():
    config = QueueConfig(retry_interval_s=20 * MINUTE, max_retry_interval_s=2 * HOUR)
    rng = random.Random(4)
    for n in range(8):
        nominal = nominal_delay(config, n)
        delays = [next_attempt_delay(config, n, rng) for _ in range(200)]
        assert all((1 - JITTER) * nominal <= d <= nominal for d in delays)
        assert max(delays) <= config.max_retry_interval_s
        # It really is spread, not a constant offset.
        assert max(delays) - min(delays) > JITTER * nominal / 2


def test_jitter_comes_from_the_given_rng():
    config = QueueConfig()
    a = [next_attempt_delay(config, n, random.Random(9)) for n in range(5)]
    b = [next_attempt_delay(config, n, random.Random(9)) for n in range(5)]
    assert a == b


def test_huge_attempt_counts_do_not_overflow():
    assert nominal_delay(QueueConfig(), 10_000) > 7 * DAY
    assert nominal_delay(QueueConfig(max_retry_interval_s=HOUR), 10_000) == HOUR


def test_negative_attempts_are_a_bug():
    with pytest.raises(ValueError):
        next_attempt_delay(QueueConfig(), -1, random.Random(1))


def test_message_expires_when_next_attempt_would_fall_past_max_age():
    config = QueueConfig(max_age_s=1 * DAY)
    created = 1_000_000.0
    assert not expires_before(config, created, created + DAY - 1)
    assert not expires_before(config, created, created + DAY)  # the last attempt is still made
    assert expires_before(config, created, created + DAY + 1)


def test_schedule_with_defaults_makes_nine_attempts_in_seven_days():
    """Without jitter: attempts at 0, 20m, 1h, 2h20m, 5h, 10h20m, 21h, 42h20m, 85h; next at 170h20m > 168h."""
    config = QueueConfig()
    created = now = 0.0
    attempts = 0
    while True:
        attempts += 1  # an attempt at `now` failed
        due = now + nominal_delay(config, attempts - 1)
        if expires_before(config, created, due):
            break
        now = due
    assert attempts == 9
    assert now / HOUR == 85


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="retry_interval"):
        QueueConfig(retry_interval_s=0)
    with pytest.raises(ValueError, match="max_retry_interval"):
        QueueConfig(retry_interval_s=HOUR, max_retry_interval_s=MINUTE)
    with pytest.raises(ValueError, match="max_age"):
        QueueConfig(max_age_s=0)


def test_never_tried_message_is_due_right_after_restart():
    assert due_after_restart(QueueConfig(), created=100.0, attempts=0, now=500.0, rng=random.Random(1)) == 500.0


def test_recorded_future_due_time_survives_restart():
    due = due_after_restart(QueueConfig(), created=0.0, attempts=3, now=1000.0, rng=random.Random(1),
                            recorded_due=5000.0)
    assert due == 5000.0


def test_retries_that_fell_due_during_downtime_are_spread_over_a_short_window():
    config = QueueConfig()
    rng = random.Random(3)
    dues = [due_after_restart(config, created=0.0, attempts=4, now=10_000.0, rng=rng, recorded_due=9_000.0)
            for _ in range(500)]
    assert all(10_000.0 <= d <= 10_000.0 + RESTART_SPREAD_S for d in dues)
    assert max(dues) - min(dues) > RESTART_SPREAD_S / 2


def test_restart_spread_never_exceeds_the_interval_being_waited_out():
    config = QueueConfig(retry_interval_s=30.0)
    rng = random.Random(5)
    dues = [due_after_restart(config, created=0.0, attempts=1, now=100.0, rng=rng) for _ in range(200)]
    assert all(100.0 <= d <= 130.0 for d in dues)


def test_restart_does_not_count_as_an_attempt_or_lengthen_the_wait():
    """Restarting repeatedly never pushes a message past its recorded schedule."""
    config = QueueConfig()
    rng = random.Random(8)
    due = 7200.0
    for now in (100.0, 200.0, 300.0):
        due = due_after_restart(config, created=0.0, attempts=2, now=now, rng=rng, recorded_due=due)
        assert due == 7200.0


def test_restart_keeps_the_last_attempt_before_expiry():
    config = QueueConfig(max_age_s=DAY)
    due = due_after_restart(config, created=0.0, attempts=5, now=DAY - 10, rng=random.Random(2),
                            recorded_due=DAY + 5000)
    assert due == DAY
    assert not expires_before(config, 0.0, due)


def test_message_older_than_max_age_at_restart_expires():
    config = QueueConfig(max_age_s=DAY)
    for attempts in (0, 3):
        due = due_after_restart(config, created=0.0, attempts=attempts, now=2 * DAY, rng=random.Random(2))
        assert due == 2 * DAY
        assert expires_before(config, 0.0, due)


@given(
    attempts=st.integers(min_value=0, max_value=100),
    now=st.floats(min_value=0, max_value=1e9),
    created_before=st.floats(min_value=0, max_value=30 * DAY),
    recorded=st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6)),
    seed=st.integers(),
)
def test_restart_due_is_never_in_the_past_and_never_needlessly_past_expiry(
    attempts, now, created_before, recorded, seed
):
    config = QueueConfig(max_age_s=7 * DAY)
    created = now - created_before
    recorded_due = None if recorded is None else now + recorded
    due = due_after_restart(config, created, attempts, now, random.Random(seed), recorded_due=recorded_due)
    assert due >= now
    if not expires_before(config, created, now):
        assert not expires_before(config, created, due)


def test_expiration_reply_is_551_5_4_7_with_the_attempt_count():
    assert str(expiration_reply(9)) == "551 5.4.7 Message expired after 9 delivery attempts"
    assert str(expiration_reply(1)) == "551 5.4.7 Message expired after 1 delivery attempt"
    assert expiration_reply(3).to_bytes() == b"551 5.4.7 Message expired after 3 delivery attempts\r\n"
