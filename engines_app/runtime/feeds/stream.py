"""What the network feeds share: a task of their own keeps the newest price, and ``poll``
hands it over once (or raises the fatal error the task met)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StreamFeed:
    __slots__ = ("symbol", "_price", "_fresh", "_fatal", "_task", "_on_error")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self._price: float | None = None
        self._fresh = False
        self._fatal: BaseException | None = None  # raised by the next poll
        self._task: asyncio.Task[None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None

    def start(self, on_error: Callable[[BaseException], None]) -> None:
        self._on_error = on_error
        self._task = asyncio.create_task(self._run(), name=f"feed:{self.symbol}")

    def poll(self) -> float | None:
        if self._fatal is not None:
            raise self._fatal
        if not self._fresh:
            return None
        self._fresh = False
        return self._price

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
