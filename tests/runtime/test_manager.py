"""The guide's manager tests, and crash / hang recovery through the manager — no Django."""

import asyncio

from engines_app.runtime import (
    EngineConfig,
    EngineManager,
    HealthMonitor,
    RecoveryPolicy,
    RecoverySettings,
    Status,
)
from engines_app.runtime.events import ErrorRaised, RestartScheduled, StatusChanged
from tests.helpers import until

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def manager(**recovery) -> EngineManager:
    settings = RecoverySettings(**({"backoff_base": 0.05, "jitter": 0.0} | recovery))
    return EngineManager(policy=RecoveryPolicy(settings), stop_timeout=0.5)


def statuses(m: EngineManager, symbol: str) -> list[str]:
    return [e.status for e in m.events if isinstance(e, StatusChanged) and e.symbol == symbol]


async def test_start_all_runs_every_engine():
    m = manager()
    assert m.start_all(EngineConfig(s, 0.01) for s in SYMBOLS) == 3
    await until(lambda: m.summary()["running"] == 3)
    assert m.start(EngineConfig("BTCUSDT", 0.01)) is False  # already running
    await m.stop_all()
    assert m.summary()["stopped"] == 3


async def test_stop_one_leaves_the_others_running():
    m = manager()
    m.start_all(EngineConfig(s, 0.01) for s in SYMBOLS)
    await until(lambda: m.summary()["running"] == 3)
    await m.stop("ETHUSDT")
    assert m.slots["ETHUSDT"].status == Status.STOPPED
    assert m.slots["ETHUSDT"].task is None
    assert {m.slots[s].status for s in ("BTCUSDT", "SOLUSDT")} == {Status.RUNNING}
    await m.stop_all()


async def test_restart_one_gives_it_a_new_run():
    m = manager()
    m.start_all(EngineConfig(s, 0.01) for s in SYMBOLS)
    await until(lambda: m.summary()["running"] == 3)
    old_engine, other = m.slots["BTCUSDT"].engine, m.slots["ETHUSDT"].engine
    await m.restart("BTCUSDT")
    await until(lambda: m.slots["BTCUSDT"].status == Status.RUNNING)
    assert m.slots["BTCUSDT"].engine is not old_engine
    assert m.slots["ETHUSDT"].engine is other
    assert statuses(m, "BTCUSDT")[-4:] == ["stopping", "stopped", "starting", "running"]
    await m.stop_all()


async def test_crash_is_seen_at_once_and_restarted_after_its_backoff():
    m = manager(backoff_base=0.2)
    m.start(EngineConfig("BTCUSDT", 0.01, crash_after_cycles=2))
    m.start(EngineConfig("ETHUSDT", 0.01))
    await until(lambda: m.slots["BTCUSDT"].status == Status.BACKOFF)
    crashed_at = next(e.at for e in m.events if isinstance(e, ErrorRaised))
    backoff = next(e for e in m.events if isinstance(e, RestartScheduled))
    assert backoff.attempt == 1 and backoff.backoff == 0.2
    assert m.slots["ETHUSDT"].status == Status.RUNNING  # a crash never takes a sibling down
    await until(lambda: m.slots["BTCUSDT"].status == Status.RUNNING)
    running_again = [e for e in m.events if isinstance(e, StatusChanged)
                     and e.symbol == "BTCUSDT" and e.status == "running"][-1].at  # fmt: skip
    assert 0.2 <= running_again - crashed_at < 0.2 + 0.2
    await m.stop_all()


async def test_sixth_crash_in_an_hour_leaves_the_engine_failed():
    m = manager(backoff_base=0.01, backoff_cap=0.02)
    m.start(EngineConfig("BTCUSDT", 0.005, crash_after_cycles=0))
    await until(lambda: m.slots["BTCUSDT"].status == Status.FAILED)
    restarts = [e for e in m.events if isinstance(e, RestartScheduled)]
    assert [r.attempt for r in restarts] == [1, 2, 3, 4, 5]
    assert len([e for e in m.events if isinstance(e, ErrorRaised)]) == 6
    last = [e for e in m.events if isinstance(e, StatusChanged)][-1]
    assert last.status == "failed" and "restart limit reached" in last.reason
    await asyncio.sleep(0.1)
    assert m.slots["BTCUSDT"].status == Status.FAILED  # stays failed: needs an operator
    assert m.slots["BTCUSDT"].task is None


async def test_fatal_error_fails_at_once_without_restarts():
    m = manager()
    m.start(EngineConfig("BTCUSDT", 0.01, fatal_after_cycles=1))
    await until(lambda: m.slots["BTCUSDT"].status == Status.FAILED)
    assert not [e for e in m.events if isinstance(e, RestartScheduled)]
    assert m.policy.budget_left("BTCUSDT") == 5


async def test_hung_engine_is_detected_after_the_timeout_and_restarted():
    m = manager(backoff_base=0.05)
    m.start(EngineConfig("BTCUSDT", 0.01, hang_after_cycles=2))
    m.start(EngineConfig("ETHUSDT", 0.01))
    monitor = HealthMonitor(m, check_interval=0.02, heartbeat_timeout=0.2)
    watch = asyncio.create_task(monitor.run())
    await until(lambda: m.slots["BTCUSDT"].engine.cycles >= 2)
    hung_since = m.slots["BTCUSDT"].engine.last_heartbeat
    await until(lambda: any(isinstance(e, ErrorRaised) and e.type == "HeartbeatTimeout"
                            for e in m.events), timeout=2)  # fmt: skip
    detected = next(e.at for e in m.events if isinstance(e, ErrorRaised))
    assert 0.2 <= detected - hung_since < 0.2 + 0.15
    assert m.slots["ETHUSDT"].status == Status.RUNNING  # healthy engines are left alone
    await until(lambda: m.slots["BTCUSDT"].status == Status.RUNNING
                and m.slots["BTCUSDT"].engine.cycles >= 1)  # fmt: skip
    watch.cancel()
    await m.stop_all()


async def test_health_check_ignores_engines_that_heartbeat():
    m = manager()
    m.start(EngineConfig("BTCUSDT", 0.01))
    await until(lambda: m.slots["BTCUSDT"].status == Status.RUNNING)
    monitor = HealthMonitor(m, check_interval=1, heartbeat_timeout=0.1)
    await asyncio.sleep(0.15)
    assert monitor.check() == []
    await m.stop_all()


async def test_stop_cancels_a_hung_engine_after_the_stop_timeout():
    m = manager()
    m.start(EngineConfig("BTCUSDT", 0.005, hang_after_cycles=1))
    await until(lambda: m.slots["BTCUSDT"].engine.cycles >= 1)
    await asyncio.sleep(0.02)
    await asyncio.wait_for(m.stop("BTCUSDT"), 2)
    assert m.slots["BTCUSDT"].status == Status.STOPPED
