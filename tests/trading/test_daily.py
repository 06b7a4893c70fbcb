"""The next UTC day in the runner, with a fake clock: halted engines run again, daily PnL
starts from zero, and the scheduled reset's commands are carried out."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from engines_app.jobs import tasks
from engines_app.models import Engine, EngineCommand
from engines_app.runner.lifecycle import Runner
from engines_app.services import engines as services
from engines_app.signals import engines_written
from tests.helpers import ShiftedClock, db, eventually, fast_settings, running

pytestmark = pytest.mark.django_db(transaction=True)

LOSING = {
    "feed": "prices",
    "feed_options": {"prices": [100, 101, 95, 96]},
    "daily_loss_limit": 5,
    "fee_rate": 0.0,
    "slippage": 0.0,
    "params": {"fast": 1, "slow": 2},
    "on_stop": "close",
}


@sync_to_async
def row(symbol: str) -> tuple:
    return Engine.objects.values_list(
        "status", "status_reason", "daily_pnl", "total_pnl", "trade_count"
    ).get(symbol=symbol)


async def test_the_next_utc_day_resumes_halted_engines_and_the_reset_is_carried_out(tmp_path):
    await db(services.engine_add, symbol="BTCUSDT", config=LOSING)
    clock = ShiftedClock()
    runner = Runner(settings=fast_settings(tmp_path / "logs", symbols=[]), clock=clock)
    async with running(runner):
        await eventually(lambda: _status("BTCUSDT", "halted"))
        status, reason, daily, total, trades = await row("BTCUSDT")
        assert reason == "daily loss limit reached: lost 6.00 today (limit 5)"
        await eventually(lambda: _trades("BTCUSDT", 2))  # closed at market after the halt
        assert (await row("BTCUSDT"))[2:4] == (-6.0, -6.0)

        clock.offset = 86_400.0  # the next UTC day
        assert await db(tasks.daily_reset) == 1
        await eventually(lambda: _trades("BTCUSDT", 4))  # it runs, and trades, again
        acks = await db(
            lambda: list(
                EngineCommand.objects.filter(action="reset_day").values_list("outcome", "message")
            )
        )
        assert acks[0][0] == "done" and acks[0][1].startswith("new day")
        # The same prices lose 6 again: halted again, counted from the new day only.
        await eventually(lambda: _status("BTCUSDT", "halted"))
        await eventually(lambda: _trades("BTCUSDT", 4))
        status, reason, daily, total, trades = await row("BTCUSDT")
        assert (daily, total) == (-6.0, -12.0)


async def _status(symbol: str, status: str) -> bool:
    return (await row(symbol))[0] == status


async def _trades(symbol: str, count: int) -> bool:
    return (await row(symbol))[4] == count


async def test_a_halt_holds_across_a_runner_restart_until_the_next_day(tmp_path):
    await db(services.engine_add, symbol="BTCUSDT", config=LOSING | {"on_stop": "hold"})
    settings = fast_settings(tmp_path / "logs", symbols=[])
    async with running(Runner(settings=settings)):
        await eventually(lambda: _status("BTCUSDT", "halted"))
    trades = (await row("BTCUSDT"))[4]

    written: list[str] = []

    def record(sender, statuses=(), **kwargs):
        written.extend(status.status for status in statuses)

    engines_written.connect(record)
    try:
        clock = ShiftedClock()
        runner = Runner(settings=settings, clock=clock)
        async with running(runner):  # a deploy or a crash of the runner, the same UTC day
            polls = runner.reconciler.polls
            await eventually(lambda: runner.reconciler.polls >= polls + 5)  # it looked, 5 times
            assert not {"starting", "running"} & set(written), (
                written
            )  # never ran, not even briefly
            assert (await row("BTCUSDT"))[0] == "halted"
            assert (await row("BTCUSDT"))[4] == trades  # no trading past the limit today
            assert not runner.manager.is_alive("BTCUSDT")
            held = runner.manager.engine_of("BTCUSDT")

            clock.offset = 86_400.0  # the next UTC day: it runs again
            await eventually(lambda: runner.manager.engine_of("BTCUSDT") is not held)
    finally:
        engines_written.disconnect(record)


async def test_an_operators_restart_after_a_halt_holds_when_the_runner_restarts_that_day(tmp_path):
    await db(services.engine_add, symbol="BTCUSDT", config=LOSING)
    clock = ShiftedClock()
    settings = fast_settings(tmp_path / "logs", symbols=[])
    async with running(Runner(settings=settings, clock=clock)):
        await eventually(lambda: _status("BTCUSDT", "halted"))
        await eventually(lambda: _trades("BTCUSDT", 2))  # closed at market: -6 today
        # The operator looks, sets a calmer feed and restarts it: today's 6 no longer count.
        calm = LOSING | {"feed_options": {"prices": [95], "loop": True}}
        await db(services.engine_configure, symbol="BTCUSDT", config=calm)
        await db(services.engine_restart, symbol="BTCUSDT", source="test")
        await eventually(lambda: _status("BTCUSDT", "running"))

    for _ in range(2):  # a deploy, then another, the same UTC day
        engine = await _three_cycles(Runner(settings=settings, clock=clock))
        assert engine.state.daily_pnl == -6.0  # the loss stays today's; the limit ignores it
        status, reason, daily, total, trades = await row("BTCUSDT")
        assert (status, daily, total, trades) == ("stopped", -6.0, -6.0, 2)  # never halted


async def _three_cycles(runner: Runner):
    """Run ``runner`` until BTCUSDT has done three cycles (three prices), running; its engine."""

    def cycles() -> int:
        engine = runner.manager.engine_of("BTCUSDT")
        return engine.cycles if engine and runner.manager.is_alive("BTCUSDT") else 0

    async with running(runner):
        await eventually(lambda: cycles() >= 3, message="it did not keep running")
        return runner.manager.engine_of("BTCUSDT")
