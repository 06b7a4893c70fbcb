"""A strategy's failures are an engine's: one that raises goes through recovery (errors,
a crash, a restart), one that is slower than its cycle is reported; the runner goes on."""

from __future__ import annotations

from engines_app.runtime import EngineConfig, EngineManager, RecoveryPolicy, RecoverySettings
from engines_app.runtime.candles import Candle
from engines_app.runtime.engine import TradingEngine
from engines_app.runtime.events import ErrorRaised, RestartScheduled, StatusChanged
from tests.helpers import eventually

CANDLES = {"feed": "csv", "feed_options": {"candles": True}}
T0 = 1_767_225_600.0


def manager() -> EngineManager:
    settings = RecoverySettings(backoff_base=0.05, jitter=0.0)
    return EngineManager(policy=RecoveryPolicy(settings), stop_timeout=0.5)


def errors(m: EngineManager, symbol: str) -> list[ErrorRaised]:
    return [e for e in m.events if isinstance(e, ErrorRaised) and e.symbol == symbol]


async def test_a_strategy_that_raises_goes_through_recovery_and_its_sibling_runs_on(allowed):
    m = manager()
    m.start(EngineConfig("BTCUSDT", 0.01, strategy=f"{allowed}:Raises", **CANDLES))
    m.start(EngineConfig("ETHUSDT", 0.01, **CANDLES))
    await eventually(lambda: any(isinstance(e, RestartScheduled) for e in m.events))
    await eventually(
        lambda: (
            [e.status for e in m.events if isinstance(e, StatusChanged)].count("starting") >= 3
        )  # both first starts, and the raising one's restart
    )
    survived = [e for e in errors(m, "BTCUSDT") if not e.crashed]
    crash = next(e for e in errors(m, "BTCUSDT") if e.crashed)
    assert [e.type for e in survived[:3]] == ["RuntimeError"] * 3
    assert survived[0].message == "the model is not loaded"
    assert crash.type == "RuntimeError" and not crash.fatal
    sibling = m.engine_of("ETHUSDT")
    cycles = sibling.cycles
    await eventually(lambda: sibling.cycles > cycles + 5)
    assert m.status_of("ETHUSDT") == "running" and not errors(m, "ETHUSDT")
    await m.stop_all()


async def test_a_slow_strategy_is_reported(allowed):
    m = manager()
    m.start(
        EngineConfig(
            "BTCUSDT", 0.05, strategy=f"{allowed}:Sleeper", params={"seconds": 0.15}, **CANDLES
        )
    )
    await eventually(lambda: errors(m, "BTCUSDT"), timeout=10)
    slow = errors(m, "BTCUSDT")[0]
    assert slow.type == "SlowStrategy" and not slow.crashed
    assert slow.message.startswith(f"strategy {allowed}:Sleeper took 0.1")
    assert slow.message.endswith("s, longer than its 0.05s cycle")
    assert m.status_of("BTCUSDT") == "running"  # reported, not stopped
    await m.stop_all()


async def test_an_answer_that_is_no_decision_is_an_engine_error(allowed):
    m = manager()
    m.start(EngineConfig("BTCUSDT", 0.01, strategy=f"{allowed}:Garbage", **CANDLES))
    await eventually(lambda: errors(m, "BTCUSDT"))
    error = errors(m, "BTCUSDT")[0]
    assert error.type == "StrategyError"
    assert error.message == (
        "strategy answered 'buy please': expected None, a number, Target or Order"
    )
    await m.stop_all()


def test_a_restarted_engine_warms_its_strategy_up_on_the_candles_it_kept():
    config = EngineConfig(
        "BTCUSDT", params={"fast": 2, "slow": 3}, candle_interval="1m", fee_rate=0.0, slippage=0
    )
    first = TradingEngine(config)
    first.prepare(feed=False)
    for i, close in enumerate([100.0, 101.0, 102.0]):
        first.on_candle(Candle(T0 + 60 * i, close, close, close, close, 1.0), T0 + 60 * i + 60)
    assert first.state.book.qty == 1  # warm after 3 candles: long

    again = TradingEngine(config, state=first.state)  # as recovery restarts it
    again.prepare(feed=False)
    assert list(again.strategy.candles) == list(first.state.candles)
    # Warm at once: the next candle is decided on (a fresh strategy would wait 3).
    again.on_candle(Candle(T0 + 180, 90.0, 90.0, 90.0, 90.0, 1.0), T0 + 240)
    assert (again.state.book.qty, again.state.book.trade_count) == (0, 2)
