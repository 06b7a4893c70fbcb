"""Clocks a test moves by hand."""

from __future__ import annotations

import time

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
DAY = 86_400.0


class FakeClock:
    """A clock that stands still until a test moves ``now`` (by default 01:00 UTC on ``T0``'s
    day)."""

    def __init__(self, now: float = T0 + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ShiftedClock:
    """The real time plus an offset a test moves forward: for a runner whose waits must stay
    real while its idea of the date jumps."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset
