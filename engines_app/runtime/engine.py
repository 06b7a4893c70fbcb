"""One trading engine: a cycle loop for one symbol, with a heartbeat and error counting.

Each cycle reads the feed, runs the strategy, checks risk and fills orders on the paper
broker, or sends them to an exchange (``brokers``: testnet or live). Failure injection
(crash, hang, fatal) exists for demos and tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Protocol

from . import risk
from .broker import BUY, DAY, SELL, Book, Fill, execute, record, utc_day
from .brokers import PAPER, TESTNET, ExchangeBroker, Executed, broker_problems
from .candles import INTERVALS, Candle, CandleBuilder
from .cyclestats import CycleHistogram
from .errors import (
    ConfigError,
    CrashError,
    FatalEngineError,
    FeedSilent,
    InjectedCrash,
    InvalidSymbolError,
    RiskHalt,
    SlowStrategy,
    StrategyError,
)
from .feeds import Feed, feed_problems, make_feed
from .ratelimit import LogLimiter
from .strategies import (
    Order,
    Strategy,
    Target,
    interval_problem,
    make_strategy,
    strategy_problems,
)

log = logging.getLogger("levipanel.engine")

EMPTY: Mapping[str, Any] = MappingProxyType({})
ON_STOP = ("hold", "close")
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
# A cycle that keeps failing is no longer "an error now and then": crash and let recovery act.
MAX_CONSECUTIVE_ERRORS = 3
MAX_CYCLE = 86_400  # seconds: a day between cycles is slow enough for any strategy
# A strategy call longer than its cycle interval, and than this, is reported as slow.
SLOW_FLOOR = 0.1
MAX_TARGET = 1e12  # a target position (units of order_qty) past this is a strategy's bug


def symbol_problem(symbol: object) -> str | None:
    """Say what is wrong with a symbol, or None when it is well formed."""
    if not isinstance(symbol, str) or not symbol:
        return "symbol is required"
    if len(symbol) > 20:
        return "symbol is longer than 20 characters"
    if not SYMBOL_RE.fullmatch(symbol):  # match() would let "BTCUSDT\n" by
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
    # Trading. Limits are in the quote currency; fee_rate and slippage are fractions.
    feed: str = "sim"
    feed_options: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    strategy: str = "sma_cross"
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    # Candles the strategy trades on ("1m", "5m", "1h" …); None: the strategy's own choice
    # (the built-ins: none, a decision on every price).
    candle_interval: str | None = None
    order_qty: float = 1.0
    max_position_notional: float | None = None
    max_order_notional: float | None = None
    daily_loss_limit: float | None = None
    fee_rate: float = 0.001
    slippage: float = 0.0005
    stop_entries: bool = False
    on_stop: str = "hold"
    # Silence of the feed, in cycle intervals: degraded after the first, a hang after the second.
    feed_stale_after: float = 5.0
    feed_dead_after: float = 60.0
    # Where orders go: "paper" (in memory), "testnet" or "live" (an exchange, through ccxt;
    # see brokers.py). ``order_tag`` (the engine's id, set by the runner, not an option)
    # makes its client order ids.
    broker: str = PAPER
    broker_options: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    order_tag: str = ""
    # Set by a validate() that found no problem: the engine does not check again what the
    # runner checked before starting it (a tenth of a 10,000-engine start-up).
    validated: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_options(
        cls,
        symbol: str,
        cycle_interval: float | None,
        options: object,
        *,
        default_interval: float = 1.0,
    ) -> EngineConfig:
        """Build a config from an engine's row: its interval (None: ``default_interval``)
        and its options object (JSON, so anything may come): not a mapping, or with
        unknown keys, is a ConfigError. The one way from stored settings to a config."""
        if cycle_interval is None:
            cycle_interval = default_interval
        if not isinstance(options, Mapping):
            raise ConfigError("config must be a JSON object")
        known = {f.name for f in fields(cls) if f.init} - {"symbol", "cycle_interval", "order_tag"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown engine option(s): {', '.join(unknown)}")
        try:
            return cls(symbol=symbol, cycle_interval=cycle_interval, **options)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc

    def problems(self) -> list[str]:
        """Every reason this config cannot run, in words an operator understands."""
        out = []
        if problem := symbol_problem(self.symbol):
            out.append(problem)
        if not _is_number(self.cycle_interval) or not 0 < self.cycle_interval <= MAX_CYCLE:
            out.append(f"cycle_interval must be a number greater than 0 and at most {MAX_CYCLE}")
        if not _is_number(self.crash_probability) or not 0 <= self.crash_probability <= 1:
            out.append("crash_probability must be between 0 and 1")
        for name in ("crash_after_cycles", "hang_after_cycles", "fatal_after_cycles", "seed"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                out.append(f"{name} must be a whole number >= 0")
        out.extend(feed_problems(self.feed, self.feed_options, self.symbol))
        out.extend(strategy_problems(self.strategy, self.params))
        if problem := interval_problem(self.candle_interval):
            out.append(problem)
        out.extend(broker_problems(self.broker, self.broker_options, self.feed, self.feed_options))
        out.extend(self._trading_problems())
        return out

    def _trading_problems(self) -> list[str]:
        out = []
        if not _is_number(self.order_qty) or self.order_qty <= 0:
            out.append("order_qty must be a number greater than 0")
        for name in ("max_position_notional", "max_order_notional", "daily_loss_limit"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                out.append(f"{name} must be a number greater than 0, or null for no limit")
        for name in ("fee_rate", "slippage"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 0.1:
                out.append(f"{name} must be a fraction from 0 to 0.1 (0.001 is 0.1 %)")
        if not isinstance(self.stop_entries, bool):
            out.append("stop_entries must be true or false")
        if self.on_stop not in ON_STOP:
            out.append('on_stop must be "hold" or "close"')
        stale, dead = self.feed_stale_after, self.feed_dead_after
        if not _is_number(stale) or not _is_number(dead) or not 0 < stale < dead:
            out.append("feed_stale_after and feed_dead_after must be numbers, 0 < stale < dead")
        return out

    def risk_limits(self) -> risk.RiskLimits:
        return risk.RiskLimits(
            self.max_position_notional, self.max_order_notional, self.daily_loss_limit
        )

    def validate(self) -> None:
        if self.validated:
            return
        if problems := self.problems():
            error = InvalidSymbolError if symbol_problem(self.symbol) else ConfigError
            raise error("; ".join(problems))
        object.__setattr__(self, "validated", True)  # frozen: set once, by this check


def _is_number(value: object) -> bool:
    """A finite int or float: a config may hold NaN or Infinity (Python's JSON reads them),
    which would pass every comparison check and no database stores in JSON, or an int too
    large for a float (JSON numbers have no size limit)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past any float
        return False


class EngineListener(Protocol):
    def engine_started(self, engine: TradingEngine) -> None: ...
    def engine_error(self, engine: TradingEngine, exc: BaseException) -> None: ...
    def engine_filled(self, engine: TradingEngine, fill: Fill | None) -> None: ...
    def engine_feed(self, engine: TradingEngine, stale_for: float | None) -> None: ...


@dataclass(slots=True)
class EngineState:
    """What survives an engine's restart: counters and trading results. ``book`` is the
    truth; the four status numbers are refreshed from it by ``sync``."""

    error_count: int = 0
    last_error: str | None = None
    position: float | None = None
    daily_pnl: float = 0.0
    total_pnl: float = 0.0
    trade_count: int = 0
    book: Book = field(default_factory=Book)
    last_tick_at: float | None = None
    # The strategy's exit levels for the open position, enforced by the engine.
    stop_loss: float | None = None
    take_profit: float | None = None
    # The newest closed candles (bounded): a restarted strategy warms up on them.
    candles: deque[Candle] = field(default_factory=deque)
    candle_seconds: float = 0.0

    def sync(self) -> None:
        book = self.book
        self.position = book.qty or None
        self.daily_pnl = book.daily_pnl()
        self.total_pnl = book.total_pnl()
        self.trade_count = book.trade_count


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
        "feed",
        "strategy",
        "limits",
        "degraded",
        "rejected",
        "broker",
        "pending",
        "cycle_histogram",
        "_log_limiter",
        "_sleep",
        "builder",
        "candle_span",
        "tick_strategy",
        "heavy",
        "pool",
        "watch",
        "log_fills",
        "slow_after",
        "_due",
        "_decide",
    )

    def __init__(
        self,
        config: EngineConfig,
        *,
        listener: EngineListener | None = None,
        state: EngineState | None = None,
        clock: Callable[[], float] = time.time,
        cycle_histogram: CycleHistogram | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        pool: concurrent.futures.Executor | None = None,
        watch: Any = None,
    ) -> None:
        self.config = config
        self._sleep = sleep  # between cycles; the manager passes its Ticker's
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
        self.feed: Feed | None = None
        self.strategy: Strategy | None = None
        self.limits = risk.RiskLimits()
        self.degraded = False
        self.rejected = ""  # the last order rejection, logged once rather than every cycle
        self.broker: ExchangeBroker | None = None  # None: the paper broker
        self.pending: tuple[str, float] | None = None  # an exchange order to send: side, qty
        self._log_limiter: LogLimiter | None = None  # made on the first error
        self.builder: CandleBuilder | None = None  # None: the strategy decides per price
        self.candle_span = 0.0  # the length of the candles the feed hands over whole
        self.tick_strategy = False  # its on_tick is called on every price
        self.heavy = False
        self.pool = pool  # where a heavy strategy's decisions run
        self.watch = watch  # the runner's loop-lag watchdog, told of long strategy calls
        self.log_fills = True
        interval = config.cycle_interval
        self.slow_after = max(interval, SLOW_FLOOR) if _is_number(interval) else SLOW_FLOOR
        self._due: Candle | None = None  # a closed candle a heavy strategy decides on next
        self._decide: Callable[[Candle, float], Any] | None = None  # strategy.on_candle

    @property
    def log_limiter(self) -> LogLimiter:
        if self._log_limiter is None:
            self._log_limiter = LogLimiter()
        return self._log_limiter

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
        self.prepare()
        try:
            if self.broker is not None:
                await self.open_broker()
            self.feed.start(self.record_error)
            if self.listener:
                self.listener.engine_started(self)
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
                    await self._sleep(self.config.cycle_interval)
        finally:
            self.feed.close()
            if self.broker is not None:
                with contextlib.suppress(Exception):
                    await self.broker.close()
            log.info("Engine for %s stopped after %d cycles", symbol, self.cycles, extra=extra)

    def prepare(self, *, feed: bool = True) -> None:
        """Build the feed, broker, strategy and limits of a validated config. A strategy on
        candles warms up on the candles the engine kept from its last run."""
        config, state, book = self.config, self.state, self.state.book
        if feed:
            feed_options = config.feed_options
            if config.broker != PAPER:
                if config.broker == TESTNET:  # the sandbox's prices: its orders fill at them
                    feed_options = {**feed_options, "sandbox": True}
                self.broker = self._make_broker()
            self.feed = make_feed(
                config.feed,
                feed_options,
                symbol=config.symbol,
                seed=None if config.seed is None else config.seed + book.trade_count,
                mark=book.mark,
            )
            self.candle_span = getattr(self.feed, "candle_span", 0.0)
        self.strategy = strategy = make_strategy(config.strategy, config.params)
        self.limits = config.risk_limits()
        interval = config.candle_interval or strategy.interval
        self.heavy = bool(strategy.heavy)
        if interval is None:
            self.builder, self.tick_strategy = None, True
            return
        seconds = float(INTERVALS[interval])
        self.builder, self.tick_strategy = CandleBuilder(seconds), bool(strategy.wants_ticks)
        kept = state.candles if state.candle_seconds == seconds else ()
        state.candles = strategy.candles = deque(maxlen=max(strategy.history, strategy.warmup, 1))
        state.candle_seconds = seconds
        self._decide = strategy.on_candle
        position = book.qty / config.order_qty
        for candle in kept:  # warm-up: its decisions are dropped, nothing is traded
            state.candles.append(candle)
            strategy.on_candle(candle, position)

    async def _guarded_cycle(self) -> None:
        try:
            await self.cycle()
            self.consecutive_errors = 0
        except (CrashError, FatalEngineError, RiskHalt):
            raise
        except Exception as exc:
            self.record_error(exc)
            self.consecutive_errors += 1
            if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                raise

    def record_error(self, exc: BaseException) -> None:
        """Count an error the engine survived, and tell the listener. Under a storm only a
        few lines per kind reach the log, then one saying how many were left out."""
        self.state.error_count += 1
        self.state.last_error = f"{type(exc).__name__}: {exc}"
        logged, left_out = self.log_limiter.allow(type(exc).__name__)
        extra = {"symbol": self.config.symbol}
        if left_out:
            log.warning(
                "Suppressed %d more %s errors for %s",
                left_out,
                type(exc).__name__,
                self.config.symbol,
                extra=extra,
            )
        if logged:
            log.error(
                "Cycle error for %s: %s", self.config.symbol, self.state.last_error, extra=extra
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
        now = self.clock()
        item = self.feed.poll() if self.feed is not None else None
        if item is None:
            self._silent(now)
        else:
            await self._on_item(item, now)
        if self.broker is not None:  # orders to send, and the reconciliation when due
            await self._broker_cycle()

    async def _on_item(self, item: float | Candle, now: float) -> None:
        """A price or a candle from the feed: to the strategy, timed."""
        began = time.perf_counter()
        if type(item) is Candle:
            self._feed_candle(item, now)
        else:
            self.on_tick(item, now)
        spent = time.perf_counter() - began
        if spent > SLOW_FLOOR:  # held the event loop: the watchdog may need a name
            if self.watch is not None:
                self.watch.note(self.config.symbol, spent)
            if spent > self.slow_after:
                self._slow(spent, blocking=True)
        if self._due is not None:  # a heavy strategy: its decision runs in the pool
            candle, self._due = self._due, None
            await self._decide_in_pool(candle, now)

    # Exchange orders (testnet and live) ---------------------------------------------------

    def _make_broker(self) -> ExchangeBroker:
        config = self.config
        return ExchangeBroker(
            config.broker,
            exchange=config.feed_options["exchange"],
            market=config.feed_options["market"],
            options=config.broker_options,
            order_tag=config.order_tag or config.symbol,
            symbol=config.symbol,
        )

    async def close_on_exchange(self, reason: str) -> None:
        """Close the position at market on the exchange, once the engine has stopped (an
        operator's stop with ``on_stop: close``, or the kill switch's close)."""
        broker = self.broker = self.broker or self._make_broker()
        book = self.state.book
        try:
            await broker.open()
            while (found := await broker.find(book.trade_count + 1)) is not None:
                self._book(found, found.qty)
            if book.qty > broker.step:
                log.info(
                    "Closing the %s position of %g on %s: %s",
                    self.symbol,
                    book.qty,
                    broker.exchange_id,
                    reason,
                    extra={"symbol": self.symbol},
                )
                executed = await broker.submit(book.trade_count + 1, SELL, book.qty)
                self._book(executed, executed.qty)
        finally:
            await broker.close()

    async def open_broker(self) -> None:
        """Connect to the exchange; book an order a run before this one sent and did not
        live to store (found by its client order id); reconcile the position."""
        broker, book = self.broker, self.state.book
        await broker.open()
        while (found := await broker.find(book.trade_count + 1)) is not None:
            log.warning(
                "Order %s was filled before the engine stopped: booking it",
                found.client_id,
                extra={"symbol": self.symbol},
            )
            self._book(found, found.qty)
        await broker.reconcile(book.qty)

    async def _broker_cycle(self) -> None:
        broker = self.broker
        if self.pending is not None:
            side, qty = self.pending
            self.pending = None
            if side == SELL:  # spot: sell what is held, never more
                qty = min(qty, max(self.state.book.qty, 0.0))
            if qty > broker.step:
                executed = await broker.submit(self.state.book.trade_count + 1, side, qty)
                self._book(executed, qty)
        if time.monotonic() >= broker.reconcile_due:
            await broker.reconcile(self.state.book.qty)

    def _book(self, executed: Executed, wanted: float) -> None:
        """Book what an exchange order filled (nothing: its id is spent)."""
        extra = {"symbol": self.symbol}
        if executed.qty <= 0:
            self.broker.attempt += 1
            log.warning(
                "Order %s filled nothing (%s)", executed.client_id, executed.status, extra=extra
            )
            return
        self.broker.attempt = 0
        if executed.qty < wanted * 0.999:
            log.warning(
                "Order %s partially filled: %g of %g (%s)",
                executed.client_id,
                executed.qty,
                wanted,
                executed.status,
                extra=extra,
            )
        fill = record(
            self.state.book,
            executed.client_id,
            self.config.symbol,
            executed.side,
            executed.qty,
            executed.price,
            executed.fee,
            self.clock(),
        )
        self._filled(fill)
        self._check_daily_loss()

    def on_tick(self, price: float, now: float) -> None:
        """Mark the book, enforce the exit levels, let the strategy speak (on this price,
        or on the candle it closed), trade toward what it wants within the limits. Raises
        RiskHalt when today's loss reaches the daily limit."""
        state, book = self.state, self.state.book
        state.last_tick_at = now
        if self.degraded:
            self.degraded = False
            self._tell_feed(None)
        if self.roll_day(now) and self.listener:
            self.listener.engine_filled(self, None)  # the day's start, stored
        book.mark = price
        self._check_daily_loss()
        if state.stop_loss is not None or state.take_profit is not None:
            self._exit_at(price, price, price, now)
        if self.tick_strategy:
            qty = self.config.order_qty
            decision = self.strategy.on_tick(price, book.qty / qty)
            if decision is not None and (type(decision) is not int or decision * qty != book.qty):
                self._act(decision, price, now)
        if self.builder is not None and (closed := self.builder.add(price, now)) is not None:
            self._closed(closed, price, now)
        state.sync()

    def _feed_candle(self, candle: Candle, now: float) -> None:
        """A whole candle from the feed (a candle file, the stream's klines)."""
        if self.builder is None:
            self.on_tick(candle[4], now)
            return
        self.state.last_tick_at = now
        if self.degraded:
            self.degraded = False
            self._tell_feed(None)
        if (closed := self.builder.add_candle(candle, self.candle_span)) is not None:
            self.on_candle(closed, now)
        else:
            self.state.book.mark = candle[4]
        self.state.sync()

    def on_candle(self, candle: Candle, now: float) -> None:
        """A closed candle, whole: the exit levels are checked against its range (a stop
        fills at its level, or at the open past it), the book is marked at its close and the
        strategy decides; the order fills at the close. The backtest's step and the live
        engine's alike. Raises RiskHalt when today's loss reaches the daily limit."""
        state, book = self.state, self.state.book
        if now >= (book.day + 1) * DAY and self.roll_day(now) and self.listener:
            self.listener.engine_filled(self, None)
        if state.stop_loss is not None or state.take_profit is not None:
            self._exit_at(candle[1], candle[3], candle[2], now)
        book.mark = close = candle[4]
        if self.limits.daily_loss_limit is not None:
            self._check_daily_loss()
        state.candles.append(candle)
        if self.heavy and self.pool is not None:
            self._due = candle
            return
        qty = self.config.order_qty
        decision = self._decide(candle, book.qty / qty)
        # Most candles change nothing: that case costs one comparison, not a call.
        if decision is not None and (type(decision) is not int or decision * qty != book.qty):
            self._act(decision, close, now)

    def _closed(self, candle: Candle, price: float, now: float) -> None:
        """A candle built from prices closed (its prices were marked and checked already)."""
        self.state.candles.append(candle)
        if self.heavy and self.pool is not None:
            self._due = candle
            return
        book = self.state.book
        self._act(self._decide(candle, book.qty / self.config.order_qty), price, now)

    async def _decide_in_pool(self, candle: Candle, now: float) -> None:
        """A heavy strategy decides in a worker thread; the loop (the other engines) goes on."""
        began = time.perf_counter()
        position = self.state.book.qty / self.config.order_qty
        loop = asyncio.get_running_loop()
        decision = await loop.run_in_executor(self.pool, self.strategy.on_candle, candle, position)
        if (spent := time.perf_counter() - began) > self.slow_after:
            self._slow(spent, blocking=False)
        book = self.state.book
        if book.mark is not None:
            self._act(decision, book.mark, now)
            self.state.sync()

    def _act(self, decision: object, price: float, now: float) -> None:
        """Trade toward what the strategy answered (see ``strategies``)."""
        if decision is None:
            return
        state, qty = self.state, self.config.order_qty
        kind = type(decision)
        if kind is int or kind is float:
            target = decision * qty
            if target == state.book.qty:
                return  # nothing to do: the common case, kept short
        elif kind is Target:
            target = decision.position * qty
            state.stop_loss, state.take_profit = decision.stop_loss, decision.take_profit
        elif kind is Order:
            target = state.book.qty + decision.qty * qty
            state.stop_loss, state.take_profit = decision.stop_loss, decision.take_profit
        elif isinstance(decision, int | float) and not isinstance(decision, bool):
            target = float(decision) * qty  # a numpy number, say
        else:
            raise StrategyError(
                f"strategy answered {decision!r}: expected None, a number, Target or Order"
            )
        if not -MAX_TARGET < target < MAX_TARGET:  # NaN fails this too
            raise StrategyError(f"strategy answered a target of {target!r}")
        self._trade_toward(target, price, now)
        if not state.book.qty and (state.stop_loss is not None or state.take_profit is not None):
            state.stop_loss = state.take_profit = None

    def _exit_at(self, open_: float, low: float, high: float, now: float) -> None:
        """Close the position when the price range reached its stop loss or take profit: at
        the level, or at the open when the price opened past it. Stop first when both."""
        state, qty = self.state, self.state.book.qty
        stop, take = state.stop_loss, state.take_profit
        price = None
        if qty > 0:
            if stop is not None and low <= stop:
                price = min(open_, stop)
            elif take is not None and high >= take:
                price = max(open_, take)
        elif qty < 0:
            if stop is not None and high >= stop:
                price = max(open_, stop)
            elif take is not None and low <= take:
                price = min(open_, take)
        if qty == 0 or price is not None:
            state.stop_loss = state.take_profit = None
        if price is None:
            return
        side = SELL if qty > 0 else BUY
        if self.broker is not None:  # on an exchange: a market order, sent this cycle
            self.pending = (side, abs(qty))
            return
        self._fill(side, abs(qty), price, now)
        self._check_daily_loss()

    def _slow(self, spent: float, *, blocking: bool) -> None:
        """Report a strategy slower than its cycle (``blocking``: it held the event loop,
        and was named to the runner's watchdog)."""
        interval = self.config.cycle_interval
        self.record_error(
            SlowStrategy(
                f"strategy {self.config.strategy} took {spent:.2f}s, longer than its "
                f"{interval:g}s cycle" + ("" if blocking else " (in the worker pool)")
            )
        )

    def roll_day(self, now: float) -> bool:
        """Start a new UTC day's PnL when the date changed (idempotent)."""
        if self.state.book.roll_day(utc_day(now)):
            self.state.sync()
            return True
        return False

    def close_position(self, reason: str) -> Fill | None:
        """Close the open position at market on the paper broker (no risk check: it only
        reduces risk). Used on stop and failure when ``on_stop`` is "close"."""
        book = self.state.book
        if not book.qty or book.mark is None:
            return None
        log.info(
            "Closing the %s position of %g at market: %s",
            self.symbol,
            book.qty,
            reason,
            extra={"symbol": self.symbol},
        )
        return self._fill(BUY if book.qty < 0 else SELL, abs(book.qty), book.mark, self.clock())

    def _trade_toward(self, target: float, price: float, now: float) -> None:
        position = self.state.book.qty
        if self.config.stop_entries:  # drain: only reduce, never open, add or flip
            target = (
                min(max(target, 0.0), position)
                if position >= 0
                else max(min(target, 0.0), position)
            )
        delta = target - position
        if abs(delta) < 1e-9:
            return
        if problem := risk.order_problem(self.limits, position, delta, price):
            if self.broker is not None:  # a real order past a limit: halt, do not skip
                raise RiskHalt(f"{problem} ({self.config.broker} order)", code=risk.ORDER_LIMIT)
            if problem != self.rejected:
                log.warning(
                    "Order rejected for %s: %s", self.symbol, problem, extra={"symbol": self.symbol}
                )
            self.rejected = problem
            return
        self.rejected = ""
        if self.broker is not None:
            self.pending = (BUY if delta > 0 else SELL, abs(delta))
            return
        self._fill(BUY if delta > 0 else SELL, abs(delta), price, now)
        self._check_daily_loss()

    def _fill(self, side: str, qty: float, price: float, now: float) -> Fill:
        config = self.config
        fill = execute(
            self.state.book,
            symbol=config.symbol,
            side=side,
            qty=qty,
            price=price,
            at=now,
            fee_rate=config.fee_rate,
            slippage=config.slippage,
        )
        self._filled(fill)
        return fill

    def _filled(self, fill: Fill) -> None:
        config = self.config
        self.state.sync()
        if self.log_fills:
            log.info(
                "Filled %s %s %g @ %.6g fee %.6g",
                config.symbol,
                fill.side,
                fill.qty,
                fill.price,
                fill.fee,
                extra={"symbol": config.symbol},
            )
        if self.listener:
            self.listener.engine_filled(self, fill)

    def _check_daily_loss(self) -> None:
        if reason := risk.daily_loss_reason(self.limits, self.state.book):
            self.state.sync()
            raise RiskHalt(reason, code=risk.DAILY_LOSS)

    def _silent(self, now: float) -> None:
        """No new price: degraded after ``feed_stale_after`` cycles, hung after
        ``feed_dead_after``."""
        since = self.state.last_tick_at or self.started_at or now
        if self.started_at and since < self.started_at:
            since = self.started_at  # a tick from before a restart does not count
        silent, interval = now - since, self.config.cycle_interval
        if silent > self.config.feed_dead_after * interval:
            raise FeedSilent(f"no market data for {silent:.1f}s")
        if not self.degraded and silent > self.config.feed_stale_after * interval:
            self.degraded = True
            self._tell_feed(silent)

    def _tell_feed(self, stale_for: float | None) -> None:
        if self.listener:
            self.listener.engine_feed(self, stale_for)

    def _random(self) -> float:
        if self._rng is None:
            self._rng = random.Random(self.config.seed)
        return self._rng.random()

    def request_stop(self) -> bool:
        """Ask the loop to end after the current cycle; True when it is idle and may be
        cancelled right away (between cycles nothing is half done)."""
        self._stopping = True
        return not self._in_cycle
