"""Market data feeds, chosen per engine: ``sim`` (default), ``csv``, ``prices``, ``ccxt``
(a real exchange's trades or candles, through ccxt) and ``ws`` (a raw Binance-format stream,
kept for the configs and tests that use it; ``ccxt`` is the way to a real exchange).

A feed is polled once per cycle: ``poll()`` returns the newest price since the last poll
(or a whole ``Candle``, from a feed of candles), or None when nothing new arrived (the
engine then measures how long it has been silent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..candles import Candle
from .replay import (
    ReplayFeed,
    candle_span,
    csv_problems,
    inline_problems,
    load_candles,
    load_csv,
)
from .sim import SimulatedFeed, sim_problems

ErrorCallback = Callable[[BaseException], None]


class Feed(Protocol):
    def start(self, on_error: ErrorCallback) -> None: ...
    def poll(self) -> float | Candle | None: ...
    def close(self) -> None: ...


FEEDS = ("sim", "csv", "prices", "ccxt", "ws")


def feed_problems(kind: object, options: object, symbol: str) -> list[str]:
    """Every reason this feed configuration cannot run."""
    if not isinstance(kind, str) or kind not in FEEDS:
        return [f"feed must be one of: {', '.join(FEEDS)}"]
    if not isinstance(options, Mapping):
        return ["feed_options must be a mapping"]
    if kind == "sim":
        return sim_problems(options)
    if kind == "csv":
        return csv_problems(options)
    if kind == "prices":
        return inline_problems(options)
    if kind == "ccxt":
        from .ccxt_feed import ccxt_problems

        return ccxt_problems(options)
    from .ws import ws_problems

    return ws_problems(options)


def make_feed(
    kind: str, options: Mapping[str, Any], *, symbol: str, seed: int | None, mark: float | None
) -> Feed:
    """Build the feed of a validated configuration. ``mark`` (the last known price) lets a
    restarted simulated feed continue where the engine left off."""
    if kind == "sim":
        return SimulatedFeed.from_options(options, symbol=symbol, seed=seed, mark=mark)
    if kind == "csv":
        loop, name = options.get("loop", True), options.get("file", "sample_btcusdt_1m.csv")
        if options.get("candles", False):
            candles = load_candles(name)
            return ReplayFeed(candles, loop=loop, candle_span=candle_span(candles))
        return ReplayFeed(load_csv(name), loop=loop)
    if kind == "prices":
        return ReplayFeed(
            tuple(float(p) for p in options["prices"]), loop=options.get("loop", False)
        )
    if kind == "ccxt":
        from .ccxt_feed import CcxtFeed

        return CcxtFeed.from_options(options, symbol=symbol)
    from .ws import WebsocketFeed

    return WebsocketFeed.from_options(options, symbol=symbol)
