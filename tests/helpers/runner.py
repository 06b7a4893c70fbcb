"""A runner in the test's own event loop, with short intervals, and the database from async."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

from asgiref.sync import sync_to_async
from django.db import connection

from engines_app.conf import EngineSettings, engine_settings
from engines_app.runner.lifecycle import Runner

# The environment of a ``runengines`` process under test: short intervals.
FAST_RUNNER = {
    "LEVIPANEL_FLUSH_INTERVAL": "0.2",
    "LEVIPANEL_POLL_INTERVAL": "0.1",
    "LEVIPANEL_CYCLE_INTERVAL": "0.2",
    "LEVIPANEL_STOP_TIMEOUT": "2",
    "LEVIPANEL_BACKOFF_BASE": "0.5",
    "LEVIPANEL_BACKOFF_CAP": "2",
}
# An engine config: a fast/slow crossover of 1/2 on a jumpy walk, a fill every few cycles.
TRADES_OFTEN = {"params": {"fast": 1, "slow": 2}, "feed_options": {"volatility": 0.01}}


def fast_settings(log_dir: Path, **overrides) -> EngineSettings:
    """Engine settings with short intervals so tests run in fractions of a second."""
    values = dict(
        cycle_interval=0.05,
        flush_interval=0.1,
        poll_interval=0.05,
        backoff_base=0.05,
        backoff_cap=1.0,
        backoff_jitter=0.0,
        health_check_interval=0.05,
        stop_timeout=1.0,
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        log_dir=log_dir,
    )
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


def _close_connection() -> None:
    connection.close()


async def close_db_thread_connection() -> None:
    """Close the runner thread's connection so the next query opens a fresh one."""
    await sync_to_async(_close_connection, thread_sensitive=True)()


@sync_to_async
def db(func, *args, **kwargs):
    """Call ``func`` on the database thread, from an async test."""
    return func(*args, **kwargs)
