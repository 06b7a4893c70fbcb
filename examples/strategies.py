"""The worked example of docs/strategies.md: buy a dip that the RSI calls oversold, sell
when it is overbought, with a stop loss the engine enforces.

Enable it with ``LEVIPANEL_STRATEGY_MODULES=examples.strategies`` and give an engine
``{"strategy": "examples.strategies:RsiReversion", "params": {"window": 14}}``.
"""

from __future__ import annotations

from engines_app.runtime.indicators import closes, rsi
from engines_app.runtime.strategies import Param, Strategy, Target


class RsiReversion(Strategy):
    """Long when the RSI falls below ``oversold``, flat when it rises above ``overbought``;
    a stop loss ``stop`` (a fraction) below the entry."""

    params = {
        "window": Param(14, minimum=2, maximum=200, help="candles of the RSI"),
        "oversold": Param(30.0, minimum=1.0, maximum=50.0),
        "overbought": Param(70.0, minimum=50.0, maximum=99.0),
        "stop": Param(0.02, minimum=0.001, maximum=0.5, help="stop loss below the entry"),
    }
    interval = "5m"  # the config's candle_interval may choose another
    history = 201  # candles kept in self.candles (the longest window, plus one), and
    # replayed to it after a restart: it is warm again at once

    @classmethod
    def check(cls, params):
        if params["oversold"] >= params["overbought"]:
            return ["params.oversold must be below params.overbought"]
        return []

    def on_candle(self, candle, position):
        if len(self.candles) <= self.window:
            return None  # warming up
        value = rsi(closes(self.candles)[-(self.window + 1) :], self.window)[-1]
        if position <= 0 and value < self.oversold:
            return Target(1, stop_loss=candle.close * (1 - self.stop))
        if position > 0 and value > self.overbought:
            return 0
        return None
