"""The websocket feed against a local server speaking the exchange's stream format."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import serve

from engines_app.runtime import EngineManager
from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.events import ErrorRaised, StatusChanged
from engines_app.runtime.feeds.ws import MalformedMessage, parse_price
from engines_app.runtime.manager import Status
from engines_app.runtime.recovery import RecoveryPolicy, RecoverySettings
from tests.helpers import eventually


def status(manager: EngineManager) -> Status | None:
    return manager.status_of("BTCUSDT")


def live(manager: EngineManager):
    """BTCUSDT's engine: the one of its latest run."""
    return manager.engine_of("BTCUSDT")


def kline(close: float, symbol: str = "BTCUSDT") -> str:
    return json.dumps(
        {
            "e": "kline",
            "E": 1735689600123,
            "s": symbol,
            "k": {
                "t": 1735689600000,
                "T": 1735689659999,
                "s": symbol,
                "i": "1m",
                "o": "100.0",
                "c": str(close),
                "h": "101.0",
                "l": "99.0",
                "v": "12.5",
                "x": False,
            },
        }
    )


class Exchange:
    """A local stream server: each connection gets the messages put on ``outbox``;
    ``drop()`` closes the current connection as a flaky exchange would."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.connections = 0
        self.paths: list[str] = []

    async def handler(self, socket) -> None:
        self.connections += 1
        self.paths.append(socket.request.path)
        closed = asyncio.ensure_future(socket.wait_closed())
        try:
            while True:
                message = asyncio.ensure_future(self.outbox.get())
                await asyncio.wait({message, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    message.cancel()
                    return  # the client went away
                if message.result() is None:
                    await socket.close()
                    return
                await socket.send(message.result())
        finally:
            closed.cancel()

    def send(self, *messages: str) -> None:
        for message in messages:
            self.outbox.put_nowait(message)

    def drop(self) -> None:
        self.outbox.put_nowait(None)


@pytest.fixture
async def exchange():
    exchange = Exchange()
    async with serve(exchange.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        exchange.url = f"ws://127.0.0.1:{port}/ws/btcusdt@kline_1m"
        yield exchange


def ws_engine(exchange, **options) -> EngineManager:
    policy = RecoveryPolicy(RecoverySettings(backoff_base=0.05, backoff_cap=0.05, jitter=0))
    manager = EngineManager(policy=policy)
    options = {"feed_stale_after": 100, "feed_dead_after": 1000} | options
    config = EngineConfig(
        "BTCUSDT",
        0.01,
        feed="ws",
        feed_options={"url": exchange.url, "reconnect_base": 0.02, "reconnect_cap": 0.1},
        params={"fast": 1, "slow": 2},
        fee_rate=0.0,
        slippage=0.0,
        **options,
    )
    manager.start(config)
    return manager


async def tick(exchange, manager, price: float, message: str | None = None) -> None:
    """Send one price and wait until the engine has seen it (a cycle reads the newest)."""
    exchange.send(message or kline(price))
    await eventually(lambda: live(manager).state.book.mark == price, message=f"{price} not seen")


async def test_kline_messages_drive_the_strategy_and_fill_at_the_stream_price(exchange):
    manager = ws_engine(exchange)
    await tick(exchange, manager, 100.0)
    exchange.send(kline(102.0, symbol="ETHUSDT"))
    await tick(exchange, manager, 101.5)
    book = live(manager).state.book
    assert (book.trade_count, book.qty, book.avg_price) == (1, 1.0, 101.5)  # ETHUSDT ignored
    trade = json.dumps({"e": "trade", "s": "BTCUSDT", "t": 1, "p": "99.25", "q": "0.1"})
    await tick(exchange, manager, 99.25, trade)
    assert book.trade_count == 2
    assert book.realized == pytest.approx(-2.25)
    assert exchange.paths == ["/ws/btcusdt@kline_1m"]
    await manager.stop_all()


async def test_a_dropped_connection_reconnects_and_ticks_continue(exchange):
    manager = ws_engine(exchange)
    await tick(exchange, manager, 100.0)
    await tick(exchange, manager, 101.0)
    exchange.drop()
    await eventually(lambda: exchange.connections == 2, message="the feed did not reconnect")
    await tick(exchange, manager, 99.0)
    assert live(manager).state.trade_count == 2
    assert status(manager) == Status.RUNNING
    assert live(manager).feed.connections == 2
    await manager.stop_all()


async def test_malformed_messages_are_logged_as_errors_and_the_engine_keeps_running(
    exchange, caplog
):
    manager = ws_engine(exchange)
    bad = [
        "not json",
        "[1, 2]",
        json.dumps({"e": "kline", "s": "BTCUSDT", "k": {}}),
        json.dumps({"e": "kline", "s": "BTCUSDT", "k": {"c": "abc"}}),
        json.dumps({"e": "depthUpdate"}),
        json.dumps({"e": "trade", "p": "-1"}),
    ]
    exchange.send(*bad)
    await eventually(lambda: live(manager).feed and live(manager).feed.malformed == len(bad))
    errors = [e for e in manager.drain_events() if isinstance(e, ErrorRaised)]
    assert [e.type for e in errors] == ["MalformedMessage"] * len(bad)
    assert not any(e.crashed for e in errors)
    assert live(manager).state.error_count == len(bad)
    assert "Cycle error for BTCUSDT: MalformedMessage: not JSON" in caplog.text
    await tick(exchange, manager, 100.0)  # good messages still count
    await tick(exchange, manager, 101.0)
    assert live(manager).state.trade_count == 1
    assert status(manager) == Status.RUNNING and manager.is_alive("BTCUSDT")
    await manager.stop_all()


async def test_a_silent_feed_degrades_the_engine_and_a_longer_silence_is_a_hang(exchange):
    manager = ws_engine(exchange, feed_stale_after=5, feed_dead_after=30)
    exchange.send(kline(100.0))
    await eventually(lambda: live(manager).state.last_tick_at is not None)
    await eventually(lambda: status(manager) == Status.DEGRADED, message="not degraded")
    exchange.send(kline(100.5))
    await eventually(lambda: status(manager) == Status.RUNNING, message="not running again")
    hang = "silence not treated as a hang"
    await eventually(lambda: status(manager) == Status.BACKOFF, message=hang)
    statuses = [
        (e.status, e.reason) for e in manager.drain_events() if isinstance(e, StatusChanged)
    ]
    assert [s for s, _ in statuses] == [
        "starting",
        "running",
        "degraded",
        "running",
        "degraded",
        "crashed",
        "backoff",
    ]
    assert statuses[2][1].startswith("no market data for 0.")
    assert "FeedSilent: no market data for" in statuses[5][1]
    await manager.stop_all()


def test_parse_price_reads_combined_streams_and_skips_replies():
    wrapped = json.dumps(
        {"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "p": "64000.5"}}
    )
    assert parse_price(wrapped, "BTCUSDT") == 64000.5
    assert parse_price(json.dumps({"result": None, "id": 1}), "BTCUSDT") is None
    with pytest.raises(MalformedMessage, match="bad price"):
        parse_price(json.dumps({"e": "trade", "s": "BTCUSDT", "p": "nan"}), "BTCUSDT")
