"""Backtest: an engine's config run over candles at full speed, by the live engine's own code.

The engine is the live ``TradingEngine`` without its loop: each candle goes through
``TradingEngine.on_candle`` (exit levels, mark, daily loss check, the strategy, the risk
checks, the paper broker) exactly as a live engine fed the same candles does. The report's
numbers are computed afterwards from the fills and the closes with numpy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from .broker import DAY, Fill, utc_day
from .candles import INTERVALS, Candle, resample
from .engine import EngineConfig, TradingEngine
from .errors import ConfigError, RiskHalt
from .strategies import load_strategy

CHART_POINTS = 2000  # the equity curve kept for the chart


class _Fills:
    """The backtest's engine listener: it keeps the fills, nothing else."""

    __slots__ = ("fills",)

    def __init__(self) -> None:
        self.fills: list[Fill] = []

    def engine_started(self, engine) -> None:
        pass

    def engine_error(self, engine, exc) -> None:
        pass

    def engine_filled(self, engine, fill: Fill | None) -> None:
        if fill is not None:
            self.fills.append(fill)

    def engine_feed(self, engine, stale_for) -> None:
        pass


@dataclass
class BacktestResult:
    config: EngineConfig
    interval: str
    candles: int
    first_time: float
    last_time: float
    fills: list[Fill]
    metrics: dict[str, Any]
    equity: list[tuple[float, float]]  # (close time, total PnL), thinned for a chart
    halts: int = 0
    seconds: float = 0.0  # the run over the candles, without loading them
    extra: dict[str, Any] = field(default_factory=dict)

    def trades(self) -> list[list[Any]]:
        """The fills as rows: time, side, qty, price, fee, realized PnL, position after."""
        return [
            [f.at, f.side, f.qty, f.price, f.fee, f.realized_pnl, f.position_after]
            for f in self.fills
        ]


def interval_name(seconds: float) -> str | None:
    for name, length in INTERVALS.items():
        if length == seconds:
            return name
    return None


def candle_span(candles: Sequence[Candle]) -> float:
    """The candles' length: the smallest step between the first few (a gap is longer)."""
    steps = [b[0] - a[0] for a, b in zip(candles[:10], candles[1:11], strict=False)]
    return min((s for s in steps if s > 0), default=60.0)


def backtest_config(config: EngineConfig, span: float) -> EngineConfig:
    """The config the backtest runs: a strategy without an interval of its own (the
    built-ins) trades on the data's candles."""
    cls = load_strategy(config.strategy)
    if isinstance(cls, str):
        raise ConfigError(cls)
    if config.candle_interval is None and cls.interval is None:
        name = interval_name(span)
        if name is None:
            raise ConfigError(f"candles of {span:g}s are no interval the engine knows")
        config = dataclasses.replace(config, candle_interval=name)
    return config


def run_backtest(config: EngineConfig, candles: Sequence[Candle]) -> BacktestResult:
    """Run ``config`` over ``candles`` (oldest first, all of one length). Raises
    ConfigError for a config that cannot run, ValueError for too few candles."""
    if len(candles) < 2:
        raise ValueError("a backtest needs at least 2 candles")
    span = candle_span(candles)
    config = backtest_config(config, span)
    config.validate()
    recorder = _Fills()
    engine = TradingEngine(config, listener=recorder)
    engine.log_fills = False
    engine.prepare(feed=False)
    seconds = engine.builder.seconds
    if seconds < span:
        raise ConfigError(f"candle_interval {config.candle_interval} is shorter than the data's")
    series = candles if seconds == span else list(resample(candles, seconds))
    began = time.perf_counter()
    halts = _run(engine, series, seconds)
    elapsed = time.perf_counter() - began
    metrics, equity = report(engine, series, seconds, recorder.fills)
    metrics["halts"] = halts
    return BacktestResult(
        config=config,
        interval=config.candle_interval or interval_name(seconds) or f"{seconds:g}s",
        candles=len(series),
        first_time=series[0][0],
        last_time=series[-1][0] + seconds,
        fills=recorder.fills,
        metrics=metrics,
        equity=equity,
        halts=halts,
        seconds=elapsed,
    )


def _run(engine: TradingEngine, candles: Sequence[Candle], seconds: float) -> int:
    """Every candle through the engine. A daily loss halt skips the rest of that UTC day,
    as the live engine sits halted until the next."""
    on_candle, halts, start, n = engine.on_candle, 0, 0, len(candles)
    while start < n:
        i = start
        try:
            for candle in itertools.islice(candles, start, None):
                on_candle(candle, candle[0] + seconds)
                i += 1
            return halts
        except RiskHalt as exc:
            halts += 1
            now = candles[i][0] + seconds
            if engine.config.on_stop == "close":
                engine.clock = lambda now=now: now
                engine.close_position(str(exc))
            resume = (utc_day(now) + 1) * DAY
            start = i + 1
            while start < n and candles[start][0] + seconds < resume:
                start += 1
    return halts


def report(
    engine: TradingEngine, candles: Sequence[Candle], seconds: float, fills: list[Fill]
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """The numbers of a run, beside buy-and-hold of ``order_qty`` over the same candles."""
    config, book = engine.config, engine.state.book
    n = len(candles)
    times = np.fromiter(map(itemgetter(0), candles), float, n) + seconds
    closes = np.fromiter(map(itemgetter(4), candles), float, n)
    equity, position = _equity(times, closes, fills)
    capital = closes[0] * config.order_qty  # what one order's position is worth at the start
    days = (times // DAY).astype(np.int64)
    day_ends = np.flatnonzero(np.diff(days, append=days[-1] + 1))
    daily = np.diff(equity[day_ends], prepend=0.0)
    fees = sum(f.fee for f in fills)
    hold = _buy_and_hold(closes, config)
    metrics = {
        "total_pnl": float(equity[-1]),
        "return_pct": float(equity[-1] / capital * 100),
        "trades": len(fills),
        "round_trips": book.closes,
        "win_rate": book.wins / book.closes if book.closes else None,
        "fees": fees,
        "max_drawdown": _max_drawdown(equity),
        "max_drawdown_pct": _max_drawdown(equity) / capital * 100,
        "sharpe": _sharpe(daily),
        "exposure": float(np.count_nonzero(position) / len(position)),
        "capital": float(capital),
        "daily_pnl": [
            [int(days[i]) * DAY, round(float(pnl), 8)]
            for i, pnl in zip(day_ends, daily, strict=True)
        ],
        "buy_and_hold": hold,
    }
    step = max(1, len(times) // CHART_POINTS)
    picks = list(range(0, len(times), step))
    if picks[-1] != len(times) - 1:
        picks.append(len(times) - 1)
    curve = [(float(times[i]), round(float(equity[i]), 8)) for i in picks]
    held = _held(closes, config)
    metrics["buy_and_hold_curve"] = [[float(times[i]), round(float(held[i]), 8)] for i in picks]
    return metrics, curve


def _equity(times: np.ndarray, closes: np.ndarray, fills: list[Fill]):
    """Total PnL and position at each candle's close, from the book after each fill."""
    if not fills:
        return np.zeros_like(closes), np.zeros_like(closes)
    at = np.fromiter((f.at for f in fills), float, len(fills))
    qty = np.fromiter((f.position_after for f in fills), float, len(fills))
    avg = np.fromiter((f.avg_price_after for f in fills), float, len(fills))
    cash = np.fromiter((f.realized_total - f.fees_total for f in fills), float, len(fills))
    last = np.searchsorted(at, times, side="right") - 1  # the last fill by each close
    seen = last >= 0
    index = np.where(seen, last, 0)
    position = np.where(seen, qty[index], 0.0)
    equity = np.where(seen, cash[index] + (closes - avg[index]) * position, 0.0)
    return equity, position


def _max_drawdown(equity: np.ndarray) -> float:
    peaks = np.maximum.accumulate(np.maximum(equity, 0.0))
    return float(np.max(peaks - equity, initial=0.0))


def _sharpe(daily: np.ndarray) -> float | None:
    """Annualised (365 trading days: the market never closes) Sharpe ratio of daily PnL."""
    if len(daily) < 2:
        return None
    std = float(np.std(daily, ddof=1))
    if std == 0 or not math.isfinite(std):
        return None
    return float(np.mean(daily) / std * math.sqrt(365))


def _held(closes: np.ndarray, config: EngineConfig) -> np.ndarray:
    """Buy ``order_qty`` at the first close (with the slippage and fee a fill pays), hold:
    its total PnL at each close."""
    entry = closes[0] * (1 + config.slippage)
    return (closes - entry) * config.order_qty - config.order_qty * entry * config.fee_rate


def _buy_and_hold(closes: np.ndarray, config: EngineConfig) -> dict[str, Any]:
    equity = _held(closes, config)
    fee = config.order_qty * closes[0] * (1 + config.slippage) * config.fee_rate
    return {
        "total_pnl": float(equity[-1]),
        "return_pct": float(equity[-1] / (closes[0] * config.order_qty) * 100),
        "max_drawdown": _max_drawdown(equity),
        "fees": float(fee),
    }
