"""Replays are reproducible: the sample CSV and the seeded simulated feed."""

from __future__ import annotations

from engines_app.runtime.engine import EngineConfig
from engines_app.runtime.feeds import make_feed
from engines_app.runtime.feeds.replay import load_csv
from tests.helpers import ticking_engine


async def replay_sample(**options) -> list[tuple]:
    engine, recorder, clock = ticking_engine(
        feed="csv", feed_options={"loop": False}, fee_rate=0.001, slippage=0.0005, **options
    )
    for _ in range(len(load_csv("sample_btcusdt_1m.csv"))):
        await engine.cycle()
        clock.now += 60
    state = engine.state
    fills = [(f.seq, f.side, f.qty, f.price, f.fee, f.at, f.realized_pnl) for f in recorder.fills]
    return [*fills, ("result", state.position, state.total_pnl, state.trade_count)]


async def test_the_sample_csv_replay_gives_the_same_trades_every_run():
    first = await replay_sample(params={"fast": 5, "slow": 20})
    second = await replay_sample(params={"fast": 5, "slow": 20})
    assert first == second
    assert len(first) > 5  # the sample has trends the crossover trades


async def test_the_breakout_strategy_replays_the_same_way():
    first = await replay_sample(strategy="breakout", params={"lookback": 10, "allow_short": True})
    assert first == await replay_sample(
        strategy="breakout", params={"lookback": 10, "allow_short": True}
    )
    assert any(fill[1] == "sell" and fill[2] == 2 for fill in first[:-1])  # it flips


def test_the_simulated_feed_is_seeded_and_each_symbol_walks_its_own_way():
    def walk(symbol: str, seed=None, n: int = 50) -> list[float]:
        feed = make_feed("sim", {}, symbol=symbol, seed=seed, mark=None)
        return [feed.poll() for _ in range(n)]

    assert walk("BTCUSDT") == walk("BTCUSDT")
    assert walk("BTCUSDT") != walk("ETHUSDT")
    assert walk("BTCUSDT", seed=7) == walk("ETHUSDT", seed=7)
    prices = walk("BTCUSDT", n=1000)
    assert all(0.5 * 100 < p < 2 * 100 for p in prices)
    moves = [abs(b / a - 1) for a, b in zip(prices, prices[1:], strict=False)]
    assert max(moves) <= 0.002 + 1e-12 and min(moves) < 0.0005


def test_default_config_trades_on_the_simulated_feed():
    config = EngineConfig("BTCUSDT")
    assert config.problems() == []
    assert (config.feed, config.strategy, config.on_stop) == ("sim", "sma_cross", "hold")
