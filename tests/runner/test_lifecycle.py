"""The runner's own tasks: one that fails is logged with its traceback and ends the runner,
its engines stopped and their last state written; ``runengines`` then exits non-zero."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from django.core.management import CommandError, call_command

from engines_app.models import Engine, EngineCommand
from engines_app.runner import RunnerFailed
from engines_app.runner.lifecycle import Runner
from engines_app.runtime import HealthMonitor
from engines_app.services import engines as services
from tests.helpers import db, eventually, fast_settings, running

pytestmark = pytest.mark.django_db(transaction=True)


def make_runner(tmp_path) -> Runner:
    return Runner(settings=fast_settings(tmp_path / "logs"))


async def statuses() -> set[str]:
    return await db(lambda: set(Engine.objects.values_list("status", flat=True)))


async def ended(runner: Runner) -> None:
    """Run ``runner`` to its end: it must fail, not be asked to exit."""
    with pytest.raises(RunnerFailed):
        await asyncio.wait_for(runner.run(), 10)


async def test_a_failing_health_monitor_ends_the_runner_with_its_traceback(tmp_path, caplog):
    runner = make_runner(tmp_path)
    checks = {"n": 0}

    def broken_check() -> list[str]:
        checks["n"] += 1
        if checks["n"] == 3:
            raise RuntimeError("health check broke")
        return []

    runner.health.check = broken_check
    with caplog.at_level(logging.ERROR, logger="levipanel.runner"):
        await ended(runner)
    assert "Traceback" in caplog.text and "RuntimeError: health check broke" in caplog.text
    assert await statuses() == {"stopped"}  # engines stopped, the final state written


async def test_a_failing_background_job_is_logged_and_ends_the_runner(tmp_path, caplog):
    runner = make_runner(tmp_path)
    real_stop = runner.manager.stop

    async def stop(symbol: str, **kwargs) -> None:
        if kwargs.get("reason") == "stopped by operator":
            raise RuntimeError(f"could not stop {symbol}")
        await real_stop(symbol, **kwargs)

    runner.manager.stop = stop
    task = asyncio.create_task(runner.run())
    await eventually(lambda: runner.ready.is_set())
    # A desired state changed without a command: the reconciler stops it in the background.
    await db(lambda: Engine.objects.filter(symbol="ETHUSDT").update(desired_state="stopped"))
    with caplog.at_level(logging.ERROR, logger="levipanel.runner"):
        with pytest.raises(RunnerFailed, match="could not stop ETHUSDT"):
            await asyncio.wait_for(task, 10)
    assert "Traceback" in caplog.text and "RuntimeError: could not stop ETHUSDT" in caplog.text
    assert await statuses() == {"stopped"}


async def test_a_failing_command_is_acknowledged_failed_and_the_runner_carries_on(tmp_path):
    async with running(make_runner(tmp_path)) as runner:
        await eventually(lambda: runner.manager.is_alive("BTCUSDT"))

        def broken_new_day(symbol: str, now: float) -> str:
            raise RuntimeError("no new day today")

        runner.manager.new_day = broken_new_day
        command = await db(services.engine_daily_reset)
        assert command == 3
        rows = EngineCommand.objects.filter(action="reset_day")
        await eventually(lambda: db(lambda: not rows.filter(acked_at=None).exists()))
        outcomes = await db(lambda: set(rows.values_list("outcome", "message")))
        assert outcomes == {("failed", "RuntimeError: no new day today")}
        assert runner.manager.is_alive("BTCUSDT")  # a command never takes the runner down


async def test_a_failing_command_worker_ends_the_runner(tmp_path, caplog):
    runner = make_runner(tmp_path)

    def broken_ack(ack) -> None:
        raise RuntimeError("acknowledgements broke")

    runner.reconciler.ack = broken_ack
    task = asyncio.create_task(runner.run())
    await eventually(lambda: runner.ready.is_set())
    await db(services.engine_stop, symbol="SOLUSDT")
    with caplog.at_level(logging.ERROR, logger="levipanel.runner"):
        with pytest.raises(RunnerFailed, match="acknowledgements broke"):
            await asyncio.wait_for(task, 10)
    assert "Traceback" in caplog.text


def test_runengines_exits_non_zero_when_a_runner_task_fails(settings, tmp_path, monkeypatch):
    settings.LEVIPANEL = {**settings.LEVIPANEL, "LOG_DIR": tmp_path / "logs"}

    async def broken_run(self) -> None:
        raise RuntimeError("health monitor broke")

    monkeypatch.setattr(HealthMonitor, "run", broken_run)
    with pytest.raises(CommandError, match="health monitor broke"):
        call_command("runengines", "--symbols", "BTCUSDT")
    assert Engine.objects.get(symbol="BTCUSDT").status == "stopped"


class Output(io.StringIO):
    """The runner's output, with what it held at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())
        super().flush()


async def test_the_lines_said_in_one_loop_turn_are_flushed_once_at_the_next(tmp_path):
    out = Output()
    runner = Runner(settings=fast_settings(tmp_path / "logs"), out=out)
    runner.say("Engine BTCUSDT started")
    runner.say("Engine ETHUSDT started")
    assert out.getvalue() == "Engine BTCUSDT started\nEngine ETHUSDT started\n"
    assert out.flushed == []  # written, not flushed yet: the loop has not turned
    await asyncio.sleep(0)
    assert out.flushed == ["Engine BTCUSDT started\nEngine ETHUSDT started\n"]
    runner.say("Started 2/2 engines")
    await asyncio.sleep(0)
    assert out.flushed[1:] == [out.getvalue()] and out.getvalue().endswith("2/2 engines\n")


def test_a_line_said_with_no_loop_running_is_flushed_at_once(tmp_path):
    out = Output()
    runner = Runner(settings=fast_settings(tmp_path / "logs"), out=out)
    runner.say("Second signal: stopping every engine now")
    runner.say("LeviPanel engine runner stopped")
    assert out.flushed == [
        "Second signal: stopping every engine now\n",
        "Second signal: stopping every engine now\nLeviPanel engine runner stopped\n",
    ]
