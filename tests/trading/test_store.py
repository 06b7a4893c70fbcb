"""The database side of trading: fills and position in one transaction, the book rebuilt
from Trade rows, the daily reset schedule and task, trade and profit selectors, the admin."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.admin.sites import AdminSite
from django.db import transaction
from django_q.models import Schedule

from engines_app.admin.trading import TradeAdmin
from engines_app.jobs import tasks
from engines_app.jobs.schedules import DAILY_RESET_NAME
from engines_app.models import Engine, EngineCommand, EngineError, Trade
from engines_app.runner import store
from engines_app.runtime.broker import BUY, SELL, replay, utc_day
from engines_app.runtime.events import BookChanged, ErrorRaised
from engines_app.selectors import engines as selectors
from engines_app.selectors import trading as selectors_trading
from engines_app.services import engines as services
from tests.helpers import DAY, T0, book_rows, hold

pytestmark = pytest.mark.django_db


def write(rows) -> None:
    store.write(statuses=[], errors=[], restarts=[], heartbeats=[], books=rows)


STEPS = [
    (BUY, 2, 100.0, T0 + 10),
    (SELL, 1, 110.0, T0 + 20),
    (SELL, 3, 104.0, T0 + DAY + 5),
    (BUY, 1, 101.0, T0 + DAY + 6),
]


def test_a_fill_and_the_position_it_leads_to_are_written_together_and_never_doubled():
    engine = Engine.objects.create(symbol="BTCUSDT")
    book, rows = book_rows(engine, STEPS)
    write(rows[:2])
    write(rows[:2])  # a retried write: nothing doubles
    engine.refresh_from_db()
    assert Trade.objects.count() == 2 and (engine.trade_count, engine.position) == (2, 1.0)
    write(rows)
    engine.refresh_from_db()
    assert Trade.objects.count() == 4
    assert (engine.trade_count, engine.position) == (4, -1.0)
    assert engine.total_pnl == pytest.approx(book.total_pnl())


def test_a_failed_transaction_leaves_neither_the_trade_nor_the_position():
    engine = Engine.objects.create(symbol="BTCUSDT")
    _, rows = book_rows(engine, STEPS[:1])
    with pytest.raises(RuntimeError), transaction.atomic():
        write(rows)
        raise RuntimeError("the commit never happened")
    engine.refresh_from_db()
    assert Trade.objects.count() == 0 and engine.trade_count == 0 and engine.position is None


def test_the_book_rebuilt_from_trade_rows_equals_a_replay_of_every_fill():
    engine = Engine.objects.create(symbol="BTCUSDT")
    other = Engine.objects.create(symbol="ETHUSDT")
    live, rows = book_rows(engine, STEPS)
    write(rows)
    now = T0 + DAY + 100
    rebuilt = store.rebuild_books([engine.id, other.id], now)
    assert other.id not in rebuilt
    trades = Trade.objects.filter(engine=engine).order_by("seq")
    replayed = replay(
        [(t.side, t.qty, t.price, t.fee, t.time.timestamp()) for t in trades], today=utc_day(now)
    )
    for name in (
        "qty",
        "avg_price",
        "realized",
        "fees",
        "trade_count",
        "wins",
        "closes",
        "mark",
        "day",
        "day_start",
    ):
        assert getattr(rebuilt[engine.id], name) == pytest.approx(getattr(replayed, name)), name
        assert getattr(rebuilt[engine.id], name) == pytest.approx(getattr(live, name)), name
    status, state = store.load_states(["BTCUSDT", "ETHUSDT"], now)["BTCUSDT"]
    assert (state.position, state.trade_count) == (-1.0, 4)
    assert state.daily_pnl == pytest.approx(live.daily_pnl())


def test_the_days_start_and_an_operators_lift_are_stored_with_the_book_and_loaded_back():
    engine = Engine.objects.create(symbol="BTCUSDT")
    book, rows = book_rows(engine, STEPS[:1])  # long 2 at 100 on T0's day, fee 0.2
    book.mark = 95.0
    book.loss_base = book.daily_pnl()  # -10.2: an operator restarted it after a halt
    lifted = BookChanged(
        "BTCUSDT",
        T0 + 30,
        None,
        book.qty,
        book.daily_pnl(),
        book.total_pnl(),
        book.trade_count,
        book.day,
        book.day_start,
        book.loss_base,
    )
    write([*rows, store.BookRow(engine.id, lifted)])
    engine.refresh_from_db()
    assert (engine.pnl_day, engine.day_start_pnl, engine.loss_base) == (
        datetime(2026, 1, 1).date(),
        0.0,
        pytest.approx(-10.2),
    )

    _, state = store.load_states(["BTCUSDT"], T0 + 60)["BTCUSDT"]  # the same day
    assert (state.book.day_start, state.book.loss_base) == (0.0, pytest.approx(-10.2))

    _, state = store.load_states(["BTCUSDT"], T0 + DAY + 60)["BTCUSDT"]  # the next day
    # It starts from the last total stored (marked at 95), the lift is forgotten.
    assert state.book.day_start == pytest.approx(-10.2) and state.book.loss_base == 0.0
    assert state.book.day == utc_day(T0 + DAY)


def test_migrate_creates_the_daily_reset_schedule_at_midnight_utc():
    schedule = Schedule.objects.get(func=tasks.DAILY_RESET)
    assert schedule.name == DAILY_RESET_NAME
    assert schedule.schedule_type == Schedule.DAILY and schedule.repeats == -1
    assert schedule.next_run > datetime.now(UTC)
    assert (schedule.next_run.hour, schedule.next_run.minute, schedule.next_run.second) == (0, 0, 0)


def test_the_daily_reset_task_asks_the_runner_to_start_a_new_day_on_every_engine():
    for symbol in ("BTCUSDT", "ETHUSDT"):
        Engine.objects.create(symbol=symbol)
    assert tasks.daily_reset() == 2
    commands = EngineCommand.objects.filter(action=EngineCommand.Action.RESET_DAY)
    assert sorted(commands.values_list("symbol", "source", "outcome")) == [
        ("BTCUSDT", "schedule", "pending"),
        ("ETHUSDT", "schedule", "pending"),
    ]


def test_trades_are_listed_newest_first_in_pages():
    engine = Engine.objects.create(symbol="BTCUSDT")
    _, rows = book_rows(engine, STEPS)
    write(rows)
    page = selectors_trading.trades_list(symbol="BTCUSDT", page=1, page_size=3)
    assert (page["total"], [t["seq"] for t in page["trades"]]) == (4, [4, 3, 2])
    last = selectors_trading.trades_list(symbol="BTCUSDT", page=2, page_size=3)
    assert [t["seq"] for t in last["trades"]] == [1]
    assert last["trades"][0] | {"id": "", "time": 0} == {
        "id": "",
        "seq": 1,
        "symbol": "BTCUSDT",
        "side": "buy",
        "qty": 2.0,
        "price": 100.0,
        "fee": pytest.approx(0.2),
        "time": 0,
        "realized_pnl": None,
        "position_after": 2.0,
    }
    with pytest.raises(selectors_trading.EngineNotFound):
        selectors_trading.trades_list(symbol="NOPEUSDT")
    for bad in ({"page": 0}, {"page_size": 0}, {"page_size": 501}, {"page": "2"}):
        with pytest.raises(ValueError):
            selectors_trading.trades_list(symbol="BTCUSDT", **bad)


def test_profit_per_engine_and_in_total():
    engine = Engine.objects.create(symbol="BTCUSDT")
    Engine.objects.create(symbol="ETHUSDT")
    steps = [
        (BUY, 2, 100.0, T0),
        (SELL, 1, 110.0, T0 + 1),
        (SELL, 1, 90.0, T0 + 2),
        (BUY, 1, 100.0, T0 + 3),
    ]
    book, rows = book_rows(engine, steps)
    write(rows)
    Engine.objects.filter(id=engine.id).update(total_pnl=book.total_pnl() + 5)  # marked +5
    profit = selectors_trading.profit_summary()
    btc, eth = profit["engines"]
    assert btc == {
        "symbol": "BTCUSDT",
        "realized": 0.0,
        "unrealized": pytest.approx(5.0),
        "fees": pytest.approx(0.5),
        "total_pnl": pytest.approx(4.5),
        "trade_count": 4,
        "closed_count": 2,
        "win_rate": 0.5,
    }
    assert eth["trade_count"] == 0 and eth["win_rate"] is None
    assert profit["total"]["total_pnl"] == pytest.approx(4.5)
    assert profit["total"]["win_rate"] == 0.5


def test_halted_and_degraded_are_counted_and_shown_with_their_reason():
    Engine.objects.create(
        symbol="BTCUSDT",
        status="halted",
        status_reason="daily loss limit reached: lost 5.00 today (limit 5)",
    )
    Engine.objects.create(
        symbol="ETHUSDT", status="degraded", status_reason="no market data for 6.0s"
    )
    hold(Engine.objects.all())  # a live runner runs them
    fleet = selectors.fleet_status()
    assert (fleet["halted"], fleet["degraded"], fleet["running"]) == (1, 1, 0)
    assert fleet["engines"][0]["status_reason"].startswith("daily loss limit reached")


def test_trades_are_read_only_in_the_admin(rf, admin_user):
    request = rf.get("/admin/engines_app/trade/")
    request.user = admin_user
    trade_admin = TradeAdmin(Trade, AdminSite())
    assert not trade_admin.has_add_permission(request)
    assert not trade_admin.has_change_permission(request)
    assert not trade_admin.has_delete_permission(request)


def test_bad_trading_config_is_refused_with_a_clear_reason():
    with pytest.raises(Exception) as caught:
        services.engine_add(
            symbol="BTCUSDT",
            config={"feed": "ftp", "on_stop": "sell", "daily_loss_limit": -1, "params": {"x": 1}},
        )
    message = str(caught.value)
    assert "feed must be one of: sim, csv, prices, ccxt, ws" in message
    assert 'on_stop must be "hold" or "close"' in message
    assert "daily_loss_limit must be a number greater than 0" in message
    assert "unknown sma_cross parameter: x" in message
    assert not Engine.objects.exists()


def test_an_error_an_engine_survived_joins_the_row_of_its_kind_within_the_window():
    engine = Engine.objects.create(symbol="BTCUSDT")

    def survived(at: float, message: str, kind: str = "MalformedMessage", crashed=False):
        event = ErrorRaised("BTCUSDT", at, kind, message, "", False, crashed)
        return store.error_row(engine.pk, event)

    first = survived(T0, "bad 1")
    store.repeat(
        first, ErrorRaised("BTCUSDT", T0 + 1, "MalformedMessage", "bad 2", "", False, False)
    )
    store.write(statuses=[], errors=[first], restarts=[], heartbeats=[])
    store.write(statuses=[], errors=[survived(T0 + 60, "bad 3")], restarts=[], heartbeats=[])
    store.write(
        statuses=[],
        errors=[survived(T0 + 61, "other", kind="KeyError")],
        restarts=[],
        heartbeats=[],
    )
    crash = survived(T0 + 62, "boom", kind="InjectedCrash", crashed=True)
    store.write(
        statuses=[], errors=[crash, survived(T0 + 400, "bad 4")], restarts=[], heartbeats=[]
    )

    rows = list(
        EngineError.objects.order_by("at").values_list("type", "count", "message", "last_message")
    )
    assert rows == [
        ("MalformedMessage", 3, "bad 1", "bad 3"),  # repeats within 5 minutes: one row
        ("KeyError", 1, "other", "other"),
        ("InjectedCrash", 1, "boom", "boom"),  # a crash is a row of its own
        ("MalformedMessage", 1, "bad 4", "bad 4"),  # after the window: a new row
    ]
