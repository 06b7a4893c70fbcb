"""Shared pieces of the trading tests: engines driven tick by tick, and async waiting."""

from __future__ import annotations

import asyncio
import time

from engines_app.runtime.engine import EngineConfig, TradingEngine

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
DAY = 86_400.0


class Recorder:
    """An engine listener that keeps what the engine told it."""

    def __init__(self) -> None:
        self.fills, self.errors, self.feed = [], [], []

    def engine_started(self, engine) -> None:
        pass

    def engine_error(self, engine, exc) -> None:
        self.errors.append(exc)

    def engine_filled(self, engine, fill) -> None:
        if fill is not None:
            self.fills.append(fill)

    def engine_feed(self, engine, stale_for) -> None:
        self.feed.append(stale_for)


class Clock:
    def __init__(self, now: float = T0 + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ticking_engine(**options) -> tuple[TradingEngine, Recorder, Clock]:
    """An engine fed by hand (``engine.on_tick``): no fees or slippage unless asked, and a
    strategy that wants long after a rise and flat (or short) after a fall."""
    options = {"fee_rate": 0.0, "slippage": 0.0, "params": {"fast": 1, "slow": 2}} | options
    recorder, clock = Recorder(), Clock()
    engine = TradingEngine(EngineConfig("BTCUSDT", **options), listener=recorder, clock=clock)
    engine.config.validate()
    engine.prepare()
    engine.started_at = clock.now
    return engine, recorder, clock


def trades(recorder: Recorder) -> list[tuple[str, float, float]]:
    return [(f.side, f.qty, round(f.price, 6)) for f in recorder.fills]


async def until(predicate, timeout: float = 5.0, message: str = ""):
    """Await until predicate() is truthy (polling the running loop)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(message or f"timed out waiting for {predicate}")
        await asyncio.sleep(0.005)
    return value
