"""Loading a user's strategy: only from the listed modules, its parameters checked, its
decisions (targets, orders, exit levels) carried out by the engine."""

from __future__ import annotations

import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from engines_app.checks import strategy_module_problems
from engines_app.runtime.candles import Candle
from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.strategies import load_strategy, strategy_problems
from tests.helpers import ticking_engine, trades

from .user_strategies import Rises

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def candles(*bars: tuple[float, float, float, float]) -> list[Candle]:
    """One-minute candles from (open, high, low, close)."""
    return [Candle(T0 + 60 * i, o, h, low, c, 1.0) for i, (o, h, low, c) in enumerate(bars)]


def run(engine, bars) -> None:
    for candle in bars:
        engine.on_candle(candle, candle.open_time + 60)


def test_a_user_strategy_from_a_listed_module_trades_with_the_exits_it_asked_for(allowed):
    name = f"{allowed}:Rises"
    assert load_strategy(name) is Rises
    engine, recorder, _ = ticking_engine(
        strategy=name, params={"rises": 2, "stop": 0.1, "take": 0.2}
    )
    assert engine.builder is not None and engine.builder.seconds == 60  # its own 1m
    run(
        engine,
        candles(
            (100, 100, 100, 100),
            (100, 101, 100, 101),  # one rise
            (101, 102, 101, 102),  # two: long at 102, stop 91.8, take 122.4
            (102, 103, 95, 96),  # inside the band: held
            (96, 97, 90, 91),  # the low crossed the stop: out at 91.8
        ),
    )
    assert trades(recorder) == [("buy", 1, 102), ("sell", 1, 91.8)]
    assert engine.state.stop_loss is None and engine.state.book.qty == 0

    engine, recorder, _ = ticking_engine(strategy=name, params={"rises": 1, "take": 0.05})
    bars = candles((100, 100, 100, 100), (100, 100, 100, 100), (100, 101, 100, 101))
    bars.append(Candle(T0 + 180, 110, 112, 109, 111, 1.0))  # opens past the take profit
    run(engine, bars)
    # Out at the open, past the level; then the strategy, flat and seeing a rise, buys again.
    assert trades(recorder) == [("buy", 1, 101), ("sell", 1, 110), ("buy", 1, 111)]


def test_orders_add_and_reduce_the_position(allowed):
    engine, recorder, _ = ticking_engine(strategy=f"{allowed}:Stepper", params={}, order_qty=2)
    run(engine, candles((100, 101, 100, 101), (101, 102, 101, 102), (102, 102, 100, 100)))
    assert trades(recorder) == [("buy", 2, 101), ("buy", 2, 102), ("sell", 2, 100)]
    assert engine.state.book.qty == 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("tests.strategies.unlisted:Anything", "tests.strategies.unlisted is not in LEVIPANEL_"),
        ("os:system", "strategy module os is not in LEVIPANEL_STRATEGY_MODULES"),
        ("../../etc/passwd:X", "strategy must be one of: breakout, sma_cross, or"),
        ("/tmp/evil.py:Strategy", "strategy must be one of"),
        ("tests.strategies.user_strategies", "strategy must be one of"),
        ("tests.strategies.user_strategies:Missing", "is not a strategy class"),
        ("tests.strategies.user_strategies:NotAStrategy", "is not a strategy class"),
        ("tests.strategies.user_strategies:time", "is not a strategy class"),
        (["sma_cross"], "strategy must be one of"),
    ],
)
def test_modules_not_listed_and_bad_names_are_refused_without_importing(allowed, name, reason):
    assert [p for p in strategy_problems(name, {}) if reason in p], strategy_problems(name, {})
    assert "tests.strategies.unlisted" not in sys.modules
    problems = EngineConfig("BTCUSDT", strategy=name).problems()
    assert any(reason in p for p in problems)


def test_nothing_is_loadable_when_the_setting_lists_nothing():
    assert strategy_problems("tests.strategies.user_strategies:Rises", {}) == [
        "strategy module tests.strategies.user_strategies is not in "
        "LEVIPANEL_STRATEGY_MODULES (allowed: none)"
    ]
    assert strategy_problems("sma_cross", {}) == []  # the built-ins need no listing


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"window": 1}, "params.window must be a whole number from 2 to 500"),
        ({"window": 2.5}, "params.window must be a whole number from 2 to 500"),
        ({"window": True}, "params.window must be a whole number from 2 to 500"),
        ({"band": "wide"}, "params.band must be a number from 0.1 to 5"),
        ({"band": float("nan")}, "params.band must be a number from 0.1 to 5"),
        ({"mode": "hl3"}, "params.mode must be one of: close, hl2"),
        ({"short": "yes"}, "params.short must be true or false"),
        ({"colour": 1}, "unknown Picky parameter: colour"),
        ({"low": 5, "high": 5}, "params.low must be below params.high"),
    ],
)
def test_declared_parameters_are_checked_with_the_reason(allowed, params, reason):
    assert strategy_problems(f"{allowed}:Picky", params) == [reason]
    assert strategy_problems(f"{allowed}:Picky", {"band": 2, "low": 0}) == []


def test_the_builtins_keep_their_names_and_messages():
    assert strategy_problems("sma_cross", {"fast": 20, "slow": 5}) == [
        "params.fast must be smaller than params.slow"
    ]
    assert strategy_problems("sma_cross", {"x": 1}) == ["unknown sma_cross parameter: x"]
    assert strategy_problems("breakout", {"lookback": 0}) == [
        "params.lookback must be a whole number from 1 to 1000"
    ]
    assert "candle_interval must be null or one of: 1m" in " ".join(
        EngineConfig("BTCUSDT", candle_interval="7m").problems()
    )


def test_a_bad_strategy_module_setting_is_a_system_check_error(settings):
    settings.LEVIPANEL_STRATEGY_MODULES = ["tests.strategies.user_strategies", "no.such.module"]
    assert strategy_module_problems() == [
        "LEVIPANEL_STRATEGY_MODULES: no.such.module cannot be imported: "
        "ModuleNotFoundError: No module named 'no'"
    ]
    with pytest.raises(SystemCheckError, match="levipanel.E006"):
        call_command("check")
    settings.LEVIPANEL_STRATEGY_MODULES = ["tests.strategies.user_strategies"]
    assert strategy_module_problems() == []
