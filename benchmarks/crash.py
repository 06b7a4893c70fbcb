"""Crash -> detected and crash -> running again, measured on the runtime alone.

A few engines crash on their first cycle, again and again (a 50 ms backoff, no jitter),
among N healthy engines at 1 cycle/s. An injected crash is raised in the same task step
that reports the engine running, so "running" to "failure seen by the manager" is the
detection latency; "restart due" (the backoff's end) to "running" is the recovery overhead.
Beside them, in the same loop: a bare task that raises, and a bare ``call_later``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks import percentile
from engines_app.runtime import EngineConfig, EngineManager, RecoveryPolicy, RecoverySettings
from engines_app.runtime.events import ErrorRaised, StatusChanged
from engines_app.runtime.jsonlog import EngineLogs

CRASHERS = 10
BACKOFF = 0.05
clock = time.perf_counter


async def measure(*, engines: int, seconds: float) -> dict:
    settings = RecoverySettings(
        max_restarts_per_hour=1_000_000, backoff_base=BACKOFF, backoff_cap=BACKOFF, jitter=0.0
    )
    manager = EngineManager(policy=RecoveryPolicy(settings, clock=clock), clock=clock)
    with tempfile.TemporaryDirectory(prefix="levipanel-bench-") as logs, EngineLogs(Path(logs)):
        manager.start_all(EngineConfig(f"H{i:05d}USDT") for i in range(engines))
        await asyncio.sleep(0.5)
        manager.drain_events()
        crashers = [f"C{i:05d}USDT" for i in range(CRASHERS)]
        manager.start_all(EngineConfig(symbol, crash_after_cycles=0) for symbol in crashers)
        baseline = await _bare_probe(seconds)
        for symbol in crashers:
            await manager.stop(symbol)
        events = manager.drain_events()
        await manager.stop_all()
    detect, restart = _latencies(events)
    return {
        "samples": len(detect),
        "detect_p99_ms": percentile(detect, 99) * 1000,
        "restart_p99_ms": percentile(restart, 99) * 1000,
        "callback_p99_ms": percentile(baseline[0], 99) * 1000,
        "call_later_p99_ms": percentile(baseline[1], 99) * 1000,
    }


def _latencies(events: list) -> tuple[list[float], list[float]]:
    """From the manager's own event stream: running -> crash seen, retry due -> running."""
    running: dict[str, float] = {}
    due: dict[str, float] = {}
    detect, restart = [], []
    for event in events:
        symbol = event.symbol
        if isinstance(event, StatusChanged) and event.status == "running":
            running[symbol] = event.at
            if symbol in due:
                restart.append(event.at - due.pop(symbol))
        elif isinstance(event, StatusChanged) and event.status == "backoff":
            due[symbol] = event.next_retry_at
        elif isinstance(event, ErrorRaised) and event.crashed and symbol in running:
            detect.append(event.at - running.pop(symbol))
    return detect, restart


async def _bare_probe(seconds: float) -> tuple[list[float], list[float]]:
    """asyncio's floor for both paths, sampled at the crashers' pace."""
    loop = asyncio.get_running_loop()
    callbacks, lateness = [], []
    end = clock() + seconds
    while clock() < end:
        callbacks.append(await _raise_and_see(loop))
        lateness.append(await _call_later_and_start(loop))
    return callbacks, lateness


async def _raise_and_see(loop: asyncio.AbstractEventLoop) -> float:
    seen: asyncio.Future[float] = loop.create_future()
    raised = []

    async def crash() -> None:
        raised.append(clock())
        raise RuntimeError("probe")

    def done(task: asyncio.Task) -> None:
        task.exception()
        seen.set_result(clock() - raised[0])

    task = asyncio.create_task(crash())
    task.add_done_callback(done)
    return await seen


async def _call_later_and_start(loop: asyncio.AbstractEventLoop) -> float:
    started: asyncio.Future[float] = loop.create_future()
    due = clock() + BACKOFF
    tasks = []

    async def first_step() -> None:
        started.set_result(clock() - due)

    loop.call_later(BACKOFF, lambda: tasks.append(asyncio.create_task(first_step())))
    return await started
