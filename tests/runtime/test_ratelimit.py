"""Log lines under a storm: a few per window for each kind, then how many were left out."""

from engines_app.runtime.ratelimit import LogLimiter
from tests.helpers import FakeClock


def test_a_storm_logs_a_few_lines_per_window_then_says_how_many_it_left_out():
    clock = FakeClock(0.0)
    limiter = LogLimiter(limit=2, window=5.0, clock=clock)
    assert [limiter.allow("ValueError") for _ in range(5)] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
        (False, 0),
    ]
    assert limiter.allow("KeyError") == (True, 0)  # each kind has its own lines
    clock.now = 5.0
    assert limiter.allow("ValueError") == (True, 3)  # the next window says what was left out
    assert limiter.allow("ValueError") == (True, 0)


def test_a_limited_logger_says_how_many_lines_it_left_out(caplog):
    import logging

    clock = FakeClock(0.0)
    limiter = LogLimiter(limit=1, window=10.0, clock=clock)
    logger = logging.getLogger("test.ratelimit")
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for n in range(5):
            limiter.log(logger, logging.WARNING, "db", "database error %d", n)
        clock.now = 10.0
        limiter.log(logger, logging.WARNING, "db", "database error %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "database error 0",
        "Suppressed 4 more lines like the next one",
        "database error 5",
    ]
