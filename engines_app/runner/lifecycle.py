"""The runner: hosts the engine manager and reconciles it with the database.

Operators change desired state in the database; every ``poll_interval`` the runner reads
the operator-owned fields of all engines and moves the engines toward them. It writes
status changes, errors and restarts as soon as they happen, and heartbeats and PnL once
per ``flush_interval`` — for all engines in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TextIO

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import DatabaseError, close_old_connections, connection

from ..conf import EngineSettings, engine_settings
from ..models import Engine
from ..runtime import EngineManager, HealthMonitor, RecoveryPolicy, Status
from ..runtime.broker import utc_day
from ..runtime.engine import EngineConfig
from ..runtime.errors import ConfigError
from ..runtime.events import BookChanged, ErrorRaised, RestartScheduled, StatusChanged
from ..runtime.jsonlog import EngineLogs
from . import store

log = logging.getLogger("levipanel.runner")

RUNNING = Engine.DesiredState.RUNNING
# A fill waits at most this long (plus one poll) for a write to ride along with.
FILL_DELAY = 0.5


def db(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a store function on the runner's single database thread."""

    def call(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()  # drops a connection that broke or grew stale
        return func(*args, **kwargs)

    return sync_to_async(call, thread_sensitive=True)


def _close_connection() -> None:
    connection.close()


class Runner:
    """Run the engines of the database until asked to exit."""

    def __init__(
        self,
        *,
        symbols: list[str] | None = None,
        settings: EngineSettings | None = None,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or engine_settings()
        self.symbols = symbols
        self.out = out
        self.clock = clock
        self.policy = RecoveryPolicy(self.settings.recovery(), clock=clock)
        self.manager = EngineManager(
            policy=self.policy, clock=clock, stop_timeout=self.settings.stop_timeout
        )
        self.health = HealthMonitor(
            self.manager,
            check_interval=self.settings.health_check_interval,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            clock=clock,
        )
        self.runner_name = django_settings.RUNNER_NAME
        self.started_at = clock()
        self.ids: dict[str, int] = {}
        self.control: dict[str, store.ControlRow] = {}
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.ready = asyncio.Event()
        self.write_transactions = 0
        self._pending: list = []
        self._heartbeat_due = 0.0
        self._flushed: dict[str, float] = {}  # symbol -> last heartbeat in the database
        self._flushing: dict[str, float] = {}
        self._db_retry_at = 0.0
        self._db_failures = 0
        self._background: set[asyncio.Task[None]] = set()
        self._commands: asyncio.Queue[store.CommandRow] = asyncio.Queue()
        self._last_command_id = 0
        self._acks: list[store.Ack] = []
        self._unsent_acks: list[store.Ack] = []
        self._launched: dict[str, float] = {}  # symbol -> when the runner last started it

    # Lifecycle --------------------------------------------------------------------------

    def request_exit(self) -> None:
        """First call: stop gracefully. Second call: stop now."""
        if self.should_exit.is_set():
            self.say("Second signal: stopping every engine now")
            self.force_exit = True
            self.manager.stop_timeout = 0.0
            for slot in self.manager.slots.values():
                if slot.task is not None:
                    slot.task.cancel()
        self.should_exit.set()

    async def run(self) -> None:
        # A long-running process keeps its connection; close_old_connections() still
        # replaces it after an error (see ``db``).
        connection.settings_dict["CONN_MAX_AGE"] = None
        with EngineLogs(self.settings.log_dir):
            self.say("Starting LeviPanel engine runner...")
            if not await self._start_when_database_ready():
                return
            health = asyncio.create_task(self.health.run(), name="health-monitor")
            commands = asyncio.create_task(self._command_worker(), name="commands")
            self.say(
                f"Health monitor started (interval={self.settings.health_check_interval}s, "
                f"heartbeat timeout={self.settings.heartbeat_timeout}s)"
            )
            self.say("LeviPanel engine runner ready")
            self.ready.set()
            try:
                await self._loop()
            finally:
                health.cancel()
                commands.cancel()
                await self.shutdown()

    async def _start_when_database_ready(self) -> bool:
        """Start up; a database that is unreachable or not migrated yet is waited for, not a
        crash. False when asked to exit while waiting."""
        delay = 0.5
        while True:
            try:
                await self._prepare_database()
                await self.startup()
                return True
            except DatabaseError as exc:
                if self.manager.slots:
                    raise  # engines started already: not a start-up problem
                self.say(f"Database not ready ({exc}); trying again in {delay:g}s")
                await db(_close_connection)()
            try:
                await asyncio.wait_for(self.should_exit.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, 30.0)

    async def startup(self) -> None:
        """Load every engine; start those desired running that are not failed."""
        self.control = await db(store.control_rows)(self.symbols)
        self.ids = {symbol: row.id for symbol, row in self.control.items()}
        states = await db(store.load_states)(list(self.control), self.clock())
        history = await db(store.restart_history)(
            self.policy.settings.window, self.clock()
        )  # fmt: skip
        for symbol, (times, attempt) in history.items():
            self.policy.load(symbol, times, attempt)
        halted = await db(store.halted_on)(list(self.control), self.clock())
        started = wanted = 0
        for symbol, row in self.control.items():
            status, state = states[symbol]
            if row.desired_state != RUNNING:
                changed = status != Status.STOPPED
                self.manager.adopt(EngineConfig(symbol), state, Status.STOPPED, "", emit=changed)
                continue
            wanted += 1
            if status == Status.FAILED:
                self.manager.adopt(EngineConfig(symbol), state, Status.FAILED, "", emit=False)
                self.say(f"Engine {symbol} is failed: restart it to run it again")
                continue
            if symbol in halted and self._adopt_halted(row, state):
                self.say(f"Engine {symbol} is halted until the next UTC day or a restart")
                continue
            if self._start(row, state):
                started += 1
                self.say(f"Engine {symbol} started")
        self.say(f"Started {started}/{wanted} engines")
        await self._write()

    async def shutdown(self) -> None:
        await self.manager.stop_all(reason="runner stopped", keep_failed=True)
        for task in list(self._background):
            task.cancel()
        self._heartbeat_due = 0.0
        for _ in range(3):  # the final state must reach the database
            if await self._write():
                break
            await asyncio.sleep(0.5)
        self.say("LeviPanel engine runner stopped")

    # The loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        poll_due = 0.0
        while not self.should_exit.is_set():
            await self._wait(min(poll_due, self._heartbeat_due) - self.clock())
            if self.should_exit.is_set():
                break
            if self.clock() >= poll_due:
                await self.reconcile()
                poll_due = self.clock() + self.settings.poll_interval
            await self._write()

    async def _wait(self, timeout: float) -> None:
        if timeout <= 0 or self.manager.changed.is_set():
            await asyncio.sleep(0.01)  # let a burst of changes coalesce
            return
        waiters = {
            asyncio.ensure_future(self.manager.changed.wait()),
            asyncio.ensure_future(self.should_exit.wait()),
        }
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    async def reconcile(self) -> None:
        """Move the engines toward what the database says operators want."""
        try:
            # Commands first: a command then never meets a row older than itself.
            commands = await db(store.pending_commands)(self._last_command_id, self.symbols)
            rows = await db(store.control_rows)(self.symbols)
        except DatabaseError as exc:
            await self._database_error(exc)
            return
        for symbol, row in rows.items():
            self.ids[symbol] = row.id
            old = self.control.get(symbol)
            if old != row:
                self._apply(old, row)
        for symbol in set(self.control) - set(rows):
            self.say(f"Engine {symbol} removed")
            self._in_background(self.manager.remove(symbol))
        self.control = rows
        for command in commands:
            self._last_command_id = command.id
            self._commands.put_nowait(command)
        for symbol in self.manager.resume_halted(self.clock()):
            self.say(f"Engine {symbol} resumed: a new UTC day")

    async def _command_worker(self) -> None:
        """Carry out operators' commands one at a time, in the order they were given."""
        while True:
            command = await self._commands.get()
            try:
                message = await self._carry_out(command)
                ack = store.Ack(command.id, "done", message)
            except Exception as exc:  # a command must never take the runner down
                log.exception("command %s failed", command)
                ack = store.Ack(command.id, "failed", f"{type(exc).__name__}: {exc}")
            self._acks.append(ack)
            self.say(f"Command {command.id} {command.action} {command.symbol}: {ack.message}")
            self.manager.changed.set()

    async def _carry_out(self, command: store.CommandRow) -> str:
        symbol, action = command.symbol, command.action
        row = self.control.get(symbol)
        if action == "remove" or row is None:
            await self.manager.remove(symbol)
            return "removed" if action == "remove" else "engine no longer exists"
        # The desired state in the row is at least as new as the command: a command it
        # contradicts was overtaken by a later one (given while the runner was down, or
        # within one poll), and carrying it out would only make the engine flap.
        if action == "stop":
            if row.desired_state == RUNNING:
                return "superseded: a later command wants it running"
            await self.manager.stop(symbol, reason="stopped by operator", close=True)
            return "stopped"
        if action == "reset_day":
            return self.manager.new_day(symbol, self.clock())
        if action == "restart" and row.desired_state != RUNNING:
            return "superseded: a later command wants it stopped"
        if action == "restart" and self._fresh_since(symbol, command.created_at):
            return "restarted: started after the command was given"
        self.manager.lift_halt(symbol)  # start, restart, add: an operator overrides a halt
        if action == "restart":
            self.policy.reset(symbol)
            await self.manager.stop(symbol, reason="restarting")
            return "restarted" if self._start(row, None) else "restart refused: bad config"
        slot = self.manager.slots.get(symbol)  # start, add
        if slot is not None and slot.task is not None and not slot.stopping:
            return "running"
        if row.desired_state != RUNNING:
            return "superseded: a later command wants it stopped"
        if slot is not None and slot.status == Status.FAILED:
            self.policy.reset(symbol)
        if slot is not None and slot.task is not None:
            await self.manager.stop(symbol, reason="restarting")
        return "started" if self._start(row, None) else "start refused: bad config"

    def _fresh_since(self, symbol: str, at: float) -> bool:
        """Whether the engine runs from a start made after ``at``: a restart asked for at
        ``at`` then has nothing left to do (the start that carried it out reset its budget)."""
        slot = self.manager.slots.get(symbol)
        alive = slot is not None and slot.task is not None and not slot.stopping
        return alive and self._launched.get(symbol, 0.0) >= at

    def _apply(self, old: store.ControlRow | None, row: store.ControlRow) -> None:
        slot = self.manager.slots.get(row.symbol)
        if row.desired_state != RUNNING:
            if slot is None:
                self.manager.adopt(EngineConfig(row.symbol), None, Status.STOPPED, "")
            else:
                stop = self.manager.stop(row.symbol, reason="stopped by operator", close=True)
                self._in_background(stop)
            return
        if slot is None or slot.status in (Status.STOPPED, Status.FAILED, Status.STOPPING):
            if slot is not None and slot.status == Status.FAILED:
                self.policy.reset(row.symbol)
            self._in_background(self._start_after_stop(row))
        elif old is not None and (old.cycle_interval, old.config_key) != (
            row.cycle_interval,
            row.config_key,
        ):
            self._in_background(self._restart_with(row))

    async def _start_after_stop(self, row: store.ControlRow) -> None:
        slot = self.manager.slots.get(row.symbol)
        if slot is not None and slot.task is not None:
            await self.manager.stop(row.symbol, reason="restarting")
        self._start(row, None)

    async def _restart_with(self, row: store.ControlRow) -> None:
        self.say(f"Engine {row.symbol} config changed: restarting it")
        await self.manager.stop(row.symbol, reason="config changed")
        self._start(row, None)

    def _start(self, row: store.ControlRow, state) -> bool:
        try:
            config = row.engine_config(self.settings.cycle_interval_for(row.symbol))
            config.validate()
        except ConfigError as exc:
            self.manager.adopt(EngineConfig(row.symbol), state, Status.FAILED, "")
            self.manager.fail(row.symbol, exc)
            self.say(f"Engine {row.symbol} not started: {exc}")
            return False
        started = self.manager.start(config, state=state)
        if started:
            self._launched[row.symbol] = self.clock()
        return started

    def _adopt_halted(self, row: store.ControlRow, state) -> bool:
        """Keep an engine halted today by a risk limit halted, ready for the next day."""
        try:
            config = row.engine_config(self.settings.cycle_interval_for(row.symbol))
            config.validate()
        except ConfigError:
            return False  # the normal start fails it with its reason
        self.manager.adopt(config, state, Status.HALTED, "", emit=False)
        self.manager.slots[row.symbol].halted_day = utc_day(self.clock())
        return True

    def _in_background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Writing ----------------------------------------------------------------------------

    async def _write(self) -> bool:
        """Write pending events now, and heartbeats when due. False on a database error.
        Fills ride along with the next write, or go after FILL_DELAY: at most about two
        transactions a second however many engines trade."""
        now = self.clock()
        self._pending.extend(self.manager.drain_events())
        acks, self._acks = self._acks, []
        self._unsent_acks.extend(acks)
        heartbeat_due = now >= self._heartbeat_due
        urgent = any(not isinstance(event, BookChanged) for event in self._pending)
        # Only fills pending: the oldest is first.
        fills_due = bool(self._pending) and now - self._pending[0].at >= FILL_DELAY
        heartbeat_due = heartbeat_due or fills_due  # one transaction carries both
        if not (urgent or fills_due or self._unsent_acks or heartbeat_due):
            return True
        if now < self._db_retry_at:
            return False
        statuses, errors, restarts, books = self._rows(self._pending)
        self._flushing.clear()
        heartbeats = self._heartbeat_rows() if heartbeat_due else []
        try:
            await db(store.write)(
                statuses=statuses,
                errors=errors,
                restarts=restarts,
                heartbeats=heartbeats,
                acks=list(self._unsent_acks),
                books=books,
                runner=self._runner_row() if heartbeat_due else None,
            )
        except DatabaseError as exc:
            await self._database_error(exc)
            return False
        if statuses or errors or restarts or heartbeats or self._unsent_acks or books:
            self.write_transactions += 1
        self._pending.clear()
        self._unsent_acks.clear()
        self._flushed.update(self._flushing)
        self._db_failures = 0
        if heartbeat_due:
            self._heartbeat_due = now + self.settings.flush_interval
        return True

    def _rows(self, events: list) -> tuple[list, list, list, list]:
        latest: dict[str, StatusChanged] = {}
        errors, restarts, books = [], [], []
        for event in events:
            engine_id = self.ids.get(event.symbol)
            if engine_id is None:
                continue
            if isinstance(event, StatusChanged):
                latest[event.symbol] = event  # the row gets the newest status only
            elif isinstance(event, ErrorRaised):
                errors.append(store.error_row(engine_id, event))
            elif isinstance(event, RestartScheduled):
                restarts.append(store.restart_row(engine_id, event))
            elif isinstance(event, BookChanged):
                books.append(store.BookRow(engine_id, event))
        statuses = [self._status_row(event) for event in latest.values()]
        return statuses, errors, restarts, books

    def _status_row(self, event: StatusChanged) -> store.StatusRow:
        slot = self.manager.slots.get(event.symbol)
        state = slot.engine.state if slot else None
        running = event.status in (Status.RUNNING, Status.DEGRADED, Status.STOPPING)
        started_at = slot.engine.started_at if slot and running else None
        return store.StatusRow(
            id=self.ids[event.symbol],
            status=event.status,
            reason=event.reason,
            changed_at=event.at,
            started_at=started_at,
            attempt=event.attempt,
            budget_left=event.budget_left,
            next_retry_at=event.next_retry_at,
            error_count=state.error_count if state else 0,
            last_error=state.last_error if state else None,
        )

    def _runner_row(self) -> store.RunnerRow:
        running = sum(1 for slot in self.manager.slots.values() if slot.task is not None)
        histogram = self.manager.cycle_histogram.snapshot()
        return store.RunnerRow(self.runner_name, self.started_at, running, histogram)

    def _heartbeat_rows(self) -> list[store.HeartbeatRow]:
        """Rows for the engines that heart-beat since the last flush (stopped ones too: their
        last cycles must reach the database)."""
        rows = []
        for symbol, slot in self.manager.slots.items():
            engine_id = self.ids.get(symbol)
            beat = slot.engine.last_heartbeat
            if engine_id is None or beat is None or self._flushed.get(symbol) == beat:
                continue
            self._flushing[symbol] = beat
            s = slot.engine.state
            attempt, budget = self._recovery_view(symbol, slot.engine.started_at)
            rows.append(store.HeartbeatRow(engine_id, slot.engine.last_heartbeat, s.error_count,
                                           s.last_error, s.position, s.daily_pnl, s.total_pnl,
                                           s.trade_count, s.last_tick_at, attempt,
                                           budget))  # fmt: skip
        return rows

    def _recovery_view(self, symbol: str, started_at: float | None) -> tuple[int, int]:
        """Attempt n and the restarts left this hour, as they stand now."""
        stable = (
            started_at is not None
            and self.clock() - started_at >= self.policy.settings.stable_after
        )
        return (0 if stable else self.policy.attempt(symbol)), self.policy.budget_left(symbol)

    async def _prepare_database(self) -> None:
        if self.symbols:
            created = await db(store.ensure_engines)(self.symbols)
        else:
            created = await db(store.seed_engines)(self.settings.symbols)
        for symbol in created:
            self.say(f"Engine {symbol} created (desired running)")

    async def _database_error(self, exc: DatabaseError) -> None:
        """Engines keep running; writes wait and are retried with backoff."""
        self._db_failures += 1
        delay = min(30.0, 0.5 * 2 ** (self._db_failures - 1))
        self._db_retry_at = self.clock() + delay
        log.warning("database error (%s), retrying in %.1fs: %s", type(exc).__name__, delay, exc)
        await db(_close_connection)()

    def say(self, line: str) -> None:
        if self.out is None:
            log.info(line)
        else:
            self.out.write(line + "\n")
            self.out.flush()
