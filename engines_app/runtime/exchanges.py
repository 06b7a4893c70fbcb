"""Real exchanges through ccxt (https://github.com/ccxt/ccxt): one client per feed or
broker, its asynchronous and websocket part (``ccxt.pro``), never blocking the loop.

``LEVIPANEL_EXCHANGE_URLS`` (JSON, ``{"binance": "http://127.0.0.1:8900"}``) points an
exchange's every REST and websocket address at another host: the fake exchange of the tests
and of the manual tour (docs/exchanges.md). It is installation-wide on purpose: an engine's
config can never send an account's keys to a host of its choosing.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# ccxt logs every request with its headers (the API key among them) at DEBUG: never that.
logging.getLogger("ccxt").setLevel(logging.INFO)

MARKET_RE = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}(:[A-Z0-9]{1,20})?$")
URLS_ENV = "LEVIPANEL_EXCHANGE_URLS"


def exchange_ids() -> list[str]:
    """The exchanges ccxt supports with websockets; others use REST polling only."""
    import ccxt.async_support

    return list(ccxt.async_support.exchanges)


def exchange_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "exchange is required (a ccxt exchange id, like binance)"
    if name not in exchange_ids():
        return f"exchange {name!r} is not one ccxt supports (see docs/exchanges.md)"
    return None


def market_problem(market: object) -> str | None:
    if not isinstance(market, str) or not MARKET_RE.fullmatch(market):
        return 'market must be a ccxt market symbol, like "BTC/USDT"'
    return None


@dataclass(frozen=True)
class Credentials:
    """An exchange account's keys. Never printed: ``repr`` shows none of them."""

    api_key: str
    secret: str
    password: str = ""

    def __repr__(self) -> str:
        return "Credentials(***)"

    __str__ = __repr__


def url_overrides() -> dict[str, str]:
    raw = os.environ.get(URLS_ENV, "")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{URLS_ENV} must be a JSON object of exchange -> URL") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{URLS_ENV} must be a JSON object of exchange -> URL")
    return {str(k): str(v) for k, v in value.items()}


def point_at(exchange: Any, base: str) -> None:
    """Send every REST and websocket request of ``exchange`` to ``base`` (http://host:port),
    keeping each address's path."""
    base = base.rstrip("/")
    ws_base = "ws" + base[4:] if base.startswith("http") else base

    def rewrite(value: Any) -> Any:
        if isinstance(value, str):
            match = re.match(r"^(https?|wss?)://[^/]+", value)
            if not match:
                return value
            new = ws_base if match.group(1).startswith("ws") else base
            return new + value[match.end() :]
        if isinstance(value, Mapping):
            return {k: rewrite(v) for k, v in value.items()}
        return value

    for key in ("api", "test"):
        if key in exchange.urls:
            exchange.urls[key] = rewrite(exchange.urls[key])


def make_exchange(name: str, *, sandbox: bool = False, credentials: Credentials | None = None):
    """A ccxt.pro client (websockets and REST) with its rate limiter on, for spot markets."""
    import ccxt.pro

    cls = getattr(ccxt.pro, name, None)
    if cls is None:
        import ccxt.async_support

        cls = getattr(ccxt.async_support, name)
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": 10_000,
        "options": {
            "defaultType": "spot",
            "fetchMarkets": {"types": ["spot"]},
            "fetchCurrencies": False,
            "fetchMargins": False,
        },
    }
    if credentials is not None:
        config.update(apiKey=credentials.api_key, secret=credentials.secret)
        if credentials.password:
            config["password"] = credentials.password
    exchange = cls(config)
    if sandbox:
        exchange.set_sandbox_mode(True)
    if base := url_overrides().get(name):
        point_at(exchange, base)
    return exchange


def unknown_market(exchange: Any, market: str) -> str:
    """Why ``market`` cannot be traded on the loaded ``exchange``."""
    nearby = sorted(m for m in exchange.markets if m.split("/")[0] == market.split("/")[0])[:5]
    hint = f"; markets of {market.split('/')[0]}: {', '.join(nearby)}" if nearby else ""
    return f"market {market} is not listed on {exchange.id} ({len(exchange.markets)} markets){hint}"
