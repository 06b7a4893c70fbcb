"""Market data of a real exchange through ccxt: trades, or candles when ``timeframe`` is
given, streamed over the exchange's websocket (ccxt.pro), polled over REST where the
exchange has no stream (or ``"stream": false``), and while a dropped stream reconnects.

The engine's symbol maps to one exchange market, named explicitly (``"market": "BTC/USDT"``)
and checked against the exchange's markets when the feed starts: an unknown market is a
fatal config error, with the reason, raised at the engine's next poll.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..exchanges import exchange_problem, make_exchange, market_problem, unknown_market
from ..redact import redact_text
from .sim import is_number
from .stream import StreamFeed

log = logging.getLogger("levipanel.engine")

OPTIONS = {"exchange", "market", "timeframe", "stream", "poll_interval", "sandbox"}
TIMEFRAME_RE = r"^[0-9]{1,3}[smhdwM]$"


def ccxt_problems(options: Mapping[str, Any]) -> list[str]:
    import re

    out = [f"unknown ccxt feed option: {key}" for key in sorted(set(options) - OPTIONS)]
    if problem := exchange_problem(options.get("exchange")):
        out.append(f"feed_options.{problem}")
    if problem := market_problem(options.get("market")):
        out.append(f"feed_options.{problem}")
    timeframe = options.get("timeframe")
    if timeframe is not None and (
        not isinstance(timeframe, str) or not re.fullmatch(TIMEFRAME_RE, timeframe)
    ):
        out.append('feed_options.timeframe must be a candle interval like "1m" or "1h"')
    for key in ("stream", "sandbox"):
        if not isinstance(options.get(key, True), bool):
            out.append(f"feed_options.{key} must be true or false")
    interval = options.get("poll_interval", 2.0)
    if not is_number(interval) or not 0 < interval <= 3600:
        out.append("feed_options.poll_interval must be a number of seconds, 0 to 3600")
    return out


class CcxtFeed(StreamFeed):
    """Keeps the newest price of one market; ``poll`` hands it over once."""

    __slots__ = (
        "exchange_id",
        "market",
        "timeframe",
        "stream",
        "sandbox",
        "poll_interval",
        "streaming",
        "polls",
    )

    def __init__(
        self,
        exchange: str,
        market: str,
        *,
        symbol: str,
        timeframe: str | None = None,
        stream: bool = True,
        sandbox: bool = False,
        poll_interval: float = 2.0,
    ) -> None:
        super().__init__(symbol)
        self.exchange_id, self.market = exchange, market
        self.timeframe, self.stream, self.sandbox = timeframe, stream, sandbox
        self.poll_interval = poll_interval
        self.streaming = False  # whether prices come from the websocket now
        self.polls = 0  # REST polls made

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, symbol: str) -> CcxtFeed:
        return cls(
            options["exchange"],
            options["market"],
            symbol=symbol,
            timeframe=options.get("timeframe"),
            stream=options.get("stream", True),
            sandbox=options.get("sandbox", False),
            poll_interval=float(options.get("poll_interval", 2.0)),
        )

    # The feed's task ---------------------------------------------------------------------

    async def _run(self) -> None:
        import ccxt.pro as ccxt

        extra = {"symbol": self.symbol}
        exchange = make_exchange(self.exchange_id, sandbox=self.sandbox)
        try:
            await self._load(exchange, ccxt)
            if self._fatal is not None:
                return
            method = "watchOHLCV" if self.timeframe else "watchTrades"
            streams = self.stream and bool(exchange.has.get(method))
            log.info(
                "Market data for %s: %s %s by %s",
                self.symbol,
                self.exchange_id,
                self.market,
                "websocket" if streams else "REST polling",
                extra=extra,
            )
            delay = 0.5
            while True:
                try:
                    if streams:
                        await self._watch(exchange)
                    else:
                        await self._fetch(exchange)
                        await asyncio.sleep(self.poll_interval)
                    delay = 0.5
                except ccxt.BadSymbol as exc:
                    self._fatal = ConfigError(f"{self.exchange_id}: {exc}")
                    return
                except Exception as exc:  # ccxt's errors, and anything else: retried
                    self.streaming = False
                    self._report_lost(exc)
                    wait = delay * random.uniform(0.8, 1.2)
                    await asyncio.sleep(wait)
                    delay = min(30.0, delay * 2)
                    if streams:  # a price by REST while the stream comes back
                        await self._fetch_quietly(exchange)
        finally:
            await exchange.close()

    async def _load(self, exchange: Any, ccxt: Any) -> None:
        """Load the exchange's markets (retrying network errors) and check the market."""
        delay = 0.5
        while True:
            try:
                await exchange.load_markets()
                break
            except ccxt.BaseError as exc:  # the exchange down or busy: try again
                self._report_lost(exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(30.0, delay * 2)
        if self.market not in exchange.markets:
            self._fatal = ConfigError(unknown_market(exchange, self.market))

    async def _watch(self, exchange: Any) -> None:
        if self.timeframe:
            candles = await exchange.watch_ohlcv(self.market, self.timeframe)
            price = candles[-1][4] if candles else None
        else:
            trades = await exchange.watch_trades(self.market)
            price = trades[-1]["price"] if trades else None
        self.streaming = True
        self._set(price)

    async def _fetch(self, exchange: Any) -> None:
        self.polls += 1
        if self.timeframe:
            candles = await exchange.fetch_ohlcv(self.market, self.timeframe, limit=1)
            self._set(candles[-1][4] if candles else None)
        else:
            trades = await exchange.fetch_trades(self.market, limit=1)
            self._set(trades[-1]["price"] if trades else None)

    async def _fetch_quietly(self, exchange: Any) -> None:
        import ccxt.pro as ccxt

        try:
            await self._fetch(exchange)
        except ccxt.BaseError:
            pass  # the stream's own retry reports what stays broken

    def _set(self, price: object) -> None:
        if isinstance(price, int | float) and math.isfinite(price) and price > 0:
            self._price, self._fresh = float(price), True

    def _report_lost(self, exc: BaseException) -> None:
        """A warning for the exchange's errors; anything else is an error the engine counts."""
        import ccxt.pro as ccxt

        if not isinstance(exc, ccxt.BaseError) and self._on_error is not None:
            self._on_error(exc)
            return
        reason = redact_text(str(exc))[:300]
        log.warning(
            "Market data from %s lost: %s: %s",
            self.exchange_id,
            type(exc).__name__,
            reason,
            extra={"symbol": self.symbol},
        )
