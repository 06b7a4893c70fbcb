"""PnL arithmetic of the paper broker against cases worked by hand."""

from __future__ import annotations

import random

import pytest

from engines_app.runtime.broker import BUY, SELL, Book, execute, replay, utc_day
from tests.helpers import DAY, T0


def fill(
    book: Book, side: str, qty: float, price: float, *, at: float = T0, fee_rate=0.0, slippage=0.0
):
    return execute(
        book,
        symbol="BTCUSDT",
        side=side,
        qty=qty,
        price=price,
        at=at,
        fee_rate=fee_rate,
        slippage=slippage,
    )


def test_long_round_trip_with_a_partial_close_and_fees():
    book = Book()
    opened = fill(book, BUY, 2, 100.0, fee_rate=0.001)  # fee 0.2
    assert opened.realized_pnl is None
    assert (book.qty, book.avg_price, book.fees) == (2, 100.0, pytest.approx(0.2))

    part = fill(book, SELL, 1, 110.0, fee_rate=0.001)  # +10 realized, fee 0.11
    assert part.realized_pnl == pytest.approx(10.0)
    assert (book.qty, book.avg_price) == (1, 100.0)  # a partial close keeps the entry price
    assert book.unrealized() == pytest.approx(10.0)  # 1 left, marked at 110
    assert book.total_pnl() == pytest.approx(10.0 - 0.31 + 10.0)

    rest = fill(book, SELL, 1, 90.0, fee_rate=0.001)  # -10 realized, fee 0.09
    assert rest.realized_pnl == pytest.approx(-10.0)
    assert (book.qty, book.avg_price, book.unrealized()) == (0.0, 0.0, 0.0)
    assert book.realized == pytest.approx(0.0)
    assert book.total_pnl() == pytest.approx(-0.4)
    assert (book.trade_count, book.closes, book.wins) == (3, 2, 1)


def test_adding_averages_the_entry_price():
    book = Book()
    fill(book, BUY, 1, 100.0)
    fill(book, BUY, 3, 120.0)
    assert (book.qty, book.avg_price) == (4, pytest.approx(115.0))
    book.mark = 110.0
    assert book.unrealized() == pytest.approx(-20.0)


def test_short_gains_when_the_price_falls():
    book = Book()
    fill(book, SELL, 2, 100.0)
    assert (book.qty, book.avg_price) == (-2, 100.0)
    book.mark = 95.0
    assert book.unrealized() == pytest.approx(10.0)
    covered = fill(book, BUY, 2, 90.0)
    assert covered.realized_pnl == pytest.approx(20.0)
    assert book.qty == 0.0


def test_flip_realizes_the_old_side_and_opens_the_rest_at_the_fill_price():
    book = Book()
    fill(book, BUY, 1, 100.0)
    flip = fill(book, SELL, 3, 110.0)
    assert flip.realized_pnl == pytest.approx(10.0)
    assert (book.qty, book.avg_price) == (-2, 110.0)


def test_slippage_moves_the_price_against_the_order_and_the_fee_is_on_the_fill_price():
    book = Book()
    buy = fill(book, BUY, 2, 100.0, fee_rate=0.001, slippage=0.01)
    assert (buy.price, buy.fee) == (pytest.approx(101.0), pytest.approx(0.202))
    sell = fill(book, SELL, 2, 100.0, fee_rate=0.001, slippage=0.01)
    assert (sell.price, sell.fee) == (pytest.approx(99.0), pytest.approx(0.198))
    assert sell.realized_pnl == pytest.approx(-4.0)  # slippage costs 1 a unit each way
    assert book.total_pnl() == pytest.approx(-4.4)


def test_daily_pnl_counts_today_only_and_the_roll_is_idempotent():
    book = Book()
    fill(book, BUY, 1, 100.0, at=T0 + 10)
    fill(book, SELL, 1, 105.0, at=T0 + 20, fee_rate=0.01)  # +5, fee 1.05
    assert book.daily_pnl() == pytest.approx(3.95)
    assert book.roll_day(utc_day(T0 + DAY)) is True
    assert book.roll_day(utc_day(T0 + DAY + 5)) is False  # the scheduled reset after the roll
    assert book.daily_pnl() == 0.0
    assert book.total_pnl() == pytest.approx(3.95)
    fill(book, BUY, 1, 100.0, at=T0 + DAY + 30)
    book.mark = 98.0
    assert book.daily_pnl() == pytest.approx(-2.0)  # the open position counts today


def test_the_days_pnl_add_up_to_the_total_with_positions_held_over_midnight():
    rng = random.Random(3)
    book, days, price, held_over = Book(), {}, 100.0, 0
    for hour in range(7 * 24):  # a week of hourly prices, trading at a third of them
        at = T0 + hour * 3600 + 1
        price *= 1 + rng.uniform(-0.02, 0.02)
        held_over += book.roll_day(utc_day(at)) and book.qty != 0
        book.mark = price
        if rng.random() < 0.3:
            fill(
                book, rng.choice((BUY, SELL)), rng.choice((0.5, 1, 2)), price, at=at, fee_rate=0.001
            )
        days[utc_day(at)] = book.daily_pnl()  # the day's figure so far
    assert len(days) == 7 and held_over >= 3
    assert sum(days.values()) == pytest.approx(book.total_pnl(), abs=1e-9)


def test_replaying_the_fills_rebuilds_the_same_book():
    live = Book()
    steps = [
        (BUY, 2, 100.0, T0),
        (SELL, 3, 104.0, T0 + 5),
        (BUY, 1, 101.0, T0 + DAY),
        (BUY, 1, 99.0, T0 + DAY + 1),
    ]
    fills = [fill(live, side, qty, price, at=at, fee_rate=0.002) for side, qty, price, at in steps]
    rebuilt = replay(
        [(f.side, f.qty, f.price, f.fee, f.at) for f in fills], today=utc_day(T0 + DAY)
    )
    for name in Book.__slots__:
        assert getattr(rebuilt, name) == pytest.approx(getattr(live, name)), name
    assert [f.seq for f in fills] == [1, 2, 3, 4]
    assert len({f.fill_id for f in fills}) == 4
