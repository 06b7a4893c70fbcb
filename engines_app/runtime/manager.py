"""Engine manager: starts, stops and restarts engine tasks and reacts to their failures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from .broker import Fill, utc_day
from .cyclestats import CycleHistogram
from .engine import EngineConfig, EngineState, TradingEngine
from .errors import HeartbeatTimeout, RiskHalt, is_fatal
from .events import BookChanged, ErrorRaised, Event, RestartScheduled, StatusChanged
from .recovery import RecoveryPolicy
from .strategies import load_strategy
from .ticker import Ticker
from .watchdog import LoopWatchdog

log = logging.getLogger("levipanel.engine")


class Status(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"  # running, but its market data feed is silent
    HALTED = "halted"  # a risk limit stopped it until the next UTC day or an operator restart
    BACKOFF = "backoff"
    CRASHED = "crashed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


# An engine in one of these has a current run: its start time counts (uptime).
ACTIVE = frozenset({Status.RUNNING, Status.DEGRADED, Status.STOPPING})


class Slot:
    """The manager's record of one symbol: its config, live engine and task."""

    __slots__ = (
        "config",
        "engine",
        "task",
        "status",
        "reason",
        "stopping",
        "retry",
        "next_retry_at",
        "halted_day",
    )

    def __init__(self, config: EngineConfig, state: EngineState) -> None:
        self.config = config
        self.engine = TradingEngine(config, state=state)
        self.task: asyncio.Task[None] | None = None
        self.status = Status.STOPPED
        self.reason = ""
        self.stopping = False
        self.retry: asyncio.TimerHandle | None = None
        self.next_retry_at: float | None = None
        self.halted_day = 0

    @property
    def is_running(self) -> bool:
        return self.status in (Status.RUNNING, Status.DEGRADED) and self.task is not None


class EngineManager:
    """Own every engine task (strong references), one per symbol, none sharing a fate."""

    def __init__(
        self,
        *,
        policy: RecoveryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        stop_timeout: float = 5.0,
        strategy_workers: int = 2,
        watchdog: LoopWatchdog | None = None,
    ) -> None:
        self.policy = policy or RecoveryPolicy(clock=clock)
        self.strategy_workers = strategy_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.watchdog = watchdog or LoopWatchdog(clock=clock)
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.slots: dict[str, Slot] = {}
        self.events: list[Event] = []
        self.changed = asyncio.Event()
        self.cycle_histogram = CycleHistogram()
        self.ticker = Ticker()  # one timer per few ms for all the engines' sleeps

    # Commands ---------------------------------------------------------------------------

    def start(self, config: EngineConfig, *, state: EngineState | None = None) -> bool:
        """Start an engine unless it is already running; False when it was."""
        slot = self.slots.get(config.symbol)
        if slot is None:
            slot = self.slots[config.symbol] = Slot(config, state or EngineState())
        elif slot.task is not None and not slot.stopping:
            return False
        slot.config = config
        self._cancel_retry(slot)
        self._launch(slot)
        return True

    def adopt(
        self,
        config: EngineConfig,
        state: EngineState | None,
        status: Status,
        reason: str,
        *,
        emit: bool = True,
    ) -> None:
        """Track an engine that is not to run now (stopped, or failed before)."""
        slot = self.slots.get(config.symbol)
        if slot is None:
            slot = self.slots[config.symbol] = Slot(config, state or EngineState())
        if emit:
            self._set_status(slot, status, reason)
        else:
            slot.status = status

    def fail(self, symbol: str, exc: BaseException) -> None:
        """Hand a failure found outside the engine's task (e.g. a bad config) to recovery."""
        self._failed(self.slots[symbol], exc)

    def start_all(self, configs: Iterable[EngineConfig]) -> int:
        return sum(self.start(config) for config in configs)

    async def stop(
        self,
        symbol: str,
        *,
        reason: str = "stopped",
        keep_failed: bool = False,
        close: bool = False,
        force: bool = False,
    ) -> None:
        """Stop gracefully: the current cycle finishes, then the task ends. A hung engine
        is cancelled after ``stop_timeout``. ``keep_failed`` leaves a failed (or halted)
        engine so (a runner shutdown is no operator's decision). With ``close`` (an
        operator's stop), an engine configured ``on_stop: close`` closes its position; with
        ``force`` too (the kill switch's close), whatever its ``on_stop``. An engine trading
        on an exchange closes there, and is awaited."""
        slot = self.slots.get(symbol)
        if slot is None:
            return
        self._cancel_retry(slot)
        task = slot.task
        if task is None:
            if keep_failed and slot.status in (Status.FAILED, Status.HALTED):
                return
            if slot.status != Status.STOPPED:
                self._set_status(slot, Status.STOPPED, reason)
            if close:
                await self._close_after_stop(slot, reason, force)
            return
        slot.stopping = True
        slot.reason = reason
        self._set_status(slot, Status.STOPPING, reason)
        if slot.engine.request_stop():
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        if close:
            await self._close_after_stop(slot, reason, force)

    async def stop_all(self, *, reason: str = "stopped", keep_failed: bool = False) -> None:
        await asyncio.gather(
            *(self.stop(s, reason=reason, keep_failed=keep_failed) for s in list(self.slots))
        )

    async def restart(
        self,
        symbol: str,
        config: EngineConfig | None = None,
        *,
        reason: str = "restarting",
        reset_budget: bool = True,
    ) -> bool:
        """Stop the engine if it runs, then start it (with ``config`` when given): the one
        way an engine is started again, whatever asked for it. ``reset_budget`` gives it a
        fresh failure budget (an operator asked for it). False when it was running still."""
        slot = self.slots.get(symbol)
        if slot is None and config is None:
            raise KeyError(symbol)
        if slot is not None and slot.task is not None:
            await self.stop(symbol, reason=reason)
        if reset_budget:
            self.policy.reset(symbol)
        return self.start(config or self.slots[symbol].config)

    def configure(self, config: EngineConfig) -> None:
        """Keep ``config`` for the engine's next start (a retry, a new day) without
        restarting it."""
        slot = self.slots.get(config.symbol)
        if slot is not None:
            slot.config = config

    def adopt_halted(self, config: EngineConfig, state: EngineState | None, day: int) -> None:
        """Track an engine a risk limit halted on UTC ``day``: it runs again the day after."""
        self.adopt(config, state, Status.HALTED, "", emit=False)
        self.slots[config.symbol].halted_day = day

    def cancel_all(self) -> None:
        """Cancel every engine task now, mid-cycle or not (a forced exit)."""
        self.stop_timeout = 0.0
        for slot in self.slots.values():
            if slot.task is not None:
                slot.task.cancel()

    def report_error(self, symbol: str, exc: BaseException) -> None:
        """Record an error found outside the engine's task (it counts for nothing else)."""
        self._emit(_error_event(symbol, self.clock(), exc, crashed=False))

    async def abandon(self, symbol: str) -> None:
        """Stop tracking the engine at once: its task is cancelled mid-cycle and nothing more
        is reported of it (another runner holds it now, or is about to)."""
        slot = self.slots.pop(symbol, None)
        if slot is None:
            return
        self._cancel_retry(slot)
        task, slot.task = slot.task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def remove(self, symbol: str) -> None:
        await self.stop(symbol, reason="removed")
        self.slots.pop(symbol, None)

    def recover_hung(self, symbol: str, silent_for: float) -> None:
        """Cancel a hung engine and hand it to recovery as a failure."""
        slot = self.slots[symbol]
        task, slot.task = slot.task, None
        if task is not None:
            task.cancel()
        self._failed(slot, HeartbeatTimeout(f"no heartbeat for {silent_for:.1f}s"))

    def lift_halt(self, symbol: str) -> bool:
        """An operator restarts a halted engine: today's loss so far no longer counts
        against the daily limit."""
        slot = self.slots.get(symbol)
        if slot is None or slot.status != Status.HALTED:
            return False
        book = slot.engine.state.book
        book.loss_base = book.daily_pnl()
        # Stored with the start's status row (the same flush): a runner started again
        # today counts the limit from here too.
        self.engine_filled(slot.engine, None)
        return True

    def new_day(self, symbol: str, now: float) -> str:
        """Start the UTC day of ``now`` for one engine (the scheduled daily reset); a
        halted engine runs again."""
        slot = self.slots.get(symbol)
        if slot is None:
            return "engine not loaded"
        if slot.engine.roll_day(now):
            self.engine_filled(slot.engine, None)
        if slot.status == Status.HALTED and slot.task is None and slot.halted_day < utc_day(now):
            self._launch(slot)
            return "new day: halted engine resumed"
        return "new day"

    def resume_halted(self, now: float) -> list[str]:
        """Run again the engines halted on an earlier UTC day."""
        today = utc_day(now)
        due = [s for s in self.slots.values() if s.status == Status.HALTED and s.halted_day < today]
        return [
            symbol for slot in due if (symbol := slot.config.symbol) and self.new_day(symbol, now)
        ]

    # Reading ----------------------------------------------------------------------------

    def drain_events(self) -> list[Event]:
        events, self.events = self.events, []
        self.changed.clear()
        return events

    def __len__(self) -> int:
        return len(self.slots)

    def status_of(self, symbol: str) -> Status | None:
        """The engine's status; None when the manager does not track it."""
        slot = self.slots.get(symbol)
        return None if slot is None else slot.status

    def has_task(self, symbol: str) -> bool:
        """Whether the engine's task exists, running or being stopped."""
        slot = self.slots.get(symbol)
        return slot is not None and slot.task is not None

    def is_alive(self, symbol: str) -> bool:
        """Whether the engine's task runs and is not being stopped."""
        slot = self.slots.get(symbol)
        return slot is not None and slot.task is not None and not slot.stopping

    def engine_of(self, symbol: str) -> TradingEngine | None:
        """The engine of the symbol's latest run (or the one to run next)."""
        slot = self.slots.get(symbol)
        return None if slot is None else slot.engine

    def engines(self) -> Iterator[tuple[str, TradingEngine]]:
        """Every tracked engine by symbol, running or not."""
        return ((symbol, slot.engine) for symbol, slot in self.slots.items())

    def beats(self) -> Iterator[tuple[str, TradingEngine, bool]]:
        """Every tracked engine by symbol, and whether it is running (degraded included)."""
        return ((symbol, slot.engine, slot.is_running) for symbol, slot in self.slots.items())

    def running_engines(self) -> Iterator[TradingEngine]:
        """The engines running now (degraded included)."""
        return (slot.engine for slot in self.slots.values() if slot.is_running)

    def running_count(self) -> int:
        """How many engine tasks are alive (stopping ones included)."""
        return sum(1 for slot in self.slots.values() if slot.task is not None)

    def summary(self) -> dict[str, int]:
        counts = {"total": len(self.slots)} | {status.value: 0 for status in Status}
        for slot in self.slots.values():
            counts[slot.status] += 1
        return counts

    # Engine listener --------------------------------------------------------------------

    def engine_started(self, engine: TradingEngine) -> None:
        slot = self.slots.get(engine.symbol)
        if slot is not None and slot.engine is engine:
            self._set_status(slot, Status.RUNNING, "", started_at=engine.started_at)

    def engine_error(self, engine: TradingEngine, exc: BaseException) -> None:
        self._emit(_error_event(engine.symbol, self.clock(), exc, crashed=False))

    def engine_filled(self, engine: TradingEngine, fill: Fill | None) -> None:
        state, book = engine.state, engine.state.book
        self._emit(
            BookChanged(
                engine.symbol,
                self.clock(),
                fill,
                state.position,
                state.daily_pnl,
                state.total_pnl,
                state.trade_count,
                book.day,
                book.day_start,
                book.loss_base,
            )
        )

    def engine_feed(self, engine: TradingEngine, stale_for: float | None) -> None:
        slot = self.slots.get(engine.symbol)
        if slot is None or slot.engine is not engine or slot.task is None or slot.stopping:
            return
        if stale_for is not None and slot.status == Status.RUNNING:
            log.warning(
                "Engine %s degraded: no market data for %.1fs",
                engine.symbol,
                stale_for,
                extra={"symbol": engine.symbol},
            )
            self._set_status(slot, Status.DEGRADED, f"no market data for {stale_for:.1f}s")
        elif stale_for is None and slot.status == Status.DEGRADED:
            log.info(
                "Engine %s market data is back", engine.symbol, extra={"symbol": engine.symbol}
            )
            self._set_status(slot, Status.RUNNING, "", started_at=engine.started_at)

    # Internals --------------------------------------------------------------------------

    @property
    def strategy_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The worker threads heavy strategies decide in, made when the first one starts."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.strategy_workers, thread_name_prefix="strategy"
            )
        return self._pool

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _launch(self, slot: Slot) -> None:
        state = slot.engine.state
        strategy = load_strategy(slot.config.strategy)  # a bad one fails in the engine's run
        heavy = not isinstance(strategy, str) and strategy.heavy
        slot.engine = TradingEngine(
            slot.config,
            listener=self,
            state=state,
            clock=self.clock,
            cycle_histogram=self.cycle_histogram,
            sleep=self.ticker.sleep,
            pool=self.strategy_pool if heavy else None,
            watch=self.watchdog,
        )
        slot.stopping = False
        slot.next_retry_at = None
        self._set_status(slot, Status.STARTING, "")
        task = asyncio.create_task(slot.engine.run(), name=f"engine:{slot.config.symbol}")
        slot.task = task
        task.add_done_callback(partial(self._on_done, slot))

    def _on_done(self, slot: Slot, task: asyncio.Task[None]) -> None:
        if slot.task is not task:
            return  # already handled (a hung task cancelled by recover_hung)
        slot.task = None
        exc = None if task.cancelled() else task.exception()
        if exc is None or slot.stopping:
            self._set_status(slot, Status.STOPPED, slot.reason if slot.stopping else "")
            slot.stopping = False
        elif isinstance(exc, RiskHalt):
            self._halt(slot, exc)
        else:
            self._failed(slot, exc)

    def _halt(self, slot: Slot, exc: RiskHalt) -> None:
        symbol = slot.config.symbol
        slot.halted_day = utc_day(self.clock())
        log.warning("Engine %s halted: %s", symbol, exc, extra={"symbol": symbol})
        self._set_status(slot, Status.HALTED, str(exc), code=exc.code)
        self._close_on_stop(slot, str(exc))

    def _close_on_stop(self, slot: Slot, reason: str) -> None:
        """Close on a halt or a failure, if configured: on paper only. An engine trading on
        an exchange is left as it is for an operator (its failure may be the exchange's,
        or a position that differs from the book: never guessed at)."""
        if slot.config.on_stop == "close" and slot.config.broker == "paper":
            slot.engine.close_position(reason)

    async def _close_after_stop(self, slot: Slot, reason: str, force: bool) -> None:
        if not force and slot.config.on_stop != "close":
            return
        if slot.config.broker == "paper":
            slot.engine.close_position(reason)
            return
        try:
            await slot.engine.close_on_exchange(reason)
        except Exception as exc:  # reported, never raised into a stop
            log.exception("Closing %s on the exchange failed", slot.config.symbol)
            self._emit(_error_event(slot.config.symbol, self.clock(), exc, crashed=False))

    def _failed(self, slot: Slot, exc: BaseException) -> None:
        now, symbol, engine = self.clock(), slot.config.symbol, slot.engine
        fatal = is_fatal(exc)
        engine.state.error_count += 1
        engine.state.last_error = f"{type(exc).__name__}: {exc}"
        log.error(
            "Engine %s crashed: %s",
            symbol,
            engine.state.last_error,
            extra={"symbol": symbol},
            exc_info=exc,
        )
        self._emit(_error_event(symbol, now, exc, crashed=True))
        self._set_status(slot, Status.CRASHED, engine.state.last_error)
        ran_for = now - engine.started_at if engine.started_at else 0.0
        decision = self.policy.on_failure(symbol, fatal=fatal, ran_for=ran_for)
        if not decision.restart:
            log.error("Engine %s failed: %s", symbol, decision.reason, extra={"symbol": symbol})
            self._set_status(
                slot,
                Status.FAILED,
                f"{decision.reason} ({engine.state.last_error})",
                attempt=decision.attempt,
                budget_left=decision.budget_left,
            )
            self._close_on_stop(slot, "engine failed")
            return
        slot.next_retry_at = now + decision.delay
        self._emit(
            RestartScheduled(symbol, now, engine.state.last_error, decision.attempt, decision.delay)
        )
        log.warning(
            "Engine %s restarts in %.1fs (attempt %d, %d left this hour)",
            symbol,
            decision.delay,
            decision.attempt,
            decision.budget_left,
            extra={"symbol": symbol},
        )
        self._set_status(
            slot,
            Status.BACKOFF,
            engine.state.last_error,
            attempt=decision.attempt,
            next_retry_at=slot.next_retry_at,
            budget_left=decision.budget_left,
        )
        loop = asyncio.get_running_loop()
        slot.retry = loop.call_later(decision.delay, self._retry_due, slot)

    def _retry_due(self, slot: Slot) -> None:
        slot.retry = None
        if self.slots.get(slot.config.symbol) is slot and slot.task is None:
            self._launch(slot)

    def _cancel_retry(self, slot: Slot) -> None:
        if slot.retry is not None:
            slot.retry.cancel()
            slot.retry = None
        slot.next_retry_at = None

    def _set_status(self, slot: Slot, status: Status, reason: str, **extra: object) -> None:
        slot.status = status
        symbol = slot.config.symbol
        extra.setdefault("attempt", self.policy.attempt(symbol))
        extra.setdefault("budget_left", self.policy.budget_left(symbol))
        self._emit(StatusChanged(symbol, status.value, self.clock(), reason, **extra))

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        if not isinstance(event, BookChanged):  # fills wait for the runner's next flush
            self.changed.set()


def _error_event(symbol: str, at: float, exc: BaseException, *, crashed: bool) -> ErrorRaised:
    trace = "".join(traceback.format_exception(exc))
    return ErrorRaised(symbol, at, type(exc).__name__, str(exc), trace, is_fatal(exc), crashed)
