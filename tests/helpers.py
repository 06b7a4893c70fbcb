"""Small helpers shared by the engine-core tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from asgiref.sync import sync_to_async
from django.db import connection
from django.db.backends.signals import connection_created

from benchmarks.worker import TransactionCounter
from engines_app.conf import EngineSettings, engine_settings
from engines_app.runner.lifecycle import Runner


def fast_settings(log_dir: Path, **overrides) -> EngineSettings:
    """Engine settings with short intervals so tests run in fractions of a second."""
    values = dict(
        cycle_interval=0.05, flush_interval=0.1, poll_interval=0.05, backoff_base=0.05,
        backoff_cap=1.0, backoff_jitter=0.0, health_check_interval=0.05, stop_timeout=1.0,
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], log_dir=log_dir,
    )  # fmt: skip
    values.update(overrides)
    return dataclasses.replace(engine_settings(), **values)


@contextlib.asynccontextmanager
async def running(runner: Runner, timeout: float = 10.0) -> AsyncIterator[Runner]:
    """Run a runner in the background for the body of the ``async with``."""
    task = asyncio.create_task(runner.run())
    ready = asyncio.create_task(runner.ready.wait())
    await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raise what killed it
    assert runner.ready.is_set(), "runner did not become ready"
    try:
        yield runner
    finally:
        runner.request_exit()
        await asyncio.wait_for(task, timeout)


async def until(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.02):
    """Await until a (possibly async) predicate is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)


def _close_connection() -> None:
    connection.close()


async def close_db_thread_connection() -> None:
    """Close the runner thread's connection so the next query opens a fresh one."""
    await sync_to_async(_close_connection, thread_sensitive=True)()


class WriteTransactionCounter(TransactionCounter):
    """The benchmark's count of write transactions, taken by SQLite's trace callback on the
    connections opened inside the ``with`` block."""

    def __enter__(self) -> WriteTransactionCounter:
        connection_created.connect(self.install)
        return self

    def __exit__(self, *exc_info) -> None:
        connection_created.disconnect(self.install)


class FakeClock:
    """A clock that stands still until a test moves ``now``."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class ShiftedClock:
    """The real time plus an offset a test moves forward (the runner's waits stay real)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@sync_to_async
def db(func, *args, **kwargs):
    """Call ``func`` on the database thread, from an async test."""
    return func(*args, **kwargs)
