"""The backtest: a hand-checked small case, the same trades as a live engine fed the same
candles, and the command that stores it."""

from __future__ import annotations

import asyncio

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from engines_app.models import Backtest
from engines_app.runtime.backtest import run_backtest
from engines_app.runtime.candles import Candle
from engines_app.runtime.engine import EngineConfig, TradingEngine
from engines_app.runtime.feeds.replay import load_candles
from tests.helpers import EngineRecorder, eventually

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def closes(*prices: float) -> list[Candle]:
    return [Candle(T0 + 60 * i, p, p + 1, p - 1, p, 1.0) for i, p in enumerate(prices)]


def test_a_small_backtest_equals_the_hand_checked_numbers():
    # sma_cross 1/2 on closes 100 102 101 104 106 105, fee 0.1 %, no slippage:
    #   102 > avg(100, 102)=101: buy 102 (fee 0.102); 101 < 101.5: sell 101 (fee 0.101),
    #   realized -1; 104 > 102.5: buy 104 (fee 0.104); 106 > 105: hold; 105 < 105.5: sell
    #   105 (fee 0.105), realized +1. Fees 0.412, total -0.412.
    config = EngineConfig("BTCUSDT", params={"fast": 1, "slow": 2}, fee_rate=0.001, slippage=0.0)
    result = run_backtest(config, closes(100, 102, 101, 104, 106, 105))
    assert result.interval == "1m"
    assert [(at - T0, side, qty, price) for at, side, qty, price, *_ in result.trades()] == [
        (120, "buy", 1, 102),
        (180, "sell", 1, 101),
        (240, "buy", 1, 104),
        (360, "sell", 1, 105),
    ]
    m = result.metrics
    assert m["total_pnl"] == pytest.approx(-0.412)
    assert m["fees"] == pytest.approx(0.412)
    assert (m["trades"], m["round_trips"], m["win_rate"]) == (4, 2, 0.5)
    # Equity at the closes: 0, -0.102, -1.203, -1.307, 0.693, -0.412: the deepest fall
    # from a peak (0 at the start) is 1.307; 3 of 6 closes held a position.
    assert [p for _, p in result.equity] == pytest.approx(
        [0, -0.102, -1.203, -1.307, 0.693, -0.412]
    )
    assert m["max_drawdown"] == pytest.approx(1.307)
    assert m["exposure"] == 0.5
    assert m["capital"] == 100 and m["return_pct"] == pytest.approx(-0.412)
    assert m["daily_pnl"] == [[T0, pytest.approx(-0.412)]]
    assert m["sharpe"] is None  # one day: no spread to divide by
    # Buy and hold: 1 at 100 (fee 0.1), marked at 105.
    assert m["buy_and_hold"]["total_pnl"] == pytest.approx(4.9)


def test_a_daily_loss_halt_skips_the_rest_of_the_day():
    config = EngineConfig(
        "BTCUSDT", params={"fast": 1, "slow": 2}, fee_rate=0.0, slippage=0.0, daily_loss_limit=3
    )
    bars = closes(100, 102, 98, 103, 105)  # long at 102, marked 98: -4, halted
    bars.append(Candle(T0 + 86_400, 101, 102, 100, 101, 1.0))  # the next day: runs again
    bars.append(Candle(T0 + 86_460, 104, 105, 103, 104, 1.0))
    result = run_backtest(config, bars)
    assert result.metrics["halts"] == 1
    # Held over the halt (on_stop "hold"); 103 and 105 are never seen. The next day the
    # strategy sees 101 after 102 (sell) and 104 after 101 (buy).
    assert [(at - T0, side, price) for at, side, _, price, *_ in result.trades()] == [
        (120, "buy", 102),
        (86_460, "sell", 101),
        (86_520, "buy", 104),
    ]


async def live_fills(config: EngineConfig) -> list[tuple]:
    """The fills of a live engine (its own loop, its feed of candles) over a candle file."""
    recorder = EngineRecorder()
    engine = TradingEngine(config, listener=recorder)
    task = asyncio.create_task(engine.run())
    await eventually(lambda: engine.feed is not None, timeout=10)
    total = len(engine.feed.prices)
    await eventually(lambda: engine.feed.index >= total and engine.cycles > total, timeout=60)
    engine.request_stop()
    await asyncio.wait_for(task, 10)
    return [(f.side, f.qty, round(f.price, 9), round(f.fee, 9)) for f in recorder.fills]


@pytest.mark.parametrize(
    "options",
    [
        {"params": {"fast": 5, "slow": 20}, "candle_interval": "1m"},
        {
            "params": {"lookback": 6, "allow_short": True},
            "strategy": "breakout",
            "candle_interval": "5m",
        },
        {
            "strategy": "tests.strategies.user_strategies:Rises",
            "params": {"rises": 2, "stop": 0.001, "take": 0.002},
        },
    ],
)
async def test_a_live_engine_and_a_backtest_over_the_same_candles_make_the_same_trades(
    allowed, options
):
    name = "sample_btcusdt_1m.csv"
    config = EngineConfig(
        "BTCUSDT",
        0.001,
        feed="csv",
        feed_options={"file": name, "candles": True, "loop": False},
        feed_dead_after=1e6,
        **options,
    )
    live = await live_fills(config)
    result = run_backtest(config, load_candles(name))
    tested = [(f.side, f.qty, round(f.price, 9), round(f.fee, 9)) for f in result.fills]
    assert len(live) >= 4
    assert live == tested


@pytest.mark.django_db
def test_the_command_prints_the_report_and_stores_the_backtest(capsys):
    call_command(
        "backtest",
        "BTCUSDT",
        "--strategy",
        "sma_cross",
        "--params",
        '{"fast": 5, "slow": 20}',
        "--csv",
        "sample_btcusdt_1m.csv",
        "--from",
        "2025-01-01T01:00",
    )
    out = capsys.readouterr().out
    row = Backtest.objects.get()
    assert row.candles == 180 and row.interval == "1m" and row.source == "sample_btcusdt_1m.csv"
    assert row.params == {"fast": 5, "slow": 20}
    assert len(row.trades) == row.metrics["trades"] > 0
    assert "buy and hold" in out and f"Stored as backtest {row.pk}." in out
    assert f"{row.metrics['total_pnl']:,.2f}" in out


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--params", '{"fast": 0}'], "params.fast must be a whole number from 1 to 1000"),
        (["--params", "[1]"], "--params must be a JSON object"),
        (["--strategy", "os:system"], "strategy module os is not in LEVIPANEL_STRATEGY_MODULES"),
        (["--csv", "nothing.csv"], "candle file 'nothing.csv' not found"),
        (["--from", "2030-01-01"], "fewer than 2 candles"),
        (["--interval", "7m"], "candle_interval must be null or one of"),
    ],
)
def test_the_command_refuses_bad_input_with_the_reason_and_stores_nothing(args, reason):
    base = {"--csv": "sample_btcusdt_1m.csv"}
    argv = ["BTCUSDT"]
    for key, value in base.items():
        if key not in args:
            argv += [key, value]
    with pytest.raises(CommandError, match=reason.replace("[", r"\[")):
        call_command("backtest", *argv, *args)
    assert not Backtest.objects.exists()


def test_the_benchmarks_bare_loop_makes_the_backtests_trades():
    from benchmarks.backtest import bare_loop, config
    from benchmarks.synthetic import synthetic_candles

    candles = list(synthetic_candles("BTCUSDT", count=20_000))
    assert bare_loop(candles) == run_backtest(config(), candles).metrics["trades"] > 100
