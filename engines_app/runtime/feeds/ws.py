"""The exchange's public websocket stream format (Binance kline / trade messages).

Only engines configured with ``"feed": "ws"`` open a connection. The feed keeps the newest
price; a dropped connection is opened again after a doubling, capped, jittered backoff.
A malformed message is logged as an error and reported to the engine, which keeps running.
The URL may hold credentials: it is logged and reported only through ``redact_url``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidURI, WebSocketException
from websockets.uri import parse_uri

from ..redact import redact_text, redact_url
from .sim import is_number
from .stream import StreamFeed

log = logging.getLogger("levipanel.engine")

OPTIONS = {"url", "reconnect_base", "reconnect_cap"}


class MalformedMessage(ValueError):
    """A market data message this feed cannot read."""


def ws_problems(options: Mapping[str, Any]) -> list[str]:
    out = [f"unknown ws feed option: {key}" for key in sorted(set(options) - OPTIONS)]
    url = options.get("url")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        out.append("feed_options.url must be a ws:// or wss:// address")
    else:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            out.append(f"feed_options.url is not a valid address: {exc.msg}")  # not the URL
        except ValueError as exc:  # a bad port or bracket, from urllib
            out.append(f"feed_options.url is not a valid address: {exc}")
    for key, default in (("reconnect_base", 0.5), ("reconnect_cap", 30.0)):
        value = options.get(key, default)
        if not is_number(value) or value <= 0:
            out.append(f"feed_options.{key} must be a number greater than 0")
    return out


def parse_price(raw: str | bytes, symbol: str) -> float | None:
    """The price in one stream message; None for messages about other things (another
    symbol, a subscription reply). Raises MalformedMessage."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # deep nesting raises RecursionError
        raise MalformedMessage(f"not JSON: {str(raw)[:80]!r}") from exc
    if not isinstance(message, dict):
        raise MalformedMessage(f"not a JSON object: {str(raw)[:80]!r}")
    if isinstance(message.get("data"), dict) and "stream" in message:  # combined streams
        message = message["data"]
    if "result" in message and "id" in message:
        return None
    kind = message.get("e")
    try:
        if kind == "kline":
            value = message["k"]["c"]
        elif kind in ("trade", "aggTrade"):
            value = message["p"]
        else:
            raise MalformedMessage(f"unknown event type {kind!r}")
        if message.get("s", symbol) != symbol:
            return None
        price = float(value)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: a huge int
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage(f"bad {kind} message: {type(exc).__name__}: {exc}") from exc
    if not math.isfinite(price) or price <= 0:
        raise MalformedMessage(f"bad price {value!r}")
    return price


class WebsocketFeed(StreamFeed):
    """Keeps the newest price of a stream; ``poll`` hands it over once."""

    __slots__ = (
        "url",
        "base",
        "cap",
        "connections",
        "malformed",
    )

    def __init__(self, url: str, symbol: str, *, base: float = 0.5, cap: float = 30.0) -> None:
        super().__init__(symbol)
        self.url, self.base, self.cap = url, base, cap
        self.connections = 0
        self.malformed = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, symbol: str) -> WebsocketFeed:
        return cls(
            options["url"],
            symbol,
            base=float(options.get("reconnect_base", 0.5)),
            cap=float(options.get("reconnect_cap", 30.0)),
        )

    async def _run(self) -> None:
        delay, extra = self.base, {"symbol": self.symbol}
        while True:
            try:
                async with connect(self.url, open_timeout=10, max_size=2**20) as socket:
                    self.connections += 1
                    log.info("Connected to market data at %s", redact_url(self.url), extra=extra)
                    async for raw in socket:
                        if self._receive(raw):
                            delay = self.base
                log.warning("Market data stream closed by the server", extra=extra)
            except InvalidURI as exc:
                # A new exception, not the raised one: its message and its traceback's
                # would quote the URL with its credentials.
                self._report(InvalidURI(redact_url(exc.uri), exc.msg))
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = redact_text(str(exc))
                log.warning(
                    "Market data connection lost: %s: %s", type(exc).__name__, reason, extra=extra
                )
            wait = delay * random.uniform(0.8, 1.2)
            log.info("Reconnecting to market data in %.2fs", wait, extra=extra)
            await asyncio.sleep(wait)
            delay = min(self.cap, delay * 2)

    def _receive(self, raw: str | bytes) -> bool:
        try:
            price = parse_price(raw, self.symbol)
        except MalformedMessage as exc:
            self.malformed += 1
            self._report(exc)
            return False
        if price is not None:
            self._price, self._fresh = price, True
        return True

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(exc)  # the engine logs it as an error and counts it
        else:
            log.error("Market data error: %s", exc, extra={"symbol": self.symbol})
