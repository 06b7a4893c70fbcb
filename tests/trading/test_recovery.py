"""A runner killed with -9 while trading: after a restart every engine goes on with the
position, PnL and trade count its Trade rows say — no fill lost, none doubled."""

from __future__ import annotations

import signal

import pytest

from engines_app.runtime.broker import replay, utc_day
from tests.helpers import engine_row, eventually_sync, query

SYMBOLS = ("BTCUSDT", "ETHUSDT")
ADD = (
    "from engines_app import services\n"
    "for s in {symbols!r}:\n"
    "    services.engine_add(symbol=s, cycle_interval=0.02, config={config!r})\n"
)


def trades(project, symbol: str) -> list[tuple]:
    return query(
        project,
        "SELECT seq, fill_id, side, qty, price, fee, time, realized_pnl, position_after, "
        "realized_total, fees_total FROM engines_app_trade WHERE symbol = ? ORDER BY seq",
        symbol,
    )


def counts(project) -> dict[str, int]:
    rows = query(project, "SELECT symbol, COUNT(*) FROM engines_app_trade GROUP BY symbol")
    return dict.fromkeys(SYMBOLS, 0) | dict(rows)


def test_kill_9_while_trading_then_restart_loses_and_doubles_no_fill(project):
    config = {"params": {"fast": 1, "slow": 2}, "feed_options": {"volatility": 0.01}}
    project.manage("shell", "-c", ADD.format(symbols=SYMBOLS, config=config))
    runner = project.start("manage.py", "runengines", log_name="runner1")
    eventually_sync(lambda: min(counts(project).values()) >= 30, timeout=30, message="no trading")
    runner.send_signal(signal.SIGKILL)
    runner.wait(10)

    before = {}
    for symbol in SYMBOLS:
        rows = trades(project, symbol)
        position, trade_count, _, _ = engine_row(project, symbol)
        # The engine row and its Trade rows were committed together.
        assert trade_count == len(rows) == rows[-1][0]
        assert (position or 0.0) == pytest.approx(rows[-1][8])
        before[symbol] = rows

    again = project.start("manage.py", "runengines", log_name="runner2")
    eventually_sync(
        lambda: all(counts(project)[s] >= len(before[s]) + 30 for s in SYMBOLS),
        timeout=30,
        message="no trading after the restart",
    )
    again.send_signal(signal.SIGTERM)
    assert again.wait(20) == 0

    for symbol in SYMBOLS:
        rows = trades(project, symbol)
        assert rows[: len(before[symbol])] == before[symbol]  # nothing rewritten
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1))  # no gap, no double
        assert len({r[1] for r in rows}) == len(rows)
        position = realized = fees = 0.0
        for seq, _, side, qty, _, fee, _, realized_pnl, position_after, r_total, f_total in rows:
            # Each fill continues from the book the previous one left, across the kill.
            position += qty if side == "buy" else -qty
            realized += realized_pnl or 0.0
            fees += fee
            assert position_after == pytest.approx(position, abs=1e-9), seq
            assert (r_total, f_total) == (pytest.approx(realized), pytest.approx(fees)), seq
        book = replay([(r[2], r[3], r[4], r[5], 0.0) for r in rows], today=utc_day(0.0))
        final_position, trade_count, total_pnl, status = engine_row(project, symbol)
        assert status == "stopped"
        assert (final_position or 0.0) == pytest.approx(book.qty, abs=1e-9)
        assert trade_count == book.trade_count == len(rows)
        # Total PnL is realized - fees + the open position marked at the last price.
        if book.qty:
            implied_mark = book.avg_price + (total_pnl - book.realized + book.fees) / book.qty
            assert 0.5 * book.avg_price < implied_mark < 2 * book.avg_price
        else:
            assert total_pnl == pytest.approx(book.realized - book.fees)
