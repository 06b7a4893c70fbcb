"""A heavy strategy decides in the worker pool while its siblings keep cycling; one that
blocks the event loop is named by the loop-lag watchdog, and the others' late heartbeats
are not blamed on them."""

from __future__ import annotations

import asyncio
import logging
import time

from engines_app.runtime import EngineConfig, EngineManager, HealthMonitor
from engines_app.runtime.watchdog import LoopWatchdog
from tests.helpers import FakeClock, eventually

from .user_strategies import Sleeper

CANDLES = {"feed": "csv", "feed_options": {"candles": True}}
SIBLINGS = ("ETHUSDT", "SOLUSDT", "XRPUSDT")


async def sibling_gaps(name: str, seconds: float = 2.0) -> float:
    """The longest time between two cycles of any sibling while ``name`` runs its slow
    strategy (0.5 s a decision) beside them, every engine cycling every 20 ms."""
    m = EngineManager(stop_timeout=1.0)
    m.start(EngineConfig("BTCUSDT", 0.02, strategy=name, params={"seconds": 0.5}, **CANDLES))
    for symbol in SIBLINGS:
        m.start(EngineConfig(symbol, 0.02))
    await eventually(lambda: m.summary()["running"] == 4)
    engines = [m.engine_of(symbol) for symbol in SIBLINGS]
    heavy = m.engine_of("BTCUSDT")
    last = [(e.cycles, time.perf_counter()) for e in engines]
    longest, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        for i, engine in enumerate(engines):
            if engine.cycles != last[i][0]:
                longest = max(longest, now - last[i][1])
                last[i] = (engine.cycles, now)
    assert heavy.state.book.qty == 1  # it decided (long) meanwhile
    assert heavy.cycles >= 2
    await m.stop_all()
    m.close_pool()
    return longest


async def test_a_heavy_strategy_runs_in_the_pool_and_does_not_delay_its_siblings(allowed):
    Sleeper.threads = set()
    blocking = await sibling_gaps(f"{allowed}:Sleeper")
    assert Sleeper.threads == {"MainThread"}
    assert blocking >= 0.45  # the control: the same work in the loop stalls every sibling

    Sleeper.threads = set()
    heavy = await sibling_gaps(f"{allowed}:HeavySleeper")
    assert Sleeper.threads and all(name.startswith("strategy") for name in Sleeper.threads)
    assert heavy < 0.25, f"a sibling waited {heavy:.3f}s between cycles"


async def test_the_watchdog_names_the_strategy_that_blocked_the_loop(allowed, caplog):
    m = EngineManager(stop_timeout=1.0, watchdog=LoopWatchdog(interval=0.05, warn_after=0.3))
    watch = asyncio.create_task(m.watchdog.run())
    m.start(
        EngineConfig(
            "BTCUSDT", 0.05, strategy=f"{allowed}:Sleeper", params={"seconds": 0.6}, **CANDLES
        )
    )
    m.start(EngineConfig("ETHUSDT", 0.05))
    with caplog.at_level(logging.WARNING, logger="levipanel.engine"):
        await eventually(lambda: m.watchdog.stalls, timeout=10)
    at, lag, blamed = m.watchdog.stalls[0]
    assert blamed == "BTCUSDT" and lag >= 0.3
    assert any(
        "Event loop blocked for" in r.getMessage()
        and "engine BTCUSDT's strategy held it" in r.getMessage()
        for r in caplog.records
    )
    watch.cancel()
    await m.stop_all()


async def test_late_heartbeats_caused_by_another_strategy_are_not_blamed():
    clock = FakeClock()
    m = EngineManager(clock=clock, stop_timeout=1.0)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        m.start(EngineConfig(symbol, 1.0))
    await eventually(lambda: m.summary()["running"] == 2)
    monitor = HealthMonitor(m, heartbeat_timeout=60, clock=clock)
    clock.now += 100  # no heartbeat for 100 s: the loop was held ...
    m.watchdog.note("BTCUSDT", 100)  # ... by BTCUSDT's strategy
    assert monitor.check() == ["BTCUSDT"]  # ETHUSDT only waited for it
    assert m.status_of("ETHUSDT") == "running"
    clock.now += 100  # a silence nobody explains is a hang, whoever it is
    assert monitor.check() == ["ETHUSDT"]
    await m.stop_all()
