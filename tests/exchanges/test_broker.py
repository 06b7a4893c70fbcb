"""The testnet/live broker against the fake exchange: orders, partial fills, rejects, 429s,
a restart between an order's send and its answer, and the position reconciled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from engines_app.runtime import EngineManager, brokers
from engines_app.runtime.brokers import Account, Credentials
from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.events import BookChanged
from engines_app.runtime.manager import Status
from engines_app.runtime.recovery import RecoveryPolicy, RecoverySettings
from engines_app.runtime.risk import ORDER_LIMIT
from tests.helpers import eventually
from tests.helpers.fake_exchange import FakeExchange

API_KEY, SECRET = "key-3f9a1c", "secret-7d2e8b"


def config(broker: str = "testnet", **options) -> EngineConfig:
    broker_options = {"account": "main"} | options.pop("broker_options", {})
    return EngineConfig(
        "BTCUSDT",
        cycle_interval=0.02,
        feed="ccxt",
        feed_options={"exchange": "binance", "market": "BTC/USDT"},
        params={"fast": 1, "slow": 2},  # long after a rise, flat after a fall
        order_qty=0.5,
        broker=broker,
        broker_options=broker_options,
        feed_stale_after=100,
        feed_dead_after=1000,
        **options,
    )


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch) -> Account:
    found = Account("main", "binance", True, Credentials(API_KEY, SECRET))

    async def source(name: str) -> Account | None:
        return found if name == found.name else None

    monkeypatch.setattr(brokers, "accounts", source)
    return found


@pytest.fixture
async def manager():
    manager = EngineManager(policy=RecoveryPolicy(RecoverySettings(backoff_base=0.05)))
    yield manager
    await manager.stop_all()


def engine(manager: EngineManager):
    return manager.engine_of("BTCUSDT")


async def running(manager: EngineManager, exchange: FakeExchange) -> None:
    await eventually(lambda: manager.status_of("BTCUSDT") == Status.RUNNING)
    await eventually(lambda: exchange.subscribers >= 1)


async def tick(exchange: FakeExchange, *prices: float) -> None:
    for price in prices:
        await asyncio.to_thread(exchange.trade, price)
        await asyncio.sleep(0.06)  # a few cycles: one tick each


async def test_orders_fill_on_the_exchange_and_are_booked(exchange, account, manager, caplog):
    caplog.set_level(logging.DEBUG)
    manager.start(config())
    await running(manager, exchange)
    await tick(exchange, 100.0, 101.0)
    await eventually(lambda: engine(manager).state.book.qty == 0.5)
    [order] = exchange.orders
    assert (order.side, order.qty, order.client_id) == ("BUY", 0.5, "lvBTCUSDTx1")
    assert exchange.position() == 0.5
    fills = [e.fill for e in manager.events if isinstance(e, BookChanged) and e.fill]
    assert [f.fill_id for f in fills] == ["lvBTCUSDTx1"]  # the fill's id: its client order id
    assert fills[0].price == 101.0 and fills[0].fee == pytest.approx(0.5 * 101 * 0.001)
    await tick(exchange, 99.0)
    await eventually(lambda: engine(manager).state.book.qty == 0)
    assert [o.client_id for o in exchange.orders] == ["lvBTCUSDTx1", "lvBTCUSDTx2"]
    assert exchange.position() == 0
    # The keys went to the exchange, and nowhere into the log.
    assert API_KEY in exchange.api_keys
    assert all(
        API_KEY not in r.getMessage() and SECRET not in r.getMessage() for r in caplog.records
    )
    assert SECRET not in repr(account) and API_KEY not in repr(account.credentials)


async def test_a_partial_fill_books_what_filled_and_the_rest_is_ordered_again(
    exchange, account, manager
):
    exchange.fail_next[:] = ["partial"]
    manager.start(config())
    await running(manager, exchange)
    await tick(exchange, 100.0, 101.0)
    await eventually(lambda: engine(manager).state.book.qty == 0.25)
    await tick(exchange, 102.0)  # the next tick trades toward the target again
    await eventually(lambda: len(exchange.orders) == 2)
    first, second = exchange.orders
    assert (first.executed, first.status) == (0.25, "EXPIRED")
    assert (second.qty, second.client_id) == (0.25, "lvBTCUSDTx2")
    await eventually(lambda: engine(manager).state.book.qty == 0.5)
    assert engine(manager).state.trade_count == 2 and exchange.position() == 0.5


async def test_a_rejected_order_is_an_error_and_nothing_is_booked(exchange, account, manager):
    exchange.fail_next[:] = ["reject"]
    manager.start(config())
    await running(manager, exchange)
    await tick(exchange, 100.0, 101.0)
    await eventually(lambda: engine(manager).state.error_count >= 1)
    state = engine(manager).state
    assert "OrderRejected" in state.last_error and "insufficient balance" in state.last_error
    # The next tick sends it again (the rejection took nothing): one order, filled.
    await tick(exchange, 102.0)
    await eventually(lambda: engine(manager).state.book.qty == 0.5)
    assert len(exchange.orders) == 1 and exchange.position() == 0.5
    assert manager.status_of("BTCUSDT") == Status.RUNNING


async def test_429s_are_retried_under_the_same_client_order_id(exchange, account, manager):
    exchange.fail_next[:] = ["429", "429"]
    manager.start(config())
    await running(manager, exchange)
    await tick(exchange, 100.0, 101.0)
    await eventually(lambda: engine(manager).state.book.qty == 0.5)
    posts = [r for r in exchange.requests if r == ("POST", "order")]
    assert len(posts) == 3 and len(exchange.orders) == 1
    assert exchange.orders[0].client_id == "lvBTCUSDTx1"
    assert ("GET", "order") in exchange.requests  # asked for by its id before each retry


async def test_a_restart_between_send_and_answer_does_not_double_the_order(
    exchange, account, manager
):
    exchange.fail_next[:] = ["hang"]  # booked at the exchange; the answer never comes
    manager.start(config())
    await running(manager, exchange)
    await tick(exchange, 100.0, 101.0)
    await asyncio.to_thread(exchange.hung.wait, 10)
    state = engine(manager).state
    assert state.book.qty == 0  # sent, not answered: nothing booked yet
    await manager.abandon("BTCUSDT")  # the engine dies mid-order (a kill, a lost lease)
    manager.start(config(), state=state)
    await running(manager, exchange)
    await eventually(lambda: engine(manager).state.book.qty == 0.5)
    assert len(exchange.orders) == 1 and exchange.position() == 0.5
    assert engine(manager).state.trade_count == 1
    exchange.release_hung()


async def test_a_position_that_differs_at_start_stops_the_engine(exchange, account, manager):
    exchange.balances["BTC"] = 0.3  # held on the exchange; the book says flat
    manager.start(config())
    await eventually(lambda: manager.status_of("BTCUSDT") == Status.FAILED)
    last_error = engine(manager).state.last_error
    assert "PositionMismatch" in last_error and "the exchange holds 0.3 BTC" in last_error
    assert not exchange.orders


async def test_base_offset_excludes_a_holding_that_is_not_the_engines(exchange, account, manager):
    exchange.balances["BTC"] = 0.3
    manager.start(config(broker_options={"base_offset": 0.3}))
    await running(manager, exchange)
    await tick(exchange, 100.0, 101.0)
    await eventually(lambda: engine(manager).state.book.qty == 0.5)


async def test_a_difference_found_later_stops_the_engine(exchange, account, manager):
    manager.start(config(broker_options={"reconcile_every": 1}))
    await running(manager, exchange)
    exchange.balances["BTC"] = 2.0  # someone traded on the account
    await eventually(lambda: manager.status_of("BTCUSDT") == Status.FAILED, timeout=5)
    assert (
        "the exchange holds 2 BTC (base_offset 0 taken off), the book 0"
        in engine(manager).state.last_error
    )


async def test_a_risk_limit_breach_halts_before_the_order(exchange, account, manager):
    manager.start(config(max_order_notional=10.0))
    await running(manager, exchange)
    await tick(exchange, 100.0, 101.0)
    await eventually(lambda: manager.status_of("BTCUSDT") == Status.HALTED)
    halt = [e for e in manager.events if getattr(e, "status", "") == "halted"][-1]
    assert halt.code == ORDER_LIMIT and "max_order_notional" in halt.reason
    assert not exchange.orders


async def test_live_is_refused_unless_the_installation_allows_it(
    exchange, account, manager, monkeypatch
):
    monkeypatch.delenv(brokers.LIVE_ENV, raising=False)
    manager.start(config("live"))
    await eventually(lambda: manager.status_of("BTCUSDT") == Status.FAILED)
    assert brokers.LIVE_OFF in engine(manager).state.last_error
    assert not exchange.requests  # nothing reached the exchange


async def test_an_account_of_the_other_kind_is_refused(exchange, account, manager, monkeypatch):
    monkeypatch.setenv(brokers.LIVE_ENV, "1")
    manager.start(config("live"))  # the account is a testnet one
    await eventually(lambda: manager.status_of("BTCUSDT") == Status.FAILED)
    assert "account 'main' is a testnet account: broker live" in engine(manager).state.last_error
    assert not exchange.orders


def test_broker_options_are_checked():
    problems = EngineConfig("BTCUSDT", broker="live").problems()
    assert 'a live broker needs the "ccxt" feed: its exchange and market' in problems
    assert "broker_options.account is required for a live broker" in problems
    assert EngineConfig("BTCUSDT", broker="real").problems() == [
        "broker must be one of: paper, testnet, live"
    ]
    bad = config(broker_options={"reconcile_every": 0, "apikey": "x"}).problems()
    assert "unknown broker option: apikey" in bad
    assert "broker_options.reconcile_every must be seconds, 1 to 86400" in bad
