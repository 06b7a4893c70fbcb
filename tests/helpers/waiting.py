"""Wait for a condition, never for a fixed time: one function, in an async and a sync flavour."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

TIMEOUT = 10.0


def _failure(predicate: Callable[[], Any], timeout: float, message: str) -> AssertionError:
    return AssertionError(message or f"condition not met within {timeout}s: {predicate}")


async def eventually(
    predicate: Callable[[], Any],
    timeout: float = TIMEOUT,
    interval: float = 0.005,
    message: str = "",
) -> Any:
    """Await until ``predicate()`` is truthy and return its value; a predicate that returns
    an awaitable is awaited. Fail with ``message`` after ``timeout`` seconds.

    Looks often: in-process looks are cheap, and a short-lived state must not slip by.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(predicate, timeout, message)
        await asyncio.sleep(interval)


def eventually_sync(
    predicate: Callable[[], Any],
    timeout: float = TIMEOUT,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """``eventually`` for sync tests (subprocesses, another process's database): block until
    ``predicate()`` is truthy and return its value; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(predicate, timeout, message)
        time.sleep(interval)
