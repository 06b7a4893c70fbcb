"""Replay feeds: candles from a CSV file (their close prices), or an inline price list."""

from __future__ import annotations

import csv
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .sim import is_number

DATA_DIR = Path(__file__).resolve().parent / "data"


def csv_files() -> list[str]:
    return sorted(path.name for path in DATA_DIR.glob("*.csv"))


def csv_problems(options: Mapping[str, Any]) -> list[str]:
    out = [f"unknown csv feed option: {key}" for key in sorted(set(options) - {"file", "loop"})]
    name = options.get("file", "sample_btcusdt_1m.csv")
    # Only files shipped in the feed data directory: an engine config must not read any
    # file the runner can.
    if name not in csv_files():
        out.append(f"feed_options.file must be one of: {', '.join(csv_files())}")
    if not isinstance(options.get("loop", True), bool):
        out.append("feed_options.loop must be true or false")
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
def load_csv(name: str) -> tuple[float, ...]:
    """The close prices of a candle file (header ``open_time,open,high,low,close,volume``),
    parsed once per process and shared by every engine replaying it."""
    with open(DATA_DIR / name, newline="") as handle:
        return tuple(float(row["close"]) for row in csv.DictReader(handle))


class ReplayFeed:
    """One price per poll, in order; at the end it starts over (``loop``) or falls silent."""

    __slots__ = ("prices", "loop", "index")

    def __init__(self, prices: tuple[float, ...], *, loop: bool) -> None:
        self.prices, self.loop, self.index = prices, loop, 0

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
