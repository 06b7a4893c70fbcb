"""A fake exchange on loopback: the subset of Binance's spot API that ccxt uses for market
data and market orders, over HTTP and a websocket, on an event loop in a thread of its own.

ccxt is pointed at it by overriding the exchange's URLs (``exchanges.point_at``), so tests
and the manual in docs/exchanges.md run ccxt's real code against it. Tests steer it:
``trade(price)`` pushes a trade to every subscriber, ``fail_next`` queues failures (429s,
rejects, partial fills, an order accepted but never answered), ``drop_streams()`` cuts
every websocket. Orders, balances and every request are kept for assertions.

``main(port)`` runs one in the foreground trading a random walk, for the manual tour in
docs/exchanges.md (``python manage.py shell -c "from tests.helpers.fake_exchange import
main; main(8900)"``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from engines_app.testing import free_port

FILTERS = [
    {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
    {"filterType": "NOTIONAL", "minNotional": "1", "maxNotional": "9000000"},
]
INTERVALS = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000}


@dataclass
class Order:
    order_id: int
    client_id: str
    symbol: str
    side: str  # BUY / SELL
    qty: float
    executed: float
    price: float
    status: str  # FILLED, PARTIALLY_FILLED, EXPIRED, NEW
    time: int

    def as_binance(self) -> dict[str, Any]:
        quote = self.executed * self.price
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_id,
            "transactTime": self.time,
            "time": self.time,
            "updateTime": self.time,
            "price": "0.00000000",
            "origQty": f"{self.qty:.8f}",
            "executedQty": f"{self.executed:.8f}",
            "cummulativeQuoteQty": f"{quote:.8f}",
            "status": self.status,
            "timeInForce": "GTC",
            "type": "MARKET",
            "side": self.side,
            "fills": [
                {
                    "price": f"{self.price:.8f}",
                    "qty": f"{self.executed:.8f}",
                    "commission": f"{quote * FEE:.8f}",
                    "commissionAsset": self.symbol[-4:],
                    "tradeId": self.order_id,
                }
            ]
            if self.executed
            else [],
        }


FEE = 0.001  # of the quote amount, paid in the quote asset


@dataclass
class FakeExchange:
    """Binance's spot API on ``http://127.0.0.1:port``; ``markets`` maps id to (base, quote)."""

    markets: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"BTCUSDT": ("BTC", "USDT"), "ETHUSDT": ("ETH", "USDT")}
    )
    port: int = 0
    price: dict[str, float] = field(default_factory=dict)
    balances: dict[str, float] = field(default_factory=lambda: {"USDT": 1_000_000.0})
    orders: list[Order] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    api_keys: list[str] = field(default_factory=list)  # X-MBX-APIKEY of private calls
    # Failures for the next orders, oldest first: "429", "reject", "partial", "hang", "500".
    fail_next: list[str] = field(default_factory=list)
    # Failures for the next public market data calls (klines, trades): "429", "500".
    fail_market_data: list[str] = field(default_factory=list)
    streams: bool = True  # False: the websocket refuses (the REST fallback is used)
    connections: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        for symbol in self.markets:
            self.price.setdefault(symbol, 100.0)
        self._ids = itertools.count(1)
        self._trade_ids = itertools.count(1)
        self._subscribers: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self._sockets: set[web.WebSocketResponse] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.hung = threading.Event()  # set when an order was booked and left unanswered
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Life -------------------------------------------------------------------------------

    def __enter__(self) -> FakeExchange:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/ws/{stream:.*}", self._websocket)
        app.router.add_route("*", "/api/v3/{name:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        self._release.set()
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # Steering (from the test's thread) --------------------------------------------------

    def trade(self, price: float, symbol: str = "BTCUSDT", qty: float = 0.01) -> None:
        """A trade at ``price``: the price moves there and every subscriber hears of it."""
        self._call(self._trade(symbol, price, qty))

    def drop_streams(self) -> None:
        """Close every websocket, as an exchange's server does now and then."""
        self._call(self._drop())

    def release_hung(self) -> None:
        """Let an order left unanswered (``"hang"``) be answered (to a client gone by now)."""
        self._loop.call_soon_threadsafe(self._release.set)

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def orders_for(self, client_id: str) -> list[Order]:
        return [o for o in self.orders if o.client_id == client_id]

    def position(self, asset: str = "BTC") -> float:
        return self.balances.get(asset, 0.0)

    # Websocket ---------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.streams:
            raise web.HTTPServiceUnavailable(text="streams are off")
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.connections += 1
        self._sockets.add(socket)
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                body = json.loads(message.data)
                if body.get("method") == "SUBSCRIBE":
                    for stream in body.get("params", []):
                        self._subscribers[stream].add(socket)
                await socket.send_json({"result": None, "id": body.get("id")})
        finally:
            self._sockets.discard(socket)
            for sockets in self._subscribers.values():
                sockets.discard(socket)
        return socket

    async def _trade(self, symbol: str, price: float, qty: float) -> None:
        self.price[symbol] = price
        now = int(time.time() * 1000)
        trade = {
            "e": "trade",
            "E": now,
            "s": symbol,
            "t": next(self._trade_ids),
            "p": f"{price:.8f}",
            "q": f"{qty:.8f}",
            "T": now,
            "m": False,
            "M": True,
        }
        lower = symbol.lower()
        for socket in list(self._subscribers.get(f"{lower}@trade", ())):
            await socket.send_json(trade)
        for interval, span in INTERVALS.items():
            sockets = list(self._subscribers.get(f"{lower}@kline_{interval}", ()))
            if not sockets:
                continue
            start = now - now % span
            kline = {
                "e": "kline",
                "E": now,
                "s": symbol,
                "k": {
                    "t": start,
                    "T": start + span - 1,
                    "s": symbol,
                    "i": interval,
                    "f": 1,
                    "L": 1,
                    "o": f"{price:.8f}",
                    "c": f"{price:.8f}",
                    "h": f"{price:.8f}",
                    "l": f"{price:.8f}",
                    "v": f"{qty:.8f}",
                    "n": 1,
                    "x": False,
                    "q": f"{qty * price:.8f}",
                    "V": "0",
                    "Q": "0",
                    "B": "0",
                },
            }
            for socket in sockets:
                await socket.send_json(kline)

    async def _drop(self) -> None:
        for socket in list(self._sockets):
            await socket.close()
        self._subscribers.clear()

    # REST --------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append((request.method, name))
        params = dict(request.query)
        if request.method in ("POST", "DELETE") and request.can_read_body:
            params.update(await request.post())
        if "signature" in params:
            self.api_keys.append(request.headers.get("X-MBX-APIKEY", ""))
        handler = getattr(self, f"_{request.method.lower()}_{name.replace('/', '_')}", None)
        if handler is None:
            return _error(404, -1000, f"unknown endpoint {request.method} {name}")
        return await handler(params)

    async def _get_ping(self, params) -> web.Response:
        return web.json_response({})

    async def _get_time(self, params) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def _get_exchangeInfo(self, params) -> web.Response:
        symbols = [
            {
                "symbol": symbol,
                "status": "TRADING",
                "baseAsset": base,
                "baseAssetPrecision": 8,
                "quoteAsset": quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "MARKET"],
                "icebergAllowed": True,
                "ocoAllowed": True,
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": FILTERS,
                "permissions": ["SPOT"],
                "permissionSets": [["SPOT"]],
            }
            for symbol, (base, quote) in self.markets.items()
        ]
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": symbols,
            }
        )

    def _market_data_failure(self) -> web.Response | None:
        if not self.fail_market_data:
            return None
        failure = self.fail_market_data.pop(0)
        if failure == "429":
            return _error(429, -1003, "Too many requests; IP banned for 1 second.")
        return _error(500, -1001, "Internal error; unable to process your request.")

    async def _get_klines(self, params) -> web.Response:
        if failure := self._market_data_failure():
            return failure
        symbol, interval = params["symbol"], params.get("interval", "1m")
        span, now = INTERVALS.get(interval, 60_000), int(time.time() * 1000)
        price, limit = self.price[symbol], min(int(params.get("limit", 2)), 1000)
        start = now - now % span
        rows = []
        for i in range(limit - 1, -1, -1):
            t, p = start - i * span, f"{price:.8f}"
            rows.append([t, p, p, p, p, "1.0", t + span - 1, p, 1, "0", "0", "0"])
        return web.json_response(rows)

    async def _get_trades(self, params) -> web.Response:
        if failure := self._market_data_failure():
            return failure
        symbol, now = params["symbol"], int(time.time() * 1000)
        trade = {
            "id": next(self._trade_ids),
            "price": f"{self.price[symbol]:.8f}",
            "qty": "0.01000000",
            "quoteQty": f"{self.price[symbol] * 0.01:.8f}",
            "time": now,
            "isBuyerMaker": False,
            "isBestMatch": True,
        }
        return web.json_response([trade])

    async def _get_aggTrades(self, params) -> web.Response:
        if failure := self._market_data_failure():
            return failure
        symbol, now, trade_id = params["symbol"], _ms(), next(self._trade_ids)
        price = f"{self.price[symbol]:.8f}"
        trade = {"a": trade_id, "p": price, "q": "0.01000000", "f": trade_id, "l": trade_id}
        return web.json_response([trade | {"T": now, "m": False, "M": True}])

    async def _get_account(self, params) -> web.Response:
        balances = [
            {"asset": asset, "free": f"{amount:.8f}", "locked": "0.00000000"}
            for asset, amount in self.balances.items()
        ]
        return web.json_response(
            {"canTrade": True, "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"]}
        )

    async def _get_order(self, params) -> web.Response:
        client_id = params.get("origClientOrderId")
        for order in self.orders:
            if order.client_id == client_id or str(order.order_id) == params.get("orderId"):
                return web.json_response(order.as_binance())
        return _error(400, -2013, "Order does not exist.")

    async def _get_openOrders(self, params) -> web.Response:
        live = [o.as_binance() for o in self.orders if o.status in ("NEW", "PARTIALLY_FILLED")]
        return web.json_response(live)

    async def _delete_order(self, params) -> web.Response:
        client_id = params.get("origClientOrderId")
        for order in self.orders:
            if order.client_id == client_id or str(order.order_id) == params.get("orderId"):
                if order.status not in ("NEW", "PARTIALLY_FILLED"):
                    return _error(400, -2011, "Unknown order sent.")
                order.status = "CANCELED"
                return web.json_response(order.as_binance())
        return _error(400, -2011, "Unknown order sent.")

    async def _post_order(self, params) -> web.Response:
        failure = self.fail_next.pop(0) if self.fail_next else ""
        if failure == "429":
            return _error(429, -1003, "Too many requests; IP banned for 1 second.")
        if failure == "500":
            return _error(500, -1001, "Internal error; unable to process your request.")
        symbol, side = params["symbol"], params["side"]
        client_id = params.get("newClientOrderId") or f"x-{next(self._ids)}"
        if self.orders_for(client_id):
            return _error(400, -2010, "Duplicate order sent.")
        if symbol not in self.markets:
            return _error(400, -1121, "Invalid symbol.")
        if failure == "reject":
            return _error(400, -2010, "Account has insufficient balance for requested action.")
        qty = float(params["quantity"])
        base, quote = self.markets[symbol]
        price = self.price[symbol]
        executed = qty / 2 if failure == "partial" else qty
        if side == "SELL" and executed > self.balances.get(base, 0.0) + 1e-12:
            return _error(400, -2010, "Account has insufficient balance for requested action.")
        status = "EXPIRED" if failure == "partial" else "FILLED"
        order = Order(next(self._ids), client_id, symbol, side, qty, executed, price, status, _ms())
        self.orders.append(order)
        sign = 1 if side == "BUY" else -1
        notional = executed * price
        self.balances[base] = self.balances.get(base, 0.0) + sign * executed
        self.balances[quote] = self.balances.get(quote, 0.0) - sign * notional - notional * FEE
        if failure == "hang":  # booked here, but the answer never reaches the client
            self.hung.set()
            await self._release.wait()
        return web.json_response(order.as_binance())


def _ms() -> int:
    return int(time.time() * 1000)


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "msg": message}, status=status)


def main(port: int = 8900) -> None:  # pragma: no cover - the manual tour
    with FakeExchange(port=port) as exchange:
        print(f"Fake exchange on {exchange.url} (Ctrl-C stops it)", flush=True)
        price = 100.0
        try:
            while True:
                price *= 1 + random.uniform(-0.002, 0.002)
                exchange.trade(round(price, 2))
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8900)
