"""Health monitor: catches hung engines. Crashes are seen at once by the manager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manager import EngineManager


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

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            self.check()

    def check(self) -> list[str]:
        """Recover every hung engine now; return their symbols. The timeout counts from
        when the next heartbeat was due, so an engine whose cycle interval is longer than
        the timeout is not taken for hung while it sleeps between cycles."""
        now, hung = self.clock(), {}
        for engine in self.manager.running_engines():
            last = engine.last_heartbeat or 0
            if now - last - engine.config.cycle_interval > self.heartbeat_timeout:
                hung[engine.symbol] = now - last
        for symbol, silent_for in hung.items():
            self.manager.recover_hung(symbol, silent_for)
        return list(hung)
