"""Recovery policy with a fake clock: backoff doubles, is capped and jittered, resets after
a stable run; at most N restarts in a sliding hour; fatal errors fail at once."""

import random

from engines_app.runtime import RecoveryPolicy, RecoverySettings
from tests.helpers import FakeClock


def policy(clock, **settings):
    defaults = dict(jitter=0.0)
    return RecoveryPolicy(RecoverySettings(**(defaults | settings)), clock=clock)


def test_backoff_doubles_from_the_base():
    clock = FakeClock()
    p = policy(clock)
    delays = [p.on_failure("BTCUSDT").delay for _ in range(3)]
    assert delays == [60, 120, 240]


def test_backoff_is_capped():
    p = policy(FakeClock(), backoff_cap=150, max_restarts_per_hour=10)
    delays = [p.on_failure("BTCUSDT").delay for _ in range(4)]
    assert delays == [60, 120, 150, 150]


def test_jitter_stays_within_its_band_and_under_the_cap():
    p = RecoveryPolicy(
        RecoverySettings(jitter=0.1, max_restarts_per_hour=100),
        clock=FakeClock(),
        rng=random.Random(1),
    )
    first = [p.on_failure(f"S{i}").delay for i in range(50)]
    assert all(54 <= d <= 66 for d in first)
    assert len({round(d, 3) for d in first}) > 40  # engines crashing together spread out
    capped = RecoveryPolicy(RecoverySettings(jitter=0.5, backoff_cap=60), clock=FakeClock())
    assert all(capped.on_failure(f"S{i}").delay <= 60 for i in range(20))


def test_limit_per_hour_then_failed():
    clock = FakeClock()
    p = policy(clock)
    decisions = []
    for _ in range(6):
        decisions.append(p.on_failure("BTCUSDT"))
        clock.now += 10
    assert [d.restart for d in decisions] == [True] * 5 + [False]
    assert [d.budget_left for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert "restart limit reached" in decisions[5].reason


def test_window_slides():
    clock = FakeClock()
    p = policy(clock)
    for _ in range(5):
        p.on_failure("BTCUSDT")
        clock.now += 60
    assert p.budget_left("BTCUSDT") == 0
    clock.now += 3600 - 5 * 60 + 1  # the first restart is now more than an hour old
    assert p.budget_left("BTCUSDT") == 1
    assert p.on_failure("BTCUSDT").restart


def test_limit_is_per_symbol():
    p = policy(FakeClock())
    for _ in range(5):
        p.on_failure("BTCUSDT")
    assert not p.on_failure("BTCUSDT").restart
    assert p.on_failure("ETHUSDT").restart


def test_backoff_resets_after_a_stable_run():
    p = policy(FakeClock())
    assert p.on_failure("BTCUSDT").delay == 60
    assert p.on_failure("BTCUSDT", ran_for=30).delay == 120
    assert p.on_failure("BTCUSDT", ran_for=600).delay == 60


def test_fatal_error_fails_without_using_the_budget():
    p = policy(FakeClock())
    decision = p.on_failure("BTCUSDT", fatal=True)
    assert not decision.restart
    assert "fatal" in decision.reason
    assert p.budget_left("BTCUSDT") == 5


def test_history_loaded_from_the_database_counts():
    clock = FakeClock()
    p = policy(clock)
    p.load("BTCUSDT", [clock.now - 3000, clock.now - 100, clock.now - 50], attempt=3)
    assert p.budget_left("BTCUSDT") == 2
    assert p.on_failure("BTCUSDT").delay == 480  # attempt 4
    p.load("ETHUSDT", [clock.now - 4000])  # older than the window: forgotten
    assert p.budget_left("ETHUSDT") == 5


def test_operator_reset_restores_the_budget():
    p = policy(FakeClock())
    for _ in range(6):
        p.on_failure("BTCUSDT")
    p.reset("BTCUSDT")
    assert p.budget_left("BTCUSDT") == 5
    assert p.on_failure("BTCUSDT").delay == 60


def test_engines_whose_backoff_reached_the_cap_do_not_restart_in_lockstep():
    settings = RecoverySettings(backoff_cap=900, jitter=0.1, max_restarts_per_hour=100)
    policy = RecoveryPolicy(settings, clock=FakeClock(), rng=random.Random(3))
    symbols = [f"S{i:02d}USDT" for i in range(40)]
    for symbol in symbols:
        policy.load(symbol, [], attempt=6)  # 60 s * 2**6 is far past the cap
    delays = [policy.on_failure(symbol).delay for symbol in symbols]
    assert all(810 <= delay <= 900 for delay in delays)
    assert len({round(delay, 3) for delay in delays}) == len(delays)  # none at the same moment
