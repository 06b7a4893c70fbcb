"""The guide's engine smoke tests: start, heartbeat, stop — plain asyncio, no Django."""

import asyncio

import pytest

from engines_app.runtime import ConfigError, EngineConfig, FatalEngineError, TradingEngine
from engines_app.runtime.engine import symbol_problem
from tests.helpers import EngineRecorder, eventually


async def test_engine_starts_and_reports_started():
    listener = EngineRecorder()
    engine = TradingEngine(EngineConfig("BTCUSDT", 0.01), listener=listener)
    task = asyncio.create_task(engine.run())
    await eventually(lambda: listener.started)
    assert listener.started == ["BTCUSDT"]
    assert engine.started_at is not None
    engine.request_stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_heartbeat_advances_every_cycle():
    engine = TradingEngine(EngineConfig("ETHUSDT", 0.01))
    task = asyncio.create_task(engine.run())
    await eventually(lambda: engine.cycles >= 1)
    first, cycles = engine.last_heartbeat, engine.cycles
    await eventually(lambda: engine.cycles > cycles)
    assert engine.last_heartbeat > first
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_stop_lets_the_current_cycle_finish():
    inside, release, finished = asyncio.Event(), asyncio.Event(), []

    class SlowEngine(TradingEngine):
        __slots__ = ()

        async def cycle(self):
            inside.set()
            await release.wait()
            finished.append(self.cycles)

    engine = SlowEngine(EngineConfig("SOLUSDT", 0.001))
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(inside.wait(), 1)  # inside the first cycle
    assert engine.request_stop() is False  # busy: not to be cancelled
    release.set()
    await asyncio.wait_for(task, 1)  # ends by itself after the cycle
    assert finished == [0]
    assert engine.cycles == 1


async def test_bad_config_raises_a_fatal_error_before_any_cycle():
    engine = TradingEngine(EngineConfig("btc/usdt", 0.01))
    with pytest.raises(FatalEngineError, match="upper-case"):
        await engine.run()
    assert engine.cycles == 0


async def test_cycle_errors_are_counted_and_the_engine_keeps_running():
    listener = EngineRecorder()
    failures = iter([True, False, True, False])

    class Flaky(TradingEngine):
        __slots__ = ()

        async def cycle(self):
            if next(failures, False):
                raise ValueError("bad tick")

    engine = Flaky(EngineConfig("BTCUSDT", 0.001), listener=listener)
    task = asyncio.create_task(engine.run())
    await eventually(lambda: len(listener.errors) == 2 and engine.cycles >= 4)
    assert not task.done()
    assert engine.state.error_count == 2
    assert engine.state.last_error == "ValueError: bad tick"
    assert len(listener.errors) == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_consecutive_cycle_errors_crash_the_engine():
    class Broken(TradingEngine):
        __slots__ = ()

        async def cycle(self):
            raise ValueError("always")

    engine = Broken(EngineConfig("BTCUSDT", 0.001))
    with pytest.raises(ValueError):
        await asyncio.wait_for(engine.run(), 1)
    assert engine.state.error_count == 3


@pytest.mark.parametrize(
    "symbol, problem",
    [
        ("BTCUSDT", None),
        ("1000SHIBUSDT", None),
        ("", "required"),
        ("btcusdt", "upper-case"),
        ("BTC/USDT", "upper-case"),
        ("B" * 21, "longer than 20"),
        (None, "required"),
    ],
)
def test_symbol_rules(symbol, problem):
    found = symbol_problem(symbol)
    assert (found is None) if problem is None else (problem in found)


def test_config_problems_name_every_bad_field():
    config = EngineConfig("BTCUSDT", 0, crash_probability=2, hang_after_cycles=-1)
    problems = " | ".join(config.problems())
    assert "cycle_interval" in problems
    assert "crash_probability" in problems
    assert "hang_after_cycles" in problems
    with pytest.raises(ConfigError, match="unknown engine option"):
        EngineConfig.from_options("BTCUSDT", 1.0, {"nonsense": 1})


def test_a_config_is_checked_once_and_the_flag_cannot_be_set_from_options():
    config = EngineConfig("BTCUSDT")
    assert not config.validated
    config.validate()
    assert config.validated
    with pytest.raises(ConfigError, match="unknown engine option"):
        EngineConfig.from_options("BTCUSDT", None, {"validated": True, "order_qty": -1})
    bad = EngineConfig("BTCUSDT", order_qty=-1)
    with pytest.raises(ConfigError):
        bad.validate()
    assert not bad.validated  # a failed check is made again next time
