"""The reconciler: a config change is carried out as its ``configure`` command, and every
restart, whatever asked for it, goes through the manager's one restart path."""

from __future__ import annotations

import pytest

from engines_app.models import Engine, EngineCommand
from engines_app.runner.lifecycle import Runner
from engines_app.services import engines as services
from tests.helpers import db, eventually, fast_settings, running

pytestmark = pytest.mark.django_db(transaction=True)


def make_runner(tmp_path) -> Runner:
    return Runner(settings=fast_settings(tmp_path / "logs", symbols=[]))


async def outcome(command: EngineCommand) -> str:
    """The command's message once it is acknowledged."""
    rows = EngineCommand.objects.filter(pk=command.pk).exclude(acked_at=None)
    messages = await eventually(lambda: db(lambda: list(rows.values_list("message", flat=True))))
    return messages[0]


def spy_restarts(runner: Runner) -> list[tuple[str, bool]]:
    """Record every call of the manager's restart: (symbol, reset_budget)."""
    calls = []
    real_restart = runner.manager.restart

    async def restart(symbol, config=None, *, reason="restarting", reset_budget=True):
        calls.append((symbol, reset_budget))
        return await real_restart(symbol, config, reason=reason, reset_budget=reset_budget)

    runner.manager.restart = restart
    return calls


async def test_configure_restarts_a_running_engine_with_the_new_config(tmp_path):
    await db(services.engine_add, symbol="BTCUSDT")
    runner = make_runner(tmp_path)
    restarts = spy_restarts(runner)
    async with running(runner):
        await eventually(lambda: runner.manager.is_alive("BTCUSDT"))
        before = runner.manager.engine_of("BTCUSDT")
        command = await db(services.engine_configure, symbol="BTCUSDT", config={"seed": 5})
        assert await outcome(command) == "configured"
        engine = runner.manager.engine_of("BTCUSDT")
        assert engine is not before and engine.config.seed == 5
        assert restarts == [("BTCUSDT", False)]  # a new config keeps the failure budget


async def test_configure_of_a_stopped_engine_is_stored_for_its_next_start(tmp_path):
    await db(services.engine_add, symbol="BTCUSDT", desired_state="stopped")
    runner = make_runner(tmp_path)
    restarts = spy_restarts(runner)
    async with running(runner):
        command = await db(services.engine_configure, symbol="BTCUSDT", cycle_interval=0.02)
        assert await outcome(command) == "stored: engine not running"
        assert not runner.manager.is_alive("BTCUSDT")
        start = await db(services.engine_start, symbol="BTCUSDT")
        # Started by the row's change or by the command, whichever came first.
        assert await outcome(start) in ("started", "running")
        assert runner.manager.engine_of("BTCUSDT").config.cycle_interval == 0.02
        assert restarts and set(restarts) == {("BTCUSDT", False)}  # the one way, too


async def test_configure_given_while_no_runner_runs_starts_it_once_with_the_config(tmp_path):
    await db(services.engine_add, symbol="BTCUSDT")
    command = await db(services.engine_configure, symbol="BTCUSDT", config={"seed": 9})
    runner = make_runner(tmp_path)
    restarts = spy_restarts(runner)
    async with running(runner):
        message = await outcome(command)
        assert message == "configured: started with it after the command was given"
        assert runner.manager.engine_of("BTCUSDT").config.seed == 9
        assert restarts == []  # the runner's start-up started it with the new config


async def test_every_restart_goes_through_the_managers_restart(tmp_path):
    await db(services.engine_add, symbol="BTCUSDT")
    runner = make_runner(tmp_path)
    restarts = spy_restarts(runner)
    async with running(runner):
        await eventually(lambda: runner.manager.is_alive("BTCUSDT"))
        assert await outcome(await db(services.engine_restart, symbol="BTCUSDT")) == "restarted"
        assert await outcome(await db(services.engine_stop, symbol="BTCUSDT")) == "stopped"
        await db(lambda: Engine.objects.filter(symbol="BTCUSDT").update(desired_state="running"))
        await eventually(lambda: runner.manager.is_alive("BTCUSDT"))  # a row change, no command
    assert restarts == [("BTCUSDT", True), ("BTCUSDT", False)]
