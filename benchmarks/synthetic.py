"""Synthetic one-minute candles: the shipped sample data and the benchmark's year.

SYNTHETIC: a seeded random walk with drifting trends and changing volatility, shaped like a
crypto market but made up. Never real prices. ``python -m benchmarks.synthetic`` writes the
shipped files (the same bytes every run: the seed is fixed) into the feed data directory.
"""

from __future__ import annotations

import gzip
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from engines_app.runtime.candles import Candle

SEED = 20250101
START = 1_735_689_600  # 2025-01-01 00:00 UTC
DAYS = 61  # two months per symbol
# symbol: (first price, volatility of one minute, price decimals, typical volume)
SYMBOLS = {
    "BTCUSDT": (94_000.0, 0.0009, 1, 12.0),
    "ETHUSDT": (3_350.0, 0.0011, 2, 180.0),
    "SOLUSDT": (190.0, 0.0015, 3, 2_400.0),
}
DATA_DIR = Path(__file__).resolve().parent.parent / "engines_app" / "runtime" / "feeds" / "data"


def synthetic_candles(
    symbol: str, *, count: int, seed: int = SEED, start: int = START
) -> Iterator[Candle]:
    """``count`` one-minute candles of ``symbol`` from ``start``: a trend that drifts and
    turns, volatility that clusters, highs and lows around each move."""
    price, vol, _, volume = SYMBOLS.get(symbol, (100.0, 0.001, 4, 100.0))
    rng = random.Random(f"{seed}:{symbol}")
    gauss, uniform = rng.gauss, rng.random
    drift, scale = 0.0, 1.0
    for i in range(count):
        if i % 240 == 0:  # every 4 hours: a new trend, and the volatility wanders
            drift = gauss(0.0, vol * 0.15)
            scale = min(3.0, max(0.4, scale * math.exp(gauss(0.0, 0.25))))
        sigma = vol * scale
        open_ = price
        close = open_ * math.exp(drift + gauss(0.0, sigma))
        high = max(open_, close) * (1 + abs(gauss(0.0, sigma * 0.6)))
        low = min(open_, close) * (1 - abs(gauss(0.0, sigma * 0.6)))
        size = volume * scale * (0.3 + 1.4 * uniform())
        yield Candle(float(start + 60 * i), open_, high, low, close, size)
        price = close


def file_name(symbol: str) -> str:
    return f"synthetic_{symbol.lower()}_1m.csv.gz"


def write(symbol: str, path: Path, *, days: int = DAYS) -> int:
    """Write ``days`` of ``symbol`` to ``path`` (gzip, no timestamp: reproducible bytes)."""
    decimals = SYMBOLS[symbol][2]
    rows = ["open_time,open,high,low,close,volume"]
    close = None
    for candle in synthetic_candles(symbol, count=days * 1440):
        t, o, h, low, c, v = candle
        # The file's open is the previous close as written: the rounding never gaps.
        o_text = close if close is not None else f"{o:.{decimals}f}"
        close = f"{c:.{decimals}f}"
        high = max(float(o_text), float(close), round(h, decimals))
        low_ = min(float(o_text), float(close), round(low, decimals))
        rows.append(
            f"{int(t) * 1000},{o_text},{high:.{decimals}f},{low_:.{decimals}f},{close},{v:.2f}"
        )
    data = ("\n".join(rows) + "\n").encode()
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out,
    ):
        out.write(data)
    return len(rows) - 1


def main() -> None:
    for symbol in SYMBOLS:
        path = DATA_DIR / file_name(symbol)
        count = write(symbol, path)
        print(f"{path.name}: {count} candles, {path.stat().st_size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
