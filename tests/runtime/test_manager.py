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
from tests.helpers import FakeClock, eventually

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def manager(**recovery) -> EngineManager:
    settings = RecoverySettings(**({"backoff_base": 0.05, "jitter": 0.0} | recovery))
    return EngineManager(policy=RecoveryPolicy(settings), stop_timeout=0.5)


def statuses(m: EngineManager, symbol: str) -> list[str]:
    return [e.status for e in m.events if isinstance(e, StatusChanged) and e.symbol == symbol]


async def test_start_all_runs_every_engine():
    m = manager()
    assert m.start_all(EngineConfig(s, 0.01) for s in SYMBOLS) == 3
    await eventually(lambda: m.summary()["running"] == 3)
    assert m.start(EngineConfig("BTCUSDT", 0.01)) is False  # already running
    await m.stop_all()
    assert m.summary()["stopped"] == 3


async def test_stop_one_leaves_the_others_running():
    m = manager()
    m.start_all(EngineConfig(s, 0.01) for s in SYMBOLS)
    await eventually(lambda: m.summary()["running"] == 3)
    await m.stop("ETHUSDT")
    assert m.slots["ETHUSDT"].status == Status.STOPPED
    assert m.slots["ETHUSDT"].task is None
    assert {m.slots[s].status for s in ("BTCUSDT", "SOLUSDT")} == {Status.RUNNING}
    await m.stop_all()


async def test_restart_one_gives_it_a_new_run():
    m = manager()
    m.start_all(EngineConfig(s, 0.01) for s in SYMBOLS)
    await eventually(lambda: m.summary()["running"] == 3)
    old_engine, other = m.slots["BTCUSDT"].engine, m.slots["ETHUSDT"].engine
    await m.restart("BTCUSDT")
    await eventually(lambda: m.slots["BTCUSDT"].status == Status.RUNNING)
    assert m.slots["BTCUSDT"].engine is not old_engine
    assert m.slots["ETHUSDT"].engine is other
    assert statuses(m, "BTCUSDT")[-4:] == ["stopping", "stopped", "starting", "running"]
    await m.stop_all()


async def test_crash_is_seen_at_once_and_restarted_after_its_backoff():
    m = manager(backoff_base=0.2)
    m.start(EngineConfig("BTCUSDT", 0.01, crash_after_cycles=2))
    m.start(EngineConfig("ETHUSDT", 0.01))
    await eventually(lambda: m.slots["BTCUSDT"].status == Status.BACKOFF)
    crashed_at = next(e.at for e in m.events if isinstance(e, ErrorRaised))
    backoff = next(e for e in m.events if isinstance(e, RestartScheduled))
    assert backoff.attempt == 1 and backoff.backoff == 0.2
    assert m.slots["ETHUSDT"].status == Status.RUNNING  # a crash never takes a sibling down
    await eventually(lambda: m.slots["BTCUSDT"].status == Status.RUNNING)
    running_again = [
        e
        for e in m.events
        if isinstance(e, StatusChanged) and e.symbol == "BTCUSDT" and e.status == "running"
    ][-1].at
    assert 0.2 <= running_again - crashed_at < 0.2 + 0.2
    await m.stop_all()


async def test_sixth_crash_in_an_hour_leaves_the_engine_failed():
    m = manager(backoff_base=0.01, backoff_cap=0.02)
    m.start(EngineConfig("BTCUSDT", 0.005, crash_after_cycles=0))
    await eventually(lambda: m.slots["BTCUSDT"].status == Status.FAILED)
    restarts = [e for e in m.events if isinstance(e, RestartScheduled)]
    assert [r.attempt for r in restarts] == [1, 2, 3, 4, 5]
    assert len([e for e in m.events if isinstance(e, ErrorRaised)]) == 6
    last = [e for e in m.events if isinstance(e, StatusChanged)][-1]
    assert last.status == "failed" and "restart limit reached" in last.reason
    # Nothing is left to happen by itself: no retry is scheduled and no task runs.
    slot = m.slots["BTCUSDT"]
    assert (slot.status, slot.task, slot.retry) == (Status.FAILED, None, None)


async def test_fatal_error_fails_at_once_without_restarts():
    m = manager()
    m.start(EngineConfig("BTCUSDT", 0.01, fatal_after_cycles=1))
    await eventually(lambda: m.slots["BTCUSDT"].status == Status.FAILED)
    assert not [e for e in m.events if isinstance(e, RestartScheduled)]
    assert m.policy.budget_left("BTCUSDT") == 5


async def test_hung_engine_is_detected_after_the_timeout_and_restarted():
    m = manager(backoff_base=0.05)
    m.start(EngineConfig("BTCUSDT", 0.01, hang_after_cycles=2))
    m.start(EngineConfig("ETHUSDT", 0.01))
    monitor = HealthMonitor(m, check_interval=0.02, heartbeat_timeout=0.2)
    watch = asyncio.create_task(monitor.run())
    await eventually(lambda: m.slots["BTCUSDT"].engine.cycles >= 2)
    hung_since = m.slots["BTCUSDT"].engine.last_heartbeat
    await eventually(
        lambda: any(isinstance(e, ErrorRaised) and e.type == "HeartbeatTimeout" for e in m.events),
        timeout=2,
    )
    detected = next(e.at for e in m.events if isinstance(e, ErrorRaised))
    assert 0.2 <= detected - hung_since < 0.2 + 0.15
    assert m.slots["ETHUSDT"].status == Status.RUNNING  # healthy engines are left alone
    await eventually(
        lambda: (
            m.slots["BTCUSDT"].status == Status.RUNNING and m.slots["BTCUSDT"].engine.cycles >= 1
        )
    )
    watch.cancel()
    await m.stop_all()


async def test_health_check_ignores_engines_that_heartbeat():
    clock = FakeClock()
    m = EngineManager(policy=RecoveryPolicy(clock=clock), clock=clock, stop_timeout=0.5)
    m.start(EngineConfig("BTCUSDT", 0.01))
    monitor = HealthMonitor(m, check_interval=1, heartbeat_timeout=0.1, clock=clock)
    await eventually(lambda: m.slots["BTCUSDT"].status == Status.RUNNING)
    clock.now += 0.15  # longer than the timeout since it started,
    beats = m.slots["BTCUSDT"].engine.cycles
    await eventually(lambda: m.slots["BTCUSDT"].engine.cycles > beats)  # but it beat since
    assert monitor.check() == []
    await m.stop_all()


async def test_stop_cancels_a_hung_engine_after_the_stop_timeout():
    m = manager()
    m.start(EngineConfig("BTCUSDT", 0.005, hang_after_cycles=0))
    # Its first cycle hangs, entered in the same step that reports it running.
    await eventually(lambda: m.slots["BTCUSDT"].status == Status.RUNNING)
    await asyncio.wait_for(m.stop("BTCUSDT"), 2)
    assert m.slots["BTCUSDT"].status == Status.STOPPED


async def test_an_engine_slower_than_the_heartbeat_timeout_is_not_taken_for_hung():
    clock = FakeClock()
    manager = EngineManager(policy=RecoveryPolicy(clock=clock), clock=clock)
    monitor = HealthMonitor(manager, heartbeat_timeout=60, clock=clock)
    manager.start(EngineConfig("BTCUSDT", cycle_interval=120))  # one cycle every 2 minutes
    await eventually(lambda: manager.slots["BTCUSDT"].engine.cycles == 1)
    clock.now += 170  # its next heartbeat is due at +120: 50 s late, within the timeout
    assert monitor.check() == []
    assert manager.slots["BTCUSDT"].status == Status.RUNNING
    clock.now += 11  # 61 s late: hung
    assert monitor.check() == ["BTCUSDT"]
    assert manager.slots["BTCUSDT"].status == Status.BACKOFF
    assert "no heartbeat for 181.0s" in manager.slots["BTCUSDT"].engine.state.last_error
    await manager.stop_all()


async def test_a_stable_run_starts_the_backoff_again_from_the_base():
    clock = FakeClock()
    settings = RecoverySettings(backoff_base=0.01, backoff_cap=0.05, jitter=0.0, stable_after=600)
    manager = EngineManager(policy=RecoveryPolicy(settings, clock=clock), clock=clock)
    monitor = HealthMonitor(manager, heartbeat_timeout=60, clock=clock)
    manager.start(EngineConfig("BTCUSDT", cycle_interval=0.01, hang_after_cycles=1))
    attempts = []
    for ran_for in (100, 100, 700, 100):  # hangs after running this long (fake clock)
        await eventually(lambda: _hanging(manager.slots["BTCUSDT"]))
        clock.now += ran_for
        assert monitor.check() == ["BTCUSDT"]
        attempts.append(
            manager.slots["BTCUSDT"].status == Status.BACKOFF and manager.policy.attempt("BTCUSDT")
        )
    assert attempts == [1, 2, 1, 2]  # the 10-minute run forgave the streak
    await manager.stop_all()


def _hanging(slot) -> bool:
    """A freshly (re)started engine that has gone quiet after its first cycle."""
    return slot.status == Status.RUNNING and slot.engine.cycles >= 1
