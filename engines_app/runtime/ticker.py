"""A timer wheel for the engines' sleeps between cycles.

``asyncio.sleep`` gives every sleeper a timer of its own in the loop's heap: with 10,000
engines at one cycle a second, that is 10,000 heap pushes and pops a second, each a dozen
Python-level comparisons, and most of the runner's CPU. The ``Ticker`` groups the wake-ups
into slots of ``resolution`` seconds with one loop timer per slot; each sleeper still waits
on a future of its own, so cancelling one engine (stop, hang) touches no other.

A sleep ends at the end of its slot: at most ``resolution`` late, never early. Sleeps
shorter than ``min_delay`` (tests, tight loops) go to ``asyncio.sleep`` as before.
"""

from __future__ import annotations

import asyncio
import math


class Ticker:
    __slots__ = ("resolution", "min_delay", "_slots", "_loop")

    def __init__(self, resolution: float = 0.005, min_delay: float = 0.05) -> None:
        self.resolution = resolution
        self.min_delay = min_delay
        self._slots: dict[int, list[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the slots' timers are on

    def sleep(self, delay: float) -> asyncio.Future[None] | object:
        """An awaitable that is done ``delay`` seconds from now (up to one slot later)."""
        if delay < self.min_delay:
            return asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop: the old one's timers will never fire here
            self._loop, self._slots = loop, {}
        slot = math.ceil((loop.time() + delay) / self.resolution)
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = []
            loop.call_at(slot * self.resolution, self._wake, slot)
        future = loop.create_future()
        waiters.append(future)
        return future

    def _wake(self, slot: int) -> None:
        for future in self._slots.pop(slot, ()):
            if not future.done():  # a cancelled sleeper (its engine stopped) is skipped
                future.set_result(None)

    def __len__(self) -> int:
        """Sleepers waiting, cancelled ones included until their slot is due."""
        return sum(len(waiters) for waiters in self._slots.values())
