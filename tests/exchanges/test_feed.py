"""The ccxt feed against the fake exchange: streamed trades and candles, the REST fallback,
a dropped stream, and the market checked at start."""

from __future__ import annotations

import asyncio

import pytest

from engines_app.runtime import EngineManager
from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.manager import Status
from engines_app.runtime.recovery import RecoveryPolicy, RecoverySettings
from tests.helpers import eventually
from tests.helpers.fake_exchange import FakeExchange


def config(**feed_options) -> EngineConfig:
    options = {"exchange": "binance", "market": "BTC/USDT"} | feed_options
    return EngineConfig(
        "BTCUSDT",
        cycle_interval=0.02,
        feed="ccxt",
        feed_options=options,
        params={"fast": 50, "slow": 100},  # never trades in these tests
        feed_stale_after=25,
        feed_dead_after=500,
    )


async def push(exchange: FakeExchange, price: float) -> None:
    await asyncio.to_thread(exchange.trade, price)


@pytest.fixture
async def manager():
    manager = EngineManager(policy=RecoveryPolicy(RecoverySettings(backoff_base=0.05)))
    yield manager
    await manager.stop_all()


@pytest.mark.parametrize("timeframe", [None, "1m"])
async def test_streams_trades_or_candles_into_the_engine(exchange, manager, timeframe):
    options = {"timeframe": timeframe} if timeframe else {}
    manager.start(config(**options))
    await eventually(lambda: exchange.subscribers >= 1)
    stream = f"btcusdt@kline_{timeframe}" if timeframe else "btcusdt@trade"
    assert stream in exchange._subscribers
    await push(exchange, 101.5)
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 101.5)
    await push(exchange, 99.25)
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 99.25)
    assert manager.status_of("BTCUSDT") == Status.RUNNING
    assert manager.engine_of("BTCUSDT").feed.streaming


async def test_polls_rest_where_there_is_no_stream(exchange, manager):
    manager.start(config(stream=False, poll_interval=0.05))
    exchange.price["BTCUSDT"] = 123.0
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 123.0)
    exchange.price["BTCUSDT"] = 124.0
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 124.0)
    assert exchange.connections == 0
    assert ("GET", "aggTrades") in exchange.requests


async def test_a_dropped_stream_reconnects_and_rest_fills_the_gap(exchange, manager):
    manager.start(config())
    await eventually(lambda: exchange.subscribers >= 1)
    await push(exchange, 101.0)
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 101.0)
    exchange.price["BTCUSDT"] = 102.0  # a trade while the stream is down
    await asyncio.to_thread(exchange.drop_streams)
    # The price moved while the stream was down: a REST poll brings it, then the stream
    # is subscribed again and carries on.
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 102.0)
    await eventually(lambda: exchange.subscribers >= 1 and exchange.connections >= 2)
    await push(exchange, 103.0)
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 103.0)
    assert manager.status_of("BTCUSDT") == Status.RUNNING


async def test_a_rate_limited_rest_poll_is_retried(exchange, manager):
    exchange.fail_market_data[:] = ["429", "500"]
    exchange.price["BTCUSDT"] = 111.0
    manager.start(config(stream=False, poll_interval=0.05))
    await eventually(lambda: manager.engine_of("BTCUSDT").state.book.mark == 111.0)
    assert not exchange.fail_market_data
    assert manager.status_of("BTCUSDT") == Status.RUNNING


async def test_an_unknown_market_fails_the_engine_with_the_reason(exchange, manager):
    manager.start(config(market="DOGE/USDT"))
    await eventually(lambda: manager.status_of("BTCUSDT") == Status.FAILED)
    engine = manager.engine_of("BTCUSDT")
    assert "market DOGE/USDT is not listed on binance (2 markets)" in engine.state.last_error
    assert "ConfigError" in engine.state.last_error


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"exchange": "nosuchexchange"}, "exchange 'nosuchexchange' is not one ccxt supports"),
        ({"market": "BTCUSDT"}, 'market must be a ccxt market symbol, like "BTC/USDT"'),
        ({"timeframe": "soon"}, "timeframe must be a candle interval"),
        ({"stream": "yes"}, "stream must be true or false"),
        ({"poll_interval": 0}, "poll_interval must be a number of seconds"),
        ({"url": "wss://x"}, "unknown ccxt feed option: url"),
    ],
)
def test_bad_feed_options_are_config_errors(options, problem):
    found = config(**options).problems()
    assert any(problem in p for p in found), found
