import pytest

from trimta.core.units import Rate, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [("60s", 60), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("90", 90),
     (30, 30), (1.5, 1.5), ("500ms", 0.5), ("5 minutes", 300)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5x", "-1s", True, None, [], "s"])
def test_bad_durations_say_what_is_accepted(bad):
    with pytest.raises(ValueError, match="expected|unknown|negative"):
        parse_duration(bad)


@pytest.mark.parametrize(
    "text, size", [("20MB", 20_000_000), ("1MiB", 1048576), ("512KB", 512_000), (100, 100), ("100", 100)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_bad_size():
    with pytest.raises(ValueError, match="expected"):
        parse_size("20 parsecs")


def test_rates():
    assert parse_rate("100/s") == Rate(100, 1.0)
    assert parse_rate("100/min") == Rate(100, 60.0)
    assert parse_rate("10/h,max_burst=5") == Rate(10, 3600.0, 5)
    assert parse_rate("1000/d").per_second == pytest.approx(1000 / 86400)
    with pytest.raises(ValueError, match="expected"):
        parse_rate("100 per second")
