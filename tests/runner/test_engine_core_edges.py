"""Engine core at its edges: a symbol given twice, engines slower than the heartbeat
timeout, many engines whose backoff reached the cap."""

import random

import pytest
from asgiref.sync import sync_to_async

from engines_app.models import Engine
from engines_app.runner.lifecycle import Runner
from engines_app.runtime import (
    EngineConfig,
    EngineManager,
    HealthMonitor,
    RecoveryPolicy,
    RecoverySettings,
    Status,
)
from tests.conftest import Project
from tests.helpers import FakeClock, fast_settings, running, until


@sync_to_async
def engine_rows():
    return sorted(Engine.objects.values_list("symbol", "status"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("by", ["settings", "--symbols"])
async def test_a_symbol_listed_twice_is_one_engine(tmp_path, by):
    twice = ["ETHUSDT", "BTCUSDT", "ETHUSDT"]
    if by == "settings":
        runner = Runner(settings=fast_settings(tmp_path, symbols=twice))
    else:
        runner = Runner(symbols=twice, settings=fast_settings(tmp_path))
    async with running(runner):
        await until(lambda: _all_running(2))
    assert [symbol for symbol, _ in await engine_rows()] == ["BTCUSDT", "ETHUSDT"]


async def _all_running(n):
    rows = await engine_rows()
    return len(rows) == n and {status for _, status in rows} == {"running"}


async def test_an_engine_slower_than_the_heartbeat_timeout_is_not_taken_for_hung():
    clock = FakeClock()
    manager = EngineManager(policy=RecoveryPolicy(clock=clock), clock=clock)
    monitor = HealthMonitor(manager, heartbeat_timeout=60, clock=clock)
    manager.start(EngineConfig("BTCUSDT", cycle_interval=120))  # one cycle every 2 minutes
    await until(lambda: manager.slots["BTCUSDT"].engine.cycles == 1)
    clock.now += 170  # its next heartbeat is due at +120: 50 s late, within the timeout
    assert monitor.check() == []
    assert manager.slots["BTCUSDT"].status == Status.RUNNING
    clock.now += 11  # 61 s late: hung
    assert monitor.check() == ["BTCUSDT"]
    assert manager.slots["BTCUSDT"].status == Status.BACKOFF
    assert "no heartbeat for 181.0s" in manager.slots["BTCUSDT"].engine.state.last_error
    await manager.stop_all()


def test_engines_whose_backoff_reached_the_cap_do_not_restart_in_lockstep():
    settings = RecoverySettings(backoff_cap=900, jitter=0.1, max_restarts_per_hour=100)
    policy = RecoveryPolicy(settings, clock=FakeClock(), rng=random.Random(3))
    symbols = [f"S{i:02d}USDT" for i in range(40)]
    for symbol in symbols:
        policy.load(symbol, [], attempt=6)  # 60 s * 2**6 is far past the cap
    delays = [policy.on_failure(symbol).delay for symbol in symbols]
    assert all(810 <= delay <= 900 for delay in delays)
    assert len({round(delay, 3) for delay in delays}) == len(delays)  # none at the same moment


async def test_a_stable_run_starts_the_backoff_again_from_the_base():
    clock = FakeClock()
    settings = RecoverySettings(backoff_base=0.01, backoff_cap=0.05, jitter=0.0, stable_after=600)
    manager = EngineManager(policy=RecoveryPolicy(settings, clock=clock), clock=clock)
    monitor = HealthMonitor(manager, heartbeat_timeout=60, clock=clock)
    manager.start(EngineConfig("BTCUSDT", cycle_interval=0.01, hang_after_cycles=1))
    attempts = []
    for ran_for in (100, 100, 700, 100):  # hangs after running this long (fake clock)
        await until(lambda: _hanging(manager.slots["BTCUSDT"]))
        clock.now += ran_for
        assert monitor.check() == ["BTCUSDT"]
        attempts.append(manager.slots["BTCUSDT"].status == Status.BACKOFF
                        and manager.policy.attempt("BTCUSDT"))  # fmt: skip
    assert attempts == [1, 2, 1, 2]  # the 10-minute run forgave the streak
    await manager.stop_all()


def _hanging(slot) -> bool:
    """A freshly (re)started engine that has gone quiet after its first cycle."""
    return slot.status == Status.RUNNING and slot.engine.cycles >= 1


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("LEVIPANEL_CYCLE_INTERVAL_OVERRIDES", "BTCUSDT", "must be SYMBOL=SECONDS pairs"),
        ("LEVIPANEL_CYCLE_INTERVAL_OVERRIDES", "BTCUSDT=0.5,", "must be SYMBOL=SECONDS pairs"),
        ("LEVIPANEL_LOG_DIR", "{file}/logs", "LEVIPANEL_LOG_DIR: cannot create"),
    ],
)
def test_bad_setting_is_a_clear_message_not_a_traceback(tmp_path, variable, value, message):
    (tmp_path / "file").write_text("")
    project = Project(tmp_path / "data", {variable: value.format(file=tmp_path / "file")})
    project.data_dir.mkdir()
    command = ("runengines",) if variable == "LEVIPANEL_LOG_DIR" else ("check",)
    result = project.manage(*command, check=False)
    assert result.returncode != 0
    assert "levipanel.E001" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
