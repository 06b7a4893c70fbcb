"""Risk limits stop trading at the right order; the daily loss limit lifts the next UTC day."""

from __future__ import annotations

import logging

import pytest

from engines_app.runtime import EngineManager
from engines_app.runtime.broker import BUY, SELL
from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.errors import RiskHalt
from engines_app.runtime.events import StatusChanged
from engines_app.runtime.manager import Status
from engines_app.runtime.risk import DAILY_LOSS
from tests.helpers import DAY, T0, FakeClock, eventually, ticking_engine, trades


def status(manager: EngineManager) -> Status | None:
    return manager.status_of("BTCUSDT")


def live(manager: EngineManager):
    """BTCUSDT's engine: the one of its latest run."""
    return manager.engine_of("BTCUSDT")


def feed(engine, prices):
    for price in prices:
        engine.on_tick(price, engine.clock())


def test_max_position_rejects_the_order_that_would_exceed_it(caplog):
    engine, recorder, _ = ticking_engine(max_position_notional=100)
    with caplog.at_level(logging.WARNING, "levipanel.engine"):
        feed(engine, [90, 95, 90, 101, 99, 100])
    # buy at 95 (95 <= 100), sell at 90 (reducing: always allowed), buy at 101 refused,
    # buy at 100 (exactly the limit) allowed.
    assert trades(recorder) == [("buy", 1, 95), ("sell", 1, 90), ("buy", 1, 100)]
    assert "would exceed max_position_notional 100" in caplog.text


def test_max_order_rejects_the_first_order_larger_than_it():
    engine, recorder, _ = ticking_engine(
        max_order_notional=150, params={"fast": 1, "slow": 2, "allow_short": True}
    )
    feed(engine, [100, 101, 100])
    # Long 1 at 101 passes; the flip to short at 100 is an order of 2 units (200): refused.
    assert trades(recorder) == [("buy", 1, 101)]
    assert engine.rejected == "order of 200.00 exceeds max_order_notional 150"
    feed(engine, [99])
    assert trades(recorder) == [("buy", 1, 101)]
    assert engine.state.position == 1


def test_reducing_orders_pass_every_limit():
    engine, recorder, _ = ticking_engine(max_order_notional=120, max_position_notional=120)
    feed(engine, [100, 101, 200])  # long 1 at 101; the price doubles
    engine.limits = engine.config.risk_limits().__class__(1.0, 1.0, None)  # tiny limits now
    feed(engine, [150])  # the fall asks for flat: a sell of 150 notional, allowed
    assert trades(recorder) == [("buy", 1, 101), ("sell", 1, 150)]


def test_daily_loss_limit_halts_right_after_the_fill_that_reaches_it():
    engine, recorder, _ = ticking_engine(daily_loss_limit=2.5, fee_rate=0.01)
    feed(engine, [100, 101])  # long at 101, fee 1.01: -1.01 today
    with pytest.raises(RiskHalt, match="daily loss limit reached: lost 3.01 today"):
        feed(engine, [100])  # marked -2.01; out at 100, fee 1.00: -3.01
    assert trades(recorder) == [("buy", 1, 101), ("sell", 1, 100)]
    assert engine.state.daily_pnl == pytest.approx(-3.01)


def test_open_losses_count_toward_the_daily_limit():
    engine, recorder, _ = ticking_engine(daily_loss_limit=5)
    feed(engine, [100, 101, 102])
    with pytest.raises(RiskHalt):
        feed(engine, [95])  # marked at 95 before the strategy may sell: -6 open
    assert trades(recorder) == [("buy", 1, 101)]


class Long:
    """A strategy that wants one long unit whatever the price: it holds over midnight."""

    def on_tick(self, price: float, position: float) -> int:
        return 1


def holding_engine(**options):
    engine, recorder, clock = ticking_engine(strategy="sma_cross", **options)
    engine.strategy = Long()
    return engine, recorder, clock


def test_a_loss_held_over_midnight_counts_only_the_new_days_move_toward_the_limit():
    engine, recorder, clock = holding_engine(daily_loss_limit=5, fee_rate=0.001)
    feed(engine, [100, 96])  # long at 100 (fee 0.1), marked at 96: -4.1 today
    day_one = engine.state.daily_pnl
    assert day_one == pytest.approx(-4.1)

    clock.now = T0 + DAY + 1  # 00:00:01 the next day, the position still open
    feed(engine, [95])  # from 96 at midnight: -1 today, though -5 since the entry
    assert engine.state.daily_pnl == pytest.approx(-1.0)
    with pytest.raises(RiskHalt, match=r"lost 6\.00 today \(limit 5\)"):
        feed(engine, [90])  # 6 below the day's start: the new day's loss alone
    assert trades(recorder) == [("buy", 1, 100)]
    assert day_one + engine.state.daily_pnl == pytest.approx(engine.state.total_pnl)


def test_a_gain_held_over_midnight_starts_the_new_day_at_zero():
    engine, recorder, clock = holding_engine(daily_loss_limit=5, fee_rate=0.001)
    feed(engine, [100, 110])  # long at 100, fee 0.1: +9.9 today
    day_one = engine.state.daily_pnl

    clock.now = T0 + DAY + 1
    assert engine.roll_day(clock.now)  # the scheduled reset, before any price
    assert engine.state.daily_pnl == 0.0
    feed(engine, [108])  # 2 below midnight's 110: -2 today, still +8 since the entry
    assert engine.state.daily_pnl == pytest.approx(-2.0)
    engine.close_position("test")  # at 108, fee 0.108
    day_two = engine.state.daily_pnl
    assert day_two == pytest.approx(-2.108)
    assert recorder.fills[-1].realized_pnl == pytest.approx(8.0)  # the trade's own, from entry

    total = engine.state.total_pnl
    assert total == pytest.approx(7.792)
    assert day_one + day_two == pytest.approx(total)
    assert engine.roll_day(T0 + 2 * DAY) and engine.state.daily_pnl == 0.0


def test_stop_entries_keeps_managing_the_open_position_but_opens_nothing():
    engine, recorder, _ = ticking_engine(stop_entries=True)
    engine.state.book.qty, engine.state.book.avg_price = 1.0, 100.0  # a position from before
    feed(engine, [100, 101, 99, 100, 101])  # the fall closes it; the rises open nothing
    assert trades(recorder) == [("sell", 1, 99)]
    assert engine.state.position is None


async def test_halted_engine_shows_its_reason_and_runs_again_the_next_utc_day():
    clock = FakeClock(T0 + 23 * 3600)  # 23:00 UTC
    manager = EngineManager(clock=clock)
    prices = [100, 101, 99, 100, 97] + [97] * 5
    config = EngineConfig(
        "BTCUSDT",
        0.001,
        feed="prices",
        feed_options={"prices": prices},
        daily_loss_limit=5,
        fee_rate=0.0,
        slippage=0.0,
        params={"fast": 1, "slow": 2},
        on_stop="close",
    )
    manager.start(config)
    await eventually(lambda: status(manager) == Status.HALTED)
    halted = [e for e in manager.drain_events() if isinstance(e, StatusChanged)][-1]
    assert halted.status == "halted"
    assert halted.reason == "daily loss limit reached: lost 5.00 today (limit 5)"
    assert halted.code == DAILY_LOSS  # what alerts key on
    book = live(manager).state.book
    # Marked at 97 the open long made today's loss 5 before the strategy could sell:
    # halted, then closed at market (on_stop: close).
    assert (book.trade_count, book.qty) == (4, 0.0)
    assert live(manager).state.daily_pnl == pytest.approx(-5)

    clock.now += 30 * 60  # 23:30: still the same day
    assert manager.resume_halted(clock()) == []
    clock.now = T0 + DAY + 60  # 00:01 the next day
    assert manager.resume_halted(clock()) == ["BTCUSDT"]
    assert live(manager).state.daily_pnl == 0.0  # a new day's count
    # The same prices replay: the limit holds again, counted from the new day only.
    await eventually(lambda: status(manager) == Status.HALTED and book.trade_count == 8)
    statuses = [e.status for e in manager.drain_events() if isinstance(e, StatusChanged)]
    assert statuses == ["starting", "running", "halted"]
    assert live(manager).state.daily_pnl == pytest.approx(-5)
    assert live(manager).state.total_pnl == pytest.approx(-10)


async def test_an_operator_restart_lifts_the_halt_for_the_rest_of_the_day():
    manager = EngineManager(clock=FakeClock())
    config = EngineConfig(
        "BTCUSDT",
        0.001,
        feed="prices",
        feed_options={"prices": [100, 101, 95, 96, 97]},
        daily_loss_limit=5,
        fee_rate=0.0,
        slippage=0.0,
        params={"fast": 1, "slow": 2},
    )
    manager.start(config)
    await eventually(lambda: status(manager) == Status.HALTED)
    assert manager.lift_halt("BTCUSDT") is True
    manager.start(config)
    await eventually(lambda: live(manager).state.trade_count == 3)  # it trades again today
    assert status(manager) == Status.RUNNING
    await manager.stop_all()


async def test_on_stop_close_flattens_the_position_when_an_operator_stops_the_engine():
    manager = EngineManager(clock=FakeClock())
    config = EngineConfig(
        "BTCUSDT",
        0.001,
        feed="prices",
        feed_options={"prices": [100, 101, 102]},
        fee_rate=0.0,
        slippage=0.0,
        params={"fast": 1, "slow": 2},
        on_stop="close",
    )
    manager.start(config)
    state = live(manager).state
    await eventually(lambda: state.position == 1 and state.book.mark == 102)
    await manager.stop("BTCUSDT", reason="stopped by operator", close=True)
    assert state.position is None and state.trade_count == 2
    assert state.total_pnl == pytest.approx(1.0)  # bought at 101, closed at the mark 102


async def test_on_stop_hold_keeps_the_position():
    manager = EngineManager(clock=FakeClock())
    config = EngineConfig(
        "BTCUSDT",
        0.001,
        feed="prices",
        feed_options={"prices": [100, 101, 102]},
        params={"fast": 1, "slow": 2},
    )
    manager.start(config)
    state = live(manager).state
    await eventually(lambda: state.position == 1)
    await manager.stop("BTCUSDT", reason="stopped by operator", close=True)
    assert state.position == 1 and state.trade_count == 1


def failing_config(on_stop: str) -> EngineConfig:
    """Long 1 at 101, marked at 102 on the third cycle; the fourth raises a fatal error."""
    return EngineConfig(
        "BTCUSDT",
        0.001,
        feed="prices",
        feed_options={"prices": [100, 101, 102, 103]},
        fee_rate=0.0,
        slippage=0.0,
        params={"fast": 1, "slow": 2},
        fatal_after_cycles=3,
        on_stop=on_stop,
    )


async def test_on_stop_close_flattens_the_position_when_the_engine_fails():
    manager = EngineManager(clock=FakeClock())
    manager.start(failing_config("close"))
    await eventually(lambda: status(manager) == Status.FAILED)
    state = live(manager).state
    assert (state.position, state.trade_count) == (None, 2)
    sides = [
        (e.fill.side, e.fill.qty, e.fill.price)
        for e in manager.drain_events()
        if getattr(e, "fill", None) is not None
    ]
    assert sides == [(BUY, 1.0, 101.0), (SELL, 1.0, 102.0)]  # closed at the last price


async def test_on_stop_hold_keeps_the_position_of_a_failed_engine():
    manager = EngineManager(clock=FakeClock())
    manager.start(failing_config("hold"))
    await eventually(lambda: status(manager) == Status.FAILED)
    assert (live(manager).state.position, live(manager).state.trade_count) == (1.0, 1)
