"""Strategies: one small interface, picked per engine by name with parameters.

A strategy sees one price per tick and answers with the position it wants, as a signal:
1 long, -1 short, 0 flat, None to keep what it has. The engine turns the signal into an
order of ``order_qty`` units, checks risk and fills it on the paper broker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol


class Strategy(Protocol):
    def signal(self, price: float) -> int | None: ...


def _flat_or_short(allow_short: bool) -> int:
    return -1 if allow_short else 0


class SmaCross:
    """Long while the fast moving average is above the slow one; flat (or short) below."""

    __slots__ = ("fast", "slow", "allow_short", "_prices")

    def __init__(self, fast: int = 5, slow: int = 20, allow_short: bool = False) -> None:
        self.fast, self.slow, self.allow_short = fast, slow, allow_short
        self._prices: deque[float] = deque(maxlen=slow)

    def signal(self, price: float) -> int | None:
        prices = self._prices
        prices.append(price)
        if len(prices) < self.slow:
            return None  # still warming up
        fast_ma = sum(prices[i] for i in range(-self.fast, 0)) / self.fast
        slow_ma = sum(prices) / self.slow
        if fast_ma > slow_ma:
            return 1
        if fast_ma < slow_ma:
            return _flat_or_short(self.allow_short)
        return None


class Breakout:
    """Momentum: long on a close above the highest of the last ``lookback`` prices, flat
    (or short) on a close below the lowest."""

    __slots__ = ("lookback", "allow_short", "_prices")

    def __init__(self, lookback: int = 20, allow_short: bool = False) -> None:
        self.lookback, self.allow_short = lookback, allow_short
        self._prices: deque[float] = deque(maxlen=lookback)

    def signal(self, price: float) -> int | None:
        prices = self._prices
        full = len(prices) == self.lookback
        result = None
        if full and price > max(prices):
            result = 1
        elif full and price < min(prices):
            result = _flat_or_short(self.allow_short)
        prices.append(price)
        return result


# name -> (class, default parameters). The defaults say which parameters exist.
STRATEGIES: dict[str, tuple[type, dict[str, Any]]] = {
    "sma_cross": (SmaCross, {"fast": 5, "slow": 20, "allow_short": False}),
    "breakout": (Breakout, {"lookback": 20, "allow_short": False}),
}


def strategy_problems(name: object, params: object) -> list[str]:
    """Every reason ``name`` with ``params`` cannot run."""
    if not isinstance(name, str) or name not in STRATEGIES:
        return [f"strategy must be one of: {', '.join(sorted(STRATEGIES))}"]
    if not isinstance(params, Mapping):
        return ["params must be a mapping"]
    _, defaults = STRATEGIES[name]
    out = [f"unknown {name} parameter: {key}" for key in sorted(set(params) - set(defaults))]
    merged = {**defaults, **{k: v for k, v in params.items() if k in defaults}}
    for key, value in merged.items():
        if isinstance(defaults[key], bool):
            if not isinstance(value, bool):
                out.append(f"params.{key} must be true or false")
        elif not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
            out.append(f"params.{key} must be a whole number from 1 to 1000")
    if name == "sma_cross" and not out and merged["fast"] >= merged["slow"]:
        out.append("params.fast must be smaller than params.slow")
    return out


def make_strategy(name: str, params: Mapping[str, Any]) -> Strategy:
    cls, defaults = STRATEGIES[name]
    return cls(**{**defaults, **params})
