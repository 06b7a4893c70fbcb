"""The loop-lag watchdog: how late the event loop runs, and which engine's strategy held it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("levipanel.engine")


class LoopWatchdog:
    """Wakes every ``interval`` seconds and measures how late it woke: the event loop's lag.
    Lag of ``warn_after`` or more is logged, naming the engine whose strategy held the loop
    (engines ``note`` a strategy call longer than their cycle). ``blocked_since`` tells the
    health monitor how long others held the loop after a heartbeat."""

    def __init__(
        self,
        *,
        interval: float = 0.25,
        warn_after: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval, self.warn_after, self.clock = interval, warn_after, clock
        self.notes: deque[tuple[float, float, str]] = deque(maxlen=256)  # (end, seconds, who)
        self.stalls: list[tuple[float, float, str | None]] = []  # (at, lag, blamed), newest 100
        self.max_lag = 0.0

    def note(self, symbol: str, seconds: float) -> None:
        """An engine's strategy held the loop for ``seconds``, ending now."""
        self.notes.append((self.clock(), seconds, symbol))

    def blocked_since(self, since: float, *, besides: str) -> float:
        """Seconds other engines' strategies held the loop after ``since``."""
        return sum(s for end, s, who in self.notes if end > since and who != besides)

    def blame(self, since: float) -> tuple[str, float] | None:
        """The engine whose strategy held the loop longest after ``since``."""
        held = [(s, who) for end, s, who in self.notes if end > since]
        if not held:
            return None
        seconds, who = max(held)
        return who, seconds

    async def run(self) -> None:
        while True:
            began, woke = time.perf_counter(), self.clock()
            await asyncio.sleep(self.interval)
            lag = time.perf_counter() - began - self.interval
            self.check(lag, since=woke)

    def check(self, lag: float, *, since: float) -> str | None:
        """Report ``lag`` when it is long; return the engine blamed, if any."""
        self.max_lag = max(self.max_lag, lag)
        if lag < self.warn_after:
            return None
        blamed = self.blame(since)
        who = blamed[0] if blamed else None
        self.stalls = [*self.stalls[-99:], (self.clock(), lag, who)]
        if blamed:
            log.warning(
                "Event loop blocked for %.2fs: engine %s's strategy held it for %.2fs in one "
                "call (declare it heavy to run it in the worker pool); the other engines' "
                "late heartbeats are not theirs",
                lag,
                who,
                blamed[1],
                extra={"symbol": who},
            )
        else:
            log.warning("Event loop blocked for %.2fs; no strategy was seen holding it", lag)
        return who
