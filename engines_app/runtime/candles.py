"""Candles: built from any feed's prices at a chosen interval, or read whole from a file.

A ``Candle`` is a plain tuple (open time in epoch seconds, open, high, low, close, volume):
cheap to make and to keep, and immutable, so a strategy may hold on to it. Candle files
have the header ``open_time,open,high,low,close,volume`` with ``open_time`` in epoch
milliseconds (the exchange's format), plain or gzip-compressed (``.csv.gz``).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

INTERVALS = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "1d": 86400,
}


class Candle(NamedTuple):
    open_time: float  # epoch seconds
    open: float
    high: float
    low: float
    close: float
    volume: float


def close_time(candle: Candle, seconds: float) -> float:
    """When a candle of ``seconds`` closes (when the engine may act on it)."""
    return candle[0] + seconds


class CandleBuilder:
    """The candle being built from prices, one interval at a time. ``add`` is the whole
    per-price cost: a comparison and three updates while the candle is open."""

    __slots__ = ("seconds", "end", "start", "o", "h", "l", "c", "v")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = self.end = -1.0
        self.o = self.h = self.l = self.c = self.v = 0.0

    def add(self, price: float, at: float, volume: float = 0.0) -> Candle | None:
        """Add a price seen at ``at``; the candle it closed when it is the first of a new
        interval, else None."""
        if self.start <= at < self.end:
            if price > self.h:
                self.h = price
            elif price < self.l:
                self.l = price
            self.c = price
            self.v += volume
            return None
        return self._roll(at, price, price, price, price, volume)

    def add_candle(self, candle: Candle, span: float = 0.0) -> Candle | None:
        """Merge a candle of ``span`` seconds (1m into 5m …); the candle it closed, else
        None. With ``span`` known, a candle that completes the interval closes it at once
        (a 1m candle into 1m is returned as it came); else the interval closes when a
        candle of the next one arrives."""
        at = candle[0]
        if self.start <= at < self.end:
            if candle[2] > self.h:
                self.h = candle[2]
            if candle[3] < self.l:
                self.l = candle[3]
            self.c = candle[4]
            self.v += candle[5]
            closed = None
        else:
            closed = self._roll(at, *candle[1:])
        if span and at + span >= self.end:
            done = self.current()
            self.start = self.end = -1.0
            return done if closed is None else closed
        return closed

    def _roll(self, at: float, o: float, h: float, low: float, c: float, v: float):
        closed = self.current()
        seconds = self.seconds
        self.start = at - at % seconds
        self.end = self.start + seconds
        self.o, self.h, self.l, self.c, self.v = o, h, low, c, v
        return closed

    def current(self) -> Candle | None:
        """The candle being built (not closed yet), or None before the first price."""
        if self.start < 0:
            return None
        return Candle(self.start, self.o, self.h, self.l, self.c, self.v)


def resample(candles: Iterable[Candle], seconds: float) -> Iterator[Candle]:
    """Candles merged to a longer interval (the last one only once complete)."""
    builder = CandleBuilder(seconds)
    for candle in candles:
        if (closed := builder.add_candle(candle)) is not None:
            yield closed
    last = builder.current()
    if last is not None:
        yield last


def read_candles(path: Path | str) -> list[Candle]:
    """Every candle of a candle file (``.csv`` or ``.csv.gz``), oldest first."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:6]] != list(Candle._fields):
            raise ValueError(f"{path.name}: the header must be {','.join(Candle._fields)}")
        out = []
        for number, row in enumerate(reader, start=2):
            try:
                t, o, h, low, c, v = (float(x) for x in row[:6])
            except ValueError as exc:
                raise ValueError(f"{path.name} line {number}: {exc}") from None
            out.append(Candle(t / 1000.0, o, h, low, c, v))
    return out
