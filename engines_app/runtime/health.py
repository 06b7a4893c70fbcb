"""Health monitor: catches hung engines. Crashes are seen at once by the manager. The
loop-lag watchdog (``watchdog.py``) names a strategy that held the event loop, so the other
engines' late heartbeats are not taken for theirs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manager import EngineManager

log = logging.getLogger("levipanel.engine")


class HealthMonitor:
    """Every ``check_interval`` seconds, treat a running engine whose heartbeat is more
    than ``heartbeat_timeout`` late as hung: the manager cancels it and recovery takes over."""

    def __init__(
        self,
        manager: EngineManager,
        *,
        check_interval: float = 30.0,
        heartbeat_timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.check_interval = check_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock
        # When the wall clock last jumped forward (an NTP step): heartbeats from before it
        # count from it, or every engine would look hung at once.
        self.clock_jumped_at: float | None = None

    async def run(self) -> None:
        while True:
            began, woke = time.perf_counter(), self.clock()
            await asyncio.sleep(self.check_interval)
            if (self.clock() - woke) - (time.perf_counter() - began) > 1.0:
                self.clock_jumped_at = self.clock()
            self.check()

    def check(self) -> list[str]:
        """Recover every hung engine now; return their symbols. The timeout counts from
        when the next heartbeat was due, so an engine whose cycle interval is longer than
        the timeout is not taken for hung while it sleeps between cycles."""
        now, hung = self.clock(), {}
        watchdog = self.manager.watchdog
        jumped = self.clock_jumped_at
        for engine in self.manager.running_engines():
            last = engine.last_heartbeat or 0
            if jumped is not None and last < jumped:
                last = jumped
            late = now - last - engine.config.cycle_interval
            if late > self.heartbeat_timeout:
                # Time another engine's strategy held the loop is not this engine's fault.
                late -= watchdog.blocked_since(last, besides=engine.symbol)
            if late > self.heartbeat_timeout:
                hung[engine.symbol] = now - last
        for symbol, silent_for in hung.items():
            self.manager.recover_hung(symbol, silent_for)
        return list(hung)
