"""Replay feeds: candles from a CSV file (their close prices, or the candles whole), or an
inline price list."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..candles import Candle, read_candles
from .sim import is_number

DATA_DIR = Path(__file__).resolve().parent / "data"


def csv_files() -> list[str]:
    return sorted(path.name for pattern in ("*.csv", "*.csv.gz") for path in DATA_DIR.glob(pattern))


def csv_problems(options: Mapping[str, Any]) -> list[str]:
    known = {"file", "loop", "candles"}
    out = [f"unknown csv feed option: {key}" for key in sorted(set(options) - known)]
    name = options.get("file", "sample_btcusdt_1m.csv")
    # Only files shipped in the feed data directory: an engine config must not read any
    # file the runner can.
    if name not in csv_files():
        out.append(f"feed_options.file must be one of: {', '.join(csv_files())}")
    if not isinstance(options.get("loop", True), bool):
        out.append("feed_options.loop must be true or false")
    if not isinstance(options.get("candles", False), bool):
        out.append("feed_options.candles must be true or false")
    return out


def inline_problems(options: Mapping[str, Any]) -> list[str]:
    out = [
        f"unknown prices feed option: {key}" for key in sorted(set(options) - {"prices", "loop"})
    ]
    prices = options.get("prices")
    if not isinstance(prices, list) or not prices or len(prices) > 100_000:
        out.append("feed_options.prices must be a list of 1 to 100000 prices")
    elif not all(_is_price(p) for p in prices):
        out.append("feed_options.prices must all be numbers greater than 0")
    if not isinstance(options.get("loop", False), bool):
        out.append("feed_options.loop must be true or false")
    return out


def _is_price(value: object) -> bool:
    return is_number(value) and value > 0


@functools.cache
def load_candles(name: str) -> tuple[Candle, ...]:
    """The candles of a shipped candle file, parsed once per process and shared by every
    engine replaying it."""
    return tuple(read_candles(DATA_DIR / name))


@functools.cache
def load_csv(name: str) -> tuple[float, ...]:
    """The close prices of a candle file (header ``open_time,open,high,low,close,volume``)."""
    return tuple(candle[4] for candle in load_candles(name))


def candle_span(candles: tuple[Candle, ...]) -> float:
    """The length of a file's candles: the step between its first two."""
    return candles[1][0] - candles[0][0] if len(candles) > 1 else 60.0


class ReplayFeed:
    """One price (or candle) per poll, in order; at the end it starts over (``loop``) or
    falls silent. ``candle_span``: the candles' length, when it hands over candles."""

    __slots__ = ("prices", "loop", "index", "candle_span")

    def __init__(self, prices: tuple, *, loop: bool, candle_span: float = 0.0) -> None:
        self.prices, self.loop, self.index = prices, loop, 0
        self.candle_span = candle_span

    def start(self, on_error) -> None:
        pass

    def poll(self) -> float | None:
        if self.index >= len(self.prices):
            if not self.loop:
                return None
            self.index = 0
        price = self.prices[self.index]
        self.index += 1
        return price

    def close(self) -> None:
        pass
