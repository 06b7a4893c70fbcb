"""The default feed: a seeded random walk, the same prices for the same seed every run."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

MASK = (1 << 64) - 1
OPTIONS = {"price": 100.0, "volatility": 0.002, "seed": None}


def is_number(value: object) -> bool:
    """A finite int or float: not NaN, Infinity or an int too large for a float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # JSON numbers have no size limit
        return False


def sim_problems(options: Mapping[str, Any]) -> list[str]:
    out = [f"unknown sim feed option: {key}" for key in sorted(set(options) - set(OPTIONS))]
    price = options.get("price", 100.0)
    if not is_number(price) or price <= 0:
        out.append("feed_options.price must be a number greater than 0")
    volatility = options.get("volatility", 0.002)
    if not is_number(volatility) or not 0 <= volatility < 0.5:
        out.append("feed_options.volatility must be a number from 0 to 0.5")
    seed = options.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        out.append("feed_options.seed must be a whole number >= 0")
    return out


class SimulatedFeed:
    """One tick per poll: the price moves by up to ``volatility`` (a fraction) either way.
    Its generator is a 64-bit splitmix: an int of state instead of a 2.5 KB Random."""

    __slots__ = ("price", "volatility", "_state")

    def __init__(self, price: float, volatility: float, seed: int) -> None:
        self.price, self.volatility, self._state = price, volatility, seed & MASK

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], *, symbol: str, seed: int | None, mark: float | None
    ) -> SimulatedFeed:
        chosen = options.get("seed", seed)
        if chosen is None:
            chosen = zlib.crc32(symbol.encode())  # reproducible per symbol by default
        price = mark if mark is not None else float(options.get("price", 100.0))
        return cls(price, float(options.get("volatility", 0.002)), chosen)

    def _uniform(self) -> float:
        """A float in [-1, 1)."""
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        return (z >> 11) / (1 << 52) - 1.0

    def start(self, on_error) -> None:
        pass

    def poll(self) -> float:
        self.price *= 1.0 + self.volatility * self._uniform()
        return self.price

    def close(self) -> None:
        pass
