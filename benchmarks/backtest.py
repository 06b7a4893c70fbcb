"""Backtest speed: a year of one-minute candles (525,600) with an SMA 5/20 cross through the
live engine's own code (``run_backtest``), beside a bare Python loop over the same candles
measured in the same run (the same crossover on the closes, incremental sums, a position
flag: no engine, risk or broker), and beside backtesting.py when it is installed.

``python -m benchmarks.backtest --profile`` prints where the per-candle time goes.
"""

from __future__ import annotations

import statistics
import sys
import time

from engines_app.runtime.backtest import run_backtest
from engines_app.runtime.candles import Candle
from engines_app.runtime.engine import EngineConfig

from .synthetic import synthetic_candles

YEAR = 525_600
FAST, SLOW = 5, 20


def year() -> list[Candle]:
    return list(synthetic_candles("BTCUSDT", count=YEAR))


def config() -> EngineConfig:
    return EngineConfig("BTCUSDT", params={"fast": FAST, "slow": SLOW})


def bare_loop(candles: list[Candle]) -> int:
    """The crossover with nothing around it: the floor a Python loop can reach."""
    fsum = ssum = 0.0
    closes, position, flips = [], 0, 0
    for i, candle in enumerate(candles):
        close = candle[4]
        closes.append(close)
        fsum += close
        ssum += close
        if i >= FAST:
            fsum -= closes[i - FAST]
        if i >= SLOW:
            ssum -= closes[i - SLOW]
        if i >= SLOW - 1:
            wanted = 1 if fsum * SLOW > ssum * FAST else 0
            if wanted != position:
                position, flips = wanted, flips + 1
    return flips


def _timed(function, *args) -> tuple[float, object]:
    began = time.perf_counter()
    out = function(*args)
    return time.perf_counter() - began, out


def _backtesting_py(candles: list[Candle]) -> float | None:
    """backtesting.py's time for the same crossover, if it is installed (optional)."""
    try:
        import pandas as pd
        from backtesting import Backtest, Strategy
        from backtesting.lib import crossover
        from backtesting.test import SMA
    except ImportError:
        return None

    class SmaCross(Strategy):
        def init(self):
            self.fast = self.I(SMA, self.data.Close, FAST)
            self.slow = self.I(SMA, self.data.Close, SLOW)

        def next(self):
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                self.position.close()

    frame = pd.DataFrame(
        [c[1:] for c in candles],
        columns=["Open", "High", "Low", "Close", "Volume"],
        index=pd.to_datetime([c[0] for c in candles], unit="s"),
    )
    began = time.perf_counter()
    Backtest(frame, SmaCross, cash=10**9, commission=0.001).run()
    return time.perf_counter() - began


def run(*, samples: int = 3) -> list[dict]:
    candles = year()
    ours, bare = [], []
    for _ in range(samples):
        bare_s, flips = _timed(bare_loop, candles)
        total_s, result = _timed(run_backtest, config(), candles)
        bare.append(bare_s)
        ours.append(total_s)
    trades = result.metrics["trades"]
    if trades != flips:
        raise AssertionError(f"the backtest made {trades} trades, the bare loop {flips}")
    ours_s, bare_s = statistics.median(ours), statistics.median(bare)
    baseline = f"bare Python loop over the same {YEAR:,} candles"
    rows = [
        {
            "name": f"backtest, {YEAR:,} 1m candles, SMA {FAST}/{SLOW} ({trades:,} trades)",
            "value": ours_s,
            "unit": "s",
            "baseline": bare_s,
            "baseline_name": baseline,
            "target": "< 3",
        },
        {
            "name": "backtest time / bare loop time",
            "value": ours_s / bare_s,
            "unit": "x",
            "baseline": 1.0,
            "baseline_name": baseline,
            "target": "<= 12",
        },
        {
            "name": "backtest per candle",
            "value": ours_s / YEAR * 1e6,
            "unit": "µs",
            "baseline": bare_s / YEAR * 1e6,
            "baseline_name": baseline,
            "target": None,
        },
    ]
    other = _backtesting_py(candles)
    if other is not None:
        rows.append(
            {
                "name": "backtesting.py, the same crossover",
                "value": other,
                "unit": "s",
                "baseline": ours_s,
                "baseline_name": "this backtest",
                "target": None,
            }
        )
    return rows


def profile(lines: int = 15) -> None:
    import cProfile
    import pstats

    candles = year()
    profiler = cProfile.Profile()
    profiler.runcall(run_backtest, config(), candles)
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(lines)


if __name__ == "__main__":
    if "--profile" in sys.argv:
        profile()
    else:
        for row in run():
            print(row)
