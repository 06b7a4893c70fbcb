"""Recovery policy: doubling, capped, jittered backoff and a sliding hourly restart limit."""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecoverySettings:
    max_restarts_per_hour: int = 5
    window: float = 3600.0
    backoff_base: float = 60.0
    backoff_cap: float = 900.0
    jitter: float = 0.1
    stable_after: float = 600.0
    # Fleet-aware stagger: each restart of another engine decided in the last
    # ``stagger_window`` seconds adds ``stagger_step`` seconds (at most ``backoff_cap``), so
    # engines felled together (a feed outage) come back one after another.
    stagger_window: float = 0.0
    stagger_step: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failure: restart after ``delay`` seconds, or fail."""

    restart: bool
    delay: float
    attempt: int
    budget_left: int
    reason: str


class RecoveryPolicy:
    """Decide, per symbol, whether and when a failed engine is restarted.

    A fatal error fails the engine at once. Otherwise attempt n waits
    ``min(cap, base * 2 ** (n - 1))`` seconds, give or take ``jitter``; a run that lasted
    ``stable_after`` seconds starts the count afresh. Past ``max_restarts_per_hour``
    restarts inside the sliding window the engine fails until an operator resets it.
    Restarts of other engines decided shortly before push a restart back a step each.
    """

    def __init__(
        self,
        settings: RecoverySettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or RecoverySettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self._restarts: dict[str, deque[float]] = {}
        self._attempts: dict[str, int] = {}
        self._fleet_restarts: deque[tuple[float, str]] = deque()
        self._fleet_counts: Counter[str] = Counter()

    def load(self, symbol: str, restart_times: Iterable[float], attempt: int = 0) -> None:
        """Seed a symbol's history, e.g. from the database after the runner restarted."""
        self._restarts[symbol] = deque(sorted(restart_times))
        self._attempts[symbol] = attempt

    def backoff(self, attempt: int) -> float:
        s = self.settings
        return min(s.backoff_cap, s.backoff_base * 2 ** max(attempt - 1, 0))

    def on_failure(self, symbol: str, *, fatal: bool = False, ran_for: float = 0.0) -> Decision:
        """Record a failure and decide. A restart decided here counts against the window."""
        s = self.settings
        if fatal:
            return Decision(
                False,
                0.0,
                self._attempts.get(symbol, 0),
                self.budget_left(symbol),
                "fatal error: not restarted",
            )
        if ran_for >= s.stable_after:
            self._attempts[symbol] = 0
        window = self._window(symbol)
        if len(window) >= s.max_restarts_per_hour:
            return Decision(
                False,
                0.0,
                self._attempts.get(symbol, 0),
                0,
                f"restart limit reached: {len(window)} restarts in the last hour",
            )
        attempt = self._attempts.get(symbol, 0) + 1
        self._attempts[symbol] = attempt
        window.append(self.clock())
        delay = self.backoff(attempt) * (1 + self.rng.uniform(-s.jitter, s.jitter))
        if delay > s.backoff_cap:  # fold back under the cap: clamping would restart in lockstep
            delay = max(0.0, 2 * s.backoff_cap - delay)
        delay += self._stagger(symbol)
        return Decision(
            True, delay, attempt, self.budget_left(symbol), f"restart {attempt} in {delay:.1f}s"
        )

    def budget_left(self, symbol: str) -> int:
        if not self._restarts.get(symbol):  # never restarted this hour: most of a fleet
            return self.settings.max_restarts_per_hour
        return max(0, self.settings.max_restarts_per_hour - len(self._window(symbol)))

    def remembers(self, symbol: str) -> bool:
        """Whether the symbol has failures on record: without, its attempt is 0 and its
        whole budget is left."""
        return bool(self._attempts.get(symbol) or self._restarts.get(symbol))

    def attempt(self, symbol: str) -> int:
        return self._attempts.get(symbol, 0)

    def reset(self, symbol: str) -> None:
        """Forget a symbol's failures: an operator restarted it on purpose."""
        self._restarts.pop(symbol, None)
        self._attempts.pop(symbol, None)

    def _stagger(self, symbol: str) -> float:
        """Extra delay: one step per other engine's restart decided just before this one."""
        s = self.settings
        if s.stagger_window <= 0 or s.stagger_step <= 0:
            return 0.0
        now = self.clock()
        recent, counts = self._fleet_restarts, self._fleet_counts
        while recent and recent[0][0] <= now - s.stagger_window:
            counts[recent.popleft()[1]] -= 1
        others = len(recent) - counts[symbol]
        recent.append((now, symbol))
        counts[symbol] += 1
        return min(others * s.stagger_step, s.backoff_cap)

    def _window(self, symbol: str) -> deque[float]:
        window = self._restarts.setdefault(symbol, deque())
        horizon = self.clock() - self.settings.window
        while window and window[0] <= horizon:
            window.popleft()
        return window
