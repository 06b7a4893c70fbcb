"""Log lines under a storm: a few per window for each kind, then one line saying how many
were left out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class LogLimiter:
    """Allow ``limit`` lines per ``window`` seconds for each key."""

    def __init__(
        self, limit: int = 5, window: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, lines, left out)

    def allow(self, key: str) -> tuple[bool, int]:
        """Whether to log this line, and how many lines of ``key`` were left out since the
        last one logged (to say so first)."""
        now = self.clock()
        start, lines, left_out = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window:
            start, lines = now, 0
        if lines < self.limit:
            self._windows[key] = (start, lines + 1, 0)
            return True, left_out
        self._windows[key] = (start, lines, left_out + 1)
        return False, 0

    def log(
        self, logger: logging.Logger, level: int, key: str, msg: str, *args: Any, **kwargs: Any
    ) -> None:
        """Log ``msg`` if ``key`` has lines left in its window, after a line saying how
        many were left out since the last one."""
        logged, left_out = self.allow(key)
        if left_out:
            logger.log(level, "Suppressed %d more lines like the next one", left_out)
        if logged:
            logger.log(level, msg, *args, **kwargs)
