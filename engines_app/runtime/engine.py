"""One trading engine: a cycle loop for one symbol, with a heartbeat and error counting."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from .cyclestats import CycleHistogram
from .errors import ConfigError, CrashError, FatalEngineError, InjectedCrash, InvalidSymbolError

log = logging.getLogger("levipanel.engine")

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
# A cycle that keeps failing is no longer "an error now and then": crash and let recovery act.
MAX_CONSECUTIVE_ERRORS = 3


def symbol_problem(symbol: object) -> str | None:
    """Say what is wrong with a symbol, or None when it is well formed."""
    if not isinstance(symbol, str) or not symbol:
        return "symbol is required"
    if len(symbol) > 20:
        return "symbol is longer than 20 characters"
    if not SYMBOL_RE.match(symbol):
        return "symbol must be 2-20 upper-case letters or digits, like BTCUSDT"
    return None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What an engine runs with. Failure injection fields exist for demos and tests."""

    symbol: str
    cycle_interval: float = 1.0
    crash_probability: float = 0.0
    crash_after_cycles: int | None = None
    hang_after_cycles: int | None = None
    fatal_after_cycles: int | None = None
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(
        cls, symbol: str, cycle_interval: float, options: Mapping[str, Any]
    ) -> EngineConfig:
        """Build a config from a per-engine options mapping; unknown keys are a ConfigError."""
        known = {f.name for f in fields(cls)} - {"symbol", "cycle_interval"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(symbol=symbol, cycle_interval=cycle_interval, **options)

    def problems(self) -> list[str]:
        """Every reason this config cannot run, in words an operator understands."""
        out = []
        if problem := symbol_problem(self.symbol):
            out.append(problem)
        if not _is_number(self.cycle_interval) or self.cycle_interval <= 0:
            out.append("cycle_interval must be a number greater than 0")
        if not _is_number(self.crash_probability) or not 0 <= self.crash_probability <= 1:
            out.append("crash_probability must be between 0 and 1")
        for name in ("crash_after_cycles", "hang_after_cycles", "fatal_after_cycles", "seed"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                out.append(f"{name} must be a whole number >= 0")
        if not isinstance(self.params, Mapping):
            out.append("params must be a mapping")
        return out

    def validate(self) -> None:
        if problems := self.problems():
            error = InvalidSymbolError if symbol_problem(self.symbol) else ConfigError
            raise error("; ".join(problems))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class EngineListener(Protocol):
    def engine_started(self, engine: TradingEngine) -> None: ...
    def engine_error(self, engine: TradingEngine, exc: BaseException) -> None: ...


@dataclass(slots=True)
class EngineState:
    """What survives an engine's restart: counters and trading results."""

    error_count: int = 0
    last_error: str | None = None
    position: float | None = None
    daily_pnl: float = 0.0
    total_pnl: float = 0.0
    trade_count: int = 0


class TradingEngine:
    """Run one symbol's trading cycle every ``cycle_interval`` seconds until stopped."""

    __slots__ = (
        "config",
        "state",
        "listener",
        "clock",
        "started_at",
        "last_heartbeat",
        "cycles",
        "consecutive_errors",
        "_rng",
        "_stopping",
        "_in_cycle",
        "cycle_histogram",
    )

    def __init__(
        self,
        config: EngineConfig,
        *,
        listener: EngineListener | None = None,
        state: EngineState | None = None,
        clock: Callable[[], float] = time.time,
        cycle_histogram: CycleHistogram | None = None,
    ) -> None:
        self.config = config
        self.cycle_histogram = cycle_histogram
        self.state = state or EngineState()
        self.listener = listener
        self.clock = clock
        self.started_at: float | None = None
        self.last_heartbeat: float | None = None
        self.cycles = 0
        self.consecutive_errors = 0
        self._rng: random.Random | None = None
        self._stopping = False
        self._in_cycle = False

    @property
    def symbol(self) -> str:
        return self.config.symbol

    async def run(self) -> None:
        """Validate, then cycle until asked to stop. Raises on a crash or a fatal error."""
        symbol = self.config.symbol
        extra = {"symbol": symbol}
        log.info("Starting engine for %s", symbol, extra=extra)
        self.config.validate()
        self.started_at = self.last_heartbeat = self.clock()
        log.info("Connecting to market data for %s", symbol, extra=extra)
        if self.listener:
            self.listener.engine_started(self)
        try:
            while not self._stopping:
                self._in_cycle = True
                began = time.perf_counter()
                try:
                    await self._guarded_cycle()
                finally:
                    self._in_cycle = False
                if self.cycle_histogram is not None:
                    self.cycle_histogram.observe(time.perf_counter() - began)
                self.cycles += 1
                self.last_heartbeat = self.clock()
                if not self._stopping:
                    await asyncio.sleep(self.config.cycle_interval)
        finally:
            log.info("Engine for %s stopped after %d cycles", symbol, self.cycles, extra=extra)

    async def _guarded_cycle(self) -> None:
        try:
            await self.cycle()
            self.consecutive_errors = 0
        except (CrashError, FatalEngineError):
            raise
        except Exception as exc:
            self.record_error(exc)
            self.consecutive_errors += 1
            if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                raise

    def record_error(self, exc: BaseException) -> None:
        """Count an error the engine survived, and tell the listener."""
        self.state.error_count += 1
        self.state.last_error = f"{type(exc).__name__}: {exc}"
        log.error(
            "Cycle error for %s: %s",
            self.config.symbol,
            self.state.last_error,
            extra={"symbol": self.config.symbol},
        )
        if self.listener:
            self.listener.engine_error(self, exc)

    async def cycle(self) -> None:
        """One trading cycle. Failure injection happens here."""
        config, n = self.config, self.cycles + 1
        if config.fatal_after_cycles is not None and n > config.fatal_after_cycles:
            raise ConfigError("injected fatal error")
        if config.crash_after_cycles is not None and n > config.crash_after_cycles:
            raise InjectedCrash(f"injected crash after {config.crash_after_cycles} cycles")
        if config.crash_probability and self._random() < config.crash_probability:
            raise InjectedCrash(f"injected crash (p={config.crash_probability})")
        if config.hang_after_cycles is not None and n > config.hang_after_cycles:
            await asyncio.Event().wait()  # hung: no heartbeat until cancelled

    def _random(self) -> float:
        if self._rng is None:
            self._rng = random.Random(self.config.seed)
        return self._rng.random()

    def request_stop(self) -> bool:
        """Ask the loop to end after the current cycle; True when it is idle and may be
        cancelled right away (between cycles nothing is half done)."""
        self._stopping = True
        return not self._in_cycle
