"""Engines driven tick by tick, and a listener that keeps what an engine told it."""

from __future__ import annotations

from engines_app.runtime.engine import EngineConfig, TradingEngine

from .clocks import FakeClock


class EngineRecorder:
    """An engine listener that keeps what the engine told it."""

    def __init__(self) -> None:
        self.started, self.errors, self.fills, self.feed = [], [], [], []

    def engine_started(self, engine) -> None:
        self.started.append(engine.symbol)

    def engine_error(self, engine, exc) -> None:
        self.errors.append(exc)

    def engine_filled(self, engine, fill) -> None:
        if fill is not None:
            self.fills.append(fill)

    def engine_feed(self, engine, stale_for) -> None:
        self.feed.append(stale_for)


def ticking_engine(**options) -> tuple[TradingEngine, EngineRecorder, FakeClock]:
    """An engine fed by hand (``engine.on_tick``): no fees or slippage unless asked, and a
    strategy that wants long after a rise and flat (or short) after a fall."""
    options = {"fee_rate": 0.0, "slippage": 0.0, "params": {"fast": 1, "slow": 2}} | options
    recorder, clock = EngineRecorder(), FakeClock()
    engine = TradingEngine(EngineConfig("BTCUSDT", **options), listener=recorder, clock=clock)
    engine.config.validate()
    engine.prepare()
    engine.started_at = clock.now
    return engine, recorder, clock


def trades(recorder: EngineRecorder) -> list[tuple[str, float, float]]:
    """The recorded fills as (side, qty, price)."""
    return [(f.side, f.qty, round(f.price, 6)) for f in recorder.fills]
